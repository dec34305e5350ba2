"""The node's capture process: it owns the attach streams, outlives the daemon, and exits when idle."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import docker
import pytest

from haddock.executor.docker import DockerConfig, DockerExecutor
from haddock.executor.docker.capture_proc import LOCK_NAME
from haddock.executor.logstore import RemoteLog
from haddock.executor.records import ResultStatus
from haddock.executor.streams import LogQuery, StreamType
from haddock.node.client import NodeClient
from tests.conftest import ExecutorFactory, RequestFactory
from tests.support.daemon import Daemon
from tests.test_recovery import first_output, job, labelled


def capture_pid(log_dir: Path) -> int:
    return int((log_dir / LOCK_NAME).read_text().strip())


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


async def wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"the capture process {pid} is still running"
        await asyncio.sleep(0.1)


async def test_containers_run_with_log_driver_none(
    executor: DockerExecutor, make_request: RequestFactory, docker_client: docker.DockerClient
) -> None:
    req = make_request("echo up; sleep 2")
    await executor.start(req)
    async for _ in executor.get_log_stream(req.execution_id, LogQuery(follow=True)):
        break
    container = docker_client.containers.get(executor.driver.container_name(req.execution_id))
    assert container.attrs["HostConfig"]["LogConfig"]["Type"] == "none"
    result = await executor.wait(req.execution_id)
    assert result.status is ResultStatus.SUCCESS and result.stdout == "up\n"


async def test_follower_is_woken_by_the_capture_process(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request("for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done")
    await executor.start(req)
    lags = []
    seen = []
    async for entry in executor.get_log_stream(req.execution_id, LogQuery(follow=True)):
        # The log is written by the capture process; this process only tracks it.
        assert isinstance(executor.logs._live[req.execution_id], RemoteLog)
        lags.append(time.time_ns() - entry.timestamp_ns)
        seen.append(entry.data)
    assert b"".join(seen) == b"".join(b"line-%d\n" % i for i in range(1, 6))
    # Woken by the capture process's events (a few ms apart), not by a poll of seconds.
    assert max(lags) < 0.25e9, lags
    result = await executor.wait(req.execution_id)
    assert result.stdout == "".join(f"line-{i}\n" for i in range(1, 6))
    assert (req.results_dir / "stdout").read_text() == result.stdout
    assert not [p.name for p in req.results_dir.iterdir() if p.name.startswith(".")], "temp files left"


async def test_results_files_filled_during_capture_keep_limits_and_flags(
    executor: DockerExecutor, make_request: RequestFactory
) -> None:
    limits = {
        "max_stdout_file_length": 1000,
        "max_stdout_return_length": 10,
        "max_stderr_file_length": 5,
        "max_stderr_return_length": 100,
    }
    req = make_request("head -c 3000 /dev/zero | tr '\\0' a; printf 'é%.0s' 1 2 3 4 5 6 7 8 >&2", output_limits=limits)
    result = await executor.run(req)
    assert result.status is ResultStatus.SUCCESS, result.error_message
    assert (req.results_dir / "stdout").read_bytes() == b"a" * 1000
    assert result.stdout == "a" * 10 and result.stdout_truncated and result.stdout_file_truncated
    # The inline head goes beyond the file: read from the log; the file stops at 5 bytes (cut mid-character).
    assert (req.results_dir / "stderr").read_bytes() == "é".encode() * 2 + b"\xc3"
    assert result.stderr == "é" * 8 and not result.stderr_truncated and result.stderr_file_truncated


async def test_capture_process_exits_when_idle(
    executor_config: DockerConfig, new_executor: ExecutorFactory, make_request: RequestFactory, tmp_path: Path
) -> None:
    config = executor_config.model_copy(update={"capture_idle": 1.0})
    log_dir = tmp_path / "logs"
    ex: DockerExecutor = new_executor(config)
    try:
        assert (await ex.run(make_request("echo one"))).stdout == "one\n"
        pid = capture_pid(log_dir)
        assert alive(pid)
    finally:
        await ex.shutdown()
    await wait_gone(pid, 5)  # told the daemon left, holding nothing: at once

    # A daemon that vanishes without a word: the capture process exits after its idle time.
    ex = new_executor(config)
    await ex.driver.captures.connect()
    pid = capture_pid(log_dir)
    conn = ex.driver.captures._conn
    assert conn is not None
    conn.writer.transport.abort()
    await asyncio.sleep(0.5)
    assert alive(pid)
    await wait_gone(pid, 5)
    await ex.shutdown()


async def test_capture_process_outlives_a_killed_daemon(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    node = f"cap-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(node, tmp_path / "data", tmp_path / "daemon.log", env={"HADDOCK_ON_SHUTDOWN": "stop"})
    await daemon.start()
    r = job("echo before; sleep 2; echo while-down; echo err-while-down >&2; sleep 2; echo after")
    try:
        async with NodeClient(daemon.address) as client:
            await client.start(r)
            await first_output(client, r.execution_id)
        pid = capture_pid(tmp_path / "data" / "logs")
        await daemon.kill()
        await asyncio.sleep(2.5)
        assert alive(pid), "the capture process died with the daemon"
        await daemon.start()
        assert capture_pid(tmp_path / "data" / "logs") == pid
        async with NodeClient(daemon.address) as client:
            done = await asyncio.wait_for(client.wait(r.execution_id), 60)
            assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
            assert done.result.stdout == "before\nwhile-down\nafter\n"
            assert done.result.stderr == "err-while-down\n"
            assert Path(done.results_dir, "stdout").read_bytes() == b"before\nwhile-down\nafter\n"
            out = b"".join(
                [c.data async for c in client.logs(r.execution_id, LogQuery(streams=frozenset({StreamType.STDOUT})))]
            )
            assert out == b"before\nwhile-down\nafter\n"
        assert await daemon.terminate() == 0
        await wait_gone(pid, 15)
    finally:
        await daemon.kill()
        for name in labelled(docker_client, node):
            docker_client.containers.get(name).remove(force=True)


async def test_daemon_and_capture_process_both_killed(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    node = f"cap-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(node, tmp_path / "data", tmp_path / "daemon.log", env={"HADDOCK_ON_SHUTDOWN": "stop"})
    await daemon.start()
    r = job("echo before; sleep 3; echo lost; sleep 12; echo after")
    try:
        async with NodeClient(daemon.address) as client:
            await client.start(r)
            await first_output(client, r.execution_id)
        pid = capture_pid(tmp_path / "data" / "logs")
        await daemon.kill()
        os.kill(pid, signal.SIGKILL)  # started by this test's daemon
        await wait_gone(pid, 5)
        await asyncio.sleep(3.5)  # "lost" is printed while neither process runs
        await daemon.start()
        async with NodeClient(daemon.address) as client:
            done = await asyncio.wait_for(client.wait(r.execution_id), 60)
        assert done.result.exit_code == 0
        assert done.result.status is ResultStatus.ERROR
        assert "output written while neither was running is missing" in done.result.error_message
        assert done.result.stdout_file_truncated and done.result.stdout_truncated
        assert done.result.stdout == "before\nafter\n"
        assert await daemon.terminate() == 0
    finally:
        await daemon.kill()
        for name in labelled(docker_client, node):
            docker_client.containers.get(name).remove(force=True)


@pytest.mark.parametrize("complete", [True])
async def test_log_is_complete_after_the_execution(
    executor: DockerExecutor, make_request: RequestFactory, complete: bool
) -> None:
    req = make_request("echo x")
    await executor.run(req)
    assert executor.logs.is_complete(req.execution_id) is complete
    assert executor.logs.writer(req.execution_id) is None


def test_capture_process_does_not_load_docker_py() -> None:
    import subprocess
    import sys

    code = (
        "import sys, haddock.executor.docker.capture_proc; "
        "sys.exit(1 if {'docker', 'requests', 'grpc'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_capture_process_does_not_load_pydantic_or_the_models() -> None:
    """The capture process (one per node) needs the stream type, the log store and the results filler,
    not the request models: without pydantic it stays small."""
    import subprocess
    import sys

    code = (
        "import sys, haddock.executor.docker.capture_proc; "
        "print(sorted({'pydantic', 'pydantic_core', 'haddock.executor.request', 'haddock.executor.records'}"
        " & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


async def test_capture_process_captures_without_loading_pydantic(
    executor_config: DockerConfig, new_executor: ExecutorFactory, make_request: RequestFactory, tmp_path: Path
) -> None:
    ex: DockerExecutor = new_executor(executor_config)
    try:
        assert (await ex.run(make_request("echo out; echo err >&2"))).stdout == "out\n"
        maps = Path(f"/proc/{capture_pid(tmp_path / 'logs')}/maps").read_text()
    finally:
        await ex.shutdown()
    assert "pydantic_core" not in maps


async def test_capture_process_killed_while_the_daemon_runs(
    executor: DockerExecutor, make_request: RequestFactory, tmp_path: Path
) -> None:
    req = make_request("echo before; sleep 2; echo after")
    await executor.start(req)
    async for _ in executor.get_log_stream(req.execution_id, LogQuery(follow=True)):
        break
    pid = capture_pid(tmp_path / "logs")
    os.kill(pid, signal.SIGKILL)  # started by this test's executor
    result = await asyncio.wait_for(executor.wait(req.execution_id), 60)
    assert result.exit_code == 0
    assert result.status is ResultStatus.ERROR
    assert "capture process ended unexpectedly" in result.error_message
    assert result.stdout == "before\n" and result.stdout_truncated and result.stdout_file_truncated
    assert executor.logs.is_complete(req.execution_id)
    # The next execution starts a new capture process.
    again = await asyncio.wait_for(executor.run(make_request("echo again")), 60)
    assert again.status is ResultStatus.SUCCESS and again.stdout == "again\n"
    assert capture_pid(tmp_path / "logs") != pid
