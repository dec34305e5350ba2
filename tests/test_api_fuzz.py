"""Random and hostile fields for every RPC against an in-process node (hypothesis).

Every answer is OK or a documented status code with a message under 1 KiB, never INTERNAL/UNKNOWN; the
node still serves afterwards; nothing is written outside its data dir.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haddock.node.server import RunningServer, start_server
from haddock.storage.config import StorageSettings
from haddock.v1 import executor_pb2, executor_pb2_grpc, node_pb2, node_pb2_grpc
from haddock.v1 import types_pb2 as pb
from tests.conftest import BUSYBOX, node_settings

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}

HOSTILE = [
    "",
    " ",
    "x" * 100_000,
    "a" * 129,
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    "/..",
    "\x00",
    "a\nb",
    "é" * 300,
    "UPPER/x",
    "%s%n",
    "${HOME}",
    "/" + "d" * 5000,
    "/a/../../b",
]
text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
known_ids: list[str] = []
ids = st.one_of(text, st.sampled_from(["fz-a", "fz-b", "fz-c"]), st.builds(lambda: known_ids[-1] if known_ids else "x"))
paths = st.one_of(st.sampled_from(["/in", "/out", "/work", "/in/x"]), text)
uint64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1, 1024**4]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.001, 1e-12, -1.0, 0.5, 1e300]))
enum = st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))
data_urls = st.one_of(
    st.sampled_from(["data:,hello", "data:;base64,!!!", "data:application/gzip;base64,H4sI", "nodata"]), text
)
urls = st.sampled_from(
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:1/secret",
        "http://10.0.0.1/x",
        "http://[::1]/x",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http://",
        "not a url",
    ]
)

sources = st.one_of(
    st.builds(lambda d, t: pb.InputSource(inline=pb.InlineSource(data_url=d, target=t)), data_urls, paths),
    st.builds(
        lambda p, t, rw: pb.InputSource(local=pb.LocalSource(path=p, target=t, read_write=rw)),
        st.one_of(st.sampled_from(["/etc", "/", "/proc/self"]), text),
        paths,
        st.booleans(),
    ),
    st.builds(lambda u, t: pb.InputSource(url=pb.UrlSource(url=u, target=t)), urls, paths),
    st.builds(
        lambda b, k, e, t: pb.InputSource(s3=pb.S3Source(bucket=b, key=k, endpoint_url=e, target=t)),
        text,
        text,
        st.sampled_from(["http://127.0.0.1:1", "http://169.254.169.254", "nonsense"]),
        paths,
    ),
)
publishers = st.one_of(
    st.builds(lambda a: pb.Publisher(local=pb.LocalPublisher(archive=a)), st.booleans()),
    st.builds(
        lambda b, k, e: pb.Publisher(s3=pb.S3Publisher(bucket=b, key=k, endpoint_url=e)),
        text,
        text,
        st.sampled_from(["http://127.0.0.1:1", "http://169.254.169.254"]),
    ),
)


def mostly(sane: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A sane value nine times in ten, so that many requests get past the first check and reach the rest."""
    return st.integers(0, 9).flatmap(lambda i: wild if i == 0 else sane)


fresh_ids = st.builds(lambda: f"fz-{uuid.uuid4().hex[:12]}")


