"""One in-process haddock node joined to the test orchestrator (tests/support/orchestrator.py) over a real
nats-server: the fixture that starts it and the small waits the NCL tests share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from haddock.executor.docker import LABEL_EXECUTION, LABEL_NODE
from haddock.node.cluster.config import ClusterSettings
from haddock.node.cluster.transport import ClusterTransport
from haddock.node.server import RunningServer, start_server
from tests.conftest import TelemetryCapture, node_settings
from tests.support.orchestrator import TestOrchestrator

HEARTBEAT = 0.5
IMAGE = "haddock-test/busybox"

NodeFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_node(
    tmp_path: Path, node_id: str, busybox_image: str, telemetry: TelemetryCapture
) -> AsyncIterator[NodeFactory]:
    """``await start_node(url, **cluster)``: the test's node (its data dir under tmp_path, so a second call
    after a stop is the same node restarted), stopped at the end of the test. ``settings=`` replaces
    other node settings (e.g. ``{"docker": DockerConfig(...)}``)."""
    started: list[RunningServer] = []

    async def start(url: str, *, settings: dict[str, Any] | None = None, **cluster: Any) -> RunningServer:
        fields: dict[str, Any] = {"heartbeat_interval": HEARTBEAT, "heartbeat_miss_factor": 3}
        fields |= {"reconnect_min": 0.2, "reconnect_max": 1, "request_timeout": 2}
        cluster_settings = ClusterSettings.model_validate({"orchestrators": [url], **fields, **cluster})
        node = node_settings(tmp_path, node_id, cluster=cluster_settings)
        if settings:
            node = node.model_copy(update=settings)
        running = await start_server(node)
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.node._closing:
            await running.stop(1)


def transport(running: RunningServer) -> ClusterTransport:
    assert running.cluster is not None
    return running.cluster


async def joined(orch: TestOrchestrator, node_id: str) -> None:
    await orch.wait_for(lambda: node_id in orch.nodes and orch.nodes[node_id].connected, 20, "handshake")


async def containers_running(node_id: str, count: int = 1) -> None:
    """Wait until the engine runs ``count`` containers of the node."""
    client = docker.from_env()
    try:
        for _ in range(150):
            running = client.containers.list(filters={"label": f"{LABEL_NODE}={node_id}", "status": "running"})
            if len(running) >= count:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{count} containers of {node_id} did not start")
    finally:
        client.close()


def node_containers(node_id: str, execution_id: str | None = None) -> list[Any]:
    """The node's containers (of one execution), whatever their state."""
    client = docker.from_env()
    try:
        labels = [f"{LABEL_NODE}={node_id}"] + ([f"{LABEL_EXECUTION}={execution_id}"] if execution_id else [])
        return list(client.containers.list(all=True, filters={"label": labels}))
    finally:
        client.close()
