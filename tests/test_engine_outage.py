"""Engine outages (issue 10 §5): a Start while the engine restarts waits for it, and an execution whose
container the engine stopped while it went away says so. The engine is never restarted here (others use
it): a socket proxy in front of it is cut, its socket gone as while dockerd restarts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from haddock.executor.docker import DockerConfig
from haddock.executor.records import ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.executor.streams import LogQuery
from haddock.node.client import NodeClient
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, node_settings
from tests.support.dockerproxy import DockerProxy


def job(script: str) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "outage",
            "execution_id": f"o-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
        }
    )


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[DockerProxy]:
    p = DockerProxy(tmp_path / "docker.sock")
    await p.start()
    yield p
    await p.close()


async def behind(proxy: DockerProxy, tmp_path: Path, node_id: str, engine_retry: float) -> RunningServer:
    settings = node_settings(tmp_path, node_id).model_copy(
        update={"docker": DockerConfig(host=proxy.docker_host, stop_grace=2, engine_retry=engine_retry)}
    )
    return await start_server(settings)


async def test_a_start_during_an_engine_restart_waits_for_the_engine(
    tmp_path: Path, node_id: str, busybox_image: str, proxy: DockerProxy
) -> None:
    running = await behind(proxy, tmp_path, node_id, engine_retry=6)
    try:
        async with NodeClient(running.address) as client:
            assert (await client.run(job("echo before"))).result.stdout == "before\n"

            proxy.cut(gone=True)  # dockerd restarting: its socket is gone
            r = job("echo after")
            await client.start(r)
            waiting = asyncio.create_task(client.wait(r.execution_id))
            await asyncio.sleep(2)
            assert not waiting.done(), "it must wait for the engine, not fail at once"
            await proxy.come_back()
            done = await asyncio.wait_for(waiting, 60)
            assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
            assert done.result.stdout == "after\n"
            messages = [e.message async for e in client.watch(r.execution_id)]
            assert any("waiting for the Docker engine" in m for m in messages), messages

            # longer than engine_retry: a clear error naming the engine and how long the node waited
            proxy.cut(gone=True)
            r = job("echo never")
            await client.start(r)
            done = await asyncio.wait_for(client.wait(r.execution_id), 60)
            await proxy.come_back()
            assert done.result.status is ResultStatus.ERROR
            assert done.result.exit_code is None
            assert "the Docker engine did not answer" in done.result.error_message
            assert "6s" in done.result.error_message
    finally:
        await proxy.come_back()
        await running.stop(1)


async def test_a_container_stopped_by_an_engine_restart_says_so(
    tmp_path: Path, node_id: str, busybox_image: str, proxy: DockerProxy, docker_client: docker.DockerClient
) -> None:
    running = await behind(proxy, tmp_path, node_id, engine_retry=30)
    try:
        async with NodeClient(running.address) as client:
            r = job("echo up; sleep 30")
            await client.start(r)
            async for _ in client.logs(r.execution_id, LogQuery(follow=True)):
                break
            proxy.cut(gone=True)
            # What dockerd does to running containers when it goes down: their stop signal.
            container = docker_client.containers.get(f"haddock-{node_id}-{r.execution_id}")
            await asyncio.to_thread(container.kill, "SIGTERM")
            await asyncio.sleep(1.5)
            await proxy.come_back()
            done = await asyncio.wait_for(client.wait(r.execution_id), 60)
            assert done.result.status is ResultStatus.ERROR
            assert done.result.exit_code == 143
            assert "Docker engine" in done.result.error_message, done.result.error_message
            assert "143" in done.result.error_message

            # a job that exits by itself with the same code, with the engine there all along: its own code only
            r = job("kill -TERM $$")
            done = await client.run(r)
            assert done.result.exit_code == 143
            assert done.result.error_message == "the job exited with code 143"
    finally:
        await proxy.come_back()
        await running.stop(1)


def test_engine_times_and_the_outage_window() -> None:
    import time
    from datetime import UTC, datetime

    from haddock.executor.docker.engine import Engine
    from haddock.executor.docker.times import engine_timestamp as _parse_engine_time

    base = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC).timestamp()
    assert _parse_engine_time("2026-01-02T03:04:05.123456789Z") == pytest.approx(base)
    assert _parse_engine_time("2026-01-02T04:04:05.123456+01:00") == pytest.approx(base)
    assert _parse_engine_time("2026-01-02T03:04:05Z") == pytest.approx(base - 0.123456)
    assert _parse_engine_time("0001-01-01T00:00:00Z") is None
    assert _parse_engine_time("") is None
    assert _parse_engine_time("garbage") is None

    engine = Engine(DockerConfig())
    try:
        now = time.time()
        engine._outages = [(now - 20, now - 10)]
        assert engine.unavailable_while(now - 60, now - 15)  # ended during the outage
        assert engine.unavailable_while(now - 60, now - 22)  # just before the node noticed
        assert not engine.unavailable_while(now - 60, now - 40)  # long before
        assert not engine.unavailable_while(now - 9, now - 5)  # started once the engine was back
        assert not engine.unavailable_while(now - 60, now - 5)  # ended after the engine was back

        def state(started: float, finished: float) -> dict[str, str]:
            iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")  # noqa: E731
            return {"StartedAt": iso(started), "FinishedAt": iso(finished)}

        assert "Docker engine" in engine.stopped_by_outage(state(now - 60, now - 15), 143)
        assert engine.stopped_by_outage(state(now - 60, now - 15), 1) == ""  # not killed by a signal
        assert engine.stopped_by_outage(state(now - 60, now - 40), 137) == ""
    finally:
        engine.close()