@st.composite
def requests(draw: st.DrawFn) -> pb.RunCommandRequest:
    image = draw(mostly(st.just(BUSYBOX), st.one_of(st.just("haddock-test/absent:1"), text)))
    engine = pb.DockerEngineSpec(
        image=image,
        entrypoint=draw(mostly(st.just([]), st.lists(text, max_size=2))),
        parameters=draw(
            mostly(st.sampled_from([["true"], ["echo", "x"], ["sh", "-c", "exit 3"]]), st.lists(text, max_size=3))
        ),
        env=draw(mostly(st.just({"A": "1"}), st.dictionaries(text, text, max_size=2))),
        working_dir=draw(mostly(st.sampled_from(["", "/tmp"]), paths)),
        # never a pull: the fuzz is about the API, not a registry that is not there
        pull_policy=draw(mostly(st.just(pb.PULL_POLICY_NEVER), st.sampled_from([0, 99]))),
    )
    limits = pb.OutputLimits()
    for name in ("max_stdout_file_length", "max_stdout_return_length", "max_stderr_file_length"):
        if draw(st.integers(0, 3)) == 0:
            setattr(limits, name, draw(uint64))
    resources = pb.Resources(
        cpu=draw(mostly(st.sampled_from([0.0, 0.1, 0.5]), floats)),
        memory_bytes=draw(mostly(st.sampled_from([0, 64 * 1024**2]), uint64)),
        disk_bytes=draw(mostly(st.sampled_from([0, 1024**3]), uint64)),
        gpu=draw(mostly(st.just(0), st.integers(0, 2**32 - 1))),
    )
    inline = st.just([pb.InputSource(inline=pb.InlineSource(data_url="data:,hello", target="/in/x"))])
    msg = pb.RunCommandRequest(
        job_id=draw(mostly(st.just("fz"), text)),
        execution_id=draw(mostly(fresh_ids, ids)),
        engine=engine,
        resources=resources,
        network=pb.NetworkConfig(mode=draw(mostly(st.sampled_from([0, 1]), enum))),
        inputs=draw(
            mostly(
                st.just([]),
                st.lists(st.builds(lambda s, t: pb.InputVolume(source=s, target=t), text, paths), max_size=1),
            )
        ),
        outputs=draw(
            mostly(
                st.sampled_from([[], [pb.ResultPath(name="o", path="/out")]]),
                st.lists(st.builds(lambda n, p: pb.ResultPath(name=n, path=p), text, paths), max_size=2),
            )
        ),
        output_limits=limits,
        input_sources=draw(mostly(st.one_of(st.just([]), inline), st.lists(sources, max_size=2))),
        publishers=draw(mostly(st.just([]), st.lists(publishers, max_size=1))),
    )
    if draw(st.booleans()):
        seconds = draw(mostly(st.just(10), st.integers(-(2**40), 2**40)))
        msg.timeout.CopyFrom(
            duration_pb2.Duration(
                seconds=seconds, nanos=draw(mostly(st.just(0), st.integers(-999_999_999, 999_999_999)))
            )
        )
    return msg


def calls(ex: Any, nd: Any) -> st.SearchStrategy[Any]:
    """One RPC with drawn fields: a zero-argument function giving the call (unary or streaming)."""
    return st.one_of(
        st.just(lambda: ex.IsInstalled(executor_pb2.IsInstalledRequest())),
        st.builds(lambda r: lambda: ex.ShouldBid(executor_pb2.ShouldBidRequest(request=r)), requests()),
        st.builds(
            lambda r, c, m: (
                lambda: ex.ShouldBidBasedOnUsage(
                    executor_pb2.ShouldBidBasedOnUsageRequest(request=r, usage=pb.Resources(cpu=c, memory_bytes=m))
                )
            ),
            requests(),
            floats,
            uint64,
        ),
        st.builds(
            lambda r, q, p: lambda: ex.Start(executor_pb2.StartRequest(request=r, queue=q, priority=p)),
            requests(),
            st.booleans(),
            st.integers(-(2**31), 2**31 - 1),
        ),
        st.builds(lambda r: lambda: ex.Run(executor_pb2.RunRequest(request=r)), requests()),
        st.builds(lambda i: lambda: ex.Wait(executor_pb2.WaitRequest(execution_id=i)), ids),
        st.builds(lambda i: lambda: ex.Cancel(executor_pb2.CancelRequest(execution_id=i)), ids),
        st.builds(
            lambda i, h, o, t, s: (
                lambda: ex.GetLogStream(
                    executor_pb2.GetLogStreamRequest(execution_id=i, with_history=h, offset=o, tail_lines=t, streams=s)
                )
            ),
            ids,
            st.booleans(),
            uint64,
            st.integers(0, 2**32 - 1),
            st.lists(enum, max_size=3),
        ),
        st.just(lambda: nd.GetNodeInfo(node_pb2.GetNodeInfoRequest())),
        st.builds(
            lambda s, n: lambda: nd.ListExecutions(node_pb2.ListExecutionsRequest(states=s, limit=n)),
            st.lists(enum, max_size=3),
            st.integers(0, 2**32 - 1),
        ),
        st.builds(lambda i: lambda: nd.GetExecution(node_pb2.GetExecutionRequest(execution_id=i)), ids),
        st.builds(lambda i: lambda: nd.WatchExecution(node_pb2.WatchExecutionRequest(execution_id=i)), ids),
        st.builds(
            lambda i, n: (
                # follow=False: a followed series of a running execution lasts as long as the execution
                lambda: nd.GetExecutionStats(node_pb2.GetExecutionStatsRequest(execution_id=i, max_points=n))
            ),
            ids,
            st.integers(0, 2**32 - 1),
        ),
        st.just(lambda: nd.ListJobTypes(node_pb2.ListJobTypesRequest())),
    )


