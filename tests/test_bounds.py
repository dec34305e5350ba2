"""What a requester asks for is bounded by the operator: output limits, the log store, inputs on disk, messages."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from haddock.executor.logcap import FRAME_OVERHEAD, LogCap, data_that_fits, frame_bytes
from haddock.executor.logstore import LogStore
from haddock.executor.records import ResultStatus
from haddock.executor.request import OutputLimits, RunCommandRequest
from haddock.executor.streams import StreamType
from haddock.node.client import NodeClient, NodeError, wire
from haddock.node.config import CapacitySettings, LimitsSettings
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, node_settings

KiB, MiB = 1024, 1024 * 1024


def job(script: str, **kw: Any) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "bounds",
            "execution_id": f"b-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            **kw,
        }
    )


async def serve(tmp_path: Path, node: str, **kw: Any) -> RunningServer:
    return await start_server(node_settings(tmp_path, node).model_copy(update=kw))


# ----------------------------------------------------------------------------- the log store's caps


def test_framing_arithmetic() -> None:
    assert frame_bytes(0) == 0 and frame_bytes(1) == 1 + FRAME_OVERHEAD
    assert frame_bytes(64 * KiB + 1) == 64 * KiB + 1 + 2 * FRAME_OVERHEAD
    for room in (0, 20, 21, 64 * KiB + 20, 64 * KiB + 21, 64 * KiB + 41, 10 * MiB + 7):
        n = data_that_fits(room)
        assert frame_bytes(n) <= room and frame_bytes(n + 1) > room


def test_log_writer_keeps_each_stream_up_to_its_cap(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    cap = LogCap.for_limits(
        OutputLimits(
            max_stdout_file_length=1000,
            max_stdout_return_length=10,
            max_stderr_file_length=5,
            max_stderr_return_length=20,
        )
    )
    assert (cap.stdout, cap.stderr) == (1001, 21)
    writer = store.create("capped", cap)
    for _ in range(100):
        writer.write(StreamType.STDOUT, b"x" * 100)
        writer.write(StreamType.STDERR, b"e" * 7)
    assert writer.bytes_written == {StreamType.STDOUT: 1001, StreamType.STDERR: 21}
    assert writer.dropped == {StreamType.STDOUT: 10_000 - 1001, StreamType.STDERR: 700 - 21}
    assert writer.lost_bytes == 0
    writer.close()
    assert store.path("capped").stat().st_size <= cap.total
    # the file as a whole, framing included; a log reopened after a restart keeps to it too
    small = LogCap(stdout=10**9, stderr=10**9, total=1000)
    w2 = store.create("total", small)
    w2.write(StreamType.STDOUT, b"y" * 300)
    w2.close(complete=False)
    w2 = store.open_append("total", small)
    for _ in range(100):
        w2.write(StreamType.STDOUT, b"y" * 33)
    w2.close()
    assert store.path("total").stat().st_size <= 1000
    assert w2.bytes_written[StreamType.STDOUT] >= 700


def test_logs_being_written_share_the_budget(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_live_bytes=10 * KiB)
    assert store.budget is not None
    a, b = store.create("a"), store.create("b")
    a.write(StreamType.STDOUT, b"a" * 6 * KiB)
    b.write(StreamType.STDOUT, b"b" * 6 * KiB)
    assert a.lost_bytes == 0 and b.lost_bytes > 0
    assert store.budget.used <= 10 * KiB
    total = sum(store.path(x).stat().st_size for x in ("a", "b"))
    assert total <= 10 * KiB
    a.close()  # a finished log leaves the budget (housekeeping prunes finished logs to log_max_bytes)
    assert store.budget.used == frame_bytes(b.bytes_written[StreamType.STDOUT])
    b.write(StreamType.STDERR, b"more")
    assert b.bytes_written[StreamType.STDERR] == 4
    b.close()
    assert store.budget.used == 0


def test_a_reopened_log_counts_what_it_holds_and_the_limit_can_change(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_live_bytes=10 * KiB)
    assert store.budget is not None
    a = store.create("a")
    a.write(StreamType.STDOUT, b"a" * 4 * KiB)
    a.close(complete=False)
    assert store.budget.used == 0
    a = store.open_append("a")  # after a restart, or in the capture process after a hand-over
    assert store.budget.used == frame_bytes(4 * KiB)
    a.write(StreamType.STDOUT, b"a" * 8 * KiB)
    assert a.lost_bytes > 0 and store.path("a").stat().st_size <= 10 * KiB
    a.close()
    assert store.budget.used == 0
    store.set_live_limit(20 * KiB)  # the capture process learns the node's log_max_bytes from each daemon
    assert store.budget.max_bytes == 20 * KiB
    store.set_live_limit(None)
    assert store.budget is None


def test_operator_limits_are_checked_at_load() -> None:
    assert LimitsSettings().max_return_length == MiB and LimitsSettings().max_file_length == 1024 * MiB
    with pytest.raises(ValidationError, match="more than a result can carry"):
        LimitsSettings(max_return_length=wire.MAX_INLINE_RETURN + 1)


# ----------------------------------------------------------------------------- through the node


async def test_output_limits_over_the_operator_maxima_are_refused(tmp_path: Path, node_id: str) -> None:
    running = await serve(tmp_path, node_id)
    try:
        async with NodeClient(running.address) as client:
            huge = job("true", output_limits={"max_stdout_return_length": "1Ti"})
            for call in (client.start, client.run, client.should_bid, client.should_bid_based_on_usage):
                with pytest.raises(NodeError) as exc:
                    await call(huge)
                assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT
                assert exc.value.message == (
                    "invalid request: output_limits.max_stdout_return_length: 1Ti is more than this node allows "
                    "(at most 1Mi, its limits.max_return_length)"
                )
            with pytest.raises(NodeError) as exc:
                await client.start(job("true", output_limits={"max_stderr_file_length": "2Gi"}))
            assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT
            assert "output_limits.max_stderr_file_length: 2Gi" in exc.value.message
            assert "limits.max_file_length" in exc.value.message
    finally:
        await running.stop(1)


async def test_a_job_printing_past_its_limits_keeps_the_log_bounded(
    tmp_path: Path, node_id: str, busybox_image: str
) -> None:
    running = await serve(tmp_path, node_id)
    try:
        async with NodeClient(running.address) as client:
            limits = {"max_stdout_file_length": "256Ki", "max_stdout_return_length": "1Ki"}
            req = job("head -c 8388608 /dev/zero; echo done >&2", output_limits=limits)
            done = await client.run(req)
        assert done.result.status is ResultStatus.SUCCESS
        assert done.result.stdout_truncated and done.result.stdout_file_truncated
        assert done.result.stderr == "done\n" and not done.result.stderr_file_truncated
        assert (Path(done.results_dir) / "stdout").stat().st_size == 256 * KiB
        log = running.node.settings.log_dir / f"{req.execution_id}.log"
        cap = LogCap.for_limits(req.output_limits)
        assert log.stat().st_size <= cap.stdout + 5 * KiB + 64 * FRAME_OVERHEAD
    finally:
        await running.stop(1)


async def test_the_logs_being_written_share_log_max_bytes_through_the_node(
    tmp_path: Path, node_id: str, busybox_image: str
) -> None:
    # The capture process writes the logs (docker.log_driver "none", the default): it holds them to the budget.
    running = await serve(tmp_path, node_id, log_max_bytes=1 * MiB)
    try:
        async with NodeClient(running.address) as client:
            req = job("head -c 4194304 /dev/zero; echo done >&2")
            done = await client.run(req)
        assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
        log = running.node.settings.log_dir / f"{req.execution_id}.log"
        assert log.stat().st_size <= 1 * MiB + FRAME_OVERHEAD  # the END frame is written after the budget's bytes
        assert "the node's log space was full (log_max_bytes)" in done.result.error_message
        assert "of the job's output is missing from its log" in done.result.error_message
    finally:
        await running.stop(1)


async def test_a_result_at_the_largest_inline_limits_fits_one_message(
    tmp_path: Path, node_id: str, busybox_image: str
) -> None:
    most = wire.MAX_INLINE_RETURN
    running = await serve(tmp_path, node_id, limits=LimitsSettings(max_return_length=most))
    try:
        async with NodeClient(running.address) as client:
            limits = {"max_stdout_return_length": most, "max_stderr_return_length": most}
            # invalid UTF-8: each byte becomes U+FFFD, three bytes on the wire
            script = f"head -c {most} /dev/zero | tr '\\000' '\\377'; head -c {most} /dev/zero | tr '\\000' '\\377' >&2"
            req = job(script, output_limits=limits)
            done = await client.run(req)
            assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
            assert len(done.result.stdout) == most and len(done.result.stderr) == most
            assert (await client.wait(req.execution_id)).result.stdout == done.result.stdout
            described = await client.get_execution(req.execution_id)
            assert described.result.stderr == done.result.stderr
    finally:
        await running.stop(1)


async def test_inputs_count_against_disk_at_start(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    running = await serve(tmp_path, node_id, capacity=CapacitySettings(disk="4Ki", reserve_disk=0))
    try:
        async with NodeClient(running.address) as client:
            data = "data:," + "x" * (8 * KiB)
            req = job("wc -c /in/x", input_sources=[{"type": "inline", "data_url": data, "target": "/in/x"}])
            with pytest.raises(NodeError) as exc:
                await client.start(req, queue=True)
            assert exc.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk" in exc.value.message and "8Ki" in exc.value.message, exc.value.message
    finally:
        await running.stop(1)


async def test_inputs_count_against_disk_when_queued_again_after_a_restart(
    tmp_path: Path, node_id: str, busybox_image: str
) -> None:
    from haddock.node.config import OnShutdown

    capacity = CapacitySettings(max_running=1, disk="1Mi", reserve_disk=0)
    settings = node_settings(tmp_path, node_id).model_copy(
        update={"capacity": capacity, "on_shutdown": OnShutdown.LEAVE_RUNNING}
    )
    busy = job("sleep 60")
    data = "data:," + "x" * (8 * KiB)
    waiting = job("wc -c /in/x", input_sources=[{"type": "inline", "data_url": data, "target": "/in/x"}])
    first = await start_server(settings)
    try:
        async with NodeClient(first.address) as client:
            await client.start(busy)
            async for event in client.watch(busy.execution_id):
                if event.kind.value == "started":
                    break
            await client.start(waiting, queue=True)
        assert first.node.capacity.snapshot().queued.disk == 8 * KiB
    finally:
        await first.stop(1)  # the running one is left running; the queued one stays queued
    second = await start_server(settings)
    try:
        async with NodeClient(second.address) as client:
            try:
                assert second.node.admission.get(waiting.execution_id) is not None
                queued_disk = second.node.capacity.snapshot().queued.disk
            finally:
                await client.cancel(busy.execution_id)
            done = await client.wait(waiting.execution_id)
        assert queued_disk == 8 * KiB  # as at its first Start
        assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
        assert done.result.stdout.strip() == f"{8 * KiB} /in/x"
    finally:
        await second.stop(1)


# ----------------------------------------------------------------------------- echoed values, ids, validation


async def test_huge_and_odd_fields_get_small_clear_answers(node_server: RunningServer) -> None:
    from haddock.v1 import executor_pb2, executor_pb2_grpc, node_pb2, node_pb2_grpc
    from haddock.v1 import types_pb2 as pb

    big = "x" * 100_000
    async with grpc.aio.insecure_channel(node_server.address) as channel:
        ex = executor_pb2_grpc.ExecutorServiceStub(channel)
        nd = node_pb2_grpc.NodeServiceStub(channel)
        for bad_id in (big, "../etc/passwd", "a b", ""):
            calls = [
                ex.Wait(executor_pb2.WaitRequest(execution_id=bad_id)),
                ex.Cancel(executor_pb2.CancelRequest(execution_id=bad_id)),
                nd.GetExecution(node_pb2.GetExecutionRequest(execution_id=bad_id)),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await call
                assert exc.value.code() is grpc.StatusCode.NOT_FOUND, (bad_id[:10], exc.value)
                assert len((exc.value.details() or "").encode()) < 1024
            for stream in (
                ex.GetLogStream(executor_pb2.GetLogStreamRequest(execution_id=bad_id)),
                nd.WatchExecution(node_pb2.WatchExecutionRequest(execution_id=bad_id)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    async for _ in stream:
                        pass
                assert exc.value.code() is grpc.StatusCode.NOT_FOUND, (bad_id[:10], exc.value)
                assert len((exc.value.details() or "").encode()) < 1024

        def req(**kw: Any) -> pb.RunCommandRequest:
            engine = {"image": BUSYBOX, **kw.pop("engine", {})}
            return pb.RunCommandRequest(
                job_id="j",
                execution_id=f"v-{uuid.uuid4().hex[:8]}",
                engine=pb.DockerEngineSpec(**engine),
                **kw,
            )

        cases = [
            (
                pb.RunCommandRequest(job_id="j", execution_id=big, engine=pb.DockerEngineSpec(image=BUSYBOX)),
                "execution_id",
            ),
            (req(engine={"image": "UPPER/x"}), "engine.image"),
            (req(engine={"image": big}), "engine.image"),
            (req(engine={"working_dir": "/a/../b"}), "engine.working_dir"),
            (req(engine={"working_dir": "/" + big}), "engine.working_dir"),
            (req(engine={"env": {big: "1"}}), "engine.env"),
            (req(resources=pb.Resources(cpu=0.001)), "below the engine's minimum of 0.01"),
            (req(resources=pb.Resources(cpu=1e-12)), "below the engine's minimum of 0.01"),
            (req(resources=pb.Resources(cpu=float("nan"))), "resources.cpu"),
            (req(outputs=[pb.ResultPath(name="o", path="/" + "a" * 5000)]), "longer than 1024 characters"),
            (req(outputs=[pb.ResultPath(name="o", path="/" + "a" * 300)]), "longer than 255 bytes"),
        ]
        for msg, needle in cases:
            for call in (
                ex.Start(executor_pb2.StartRequest(request=msg)),
                ex.ShouldBid(executor_pb2.ShouldBidRequest(request=msg)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await call
                    pytest.fail(f"accepted: {needle}")
                details = exc.value.details() or ""
                assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (needle, details)
                assert needle in details, details
                assert len(details.encode()) < 1024
