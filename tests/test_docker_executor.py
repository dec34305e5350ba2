"""The Executor contract over a real Docker engine (no mocks)."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import docker
import pytest

from haddock.executor.docker import DockerConfig, DockerExecutor
from haddock.executor.errors import (
    ExecutionAlreadyComplete,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ExecutionRefused,
)
from haddock.executor.protocol import Executor
from haddock.executor.records import EventKind, ExecutionState, ResultStatus
from haddock.executor.request import NetworkMode, OutputLimits
from haddock.executor.streams import LogQuery, StreamType
from tests.conftest import ExecutorFactory, RequestFactory, node_containers

MiB = 1024 * 1024


def read(path: Path) -> bytes:
    return path.read_bytes()


async def test_satisfies_protocol(executor: DockerExecutor) -> None:
    assert isinstance(executor, Executor)
    assert await executor.is_installed()


async def test_exit_code_and_streams(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request("echo hello out; echo hello err >&2; exit 3")
    result = await executor.run(req)
    assert result.status is ResultStatus.ERROR
    assert result.exit_code == 3
    assert result.stdout == "hello out\n"
    assert result.stderr == "hello err\n"
    assert not result.stdout_truncated and not result.stdout_file_truncated
    assert "exited with code 3" in result.error_message
    assert read(req.results_dir / "stdout") == b"hello out\n"
    assert read(req.results_dir / "stderr") == b"hello err\n"
    assert read(req.results_dir / "exitCode") == b"3"
    assert executor.state(req.execution_id) is ExecutionState.FAILED
    kinds = [e.kind for e in executor.events(req.execution_id)]
    for kind in (EventKind.ACCEPTED, EventKind.STARTED, EventKind.EXITED, EventKind.RESULTS_WRITTEN):
        assert kind in kinds


async def test_success(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request("printf 'ok'")
    result = await executor.run(req)
    assert result.status is ResultStatus.SUCCESS
    assert result.exit_code == 0
    assert result.stdout == "ok" and not result.stdout_truncated
    assert result.error_message == ""
    assert read(req.results_dir / "exitCode") == b"0"
    assert executor.state(req.execution_id) is ExecutionState.COMPLETED


async def test_large_output_truncated_with_bounded_memory(
    executor: DockerExecutor, make_request: RequestFactory
) -> None:
    limits = OutputLimits(max_stdout_file_length=1 * MiB, max_stdout_return_length=100)
    req = make_request("yes abcdefghij | head -c 52428800", output_limits=limits)
    tracemalloc.start()
    try:
        result = await executor.run(req)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status is ResultStatus.SUCCESS, result.error_message
    data = read(req.results_dir / "stdout")
    assert len(data) == 1 * MiB
    assert data.startswith(b"abcdefghij\nabcdefghij\n")
    assert result.stdout_file_truncated and result.stdout_truncated
    assert len(result.stdout.encode()) == 100
    # 50 MiB went through the node; it held a few read buffers, not the output.
    assert peak < 16 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"


async def test_oom_killed(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request(
        "echo before the crash; echo warn >&2; a=xxxxxxxxxxxxxxxx; while true; do a=$a$a; done",
        resources={"memory": "32Mi"},
    )
    result = await executor.run(req)
    assert result.status is ResultStatus.KILLED
    assert "32Mi" in result.error_message
    assert "memory" in result.error_message
    assert result.exit_code == 137
    assert read(req.results_dir / "stdout") == b"before the crash\n"
    assert read(req.results_dir / "stderr") == b"warn\n"
    assert read(req.results_dir / "exitCode") == b"137"


async def test_timeout_graceful_stop(
    executor: DockerExecutor, make_request: RequestFactory, docker_client: docker.DockerClient, node_id: str
) -> None:
    req = make_request(
        "trap 'echo got TERM; exit 143' TERM; echo started; sleep 60 & wait $!",
        timeout="2s",
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await executor.run(req)
    elapsed = loop.time() - t0
    assert result.status is ResultStatus.TIMEOUT
    assert "timeout of 2s" in result.error_message
    assert read(req.results_dir / "stdout") == b"started\ngot TERM\n"
    assert result.exit_code == 143
    assert elapsed < 30
    assert not [c for c in node_containers(docker_client, node_id) if req.execution_id in c.name]


async def test_timeout_kills_after_grace(executor: DockerExecutor, make_request: RequestFactory) -> None:
    # Ignores SIGTERM: SIGKILL after the 2 s grace.
    req = make_request("trap '' TERM; echo stubborn; sleep 60 & wait $!; sleep 60", timeout=1)
    result = await executor.run(req)
    assert result.status is ResultStatus.TIMEOUT
    assert result.exit_code == 137
    assert read(req.results_dir / "stdout") == b"stubborn\n"


async def test_stop_uses_image_stopsignal(
    executor: DockerExecutor, make_request: RequestFactory, stopsignal_image: str
) -> None:
    req = make_request(
        "trap 'echo got USR1; exit 10' USR1; trap 'echo got TERM; exit 11' TERM; sleep 60 & wait $!",
        image=stopsignal_image,
        timeout=1,
    )
    result = await executor.run(req)
    assert result.status is ResultStatus.TIMEOUT
    assert result.stdout == "got USR1\n"
    assert result.exit_code == 10


async def test_cancel_and_error_semantics(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request("echo running; sleep 60 & wait $!")
    await executor.start(req)
    with pytest.raises(ExecutionAlreadyStarted):
        await executor.start(req)
    # wait until the job has printed, so the cancel hits a running container
    async for entry in executor.get_log_stream(req.execution_id, LogQuery(follow=True)):
        assert entry.data == b"running\n"
        break
    await executor.cancel(req.execution_id)
    result = await executor.wait(req.execution_id)
    assert result.status is ResultStatus.CANCELLED
    assert result.error_message == "the execution was cancelled"
    assert read(req.results_dir / "stdout") == b"running\n"
    assert (req.results_dir / "exitCode").exists()
    assert executor.state(req.execution_id) is ExecutionState.CANCELLED
    with pytest.raises(ExecutionAlreadyComplete):
        await executor.cancel(req.execution_id)
    assert await executor.wait(req.execution_id) == result
    with pytest.raises(ExecutionAlreadyComplete):
        await executor.start(req)
    with pytest.raises(ExecutionNotFound):
        await executor.wait("no-such-execution")
    with pytest.raises(ExecutionNotFound):
        await executor.cancel("no-such-execution")
    with pytest.raises(ExecutionNotFound):
        async for _ in executor.get_log_stream("no-such-execution"):
            pass


async def test_concurrent_start_same_id(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request("echo once")
    outcomes = await asyncio.gather(*(executor.start(req) for _ in range(5)), return_exceptions=True)
    assert sum(1 for o in outcomes if o is None) == 1
    assert all(isinstance(o, ExecutionAlreadyStarted) for o in outcomes if o is not None)
    assert (await executor.wait(req.execution_id)).stdout == "once\n"


async def test_missing_image_with_pull_never(
    executor: DockerExecutor, make_request: RequestFactory, docker_client: docker.DockerClient, node_id: str
) -> None:
    req = make_request("true", image="haddock-test/not-here:1", engine={"pull_policy": "never"})
    result = await executor.run(req)
    assert result.status is ResultStatus.ERROR
    assert result.exit_code is None
    assert "haddock-test/not-here:1" in result.error_message
    assert "not present" in result.error_message and "never" in result.error_message
    assert not [c for c in node_containers(docker_client, node_id) if req.execution_id in c.name]
    assert read(req.results_dir / "stdout") == b""
    assert not (req.results_dir / "exitCode").exists()


async def test_log_stream_from_start_to_end(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request("for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done")
    await executor.start(req)
    # reachable as soon as start returns, and a follower ends when the execution ends
    out: list[bytes] = []
    err: list[bytes] = []
    async for entry in executor.get_log_stream(req.execution_id, LogQuery(follow=True)):
        (out if entry.stream is StreamType.STDOUT else err).append(entry.data)
    assert b"".join(out) == b"out1\nout2\nout3\n"
    assert b"".join(err) == b"err1\nerr2\nerr3\n"
    await executor.wait(req.execution_id)
    # history after the end, stdout only
    only_out = [
        e.data
        async for e in executor.get_log_stream(req.execution_id, LogQuery(streams=frozenset({StreamType.STDOUT})))
    ]
    assert b"".join(only_out) == b"out1\nout2\nout3\n"


async def test_environment_and_hardening(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request(
        'echo "$HADDOCK_JOB_ID $HADDOCK_EXECUTION_ID $GREETING"; '
        "grep NoNewPrivs /proc/self/status; grep CapBnd /proc/self/status; "
        "ls /sys/class/net; cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
        "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes "
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us "
        "/sys/fs/cgroup/pids/pids.max 2>/dev/null; pwd",
        job_id="job-env",
        resources={"cpu": "500m", "memory": "64Mi"},
        engine={"env": {"GREETING": "hi there"}, "working_dir": "/tmp"},
    )
    result = await executor.run(req)
    assert result.status is ResultStatus.SUCCESS, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"job-env {req.execution_id} hi there"
    assert lines[1].split() == ["NoNewPrivs:", "1"]
    capbnd = int(lines[2].split()[1], 16)
    assert not capbnd & (1 << 13), "NET_RAW must be dropped"
    assert lines[3] == "lo", "network none: loopback only"
    mem, memsw, quota, period, pids = lines[4:9]
    assert int(mem) == 64 * MiB and int(memsw) == 64 * MiB
    assert int(quota) / int(period) == 0.5
    assert pids == "4096"
    assert lines[9] == "/tmp"


async def test_bridge_network_allowed_host_refused(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request("ls /sys/class/net | sort | tr '\\n' ' '", network={"mode": "bridge"})
    result = await executor.run(req)
    assert result.stdout.split() == ["eth0", "lo"]
    host = make_request("true", network={"mode": "host"})
    bid = await executor.should_bid(host)
    assert not bid.should_bid and "network mode 'host'" in bid.reason
    with pytest.raises(ExecutionRefused, match="host"):
        await executor.start(host)


async def test_host_network_when_allowed(
    executor_config: DockerConfig, new_executor: ExecutorFactory, make_request: RequestFactory
) -> None:
    cfg = executor_config.model_copy(update={"allowed_networks": frozenset(NetworkMode)})
    ex = new_executor(cfg)
    try:
        req = make_request("ls /sys/class/net", network={"mode": "host"})
        result = await ex.run(req)
        assert result.status is ResultStatus.SUCCESS
        assert "docker0" in result.stdout.split() or len(result.stdout.split()) > 1
    finally:
        await ex.shutdown()


async def test_inputs_read_only_and_outputs(
    executor: DockerExecutor, make_request: RequestFactory, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "data.txt").write_text("input data\n")
    req = make_request(
        "cat /inputs/data.txt; echo written > /outputs/result.txt; "
        "if echo x > /inputs/data.txt 2>/dev/null; then echo WRITABLE; else echo readonly; fi",
        inputs=[{"source": src, "target": "/inputs"}],
        outputs=[{"name": "out", "path": "/outputs"}],
    )
    result = await executor.run(req)
    assert result.status is ResultStatus.SUCCESS, result.stderr
    assert result.stdout == "input data\nreadonly\n"
    assert (req.results_dir / "out" / "result.txt").read_text() == "written\n"
    assert (src / "data.txt").read_text() == "input data\n"


async def test_bidding(executor: DockerExecutor, make_request: RequestFactory) -> None:
    req = make_request("true")
    assert (await executor.should_bid(req)).should_bid
    from haddock.executor.request import Resources

    small = await executor.should_bid_based_on_usage(req, Resources(cpu=0.5, memory="64Mi"))
    assert small.should_bid
    big = await executor.should_bid_based_on_usage(req, Resources(cpu=512))
    assert not big.should_bid and big.reason.startswith("insufficient CPU: requested 512 cores")
    mem = await executor.should_bid_based_on_usage(req, Resources(memory="60Ti"))
    assert not mem.should_bid and "insufficient memory: requested 60Ti" in mem.reason
    gpu = await executor.should_bid_based_on_usage(req, Resources(gpu=1))
    assert not gpu.should_bid and "GPU" in gpu.reason
    gpu_req = make_request("true", resources={"gpu": 1})
    assert not (await executor.should_bid(gpu_req)).should_bid


async def test_shutdown_stops_running(
    executor_config: DockerConfig, new_executor: ExecutorFactory, make_request: RequestFactory
) -> None:
    ex = new_executor()
    req = make_request("echo up; sleep 60 & wait $!")
    await ex.start(req)
    async for _ in ex.get_log_stream(req.execution_id, LogQuery(follow=True)):
        break
    await ex.shutdown(stop_running=True)
    result = await ex.wait(req.execution_id)
    assert result.status is ResultStatus.CANCELLED
    assert (req.results_dir / "stdout").read_bytes() == b"up\n"


async def test_shutdown_leaving_containers_running(
    executor_config: DockerConfig,
    new_executor: ExecutorFactory,
    make_request: RequestFactory,
    docker_client: docker.DockerClient,
) -> None:
    ex = new_executor()
    req = make_request("echo up; sleep 60 & wait $!")
    await ex.start(req)
    async for _ in ex.get_log_stream(req.execution_id, LogQuery(follow=True)):
        break
    await ex.shutdown(stop_running=False)
    container = docker_client.containers.get(ex.driver.container_name(req.execution_id))
    try:
        assert container.status == "running"
        # the log stays open-ended so that a restarted node can append to it
        assert not ex.logs.is_complete(req.execution_id)
        ex.logs.open_append(req.execution_id).close()
    finally:
        container.remove(force=True)
