"""A queued execution behaves like a running one to its clients (issue 10 §2): logs, cancel, restarts,
watchers, and Start racing with Wait/Cancel."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from haddock.executor.docker import DockerExecutor
from haddock.executor.errors import ExecutionNotFound
from haddock.executor.records import EventKind, ExecutionEvent, ExecutionRecord, ExecutionState, ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.executor.streams import LogQuery
from haddock.node.client import NodeClient
from haddock.node.config import CapacitySettings
from haddock.node.events import EventHub, Watcher
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, RequestFactory, node_settings
from tests.support.daemon import Daemon
from tests.test_cli import haddock


def job(script: str, **kw: Any) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "queued",
            "execution_id": kw.pop("execution_id", None) or f"q-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            **kw,
        }
    )


ServeNode = Callable[..., Awaitable[RunningServer]]
StartDaemon = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def serve(tmp_path: Path, node_id: str, busybox_image: str) -> AsyncIterator[ServeNode]:
    """Starts the node in this process, running at most ``max_running`` executions (the others queue);
    stopped after the test."""
    started: list[RunningServer] = []

    async def start(max_running: int = 1) -> RunningServer:
        settings = node_settings(tmp_path, node_id)
        running = await start_server(
            settings.model_copy(update={"capacity": CapacitySettings(max_running=max_running)})
        )
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(1)


@pytest.fixture
async def daemon(tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str) -> AsyncIterator[StartDaemon]:
    """Starts ``haddock serve`` (a process of its own, with these HADDOCK_* variables); after the test it is
    stopped (killed when it does not stop) and its containers removed."""
    started: list[Daemon] = []

    async def start(prefix: str, env: dict[str, str]) -> Daemon:
        node = Daemon(f"{prefix}-{uuid.uuid4().hex[:8]}", tmp_path / "data", tmp_path / "daemon.log", env=env)
        started.append(node)
        await node.start()
        return node

    yield start
    for node in started:
        try:
            await node.terminate()
        except Exception:
            await node.kill()
        for c in docker_client.containers.list(all=True, filters={"label": f"haddock.node-id={node.node_id}"}):
            c.remove(force=True)


async def gather_logs(client: NodeClient, exec_id: str, query: LogQuery) -> bytes:
    return b"".join([c.data async for c in client.logs(exec_id, query)])


async def test_logs_of_a_queued_execution_wait_for_its_first_byte(serve: ServeNode) -> None:
    running = await serve()
    async with NodeClient(running.address) as client:
        hog = job("sleep 30")
        await client.start(hog)
        waiting = job("echo from-the-queue; echo err >&2")
        await client.start(waiting, queue=True)
        assert (await client.describe(waiting.execution_id))["state"] == "EXECUTION_STATE_QUEUED"
        # history of a queued execution: empty, not NOT_FOUND
        assert await gather_logs(client, waiting.execution_id, LogQuery()) == b""
        assert await gather_logs(client, waiting.execution_id, LogQuery(tail_lines=5)) == b""
        # follow: waits for its first byte, then to its end
        follow = asyncio.create_task(gather_logs(client, waiting.execution_id, LogQuery(follow=True)))
        await asyncio.sleep(0.5)
        assert not follow.done()
        await client.cancel(hog.execution_id)
        data = await asyncio.wait_for(follow, 30)
        assert sorted(data.splitlines()) == [b"err", b"from-the-queue"]

        # a follower of an execution that ends in the queue ends too, with nothing
        hog = job("sleep 30")
        await client.start(hog, queue=True)  # the first may still be releasing its slot
        doomed = job("echo never")
        await client.start(doomed, queue=True)
        follow = asyncio.create_task(gather_logs(client, doomed.execution_id, LogQuery(follow=True)))
        await asyncio.sleep(0.2)
        await client.cancel(doomed.execution_id)
        assert await asyncio.wait_for(follow, 10) == b""
        await client.cancel(hog.execution_id)


async def test_cancel_of_a_queued_execution_writes_its_results_dir(serve: ServeNode) -> None:
    running = await serve()
    async with NodeClient(running.address) as client:
        hog = job("sleep 30")
        await client.start(hog)
        waiting = job("echo never")
        started = await client.start(waiting, queue=True)
        done = await client.cancel(waiting.execution_id)
        assert done.result.status is ResultStatus.CANCELLED
        results = Path(started.results_dir)
        assert (results / "stdout").read_bytes() == b""
        assert (results / "stderr").read_bytes() == b""
        assert not (results / "exitCode").exists()
        await client.cancel(hog.execution_id)


async def test_a_cancel_before_the_first_admission_step(serve: ServeNode) -> None:
    """What a restart does with a queued execution (enqueue), then a cancel before the loop runs anything."""
    running = await serve()
    node = running.node
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        hog = job("sleep 30")
        await node.start(hog)
        for queue_first in (False, True):
            request = node.prepare(job("echo never"))
            record = ExecutionRecord(request=request, state=ExecutionState.QUEUED)
            await node.store.create(record)
            if queue_first:
                node.admission.enqueue(request, record, 0)
                await asyncio.sleep(0)
            else:
                node.admission.enqueue(request, record, 0)
            result = await node.cancel(request.execution_id)
            assert result.status is ResultStatus.CANCELLED
            assert (await node.wait(request.execution_id)).status is ResultStatus.CANCELLED
        await asyncio.sleep(0.1)
        assert errors == []
        await node.cancel(hog.execution_id)
    finally:
        loop.set_exception_handler(previous)


async def test_wait_and_cancel_racing_with_start(serve: ServeNode) -> None:
    """A Wait or Cancel that arrives while Start is under way (creating the log) sees the execution."""
    running = await serve(max_running=4)
    node = running.node
    for steps in range(0, 6):
        req = job("echo raced")
        start = asyncio.create_task(node.start(req))
        for _ in range(steps):
            await asyncio.sleep(0)
        result = await asyncio.wait_for(node.wait(req.execution_id), 30)
        await start
        assert result.status is ResultStatus.SUCCESS, (steps, result)
        assert result.stdout == "raced\n"

        req = job("sleep 30")
        start = asyncio.create_task(node.start(req))
        for _ in range(steps):
            await asyncio.sleep(0)
        cancelled = await asyncio.wait_for(node.cancel(req.execution_id), 30)
        await start
        assert cancelled.status is ResultStatus.CANCELLED, (steps, cancelled)


async def test_executor_wait_and_cancel_racing_with_start(
    executor: DockerExecutor, make_request: RequestFactory
) -> None:
    """The runner alone: a Wait or Cancel while ``start`` creates the log is neither NOT_FOUND nor "complete"."""
    req = make_request("echo raced")
    start = asyncio.create_task(executor.start(req))
    await asyncio.sleep(0)  # start is creating the log (in a thread)
    result = await asyncio.wait_for(executor.wait(req.execution_id), 30)
    await start
    assert result.status is ResultStatus.SUCCESS and result.stdout == "raced\n"

    req = make_request("sleep 30")
    start = asyncio.create_task(executor.start(req))
    await asyncio.sleep(0)
    await asyncio.wait_for(executor.cancel(req.execution_id), 30)
    await start
    assert (await executor.wait(req.execution_id)).status is ResultStatus.CANCELLED

    # a start that fails leaves nothing that could be waited for
    req = make_request("true")
    (executor.logs.path(req.execution_id)).write_bytes(b"")
    start = asyncio.create_task(executor.start(req))
    await asyncio.sleep(0)
    with pytest.raises(ExecutionNotFound):
        await executor.wait(req.execution_id)
    with pytest.raises(Exception, match="already ran"):
        await start


# ------------------------------------------------------------------ a slow watcher gets the end


def _event(kind: EventKind, exec_id: str = "w", **details: Any) -> ExecutionEvent:
    return ExecutionEvent(execution_id=exec_id, kind=kind, message=kind.value, details=details)


async def test_a_slow_watcher_loses_pull_progress_never_the_end() -> None:
    watcher = Watcher(backlog=16)
    watcher.put(_event(EventKind.PULLING))
    for i in range(5000):
        watcher.put(_event(EventKind.PULL_PROGRESS, current=i))
    watcher.put(_event(EventKind.STATE, state="running"))
    for i in range(5000):
        watcher.put(_event(EventKind.PULL_PROGRESS, current=i))
    watcher.put(_event(EventKind.STATE, state="completed"))
    watcher.put(None)
    got: list[ExecutionEvent | None] = []
    while True:
        item = await asyncio.wait_for(watcher.get(), 1)
        got.append(item)
        if item is None:
            break
    kinds = [e.kind for e in got if e is not None]
    assert kinds[0] is EventKind.PULLING
    assert len(got) <= 16 + 3
    states = [e.details["state"] for e in got if e is not None and e.kind is EventKind.STATE]
    assert states == ["running", "completed"]
    assert got[-2] is not None and got[-2].details["state"] == "completed"


async def test_a_slow_watcher_of_the_hub_gets_the_terminal_state_and_end_of_stream(tmp_path: Path) -> None:
    """Through the event hub as the node uses it: a watcher that reads nothing while 10 000 progress
    events pass still gets the terminal state and its end of stream."""
    from haddock.node.store import ExecutionStore

    store = await ExecutionStore.open(tmp_path / "store.db")
    hub = EventHub(store)
    try:
        watcher = hub.subscribe("w")
        for i in range(10_000):
            hub(_event(EventKind.PULL_PROGRESS, current=i))
        hub(_event(EventKind.STATE, state="failed"))
        got: list[ExecutionEvent | None] = []
        while (item := await asyncio.wait_for(watcher.get(), 1)) is not None:
            got.append(item)
        assert got[-1] is not None and got[-1].details["state"] == "failed"
        assert len(got) <= 1024 + 1
    finally:
        await store.close()


# ------------------------------------------------------------------ a restart while an admitted execution prepares


class _HeldHandler(BaseHTTPRequestHandler):
    release: threading.Event
    body = b"the input\n"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def do_GET(self) -> None:
        if not self.release.wait(60):
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture
def held_server() -> Iterator[tuple[str, threading.Event]]:
    release = threading.Event()
    handler = type("Held", (_HeldHandler,), {"release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/input.txt", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()


async def test_restart_while_an_admitted_execution_fetches_its_inputs(
    daemon: StartDaemon, held_server: tuple[str, threading.Event]
) -> None:
    url, release = held_server
    node = await daemon(
        "prep", {"HADDOCK_CAPACITY__MAX_RUNNING": "1", "HADDOCK_STORAGE__ALLOW_PRIVATE_NETWORKS": "true"}
    )
    fetching = job("cat /in/input.txt", input_sources=[{"type": "url", "url": url, "target": "/in/input.txt"}])
    async with NodeClient(node.address) as client:
        hog = job("sleep 1")
        await client.start(hog)
        await client.start(fetching, queue=True)
        assert (await client.describe(fetching.execution_id))["state"] == "EXECUTION_STATE_QUEUED"
        await client.wait(hog.execution_id)
        for _ in range(100):  # admitted: it is fetching its input (held by the server)
            described = await client.describe(fetching.execution_id)
            if described["state"] != "EXECUTION_STATE_QUEUED":
                break
            await asyncio.sleep(0.1)
        assert described["state"] == "EXECUTION_STATE_PREPARING"
        await asyncio.sleep(0.3)  # the state is durable
    await node.kill()
    release.set()
    await node.start()
    async with NodeClient(node.address) as client:
        done = await asyncio.wait_for(client.wait(fetching.execution_id), 60)
        assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
        assert done.result.stdout == "the input\n"
        events = [e["kind"] for e in (await client.describe(fetching.execution_id))["events"]]
        assert "recovered" in events
    assert await node.terminate() == 0


# ------------------------------------------------------------------ many `haddock run` on a busy node


async def test_50_parallel_runs_on_a_node_running_2(daemon: StartDaemon) -> None:
    node = await daemon("busy", {"HADDOCK_CAPACITY__MAX_RUNNING": "2", "HADDOCK_CAPACITY__MAX_QUEUED": "100"})
    runs = [
        haddock(
            "run",
            "--node",
            node.address,
            BUSYBOX,
            "--",
            "sh",
            "-c",
            f"echo out-{i}; echo err-{i} >&2; exit {i % 4}",
        )
        for i in range(50)
    ]
    done = await asyncio.gather(*runs)
    for i, d in enumerate(done):
        assert d.code == i % 4, (i, d.code, d.stderr)
        assert d.stdout == f"out-{i}\n", (i, d.stderr)
        assert d.stderr.endswith(f"err-{i}\n"), (i, d.stderr)
        assert "Traceback" not in d.stderr
    queued = [d for d in done if "queued" in d.stderr]
    assert queued, "no run said it was queued"
    assert all("position" in d.stderr and "running (max 2)" in d.stderr for d in queued), queued[0].stderr
