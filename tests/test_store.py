"""The durable execution store, against real SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from haddock.executor.errors import ExecutionAlreadyComplete, ExecutionAlreadyStarted, ExecutionNotFound
from haddock.executor.records import (
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    ResultStatus,
    RunCommandResult,
)
from haddock.executor.request import RunCommandRequest
from haddock.node.store import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    ExecutionStore,
    StoreError,
    store_path,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
REPO = Path(__file__).resolve().parent.parent


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def request(execution_id: str, job_id: str = "job-1") -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {"job_id": job_id, "execution_id": execution_id, "engine": {"image": "haddock-test/busybox"}}
    )


def full_request(execution_id: str) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "job-full",
            "execution_id": execution_id,
            "engine": {
                "image": "127.0.0.1:5000/haddock-test/busybox:1.36",
                "entrypoint": ["/bin/sh", "-c"],
                "parameters": ["echo héllo; exit 3", "x"],
                "env": {"GREETING": "hi there", "EMPTY": ""},
                "working_dir": "/work",
                "pull_policy": "always",
            },
            "results_dir": "/var/lib/haddock/executions/x/results",
            "resources": {"cpu": "500m", "memory": "64Mi", "disk": "1Gi", "gpu": 1},
            "network": {"mode": "bridge"},
            "inputs": [{"source": "/data/in", "target": "/in", "read_only": False}],
            "outputs": [{"name": "out", "path": "/out"}],
            "output_limits": {"max_stdout_file_length": "1Mi", "max_stderr_return_length": 100},
            "timeout": "1m30s",
        }
    )


def record(execution_id: str, *, created: datetime = T0, job_id: str = "job-1") -> ExecutionRecord:
    return ExecutionRecord(request=request(execution_id, job_id), created_at=created)


def event(execution_id: str, kind: EventKind, message: str, t: datetime = T0, **details: object) -> ExecutionEvent:
    return ExecutionEvent(execution_id=execution_id, kind=kind, message=message, time=t, details=details)


RESULT = RunCommandResult(status=ResultStatus.SUCCESS, exit_code=0, stdout="hi\n")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ExecutionStore]:
    s = await ExecutionStore.open(store_path(tmp_path))
    yield s
    await s.close()


# ---------------------------------------------------------------------------
# Records, events, transitions, results
# ---------------------------------------------------------------------------


async def test_full_record_round_trips_every_field(store: ExecutionStore) -> None:
    rec = ExecutionRecord(
        request=full_request("exec-full"),
        state=ExecutionState.FAILED,
        events=[
            event("exec-full", EventKind.ACCEPTED, "accepted", at(0)),
            event("exec-full", EventKind.STARTED, "started", at(1), container="abc", n=1, nested={"a": [1, 2.5]}),
            event("exec-full", EventKind.EXITED, "exited with 3", at(2), exit_code=3),
        ],
        created_at=T0,
        started_at=at(1),
        finished_at=at(2.000001),
        container_id="f" * 64,
        result=RunCommandResult(
            status=ResultStatus.ERROR,
            exit_code=3,
            stdout="héllo\n",
            stdout_truncated=True,
            stdout_file_truncated=True,
            stderr="oops",
            stderr_truncated=True,
            stderr_file_truncated=False,
            error_message="exited with 3",
        ),
    )
    await store.create(rec)
    got = await store.get("exec-full")
    assert got == rec  # dataclass equality: every field, pydantic models by value, datetimes exactly
    assert got is not None and got.finished_at is not None
    assert got.finished_at.microsecond == 123457 and got.finished_at.tzinfo == UTC
    assert got.request.timeout == 90.0 and got.request.resources.memory == 64 * 1024**2
    assert await store.get("nope") is None


async def test_timestamps_are_stored_in_utc_and_naive_ones_are_refused(store: ExecutionStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=plus2)
    await store.create(record("e1", created=local))
    got = await store.get("e1")
    assert got is not None
    assert got.created_at == local and got.created_at.tzinfo == UTC and got.created_at.hour == 12
    with pytest.raises(ValueError, match="naive"):
        await store.create(record("e2", created=datetime(2024, 5, 1)))
    assert await store.get("e2") is None


async def test_events_keep_their_order(store: ExecutionStore) -> None:
    await store.create(record("e1"))
    kinds = [EventKind.ACCEPTED, EventKind.PULLING, EventKind.IMAGE_READY, EventKind.STARTED, EventKind.EXITED]
    sent = [event("e1", kinds[i % len(kinds)], f"event {i}", T0) for i in range(50)]  # same time: order by arrival
    for e in sent[:10]:
        await store.add_event(e)
    await store.add_events(sent[10:])
    got = await store.get("e1")
    assert got is not None and got.events == sent
    with pytest.raises(ExecutionNotFound):
        await store.add_event(event("ghost", EventKind.ACCEPTED, "x"))
    with pytest.raises(ExecutionNotFound):  # all or none
        await store.add_events([event("e1", EventKind.STATE, "extra"), event("ghost", EventKind.STATE, "x")])
    got = await store.get("e1")
    assert got is not None and len(got.events) == 50


async def test_transitions_with_timestamps(store: ExecutionStore) -> None:
    await store.create(record("e1"))
    await store.set_state("e1", ExecutionState.RUNNING, at=at(1))
    await store.set_state("e1", ExecutionState.RUNNING, at=at(1.5))  # same state: no-op
    await store.set_state("e1", ExecutionState.FINISHING, at=at(2))
    await store.set_container("e1", "c0ffee")
    assert await store.set_result("e1", RESULT, ExecutionState.COMPLETED, at=at(3))
    assert await store.transitions("e1") == [
        (None, ExecutionState.PREPARING, T0),
        (ExecutionState.PREPARING, ExecutionState.RUNNING, at(1)),
        (ExecutionState.RUNNING, ExecutionState.FINISHING, at(2)),
        (ExecutionState.FINISHING, ExecutionState.COMPLETED, at(3)),
    ]
    got = await store.get("e1")
    assert got is not None
    assert (got.state, got.started_at, got.finished_at, got.container_id) == (
        ExecutionState.COMPLETED,
        at(1),
        at(3),
        "c0ffee",
    )
    with pytest.raises(ExecutionAlreadyComplete):  # a terminal state is final
        await store.set_state("e1", ExecutionState.RUNNING)
    await store.set_state("e1", ExecutionState.COMPLETED)  # same state: still a no-op
    assert len(await store.transitions("e1")) == 4
    for call in (
        store.set_state("ghost", ExecutionState.RUNNING),
        store.set_container("ghost", "c"),
        store.transitions("ghost"),
        store.set_result("ghost", RESULT),
    ):
        with pytest.raises(ExecutionNotFound):
            await call


async def test_set_state_terminal_sets_finished_at_and_default_time_is_now(store: ExecutionStore) -> None:
    await store.create(record("e1", created=datetime.now(UTC)))
    before = datetime.now(UTC)
    await store.set_state("e1", ExecutionState.CANCELLED)
    got = await store.get("e1")
    assert got is not None and got.finished_at is not None and got.started_at is None
    assert before <= got.finished_at <= datetime.now(UTC)
    # The result decides the final state and keeps the earlier finished_at.
    cancelled = RunCommandResult(status=ResultStatus.CANCELLED, error_message="cancelled")
    assert await store.set_result("e1", cancelled, at=at(99))
    again = await store.get("e1")
    assert again is not None and again.finished_at == got.finished_at and again.result == cancelled


async def test_result_is_written_once(store: ExecutionStore) -> None:
    await store.create(record("e1"))
    await store.set_state("e1", ExecutionState.RUNNING, at=at(1))
    first = RunCommandResult(status=ResultStatus.TIMEOUT, exit_code=143, error_message="timed out after 1s")
    second = RunCommandResult(status=ResultStatus.SUCCESS, exit_code=0)
    assert await store.set_result("e1", first, at=at(2)) is True  # state from the status: FAILED
    assert await store.set_result("e1", second, ExecutionState.COMPLETED, at=at(3)) is False
    got = await store.get("e1")
    assert got is not None
    assert (got.result, got.state, got.finished_at) == (first, ExecutionState.FAILED, at(2))
    assert [t[1] for t in await store.transitions("e1")][-1] is ExecutionState.FAILED
    assert len(await store.transitions("e1")) == 3
    with pytest.raises(ValueError, match="terminal"):
        await store.set_result("e1", first, ExecutionState.RUNNING)


async def test_racing_results_store_exactly_one(store: ExecutionStore) -> None:
    await store.create(record("e1"))
    results = [RunCommandResult(status=ResultStatus.ERROR, exit_code=i) for i in range(20)]
    won = await asyncio.gather(*(store.set_result("e1", r) for r in results))
    assert won.count(True) == 1
    got = await store.get("e1")
    assert got is not None and got.result == results[won.index(True)]


async def test_create_refuses_existing_ids(store: ExecutionStore) -> None:
    await store.create(record("e1"))
    with pytest.raises(ExecutionAlreadyStarted):
        await store.create(record("e1"))
    await store.set_result("e1", RESULT)
    with pytest.raises(ExecutionAlreadyComplete, match="completed"):
        await store.create(record("e1"))
    got = await store.get("e1")
    assert got is not None and got.result == RESULT


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------


async def test_list_filters_and_orders_newest_first(store: ExecutionStore) -> None:
    for i in range(6):
        await store.create(record(f"e{i}", created=at(i)))
        await store.add_event(event(f"e{i}", EventKind.ACCEPTED, "accepted"))
    await store.create(record("tie", created=at(5)))  # same created_at as e5: later insert counts as newer
    await store.set_state("e1", ExecutionState.RUNNING)
    await store.set_state("e3", ExecutionState.RUNNING)
    await store.set_result("e2", RESULT)
    await store.set_result("e4", RunCommandResult(status=ResultStatus.CANCELLED))

    everything = await store.list()
    assert [r.execution_id for r in everything] == ["tie", "e5", "e4", "e3", "e2", "e1", "e0"]
    assert all(r.events == [] for r in everything)  # events are omitted in listings
    assert [r.execution_id for r in await store.list(limit=2)] == ["tie", "e5"]
    assert await store.list(limit=0) == []
    running = await store.list({ExecutionState.RUNNING})
    assert [r.execution_id for r in running] == ["e3", "e1"]
    done = await store.list({ExecutionState.COMPLETED, ExecutionState.CANCELLED}, with_events=True)
    assert [(r.execution_id, r.state) for r in done] == [
        ("e4", ExecutionState.CANCELLED),
        ("e2", ExecutionState.COMPLETED),
    ]
    assert [len(r.events) for r in done] == [1, 1] and done[1].result == RESULT
    assert await store.list({ExecutionState.FAILED}) == []


async def test_non_terminal_is_what_recovery_needs(store: ExecutionStore) -> None:
    for i, state in enumerate(ExecutionState):
        await store.create(ExecutionRecord(request=request(f"e-{state.value}"), state=state, created_at=at(i)))
        await store.add_event(event(f"e-{state.value}", EventKind.STATE, state.value))
    await store.set_container("e-running", "c1")
    active = await store.non_terminal()
    services = ["e-starting", "e-ready", "e-unhealthy", "e-restarting", "e-stopping"]  # a service's states
    assert [r.execution_id for r in active] == ["e-queued", "e-preparing", "e-running", "e-finishing", *services]
    assert all(len(r.events) == 1 for r in active)  # with events, oldest first
    assert active[2].container_id == "c1"


async def test_prune_deletes_old_terminal_executions(store: ExecutionStore, tmp_path: Path) -> None:
    for name in ("old-done", "old-failed", "new-done", "running"):
        await store.create(record(name))
        await store.add_event(event(name, EventKind.ACCEPTED, "x"))
    await store.set_result("old-done", RESULT, at=at(10))
    await store.set_result("old-failed", RunCommandResult(status=ResultStatus.ERROR), at=at(5))
    await store.set_result("new-done", RESULT, at=at(100))
    await store.set_state("running", ExecutionState.RUNNING, at=at(1))

    assert await store.prune(at(50)) == ["old-failed", "old-done"]  # oldest first
    assert await store.get("old-done") is None and await store.get("old-failed") is None
    assert {r.execution_id for r in await store.list()} == {"new-done", "running"}
    assert await store.prune(at(50)) == []
    with sqlite3.connect(store_path(tmp_path)) as conn:  # events and transitions went with them
        left = {
            r[0] for r in conn.execute("SELECT execution_id FROM events UNION SELECT execution_id FROM transitions")
        }
    assert left == {"new-done", "running"}


# ---------------------------------------------------------------------------
# Durability: restart, crash, WAL, migrations, bad files
# ---------------------------------------------------------------------------


async def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    async with await ExecutionStore.open(path) as first:
        await first.create(ExecutionRecord(request=full_request("e1"), created_at=T0))
        await first.add_event(event("e1", EventKind.ACCEPTED, "accepted", at(0.5)))
        await first.set_state("e1", ExecutionState.RUNNING, at=at(1))
        await first.set_container("e1", "c1")
        await first.set_result("e1", RESULT, at=at(2))
        await first.create(record("e2", created=at(3)))
        await first.set_state("e2", ExecutionState.RUNNING, at=at(4))
        before = (await first.get("e1"), await first.get("e2"), await first.transitions("e1"))
    with pytest.raises(StoreError, match="closed"):
        await first.get("e1")
    await first.close()  # idempotent

    async with await ExecutionStore.open(path) as second:
        assert (await second.get("e1"), await second.get("e2"), await second.transitions("e1")) == before
        assert [r.execution_id for r in await second.non_terminal()] == ["e2"]
        assert [r.execution_id for r in await second.list()] == ["e2", "e1"]


async def test_writes_survive_a_crashed_process(tmp_path: Path) -> None:
    """A process that dies without closing the store (os._exit) loses nothing it committed."""
    path = store_path(tmp_path)
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from pathlib import Path
        from haddock.executor.records import ExecutionRecord, ExecutionState, ResultStatus, RunCommandResult
        from haddock.executor.request import RunCommandRequest
        from haddock.node.store import ExecutionStore

        async def main() -> None:
            store = await ExecutionStore.open(Path({str(path)!r}))
            for name in ("done", "running"):
                req = RunCommandRequest.model_validate(
                    {{"job_id": "j", "execution_id": name, "engine": {{"image": "busybox"}}}}
                )
                await store.create(ExecutionRecord(request=req))
                await store.set_state(name, ExecutionState.RUNNING)
            await store.set_result("done", RunCommandResult(status=ResultStatus.SUCCESS, exit_code=0))
            os._exit(0)  # no close, no checkpoint: a crash

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert path.with_name(path.name + "-wal").exists()  # the data is (still) in the WAL

    async with await ExecutionStore.open(path) as store:
        done = await store.get("done")
        assert done is not None and done.result is not None and done.result.exit_code == 0
        assert done.state is ExecutionState.COMPLETED and done.finished_at is not None
        assert [r.execution_id for r in await store.non_terminal()] == ["running"]


async def test_pragmas_wal_mode_and_schema(store: ExecutionStore, tmp_path: Path) -> None:
    path = store_path(tmp_path)
    await store.create(record("e1"))
    assert path.with_name(path.name + "-wal").exists()
    with sqlite3.connect(path) as conn:  # another reader, as an operator's sqlite3 shell would be
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("SELECT id, job_id, state FROM executions").fetchall() == [("e1", "job-1", "preparing")]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"executions_job_id", "executions_state", "executions_created_at", "executions_finished_at"} <= indexes


async def test_migrates_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "haddock.db"
    path.parent.mkdir(parents=True)
    path.touch()
    async with await ExecutionStore.open(path) as store:
        await store.create(record("e1"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    # A missing directory is created too.
    async with await ExecutionStore.open(tmp_path / "new" / "haddock.db") as store:
        assert await store.list() == []


async def test_later_migrations_apply_in_order_and_atomically(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    async with await ExecutionStore.open(path) as store:
        await store.create(record("e1"))

    def add_note(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE executions ADD COLUMN note TEXT")
        conn.execute("UPDATE executions SET note = 'migrated'")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration 3 failed")

    with pytest.raises(RuntimeError, match="migration 3 failed"):
        await ExecutionStore.open(path, migrations=[*MIGRATIONS, add_note, broken])
    with sqlite3.connect(path) as conn:  # add_note committed; broken rolled back entirely
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        assert conn.execute("SELECT note FROM executions").fetchall() == [("migrated",)]
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
    async with await ExecutionStore.open(path, migrations=[*MIGRATIONS, add_note]) as store:
        assert (await store.get("e1")) is not None


async def test_refuses_a_database_from_a_newer_haddock(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    async with await ExecutionStore.open(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this haddock knows") as err:
        await ExecutionStore.open(path)
    assert str(path) in str(err.value)
    with sqlite3.connect(path) as conn:  # untouched
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


async def test_unusable_files_give_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="not a database") as err:
        await ExecutionStore.open(garbage)
    assert str(garbage) in str(err.value)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE stuff (x)")
    with pytest.raises(StoreError, match="another application") as err:
        await ExecutionStore.open(foreign)
    assert str(foreign) in str(err.value)

    with pytest.raises(StoreError, match="is a directory"):
        await ExecutionStore.open(tmp_path)

    # A store whose pages were damaged after it was written.
    damaged = tmp_path / "damaged.db"
    async with await ExecutionStore.open(damaged) as store:
        for i in range(200):
            await store.create(record(f"e{i}"))
    size = damaged.stat().st_size
    assert size > 8 * 4096
    with damaged.open("r+b") as f:
        f.seek(4096)  # page 2 onwards: tables and indexes, not the header
        f.write(b"\xff" * (size - 8192))
    with pytest.raises(StoreError) as err:
        await ExecutionStore.open(damaged)
    assert str(damaged) in str(err.value)


# ---------------------------------------------------------------------------
# Concurrency and the event loop
# ---------------------------------------------------------------------------


async def test_concurrent_writes_from_many_tasks_are_all_persisted(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    events_each = 10

    async def one(store: ExecutionStore, i: int) -> None:
        name = f"e{i:03d}"
        await store.create(record(name, created=at(i)))
        for n in range(events_each):
            await store.add_event(event(name, EventKind.STATE, f"{name} #{n}", details_n=n))
            if n == 3:
                await store.set_state(name, ExecutionState.RUNNING)
        await store.set_result(name, RunCommandResult(status=ResultStatus.SUCCESS, exit_code=0, stdout=name))

    async with await ExecutionStore.open(path) as store:
        await asyncio.gather(*(one(store, i) for i in range(100)))
    async with await ExecutionStore.open(path) as store:
        listed = await store.list(limit=1000)
        assert len(listed) == 100 and all(r.state is ExecutionState.COMPLETED for r in listed)
        for i in (0, 42, 99):
            got = await store.get(f"e{i:03d}")
            assert got is not None and got.result is not None and got.result.stdout == f"e{i:03d}"
            assert [e.details["details_n"] for e in got.events] == list(range(events_each))
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 100 * events_each


async def test_event_loop_keeps_running_during_a_large_write_batch(store: ExecutionStore) -> None:
    await store.create(record("e1"))
    batch = [event("e1", EventKind.STATE, f"event {i}", payload="x" * 200) for i in range(20_000)]
    ticks: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.002)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    writes = [asyncio.ensure_future(store.add_events(batch[i : i + 5000])) for i in range(0, len(batch), 5000)]
    await asyncio.gather(*writes)
    ended = time.monotonic()
    stop.set()
    await beat

    during = [t for t in ticks if started <= t <= ended]
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(during) >= 5, f"the loop ticked {len(during)} times in {ended - started:.3f}s of writing"
    assert max(gaps) < 0.2, f"the loop was blocked for {max(gaps):.3f}s"
    got = await store.get("e1")
    assert got is not None and len(got.events) == len(batch)


async def test_a_cancelled_caller_does_not_cancel_its_write(store: ExecutionStore) -> None:
    await store.create(record("e1"))
    await store.create(record("e2"))
    # Queue a long write first so that the next ones are still waiting when their callers are cancelled.
    slow = asyncio.ensure_future(store.add_events([event("e1", EventKind.STATE, "x")] * 5000))
    result = asyncio.ensure_future(store.set_result("e2", RESULT))
    event_write = asyncio.ensure_future(store.add_event(event("e2", EventKind.EXITED, "exited")))
    await asyncio.sleep(0)
    result.cancel()
    event_write.cancel()
    await slow
    with pytest.raises(asyncio.CancelledError):
        await result
    got = await store.get("e2")  # queued behind the writes: sees them
    assert got is not None and got.result == RESULT and [e.kind for e in got.events] == [EventKind.EXITED]


async def test_a_failed_write_whose_caller_was_cancelled_is_logged(
    store: ExecutionStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.create(record("e1"))
    slow = asyncio.ensure_future(store.add_events([event("e1", EventKind.STATE, "x")] * 2000))
    doomed = asyncio.ensure_future(store.add_event(event("ghost", EventKind.STATE, "x")))
    await asyncio.sleep(0)
    doomed.cancel()
    await slow
    await store.list()  # queued behind the failed write: it has run
    await asyncio.sleep(0)  # let its done-callback run
    assert any("a write failed" in r.getMessage() and "ghost" in r.getMessage() for r in caplog.records)
