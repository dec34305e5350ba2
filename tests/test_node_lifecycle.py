"""The node's own life: orphans reaped, queued executions kept across a restart, capacity after recovery."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import docker

from haddock.executor.docker import LABEL_EXECUTION, LABEL_JOB, LABEL_NODE, DockerConfig
from haddock.executor.records import ExecutionRecord, ExecutionState, ResultStatus
from haddock.executor.request import Resources, RunCommandRequest
from haddock.node.client import NodeClient
from haddock.node.config import CapacitySettings
from haddock.node.server import start_server
from haddock.node.store import ExecutionStore, store_path
from tests.conftest import BUSYBOX, node_settings


def job(script: str, **kw: object) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "life",
            "execution_id": kw.pop("execution_id", None) or f"l-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            **kw,
        }
    )


def labelled_container(client: docker.DockerClient, node: str, exec_id: str) -> str:
    c = client.api.create_container(
        BUSYBOX,
        command=["sleep", "60"],
        name=f"haddock-{node}-{exec_id}",
        labels={LABEL_NODE: node, LABEL_JOB: "j", LABEL_EXECUTION: exec_id},
    )
    return str(c["Id"])


async def test_orphan_containers_are_reaped(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    node = f"life-{uuid.uuid4().hex[:8]}"
    cid = labelled_container(docker_client, node, "nobody-knows-me")
    settings = node_settings(tmp_path, node).model_copy(update={"docker": DockerConfig(stop_grace=2, orphan_grace=0)})
    running = await start_server(settings)
    try:
        deadline = time.monotonic() + 20
        while docker_client.api.containers(all=True, filters={"id": cid}):
            assert time.monotonic() < deadline, "the orphan was not reaped"
            await asyncio.sleep(0.5)
    finally:
        await running.stop(1)
        for c in docker_client.api.containers(all=True, filters={"label": f"{LABEL_NODE}={node}"}):
            docker_client.api.remove_container(c["Id"], force=True)


async def test_queued_execution_survives_a_restart(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    settings = node_settings(tmp_path, node_id).model_copy(update={"capacity": CapacitySettings(cpu=1, reserve_cpu=0)})
    first = await start_server(settings)
    hog = job("sleep 30", resources={"cpu": 1})
    waiting = job("echo after the restart", resources={"cpu": 1})
    async with NodeClient(first.address) as client:
        await client.start(hog)
        await client.start(waiting, queue=True, priority=7)
        assert (await client.describe(waiting.execution_id))["state"] == "EXECUTION_STATE_QUEUED"
    await first.stop(1)  # on_shutdown = stop: the hog is cancelled, the queued one stays queued
    store = await ExecutionStore.open(store_path(settings.data_dir))
    try:
        kept = await store.get(waiting.execution_id)
        assert kept is not None and kept.state is ExecutionState.QUEUED
        assert [e.details.get("priority") for e in kept.events if e.kind.value == "queued"] == [7]
    finally:
        await store.close()
    second = await start_server(settings)
    try:
        async with NodeClient(second.address) as client:
            done = await asyncio.wait_for(client.wait(waiting.execution_id), 60)
            assert done.result.status is ResultStatus.SUCCESS
            assert done.result.stdout == "after the restart\n"
            assert (await client.node_info()).allocated == Resources()
    finally:
        await second.stop(1)


async def test_recovery_of_a_never_started_container_and_capacity(
    tmp_path: Path, docker_client: docker.DockerClient, node_id: str, busybox_image: str
) -> None:
    settings = node_settings(tmp_path, node_id).model_copy(update={"capacity": CapacitySettings(cpu=4, reserve_cpu=0)})
    settings.data_dir.mkdir(parents=True)
    created = job("true", resources={"cpu": 1})
    vanished = [job("true", resources={"cpu": 1}) for _ in range(3)]
    store = await ExecutionStore.open(store_path(settings.data_dir))
    try:
        for r, state in [(created, ExecutionState.PREPARING)] + [(v, ExecutionState.RUNNING) for v in vanished]:
            prepared = r.model_copy(update={"results_dir": settings.results_dir(r.execution_id)})
            await store.create(ExecutionRecord(request=prepared, state=state))
    finally:
        await store.close()
    labelled_container(docker_client, node_id, created.execution_id)  # created, never started
    running = await start_server(settings)
    try:
        async with NodeClient(running.address) as client:
            done = await asyncio.wait_for(client.wait(created.execution_id), 30)
            assert done.result.status is ResultStatus.ERROR
            assert "before starting it" in done.result.error_message
            for v in vanished:
                gone = await asyncio.wait_for(client.wait(v.execution_id), 30)
                assert "removed while the node was down" in gone.result.error_message
            info = await client.node_info()
            assert info.allocated == Resources(), "recovered executions released what they held"
    finally:
        await running.stop(1)


def test_requeued_priority_comes_from_the_queued_event() -> None:
    from haddock.executor.records import EventKind, ExecutionEvent
    from haddock.node.admission import queued_priority

    r = job("true")
    record = ExecutionRecord(
        request=r,
        state=ExecutionState.QUEUED,
        events=[
            ExecutionEvent(execution_id=r.execution_id, kind=EventKind.QUEUED, message="q", details={"priority": 7})
        ],
    )
    assert queued_priority(record) == 7
    assert queued_priority(ExecutionRecord(request=r)) == 0