def _files_outside(root: Path, data_dir: Path) -> set[Path]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == data_dir:
            dirnames.clear()
            continue
        found.update(here / f for f in filenames)
    return found


@pytest.fixture
async def fuzz_node(tmp_path: Path, node_id: str, busybox_image: str) -> AsyncIterator[RunningServer]:
    # Private addresses refused (the default), so no request reaches one.
    settings = node_settings(tmp_path, node_id, storage=StorageSettings())
    running = await start_server(settings)
    yield running
    await running.stop(1)


async def _answer(call: Any) -> tuple[grpc.StatusCode, str]:
    rpc = call()
    try:
        if hasattr(rpc, "__aiter__"):
            async for _ in rpc:
                pass
        else:
            resp = await rpc
            execution_id = getattr(resp, "execution_id", "")
            if execution_id:
                known_ids.append(execution_id)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


TERMINAL = {pb.EXECUTION_STATE_COMPLETED, pb.EXECUTION_STATE_FAILED, pb.EXECUTION_STATE_CANCELLED}


async def _cancel_all(ex: Any, nd: Any) -> None:
    """Cancel every execution that has not ended and wait for each to end (each Cancel is answered)."""
    listed = await nd.ListExecutions(node_pb2.ListExecutionsRequest(limit=10_000))
    live = [e.execution_id for e in listed.executions if e.state not in TERMINAL]
    for execution_id in live:
        try:
            await ex.Cancel(executor_pb2.CancelRequest(execution_id=execution_id))
        except grpc.aio.AioRpcError as exc:  # it ended meanwhile
            assert exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND), exc
    for execution_id in live:
        await asyncio.wait_for(ex.Wait(executor_pb2.WaitRequest(execution_id=execution_id)), 60)


@pytest.mark.timeout(240)
async def test_every_rpc_answers_hostile_fields_with_a_documented_status(
    fuzz_node: RunningServer, tmp_path: Path
) -> None:
    data_dir = fuzz_node.node.settings.data_dir
    before = _files_outside(tmp_path, data_dir)
    # one level up, this session's pytest base dir, where a path climbing out of tmp_path would land
    # (other tests' dirs are not read: nothing else runs while this test does)
    beside = set(tmp_path.parent.iterdir())
    async with grpc.aio.insecure_channel(fuzz_node.address) as channel:
        ex = executor_pb2_grpc.ExecutorServiceStub(channel)
        nd = node_pb2_grpc.NodeServiceStub(channel)
        seen: dict[grpc.StatusCode, int] = {}

        @settings(
            max_examples=int(os.environ.get("HADDOCK_FUZZ_EXAMPLES", "150")),
            deadline=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(call=calls(ex, nd))
        def one(call: Any) -> None:
            # hypothesis runs in a worker thread; each call runs on the event loop, where the channel lives
            code, message = asyncio.run_coroutine_threadsafe(_answer(call), loop).result(timeout=120)
            seen[code] = seen.get(code, 0) + 1
            assert code in DOCUMENTED, (code, message)
            assert len(message.encode()) < 1024, (code, len(message), message[:200])

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(one)
        # the node still serves. What the fuzz left queued or running is the requesters' (a queued Start
        # rightly makes a Run behind it RESOURCE_EXHAUSTED): cancel it and wait until it has ended.
        await _cancel_all(ex, nd)
        info = await nd.GetNodeInfo(node_pb2.GetNodeInfoRequest())
        assert info.node_id == fuzz_node.node.settings.node_id
        done = await ex.Run(
            executor_pb2.RunRequest(
                request=pb.RunCommandRequest(
                    job_id="after", engine=pb.DockerEngineSpec(image=BUSYBOX, parameters=["echo", "still here"])
                )
            )
        )
        assert done.result.stdout == "still here\n"
    assert _files_outside(tmp_path, data_dir) == before
    assert set(tmp_path.parent.iterdir()) == beside
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0
