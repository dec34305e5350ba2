"""Jobs of job types as services, what the node owns: the liveness probe checks the deployment timestamp, a
redeploy of a running version is the node's (the new one ready first, the old one then drained and stopped),
and a job's built image outlives a restart of the node.

Real engine, real node, the local base images (scripts/build-test-images.sh), as in test_jobtypes.py.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from haddock.executor.jobspec import parse_manifest
from haddock.executor.records import EventKind, ExecutionState, ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient
from haddock.node.client._jobs import pack_source, service_for_job
from haddock.node.config import OnShutdown, ServicesSettings
from haddock.node.jobtypes.config import JobTypesSettings
from haddock.node.server import RunningServer, start_server
from tests.conftest import node_settings
from tests.test_jobtypes import base_images, copy_job, events, job_node  # noqa: F401
from tests.test_services import port_block

FAST = {"port": "http", "interval": 0.2, "timeout": 2.0, "failure_threshold": 2, "start_period": 0}


def job_service(job: Path, **service: Any) -> RunCommandRequest:
    """A deploy's request, as the CLI makes it, with probes fast enough for a test."""
    manifest = parse_manifest((job / "job.yaml").read_text())
    spec = service_for_job(manifest)
    spec["readiness"] = {**FAST, "path": "/ready", "start_period": 60.0}
    spec["liveness"] = {**FAST, "path": "/live"}
    spec.update(service)
    return RunCommandRequest.model_validate(
        {
            "job_id": f"{manifest.name}-{manifest.version}",
            "execution_id": f"j-{uuid.uuid4().hex[:12]}",
            "engine": {"image": f"haddock-job/{manifest.name}:unbuilt", "pull_policy": "never"},
            "network": {"mode": "bridge"},
            "kind": "service",
            "service": spec,
            "input_sources": [pack_source(job)],
            "job": {"manifest": manifest},
        }
    )


async def test_a_live_answer_with_another_deployment_timestamp_is_not_live(
    job_node: RunningServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An old container answering /live (another deployment's timestamp) is not this deployment: not live."""
    job = copy_job("adder-python", tmp_path)
    entry = job / "entrypoint.py"
    entry.write_text('import os\nos.environ["JOB_DEPLOYMENT_TIMESTAMP"] = "1"\n' + entry.read_text())
    request = job_service(job, restart={"policy": "never"})
    async with NodeClient(job_node.address) as client:
        await client.start(request)
        result = (await asyncio.wait_for(client.wait(request.execution_id), 120)).result
        assert result.status is ResultStatus.ERROR, result
        assert "deployment_timestamp" in result.error_message, result.error_message
        failed = [e for e in await events(client, request.execution_id) if e["kind"] == "probe-failed"]
        assert failed and failed[0]["details"]["probe"] == "liveness"
        reason = failed[0]["details"]["reason"]
        assert "deployment_timestamp 1" in reason and "an older container" in reason, reason


async def test_redeploy_of_a_running_version_is_the_nodes(
    job_node: RunningServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Over the gRPC API alone (no CLI): the node stops the old execution once the new one is ready; a new
    one that fails leaves the old one serving."""
    job = copy_job("adder-python", tmp_path)
    async with NodeClient(job_node.address) as client:
        old = job_service(job)
        await client.start(old)
        assert (await client.wait_ready(old.execution_id)).ready
        new = job_service(job)
        await client.start(new)
        assert (await client.wait_ready(new.execution_id)).ready
        done = (await asyncio.wait_for(client.wait(old.execution_id), 60)).result
        assert done.status is ResultStatus.CANCELLED
        deployed = [e for e in await events(client, new.execution_id) if e["kind"] == EventKind.DEPLOYED.value]
        assert deployed and deployed[0]["details"]["replaced"] == old.execution_id, deployed
        stopped = [e for e in await events(client, old.execution_id) if e["kind"] == "cancel-requested"]
        assert stopped and new.execution_id in stopped[0]["message"], stopped

        # A broken deploy of the same version: the running one keeps serving.
        (job / "entrypoint.py").write_text("class AdderJob:\n    def perform(self, numbers)\n        return 1\n")
        broken = job_service(job)
        await client.start(broken)
        assert (await asyncio.wait_for(client.wait(broken.execution_id), 120)).result.status is ResultStatus.ERROR
        assert (await client.describe(new.execution_id))["state"] == "EXECUTION_STATE_READY"
        await client.cancel(new.execution_id)


async def test_a_job_service_restarts_after_a_node_restart_with_its_built_image(
    tmp_path: Path,
    node_id: str,
    base_images: dict[str, str],  # noqa: F811
) -> None:
    """The built image is kept with the execution: after the node restarted, a job's container that exits is
    replaced by one of the same image (not the unbuilt placeholder the request names)."""
    services = ServicesSettings(port_range=port_block(4), gateway_listen="127.0.0.1:0")
    settings = node_settings(
        tmp_path,
        node_id,
        services=services,
        jobtypes=JobTypesSettings(base_images=base_images, build_timeout=300),
    ).model_copy(update={"on_shutdown": OnShutdown.LEAVE_RUNNING})
    request = job_service(
        copy_job("adder-python", tmp_path), restart={"policy": "on-failure", "max_restarts": 3, "backoff_initial": 0.1}
    )
    exec_id = request.execution_id
    running = await start_server(settings)
    try:
        async with NodeClient(running.address) as client:
            await client.start(request)
            assert (await client.wait_ready(exec_id)).ready
            image = next(e for e in await events(client, exec_id) if e["kind"] == "built")["details"]["image"]
        await running.stop(1)
        running = await start_server(settings)
        stored = await running.node.store.get(exec_id)
        assert stored is not None and stored.built_image == image  # kept with the execution
        async with NodeClient(running.address) as client:
            assert (await client.wait_ready(exec_id)).ready
            docker_client = docker.from_env()
            try:
                container = docker_client.containers.get(f"haddock-{node_id}-{exec_id}")
                assert container.image.tags == [image]
                container.kill()
            finally:
                docker_client.close()
            for _ in range(600):
                evs = await events(client, exec_id)
                started = [e for e in evs if e["kind"] == "started"]
                state = (await client.describe(exec_id))["state"]
                if len(started) == 2 and state == "EXECUTION_STATE_READY":
                    break
                assert not ExecutionState[state.removeprefix("EXECUTION_STATE_")].terminal, evs[-5:]
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"the job's service was not restarted: {evs[-5:]}")
            done = await client.cancel(exec_id)
            assert done.result.status is ResultStatus.CANCELLED
    finally:
        await running.stop(1)
        cleanup = docker.from_env()
        try:
            for c in cleanup.containers.list(all=True, filters={"label": f"haddock.node-id={node_id}"}):
                c.remove(force=True)
        finally:
            cleanup.close()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"deployment_timestamp": 1700000000}', ""),
        (b'{"deployment_timestamp": "1700000000"}', ""),
        (b'{"deployment_timestamp": 1600000000}', "deployment_timestamp 1600000000, not this deployment's"),
        (b'{"status": "live"}', "no deployment_timestamp"),
        (b"live", "not the JSON object"),
        (b'{"deployment_timestamp": true}', "deployment_timestamp True"),
    ],
)
def test_what_a_jobs_live_answer_must_say(body: bytes, why: str) -> None:
    from haddock.executor.probes import _other_deployment

    found = _other_deployment(body, 1700000000)
    assert (found == "") if not why else (why in found), found
