"""The node's gRPC API end to end: a real server on 127.0.0.1, a real engine, the real client."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from haddock.executor.records import EventKind, ExecutionState, ResultStatus
from haddock.executor.request import Resources, RunCommandRequest
from haddock.executor.streams import LogQuery, StreamType
from haddock.node.client import NodeClient, NodeError
from haddock.node.server import RunningServer
from haddock.v1 import executor_pb2, executor_pb2_grpc
from haddock.v1 import types_pb2 as pb
from tests.conftest import BUSYBOX, TelemetryCapture

MiB = 1024 * 1024


def job(script: str, **kw: Any) -> RunCommandRequest:
    exec_id = kw.pop("execution_id", None) or f"api-{uuid.uuid4().hex[:12]}"
    engine = {"image": BUSYBOX, "parameters": ["sh", "-c", script], **kw.pop("engine", {})}
    return RunCommandRequest.model_validate({"job_id": "job-api", "execution_id": exec_id, "engine": engine, **kw})


async def test_run_wait_and_results_dir(client: NodeClient, node_server: RunningServer) -> None:
    req = job("echo out; echo err >&2; exit 7")
    done = await client.run(req)
    assert done.execution_id == req.execution_id
    assert done.result.status is ResultStatus.ERROR and done.result.exit_code == 7
    assert done.result.stdout == "out\n" and done.result.stderr == "err\n"
    expected_dir = node_server.node.settings.data_dir / "executions" / req.execution_id / "results"
    assert done.results_dir == str(expected_dir)
    assert (expected_dir / "exitCode").read_text() == "7"
    again = await client.wait(req.execution_id)
    assert again.result == done.result


async def test_start_then_wait_logs_and_describe(client: NodeClient) -> None:
    req = job("echo one; sleep 0.3; echo two >&2")
    started = await client.start(req)
    assert started.execution_id == req.execution_id
    chunks = [c async for c in client.logs(req.execution_id, LogQuery(follow=True))]
    assert b"".join(c.data for c in chunks if c.stream is StreamType.STDOUT) == b"one\n"
    assert b"".join(c.data for c in chunks if c.stream is StreamType.STDERR) == b"two\n"
    done = await client.wait(req.execution_id)
    assert done.result.status is ResultStatus.SUCCESS
    info = await client.describe(req.execution_id)
    assert info["state"] == "EXECUTION_STATE_COMPLETED"
    assert info["request"]["engine"]["image"] == BUSYBOX
    assert info["result"]["stdout"] == "one\n"
    kinds = [e["kind"] for e in info["events"]]
    assert kinds[0] == "accepted" and "started" in kinds and "results-written" in kinds
    listed = await client.list_executions({ExecutionState.COMPLETED})
    assert req.execution_id in [e.execution_id for e in listed]
    assert req.execution_id not in [e.execution_id for e in await client.list_executions({ExecutionState.RUNNING})]


async def test_watch_execution_events(client: NodeClient) -> None:
    req = job("echo hi")
    await client.start(req)
    kinds = [e.kind async for e in client.watch(req.execution_id)]
    assert kinds[0] is EventKind.ACCEPTED
    assert EventKind.STARTED in kinds and EventKind.EXITED in kinds
    assert kinds.count(EventKind.ACCEPTED) == 1


async def test_cancel_and_error_statuses(client: NodeClient) -> None:
    req = job("echo up; sleep 60 & wait $!")
    await client.start(req)
    with pytest.raises(NodeError) as exc:
        await client.start(req)
    assert exc.value.code is grpc.StatusCode.ALREADY_EXISTS
    async for _ in client.logs(req.execution_id, LogQuery(follow=True)):
        break
    cancelled = await client.cancel(req.execution_id)
    assert cancelled.result.status is ResultStatus.CANCELLED
    with pytest.raises(NodeError) as exc:
        await client.cancel(req.execution_id)
    assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "already complete" in exc.value.message
    with pytest.raises(NodeError) as exc:
        await client.start(req)
    assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION
    for call in (client.wait, client.cancel, client.get_execution):
        with pytest.raises(NodeError) as exc:
            await call("nope")
        assert exc.value.code is grpc.StatusCode.NOT_FOUND
        assert "'nope' not found" in exc.value.message
    with pytest.raises(NodeError) as exc:
        async for _ in client.logs("nope"):
            pass
    assert exc.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(NodeError) as exc:
        async for _ in client.logs(req.execution_id, LogQuery(offset=3)):
            pass
    assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(NodeError) as exc:
        await client.start(job("true", network={"mode": "host"}))
    assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "network mode 'host'" in exc.value.message


async def test_invalid_requests_name_the_field(node_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(node_server.address) as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        cases = [
            (pb.RunCommandRequest(job_id="j", execution_id="x1", engine=pb.DockerEngineSpec(image="")), "engine.image"),
            (
                pb.RunCommandRequest(
                    job_id="j", execution_id="x2", engine=pb.DockerEngineSpec(image="a", env={"HADDOCK_X": "1"})
                ),
                "reserved",
            ),
            (
                pb.RunCommandRequest(
                    job_id="j",
                    execution_id="x3",
                    engine=pb.DockerEngineSpec(image="a", working_dir="rel"),
                ),
                "engine.working_dir",
            ),
            (
                pb.RunCommandRequest(
                    job_id="j",
                    execution_id="x4",
                    engine=pb.DockerEngineSpec(image="a"),
                    resources=pb.Resources(cpu=-1),
                ),
                "resources.cpu",
            ),
            (
                pb.RunCommandRequest(
                    job_id="j",
                    execution_id="x5",
                    engine=pb.DockerEngineSpec(image="a"),
                    outputs=[pb.ResultPath(name="../up", path="/o")],
                ),
                "outputs.0.name",
            ),
            (
                pb.RunCommandRequest(job_id="j", execution_id="bad id", engine=pb.DockerEngineSpec(image="a")),
                "execution_id",
            ),
            (
                pb.RunCommandRequest(
                    job_id="j", execution_id="x6", engine=pb.DockerEngineSpec(image="a", pull_policy=99)
                ),
                "pull_policy 99",
            ),
        ]
        for msg, needle in cases:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.Start(executor_pb2.StartRequest(request=msg))
            assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT, needle
            assert needle in (exc.value.details() or ""), exc.value.details()


async def test_server_generates_execution_id(node_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(node_server.address) as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        resp = await stub.Run(
            executor_pb2.RunRequest(
                request=pb.RunCommandRequest(
                    job_id="j", engine=pb.DockerEngineSpec(image=BUSYBOX, parameters=["echo", "x"])
                )
            )
        )
        assert resp.execution_id.startswith("e-")
        assert resp.result.stdout == "x\n"
        assert resp.result.HasField("exit_code") and resp.result.exit_code == 0


async def test_bidding_and_node_info(client: NodeClient) -> None:
    req = job("true")
    assert (await client.is_installed()) is True
    bid = await client.should_bid(req)
    assert bid.should_bid, bid.reason
    no = await client.should_bid(job("true", network={"mode": "host"}))
    assert not no.should_bid and "host" in no.reason
    usage = await client.should_bid_based_on_usage(req, Resources(cpu=4096 / 8))
    assert not usage.should_bid and "insufficient CPU" in usage.reason
    info = await client.node_info()
    assert info.capacity.cpu >= 1 and info.capacity.memory > 0 and info.capacity.disk > 0
    assert info.engine_version
    assert info.version


async def test_log_stream_10_mib_and_resume(client: NodeClient, node_server: RunningServer) -> None:
    # 5 MiB of varied bytes on each stream, interleaved
    script = "i=0; while [ $i -lt 80 ]; do head -c 65536 /dev/urandom; head -c 65536 /dev/urandom >&2; i=$((i+1)); done"
    req = job(script)
    await client.start(req)
    chunks = [c async for c in client.logs(req.execution_id, LogQuery(follow=True))]
    done = await client.wait(req.execution_id)
    assert done.result.status is ResultStatus.SUCCESS
    out = b"".join(c.data for c in chunks if c.stream is StreamType.STDOUT)
    err = b"".join(c.data for c in chunks if c.stream is StreamType.STDERR)
    results = Path(done.results_dir)
    assert len(out) == 5 * MiB and len(err) == 5 * MiB
    assert out == (results / "stdout").read_bytes()
    assert err == (results / "stderr").read_bytes()
    # offsets chain, and resuming anywhere yields exactly the remainder
    for prev, cur in itertools.pairwise(chunks):
        assert cur.offset == prev.next_offset
    middle = chunks[len(chunks) // 2]
    rest = [c async for c in client.logs(req.execution_id, LogQuery(offset=middle.next_offset))]
    assert [(c.stream, c.data, c.offset) for c in rest] == [
        (c.stream, c.data, c.offset) for c in chunks[len(chunks) // 2 + 1 :]
    ]
    tail = [c async for c in client.logs(req.execution_id, LogQuery(offset=chunks[-1].next_offset))]
    assert tail == []


async def test_logs_tail_and_stream_filter(client: NodeClient) -> None:
    req = job("for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2")
    await client.run(req)
    tail = b"".join(
        [
            c.data
            async for c in client.logs(req.execution_id, LogQuery(tail_lines=2, streams=frozenset({StreamType.STDOUT})))
        ]
    )
    assert tail == b"line4\nline5\n"
    errs = [c async for c in client.logs(req.execution_id, LogQuery(streams=frozenset({StreamType.STDERR})))]
    assert b"".join(c.data for c in errs) == b"oops\n"


async def test_telemetry_spans_and_metrics(client: NodeClient, telemetry: TelemetryCapture) -> None:
    req = job("echo traced; exit 2")
    await client.run(req)
    spans = telemetry.spans.get_finished_spans()
    execution = [
        s
        for s in spans
        if s.name == "execution" and s.attributes and s.attributes.get("haddock.execution_id") == req.execution_id
    ]
    assert len(execution) == 1
    root = execution[0]
    assert root.attributes is not None and root.attributes["haddock.status"] == "error"
    children = {s.name for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    assert {"pull", "run", "write-results"} <= children
    assert any(s.name == "/haddock.v1.ExecutorService/Run" for s in spans)
    data = telemetry.metrics.get_metrics_data()
    assert data is not None
    names: dict[str, Any] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                names[m.name] = m
    assert "haddock.executions" in names and "haddock.execution.duration" in names
    statuses = {dp.attributes.get("status") for dp in names["haddock.executions"].data.data_points}
    assert "error" in statuses
    out = {dp.attributes.get("stream"): dp.value for dp in names["haddock.execution.output"].data.data_points}
    assert out.get("stdout", 0) >= len("traced\n")
