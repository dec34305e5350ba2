"""Image pulls from a registry the requester names: no pull from loopback, private, link-local (cloud metadata)
or other non-public addresses unless the operator allows private registries (``docker.allow_private_registries``).

Checked at bid and at Start, only when a pull would happen (the pull policy; an image already on the node is
not pulled under ``if-not-present``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import grpc
import pytest

from haddock.executor.docker import DockerConfig
from haddock.executor.records import ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient, NodeError
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, TelemetryCapture, node_settings

PRIVATE = [
    "169.254.169.254/x:1",
    "127.0.0.1:5000/x",
    "10.0.0.1/x",
    "192.168.1.2:443/team/app:2",
    "[::1]:5000/x:1",
    "localhost:5000/x",  # a name: resolved, and it resolves to loopback
]


def request(image: str, pull: str = "if-not-present") -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "j",
            "execution_id": f"r-{uuid.uuid4().hex[:10]}",
            "engine": {"image": image, "parameters": ["echo", "hi"], "pull_policy": pull},
        }
    )


@pytest.fixture
async def strict_node(
    tmp_path: Path, node_id: str, busybox_image: str, telemetry: TelemetryCapture
) -> AsyncIterator[RunningServer]:
    running = await start_server(node_settings(tmp_path, node_id))  # the default: no private registries
    yield running
    await running.stop(1)


@pytest.mark.parametrize("image", PRIVATE)
async def test_a_pull_from_a_private_registry_is_refused_at_bid_and_at_start(
    strict_node: RunningServer, image: str
) -> None:
    async with NodeClient(strict_node.address) as client:
        bid = await client.should_bid(request(image))
        assert not bid.should_bid
        assert "registry" in bid.reason and "not a public address" in bid.reason, bid.reason
        assert "docker.allow_private_registries" in bid.reason, bid.reason
        with pytest.raises(NodeError) as refused:
            await client.start(request(image))
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.message == bid.reason
        with pytest.raises(NodeError) as always:
            await client.start(request(image, pull="always"))
        assert always.value.code is grpc.StatusCode.FAILED_PRECONDITION


async def test_no_pull_no_check(strict_node: RunningServer) -> None:
    # Under pull policy never nothing is pulled: the image is simply not there.
    async with NodeClient(strict_node.address) as client:
        done = await client.run(request("169.254.169.254/x:1", pull="never"))
    assert done.result.status is ResultStatus.ERROR
    assert "registry" not in done.result.error_message


@pytest.fixture
def local_tag(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    """The busybox test image, tagged on this engine under a loopback registry's name (never pushed)."""
    repo = f"127.0.0.1:5999/haddock-test/local-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(busybox_image).tag(repo, "1")
    yield f"{repo}:1"
    docker_client.images.remove(f"{repo}:1")


async def test_an_image_already_on_the_node_is_not_pulled_so_not_refused(
    strict_node: RunningServer, local_tag: str
) -> None:
    async with NodeClient(strict_node.address) as client:
        assert (await client.should_bid(request(local_tag))).should_bid
        done = await client.run(request(local_tag))
        assert done.result.status is ResultStatus.SUCCESS and done.result.stdout == "hi\n"
        bid = await client.should_bid(request(local_tag, pull="always"))  # always pulls: refused
        assert not bid.should_bid and "not a public address" in bid.reason


async def test_the_operator_may_allow_private_registries(
    tmp_path: Path, node_id: str, busybox_image: str, telemetry: TelemetryCapture
) -> None:
    settings = node_settings(tmp_path, node_id, docker=DockerConfig(stop_grace=2, allow_private_registries=True))
    running = await start_server(settings)
    try:
        async with NodeClient(running.address) as client:
            for image in PRIVATE:
                bid = await client.should_bid(request(image))
                assert bid.should_bid, (image, bid.reason)
    finally:
        await running.stop(1)


async def test_docker_hub_and_the_bid_pass(strict_node: RunningServer) -> None:
    async with NodeClient(strict_node.address) as client:
        assert (await client.should_bid(request(BUSYBOX))).should_bid
        assert (await client.should_bid(request("docker.io/library/alpine:3", pull="always"))).should_bid
