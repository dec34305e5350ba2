"""Durable executions: a node that crashes, an engine that goes away, logs that last."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import grpc
import pytest

from haddock.executor.docker import DockerConfig
from haddock.executor.records import EventKind, ExecutionState, ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.executor.streams import LogQuery, StreamType
from haddock.node.client import NodeClient, NodeError
from haddock.node.server import start_server
from haddock.node.store import ExecutionStore, store_path
from tests.conftest import BUSYBOX, node_settings
from tests.support.daemon import Daemon
from tests.support.dockerproxy import DockerProxy

MiB = 1024 * 1024


def job(script: str, exec_id: str | None = None, **kw: object) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "rec",
            "execution_id": exec_id or f"r-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            **kw,
        }
    )


def labelled(client: docker.DockerClient, node: str) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": f"haddock.node-id={node}"})]


async def first_output(client: NodeClient, exec_id: str) -> None:
    async for _ in client.logs(exec_id, LogQuery(follow=True)):
        return


async def test_kill_9_and_restart_recovers_every_execution(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    node = f"rec-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(
        node,
        tmp_path / "data",
        tmp_path / "daemon.log",
        env={"HADDOCK_ON_SHUTDOWN": "stop", "HADDOCK_DOCKER__STOP_GRACE": "2s"},
    )
    await daemon.start()
    quick = [job(f"echo done-{i}") for i in range(3)]
    ends_while_down = [job(f"echo start-{i}; sleep 3; echo end-{i}; echo e{i} >&2") for i in range(3)]
    outlives = [job(f"echo start-{i}; sleep 9; echo end-{i}") for i in range(3)]
    removed = job("echo start; sleep 60")
    try:
        async with NodeClient(daemon.address) as client:
            for r in quick:
                done = await client.run(r)
                assert done.result.status is ResultStatus.SUCCESS
            for r in [*ends_while_down, *outlives, removed]:
                await client.start(r)
            for r in [*ends_while_down, *outlives, removed]:
                await first_output(client, r.execution_id)
        results = tmp_path / "data" / "executions"
        quick_mtimes = {
            r.execution_id: (results / r.execution_id / "results" / "stdout").stat().st_mtime_ns for r in quick
        }

        await daemon.kill()
        docker_client.containers.get(f"haddock-{node}-{removed.execution_id}").remove(force=True)
        deadline = time.monotonic() + 20
        for r in ends_while_down:
            c = docker_client.containers.get(f"haddock-{node}-{r.execution_id}")
            while c.reload() or c.status == "running":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)

        await daemon.start()
        async with NodeClient(daemon.address) as client:
            for i, r in enumerate(quick):
                done = await client.wait(r.execution_id)
                assert done.result.stdout == f"done-{i}\n"
            for group in (ends_while_down, outlives):
                for i, r in enumerate(group):
                    done = await asyncio.wait_for(client.wait(r.execution_id), 60)
                    assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
                    assert done.result.stdout == f"start-{i}\nend-{i}\n"
                    out = b"".join(
                        [
                            c.data
                            async for c in client.logs(r.execution_id, LogQuery(streams=frozenset({StreamType.STDOUT})))
                        ]
                    )
                    assert out == f"start-{i}\nend-{i}\n".encode()
                    kinds = [e["kind"] for e in (await client.describe(r.execution_id))["events"]]
                    assert "recovered" in kinds
            for i, r in enumerate(ends_while_down):
                assert (await client.wait(r.execution_id)).result.stderr == f"e{i}\n"
            gone = await client.wait(removed.execution_id)
            assert gone.result.status is ResultStatus.ERROR
            assert gone.result.exit_code is None
            assert "removed while the node was down" in gone.result.error_message
            assert Path(gone.results_dir, "stdout").read_bytes() == b"start\n"
        for r in quick:  # written once, before the crash; not again
            assert (results / r.execution_id / "results" / "stdout").stat().st_mtime_ns == quick_mtimes[r.execution_id]
        assert labelled(docker_client, node) == []
        assert await daemon.terminate() == 0
        store = await ExecutionStore.open(store_path(tmp_path / "data"))
        try:
            for r in [*quick, *ends_while_down, *outlives, removed]:
                terminal = [t for t in await store.transitions(r.execution_id) if t[1].terminal]
                assert len(terminal) == 1, (r.execution_id, terminal)
        finally:
            await store.close()
    finally:
        await daemon.kill()
        for name in labelled(docker_client, node):
            docker_client.containers.get(name).remove(force=True)


async def test_start_of_a_reused_id_after_restart_is_refused(tmp_path: Path, busybox_image: str) -> None:
    node = f"rec-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(node, tmp_path / "data", tmp_path / "daemon.log")
    await daemon.start()
    try:
        r = job("echo once")
        async with NodeClient(daemon.address) as client:
            await client.run(r)
        await daemon.terminate()
        await daemon.start()
        async with NodeClient(daemon.address) as client:
            with pytest.raises(NodeError) as exc:
                await client.start(r)
            assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert (await client.wait(r.execution_id)).result.stdout == "once\n"
            listed = await client.list_executions({ExecutionState.COMPLETED})
            assert r.execution_id in [e.execution_id for e in listed]
    finally:
        await daemon.kill()


async def test_engine_outage_no_execution_hangs(
    tmp_path: Path, node_id: str, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    proxy = DockerProxy(tmp_path / "docker.sock")
    await proxy.start()
    settings = node_settings(tmp_path, node_id).model_copy(
        # Output printed while the engine is cut off is recovered from the engine's own log: only with a log
        # driver (the default, 'none', leaves the output to the node's capture process alone).
        update={"docker": DockerConfig(host=proxy.docker_host, stop_grace=2, engine_retry=8, log_driver="local")}
    )
    running = await start_server(settings)
    try:
        async with NodeClient(running.address) as client:
            reqs = [job(f"echo a{i}; sleep 3; echo b{i}") for i in range(3)]
            for r in reqs:
                await client.start(r)
            for r in reqs:
                await first_output(client, r.execution_id)
            proxy.cut()
            await asyncio.sleep(3)
            proxy.restore()
            for i, r in enumerate(reqs):
                done = await asyncio.wait_for(client.wait(r.execution_id), 60)
                assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
                assert done.result.stdout == f"a{i}\nb{i}\n"

            # an outage longer than the node waits: a clear error, never a hang
            late = job("echo x; sleep 2")
            await client.start(late)
            await first_output(client, late.execution_id)
            proxy.cut()
            done = await asyncio.wait_for(client.wait(late.execution_id), 90)
            proxy.restore()
            assert done.result.status is ResultStatus.ERROR
            assert "did not answer" in done.result.error_message
        # what the node could not remove, the reaper removes
        await asyncio.sleep(2)
        await running.node.executor.reap_orphans(grace=0)
        assert [n for n in labelled(docker_client, node_id) if late.execution_id in n] == []
    finally:
        await running.stop(1)
        await proxy.close()


async def test_100_followers_get_every_byte_and_resume(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    running = await start_server(node_settings(tmp_path, node_id))
    try:
        async with NodeClient(running.address) as client:
            r = job("head -c 20971520 /dev/urandom")
            await client.start(r)

            async def follow() -> tuple[str, int]:
                h = hashlib.sha256()
                n = 0
                async for c in client.logs(r.execution_id, LogQuery(follow=True)):
                    h.update(c.data)
                    n += len(c.data)
                return h.hexdigest(), n

            async def follow_with_reconnect() -> tuple[str, int]:
                h = hashlib.sha256()
                n = 0
                offset = None
                async for c in client.logs(r.execution_id, LogQuery(follow=True)):
                    h.update(c.data)
                    n += len(c.data)
                    offset = c.next_offset
                    if n >= 5 * MiB:
                        break  # the connection drops
                async for c in client.logs(r.execution_id, LogQuery(follow=True, offset=offset)):
                    h.update(c.data)
                    n += len(c.data)
                return h.hexdigest(), n

            outcomes = await asyncio.gather(*(follow() for _ in range(99)), follow_with_reconnect())
            done = await client.wait(r.execution_id)
        expected = hashlib.sha256(Path(done.results_dir, "stdout").read_bytes()).hexdigest()
        assert all(o == (expected, 20 * MiB) for o in outcomes)
    finally:
        await running.stop(1)


async def test_logs_last_then_are_pruned(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    settings = node_settings(tmp_path, node_id).model_copy(update={"log_retention": 1.0})
    running = await start_server(settings)
    try:
        async with NodeClient(running.address) as client:
            r = job("echo kept")
            await client.run(r)
            assert b"".join([c.data async for c in client.logs(r.execution_id)]) == b"kept\n"
            await asyncio.sleep(1.2)
            assert await running.node.prune() == [r.execution_id]
            with pytest.raises(NodeError) as exc:
                async for _ in client.logs(r.execution_id):
                    pass
            assert exc.value.code is grpc.StatusCode.NOT_FOUND
            assert "removed" in exc.value.message and "1s" in exc.value.message
            assert (await client.describe(r.execution_id))["result"]["stdout"] == "kept\n"
    finally:
        await running.stop(1)


async def test_watch_reports_recovery_kind() -> None:
    assert EventKind.RECOVERED.value == "recovered"
