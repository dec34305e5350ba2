"""Faults and races: the executor always ends an execution, says what happened, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import docker
import pytest

from haddock.executor.docker import DockerConfig, DockerExecutor
from haddock.executor.errors import ExecutionAlreadyComplete, ExecutionNotFound, ExecutorError
from haddock.executor.records import EventKind, ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.executor.streams import LogQuery
from tests.conftest import ExecutorFactory, RequestFactory, node_containers


async def test_unwritable_results_dir_ends_with_error_and_cleans_up(
    executor: DockerExecutor, make_request: RequestFactory, docker_client: docker.DockerClient, node_id: str
) -> None:
    req = make_request("echo hi").model_copy(update={"results_dir": Path("/proc/haddock-cannot-write-here")})
    result = await asyncio.wait_for(executor.run(req), 60)
    assert result.status is ResultStatus.ERROR
    assert "writing results to /proc/haddock-cannot-write-here failed" in result.error_message
    assert result.exit_code == 0
    assert not [c for c in node_containers(docker_client, node_id) if req.execution_id in c.name]
    with pytest.raises(ExecutionAlreadyComplete):
        await executor.cancel(req.execution_id)


async def test_log_creation_failure_leaves_no_record(
    executor_config: DockerConfig, new_executor: ExecutorFactory, make_request: RequestFactory, tmp_path: Path
) -> None:
    ex = new_executor()
    try:
        # the log dir becomes a file: creating the execution's log fails
        ex.logs.root.rmdir()
        ex.logs.root.write_text("not a directory")
        req = make_request("true")
        with pytest.raises(ExecutorError, match="cannot create the log"):
            await ex.start(req)
        with pytest.raises(ExecutionNotFound):
            await ex.wait(req.execution_id)
    finally:
        await ex.shutdown()


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """A 'registry' that accepts connections and never answers: pulls hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(server.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    server.close()


async def test_cancel_during_pull(executor: DockerExecutor, make_request: RequestFactory, silent_registry: str) -> None:
    req = make_request("true", image=f"{silent_registry}/haddock-test/hangs:v1")
    await executor.start(req)
    await asyncio.sleep(0.5)
    await asyncio.wait_for(executor.cancel(req.execution_id), 10)
    result = await executor.wait(req.execution_id)
    assert result.status is ResultStatus.CANCELLED
    assert result.exit_code is None
    assert (req.results_dir / "stdout").read_bytes() == b""


async def test_timeout_racing_a_natural_exit(executor: DockerExecutor, make_request: RequestFactory) -> None:
    # Whatever wins, the status must agree with when the container ended on the engine's clock.
    for _ in range(3):
        req = make_request("sleep 0.95; echo done", timeout=1)
        result = await executor.run(req)
        events = executor.events(req.execution_id)
        exited = next(e for e in events if e.kind is EventKind.EXITED)
        ran = datetime.fromisoformat(exited.details["finished_at"]) - datetime.fromisoformat(
            exited.details["started_at"]
        )
        if result.status is ResultStatus.SUCCESS:
            assert result.exit_code == 0 and result.stdout == "done\n"
            assert ran < timedelta(seconds=1) or EventKind.TIMED_OUT not in [e.kind for e in events]
        else:
            assert result.status is ResultStatus.TIMEOUT, result
            assert EventKind.TIMED_OUT in [e.kind for e in events]
            assert ran >= timedelta(seconds=1)  # the container finished at/after its deadline


async def test_cancel_after_natural_exit_is_already_complete(
    executor: DockerExecutor, make_request: RequestFactory
) -> None:
    req = make_request("echo quick")
    await executor.start(req)
    async for _ in executor.get_log_stream(req.execution_id, LogQuery(follow=True)):
        pass  # the stream ends with the execution
    with pytest.raises(ExecutionAlreadyComplete):
        await executor.cancel(req.execution_id)
    assert (await executor.wait(req.execution_id)).status is ResultStatus.SUCCESS


async def _cut_stream_after_first_line(ex: DockerExecutor, req: RunCommandRequest) -> None:
    await ex.start(req)
    async for entry in ex.get_log_stream(req.execution_id, LogQuery(follow=True)):
        assert entry.data == b"before\n"
        break
    # The capture process drops its attach connection, as if the engine had dropped the stream.
    await ex.driver.captures.drop(req.execution_id)


async def test_cut_output_stream_is_recovered_from_engine_log(
    executor_config: DockerConfig, new_executor: ExecutorFactory, make_request: RequestFactory
) -> None:
    # With an engine log driver configured, a cut stream is completed from the engine's log.
    executor = new_executor(executor_config.model_copy(update={"log_driver": "local"}))
    try:
        req = make_request("echo before; sleep 2; echo after; echo err >&2")
        await _cut_stream_after_first_line(executor, req)
        result = await executor.wait(req.execution_id)
    except BaseException:
        await executor.shutdown()
        raise
    assert result.status is ResultStatus.SUCCESS, result.error_message
    assert (req.results_dir / "stdout").read_bytes() == b"before\nafter\n"
    assert (req.results_dir / "stderr").read_bytes() == b"err\n"
    assert EventKind.OUTPUT_RECOVERED in [e.kind for e in executor.events(req.execution_id)]
    logged = b"".join([e.data async for e in executor.get_log_stream(req.execution_id)])
    await executor.shutdown()
    assert sorted(logged.splitlines()) == [b"after", b"before", b"err"]


async def test_cut_output_stream_without_engine_log_is_reported(
    executor_config: DockerConfig, new_executor: ExecutorFactory, make_request: RequestFactory
) -> None:
    ex = new_executor(executor_config.model_copy(update={"log_driver": "none", "log_driver_options": {}}))
    try:
        req = make_request("echo before; sleep 2; echo after")
        await _cut_stream_after_first_line(ex, req)
        result = await ex.wait(req.execution_id)
    finally:
        await ex.shutdown()
    assert result.exit_code == 0
    assert result.status is ResultStatus.ERROR
    assert "output may be missing" in result.error_message
    assert result.stdout_file_truncated and result.stderr_file_truncated
    assert (req.results_dir / "stdout").read_bytes() == b"before\n"


@pytest.fixture
def tiny_log_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for the log store (tests run as root, as CI does)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_log_disk_is_reported_not_silent(
    executor_config: DockerConfig,
    new_executor: ExecutorFactory,
    make_request: RequestFactory,
    tiny_log_disk: Path,
    tmp_path: Path,
) -> None:
    ex = new_executor(log_dir=tiny_log_disk / "logs")
    try:
        req = make_request("head -c 3000000 /dev/zero; echo finished >&2")
        result = await asyncio.wait_for(ex.run(req), 60)
    finally:
        await ex.shutdown()
    assert result.exit_code == 0, "the job was not blocked by the full disk"
    assert result.status is ResultStatus.ERROR
    assert "could not store the job's output" in result.error_message
    assert "No space left on device" in result.error_message
    assert result.stdout_file_truncated
