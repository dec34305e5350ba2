"""Services probed by their image's own HEALTHCHECK, on a real engine and a real node.

The test image is built here from the busybox test image (no network) with short health intervals, and
removed at the end of the module.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from haddock.executor.records import EventKind, ExecutionState, ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient
from tests.test_services import NodeFactory, service_node  # noqa: F401 - the fixture

HEALTHY_FILE = "/tmp/healthy"


@pytest.fixture(scope="module")
def healthcheck_image(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    """busybox with a HEALTHCHECK that passes while HEALTHY_FILE exists (checked every 100ms)."""
    tag = f"haddock-test/healthcheck:{uuid.uuid4().hex[:8]}"
    dockerfile = (
        f"FROM {busybox_image}\nHEALTHCHECK --interval=100ms --timeout=1s --retries=2 CMD test -f {HEALTHY_FILE}\n"
    ).encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, forcerm=True, pull=False)
    try:
        yield tag
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.images.remove(tag, force=True)


def image_service(image: str, script: str, **spec: Any) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "svc",
            "execution_id": f"h-{uuid.uuid4().hex[:10]}",
            "engine": {"image": image, "parameters": ["sh", "-c", script]},
            "network": {"mode": "none"},
            "kind": "service",
            "service": {"image_healthcheck": True, **spec},
        }
    )


async def test_an_image_healthcheck_makes_the_service_ready(
    service_node: NodeFactory,  # noqa: F811
    healthcheck_image: str,
) -> None:
    node = await service_node()
    request = image_service(healthcheck_image, f"touch {HEALTHY_FILE}; exec sleep 60")
    async with NodeClient(node.address) as client:
        await client.start(request)
        readiness = await client.wait_ready(request.execution_id)
        assert readiness.ready, readiness
        await client.cancel(request.execution_id)
        done = await client.wait(request.execution_id)
        described = await client.describe(request.execution_id)
    assert done.result.status is ResultStatus.CANCELLED
    ready = [e for e in described["events"] if e["kind"] == "state" and e["details"]["state"] == "ready"]
    assert ready and "HEALTHCHECK reports healthy" in ready[0]["message"]


async def test_an_unhealthy_image_healthcheck_restarts_the_service_under_its_policy(
    service_node: NodeFactory,  # noqa: F811
    healthcheck_image: str,
) -> None:
    node = await service_node()
    # Healthy for a second, then the check fails: ready -> unhealthy -> restart; the second attempt too,
    # and with one restart allowed the service then ends in error.
    request = image_service(
        healthcheck_image,
        f"touch {HEALTHY_FILE}; sleep 1; rm {HEALTHY_FILE}; exec sleep 60",
        restart={"policy": "on-failure", "max_restarts": 1, "backoff_initial": "50ms"},
    )
    async with NodeClient(node.address) as client:
        await client.start(request)
        done = await client.wait(request.execution_id)
        described = await client.describe(request.execution_id)
    assert done.result.status is ResultStatus.ERROR, done.result
    message = done.result.error_message
    assert "is unhealthy: the image's HEALTHCHECK reports unhealthy" in message, message
    assert "restarted 1 time" in message, message
    kinds = [e["kind"] for e in described["events"]]
    assert kinds.count("started") == 2 and kinds.count("restarting") == 1
    assert described["attempts"] == 2
    states = [e["details"]["state"] for e in described["events"] if e["kind"] == "state"]
    first = states.index("ready")
    assert states[first : first + 3] == ["ready", "unhealthy", "restarting"], states
    assert states[-4:] == ["ready", "unhealthy", "finishing", "failed"], states
    probes = [e for e in described["events"] if e["kind"] == EventKind.PROBE_FAILED.value]
    assert [p["details"]["probe"] for p in probes] == ["healthcheck", "healthcheck"]


async def test_an_image_without_a_healthcheck_is_an_error_not_a_service_starting_forever(
    service_node: NodeFactory,  # noqa: F811
    busybox_image: str,
) -> None:
    node = await service_node()
    request = image_service(busybox_image, "exec sleep 60")
    async with NodeClient(node.address) as client:
        await client.start(request)
        readiness = await client.wait_ready(request.execution_id)
        assert readiness.state is ExecutionState.FAILED, readiness
        done = await client.wait(request.execution_id)
    assert done.result.status is ResultStatus.ERROR
    assert "has no HEALTHCHECK" in done.result.error_message, done.result.error_message
