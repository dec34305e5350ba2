"""The durable execution store: executions, their requests, state transitions, lifecycle events, results
and resource samples (the ``stats`` table: ``statstore.py``).

One embedded SQLite database per node, ``<data_dir>/haddock.db`` (:func:`store_path`), so that
GetExecution, ListExecutions and Wait answer after a restart and start-up recovery knows what was running.

How it is built, and why:

- **One thread, one connection.** Every call — writes *and* reads — runs on a single dedicated thread
  (``ThreadPoolExecutor(max_workers=1)``) that owns the only connection. The event loop never blocks on
  SQLite; writes are carried out one at a time in the order they were called (the pool's queue is FIFO);
  and a read always sees every write called before it. Reads share the thread because they are small
  (indexed lookups) and it keeps the store free of locking subtleties; WAL mode means other processes
  (an operator's ``sqlite3`` shell, a backup) can read while we write. Encoding and decoding of the JSON
  columns also happen on that thread, so large batches and listings do not hold up the event loop.
- **A write, once called, is carried out** even when the calling task is cancelled (it is shielded):
  a cancelled caller must not leave, e.g., a result half-recorded in memory and missing on disk.
- **Pragmas**: ``journal_mode=WAL``, ``synchronous=NORMAL`` (a commit survives a crash of the process;
  after a power loss the last commits may be lost), ``foreign_keys=ON``, ``busy_timeout``. The two writes
  that a requester relies on — accepting an execution (:meth:`ExecutionStore.create`) and its result
  (:meth:`ExecutionStore.set_result`) — are committed with ``synchronous=FULL``, so they survive power loss
  too (and, the WAL being sequential, so does everything committed before them).
- **Crash safety**: every method is one transaction. A result, its terminal state and ``finished_at`` are
  written together or not at all, and a result is written at most once (:meth:`ExecutionStore.set_result`
  returns False for the second attempt, so recovery and a live waiter may race safely).
- **Encoding**: requests, results and events are stored as the JSON of their pydantic models
  (``model_dump_json`` / ``model_validate_json``); id, job id, state and the timestamps also have their own
  (indexed) columns. Timestamps are ISO-8601 in UTC with microseconds (``2024-05-01T12:00:00.000001+00:00``),
  which sort as text and round-trip exactly; naive datetimes are refused.
- **Migrations** are numbered (``PRAGMA user_version``) and applied in order, each in its own transaction
  with the version bump. A database from a newer haddock is refused with a clear error, never touched;
  so is a file that is not a SQLite database or is some other application's database.

The database file (opening, pragmas, schema, migrations, the thread) is ``_storedb.py``; this module holds the
queries on executions, their events and transitions.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from haddock.executor.errors import (
    ExecutionAlreadyComplete,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
)
from haddock.executor.records import ExecutionEvent, ExecutionRecord, ExecutionState, RunCommandResult, utcnow
from haddock.executor.request import RunCommandRequest
from haddock.executor.stats import Stat
from haddock.node import statstore
from haddock.node._storedb import (
    APPLICATION_ID,
    DB_FILENAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    Database,
    StoreError,
    store_path,
)

__all__ = [
    "APPLICATION_ID",
    "DB_FILENAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ExecutionStore",
    "StoreError",
    "Transition",
    "store_path",
]


Transition = tuple[ExecutionState | None, ExecutionState, datetime]
"""One state change: (from — None for the first state —, to, when)."""


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def _ts(dt: datetime) -> str:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()} cannot be stored: give it a time zone")
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def _ts_opt(dt: datetime | None) -> str | None:
    return None if dt is None else _ts(dt)


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _parse_ts_opt(text: str | None) -> datetime | None:
    return None if text is None else _parse_ts(text)


_RECORD_COLUMNS = "id, state, created_at, started_at, finished_at, container_id, request_json, result_json, built_image"


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


class ExecutionStore(Database):
    """Durable executions. Open with ``await ExecutionStore.open(path)``; close with :meth:`close`.

    Usable as ``async with await ExecutionStore.open(path) as store: ...``. All methods are coroutines;
    the SQLite work happens on the store's single thread (see the module's documentation).

    Errors: unknown execution ids raise :class:`ExecutionNotFound` (except :meth:`get`, which returns
    None); an unusable database raises :class:`StoreError` naming the file.
    """

    def _decode_record(self, row: sqlite3.Row, events: builtins.list[ExecutionEvent]) -> ExecutionRecord:
        execution_id = row["id"]
        try:
            request = RunCommandRequest.model_validate_json(row["request_json"])
            result = None if row["result_json"] is None else RunCommandResult.model_validate_json(row["result_json"])
            return ExecutionRecord(
                request=request,
                state=ExecutionState(row["state"]),
                events=events,
                created_at=_parse_ts(row["created_at"]),
                started_at=_parse_ts_opt(row["started_at"]),
                finished_at=_parse_ts_opt(row["finished_at"]),
                container_id=row["container_id"],
                result=result,
                built_image=row["built_image"],
            )
        except (ValidationError, ValueError) as exc:
            raise StoreError(f"execution store {self.path}: execution {execution_id!r} is unreadable: {exc}") from exc

    def _decode_events(self, rows: Iterable[sqlite3.Row]) -> builtins.list[ExecutionEvent]:
        try:
            return [ExecutionEvent.model_validate_json(r["event_json"]) for r in rows]
        except ValidationError as exc:
            raise StoreError(f"execution store {self.path}: an event is unreadable: {exc}") from exc

    # ------------------------------------------------------------------ writes

    async def create(self, record: ExecutionRecord) -> None:
        """Store a new execution: its request, state, timestamps, container id, events and result as given.

        Records the first transition (None → ``record.state`` at ``record.created_at``). Raises
        :class:`ExecutionAlreadyStarted` when the id exists and is not terminal,
        :class:`ExecutionAlreadyComplete` when it exists and is terminal. Committed with synchronous=FULL.
        """
        execution_id = record.execution_id
        row = (
            execution_id,
            record.request.job_id,
            record.state.value,
            _ts(record.created_at),
            _ts_opt(record.started_at),
            _ts_opt(record.finished_at),
            record.container_id,
            record.request.model_dump_json(),
            None if record.result is None else record.result.model_dump_json(),
            record.built_image,
        )
        events = [(execution_id, e.kind.value, e.model_dump_json()) for e in record.events]

        def tx(conn: sqlite3.Connection) -> None:
            existing = conn.execute("SELECT state FROM executions WHERE id = ?", (execution_id,)).fetchone()
            if existing is not None:
                state = ExecutionState(existing["state"])
                if state.terminal:
                    raise ExecutionAlreadyComplete(execution_id, state.value)
                raise ExecutionAlreadyStarted(execution_id)
            conn.execute(
                "INSERT INTO executions (id, job_id, state, created_at, started_at, finished_at, container_id,"
                " request_json, result_json, built_image) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.execute(
                "INSERT INTO transitions (execution_id, from_state, to_state, at) VALUES (?, NULL, ?, ?)",
                (execution_id, row[2], row[3]),
            )
            conn.executemany("INSERT INTO events (execution_id, kind, event_json) VALUES (?, ?, ?)", events)

        await self._write(tx, durable=True)

    async def set_state(self, execution_id: str, state: ExecutionState, *, at: datetime | None = None) -> None:
        """Move an execution to ``state`` at ``at`` (default: now), recording the transition.

        Sets ``started_at`` on the first move to RUNNING and ``finished_at`` on the first move to a terminal
        state. Setting the current state again is a no-op (no transition is recorded). A terminal state is
        final: moving a terminal execution elsewhere raises :class:`ExecutionAlreadyComplete`.
        """
        when = _ts(at if at is not None else utcnow())

        def tx(conn: sqlite3.Connection) -> None:
            current = _current_state(conn, execution_id)
            if current is state:
                return
            if current.terminal:
                raise ExecutionAlreadyComplete(execution_id, current.value)
            _transition(conn, execution_id, current, state, when)

        await self._write(tx)

    async def add_event(self, event: ExecutionEvent, *, state: ExecutionState | None = None) -> None:
        """Append a lifecycle event. Every event given is kept: leaving out pull progress is the caller's job.

        With ``state``, the execution moves to it in the same transaction (as :meth:`set_state`, at the
        event's time): e.g. a queued execution admitted is ``preparing`` together with its ``accepted``.
        """
        args = (event.kind.value, event.model_dump_json(), event.execution_id)
        when = _ts(event.time)

        def tx(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "INSERT INTO events (execution_id, kind, event_json) SELECT id, ?, ? FROM executions WHERE id = ?",
                args,
            )
            if cur.rowcount == 0:
                raise ExecutionNotFound(event.execution_id)
            if state is not None:
                current = _current_state(conn, event.execution_id)
                if current is not state:
                    if current.terminal:
                        raise ExecutionAlreadyComplete(event.execution_id, current.value)
                    _transition(conn, event.execution_id, current, state, when)

        await self._write(tx, durable=state is not None)

    async def add_events(self, events: Sequence[ExecutionEvent]) -> None:
        """Append several events in one transaction (all or none), in the order given."""
        batch = builtins.list(events)  # events are frozen models: serialized on the store's thread, off the loop

        def tx(conn: sqlite3.Connection) -> None:
            for e in batch:
                cur = conn.execute(
                    "INSERT INTO events (execution_id, kind, event_json) SELECT id, ?, ? FROM executions WHERE id = ?",
                    (e.kind.value, e.model_dump_json(), e.execution_id),
                )
                if cur.rowcount == 0:
                    raise ExecutionNotFound(e.execution_id)

        await self._write(tx)

    async def set_container(self, execution_id: str, container_id: str) -> None:
        """Record the engine's container id (for reattaching after a restart)."""

        def tx(conn: sqlite3.Connection) -> None:
            cur = conn.execute("UPDATE executions SET container_id = ? WHERE id = ?", (container_id, execution_id))
            if cur.rowcount == 0:
                raise ExecutionNotFound(execution_id)

        await self._write(tx)

    async def set_built_image(self, execution_id: str, image: str) -> None:
        """Record a job's built image (what its containers are made from, also after a restart)."""

        def tx(conn: sqlite3.Connection) -> None:
            cur = conn.execute("UPDATE executions SET built_image = ? WHERE id = ?", (image, execution_id))
            if cur.rowcount == 0:
                raise ExecutionNotFound(execution_id)

        await self._write(tx)

    async def set_result(
        self,
        execution_id: str,
        result: RunCommandResult,
        state: ExecutionState | None = None,
        *,
        at: datetime | None = None,
    ) -> bool:
        """Store how the execution ended — result, terminal ``state`` and ``finished_at`` in ONE transaction.

        ``state`` defaults to the one the result's status implies; it must be terminal. ``finished_at`` is
        ``at`` (default: now) unless it was already set by a move to a terminal state. The result decides
        the final state: if a terminal state was set without a result, it is replaced (and the transition
        recorded). Returns True when stored; False, changing nothing, when a result is already stored —
        a result is never written twice. Committed with synchronous=FULL.
        """
        final = state if state is not None else result.status.state
        if not final.terminal:
            raise ValueError(f"a result needs a terminal state, not {final.value!r}")
        when = _ts(at if at is not None else utcnow())
        body = result.model_dump_json()

        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT state, result_json IS NOT NULL AS has_result FROM executions WHERE id = ?", (execution_id,)
            ).fetchone()
            if row is None:
                raise ExecutionNotFound(execution_id)
            if row["has_result"]:
                return False
            current = ExecutionState(row["state"])
            conn.execute("UPDATE executions SET result_json = ? WHERE id = ?", (body, execution_id))
            if current is not final:
                _transition(conn, execution_id, current, final, when)
            else:
                conn.execute(
                    "UPDATE executions SET finished_at = COALESCE(finished_at, ?) WHERE id = ?", (when, execution_id)
                )
            return True

        return await self._write(tx, durable=True)

    async def prune(self, finished_before: datetime) -> builtins.list[str]:
        """Delete terminal executions that finished before ``finished_before``, with their events and transitions.

        Returns their ids, oldest first: deleting their logs and results dirs is the caller's job.
        """
        cutoff = _ts(finished_before)
        terminal = tuple(s.value for s in ExecutionState if s.terminal)
        marks = ", ".join("?" * len(terminal))

        def tx(conn: sqlite3.Connection) -> builtins.list[str]:
            ids = [
                r["id"]
                for r in conn.execute(
                    f"SELECT id FROM executions WHERE finished_at < ? AND state IN ({marks})"
                    " ORDER BY finished_at, rowid",
                    (cutoff, *terminal),
                )
            ]
            conn.executemany("DELETE FROM executions WHERE id = ?", [(i,) for i in ids])
            return ids

        return await self._write(tx)

    async def add_stats(self, batch: Mapping[str, Sequence[Stat]], *, max_samples: int) -> builtins.list[str]:
        """Append resource samples by execution (``statstore.py``: bounded by merging the oldest). Returns
        the ids of executions not in the store, whose samples were not written."""
        copy = {k: builtins.list(v) for k, v in batch.items()}
        return await self._write(lambda conn: statstore.insert(conn, copy, max_samples))

    # ------------------------------------------------------------------ reads

    async def stats(self, execution_id: str) -> builtins.list[Stat]:
        """The execution's resource samples in time order (empty when none were kept)."""
        return await self._read(lambda conn: statstore.select(conn, execution_id))

    async def get(self, execution_id: str) -> ExecutionRecord | None:
        """The whole record — request, state, events in order, timestamps, container id, result — or None."""

        def q(conn: sqlite3.Connection) -> ExecutionRecord | None:
            row = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM executions WHERE id = ?", (execution_id,)).fetchone()
            if row is None:
                return None
            events = conn.execute("SELECT event_json FROM events WHERE execution_id = ? ORDER BY seq", (execution_id,))
            return self._decode_record(row, self._decode_events(events))

        return await self._read(q)

    async def list(
        self, states: set[ExecutionState] | None = None, limit: int = 100, *, with_events: bool = False
    ) -> builtins.list[ExecutionRecord]:
        """Executions, newest (by ``created_at``) first, at most ``limit``, only in ``states`` if given (and not empty).

        Records come WITHOUT their events (``events == []``) unless ``with_events``: listings stay cheap;
        :meth:`get` gives the whole record.
        """
        if limit <= 0:
            return []
        return await self._select(
            "" if not states else f"WHERE state IN ({', '.join('?' * len(states))})",
            [s.value for s in states or ()],
            limit,
            with_events,
        )

    async def non_terminal(self) -> builtins.list[ExecutionRecord]:
        """Every execution not in a terminal state, oldest first, with events: what recovery looks at."""
        active = [s.value for s in ExecutionState if not s.terminal]
        return await self._select(
            f"WHERE state IN ({', '.join('?' * len(active))})", active, None, True, newest_first=False
        )

    async def transitions(self, execution_id: str) -> builtins.list[Transition]:
        """The execution's state changes in order: (from, to, when); the first has from = None."""

        def q(conn: sqlite3.Connection) -> builtins.list[Transition]:
            rows = conn.execute(
                "SELECT from_state, to_state, at FROM transitions WHERE execution_id = ? ORDER BY seq",
                (execution_id,),
            ).fetchall()
            if not rows and conn.execute("SELECT 1 FROM executions WHERE id = ?", (execution_id,)).fetchone() is None:
                raise ExecutionNotFound(execution_id)
            return [
                (
                    None if r["from_state"] is None else ExecutionState(r["from_state"]),
                    ExecutionState(r["to_state"]),
                    _parse_ts(r["at"]),
                )
                for r in rows
            ]

        return await self._read(q)

    async def _select(
        self,
        where: str,
        params: builtins.list[Any],
        limit: int | None,
        with_events: bool,
        *,
        newest_first: bool = True,
    ) -> builtins.list[ExecutionRecord]:
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT {_RECORD_COLUMNS} FROM executions {where} ORDER BY created_at {order}, rowid {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, limit]

        def q(conn: sqlite3.Connection) -> builtins.list[ExecutionRecord]:
            rows = conn.execute(sql, params).fetchall()
            events: dict[str, builtins.list[sqlite3.Row]] = {}
            if with_events and rows:
                ids = json.dumps([r["id"] for r in rows])
                for ev in conn.execute(
                    "SELECT execution_id, event_json FROM events"
                    " WHERE execution_id IN (SELECT value FROM json_each(?)) ORDER BY seq",
                    (ids,),
                ):
                    events.setdefault(ev["execution_id"], []).append(ev)
            return [self._decode_record(r, self._decode_events(events.get(r["id"], []))) for r in rows]

        return await self._read(q)


# ---------------------------------------------------------------------------
# Helpers that run on the store's thread
# ---------------------------------------------------------------------------


def _current_state(conn: sqlite3.Connection, execution_id: str) -> ExecutionState:
    row = conn.execute("SELECT state FROM executions WHERE id = ?", (execution_id,)).fetchone()
    if row is None:
        raise ExecutionNotFound(execution_id)
    return ExecutionState(row["state"])


def _transition(
    conn: sqlite3.Connection, execution_id: str, current: ExecutionState, state: ExecutionState, when: str
) -> None:
    conn.execute(
        "INSERT INTO transitions (execution_id, from_state, to_state, at) VALUES (?, ?, ?, ?)",
        (execution_id, current.value, state.value, when),
    )
    conn.execute(
        "UPDATE executions SET state = ?,"
        " started_at = CASE WHEN ? AND started_at IS NULL THEN ? ELSE started_at END,"
        " finished_at = CASE WHEN ? AND finished_at IS NULL THEN ? ELSE finished_at END"
        " WHERE id = ?",
        (
            state.value,
            state in (ExecutionState.RUNNING, ExecutionState.STARTING),
            when,
            state.terminal,
            when,
            execution_id,
        ),
    )
