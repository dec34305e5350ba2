"""How a job's image is built, on a real engine and node: the single-template plugin form (a test plugin,
tests/fixtures/jobtypes/pysingle), builds of one image shared by concurrent executions, the build timeout, and
a changed source file that builds only the job's layers on the cached base image.

Tests that must build change the source by a unique line, and remove the images they made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from haddock.node.client import NodeClient
from haddock.node.jobtypes.builder import JobTypeBuilder
from haddock.node.jobtypes.config import SHIPPED_PLUGINS_DIR, JobTypesSettings
from haddock.node.server import RunningServer, start_server
from tests.conftest import TelemetryCapture, node_settings
from tests.test_cli import haddock
from tests.test_jobtypes import BASE_IMAGES, base_images, build_steps, copy_job, events  # noqa: F401

PLUGIN = Path(__file__).parent / "fixtures" / "jobtypes" / "pysingle"
PLUGINS = [SHIPPED_PLUGINS_DIR / "golang", SHIPPED_PLUGINS_DIR / "python3", PLUGIN]

NodeFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def build_node(
    tmp_path: Path,
    node_id: str,
    base_images: dict[str, str],  # noqa: F811
    telemetry: TelemetryCapture,
) -> AsyncIterator[NodeFactory]:
    """A node with the shipped job types and the single-template test plugin (``build_timeout`` as given)."""
    started: list[RunningServer] = []

    async def start(build_timeout: float = 300) -> RunningServer:
        jobtypes = JobTypesSettings(
            plugins=PLUGINS,
            base_images={**base_images, "pysingle": BASE_IMAGES["python3"]},
            build_timeout=build_timeout,
        )
        running = await start_server(node_settings(tmp_path / f"n{len(started)}", node_id, jobtypes=jobtypes))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(1)


@pytest.fixture
def made_images() -> Iterator[list[str]]:
    """Image tags a test made (its unique sources): removed at the end."""
    tags: list[str] = []
    yield tags
    client = docker.from_env()
    try:
        for tag in tags:
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(tag, noprune=False)
    finally:
        client.close()


def job_builder(running: RunningServer) -> JobTypeBuilder:
    builder = running.node.executor.job_builder
    assert isinstance(builder, JobTypeBuilder)
    return builder


def unique(job: Path, file: str, comment: str = "#") -> None:
    """A changed source file: a new content hash, a new build."""
    path = job / file
    path.write_text(path.read_text() + f"\n{comment} {uuid.uuid4().hex}\n")


async def run_job(node: str, job: Path, payload: str = '{"numbers": [1, 2, 3]}') -> dict[str, Any]:
    done = await haddock("run", "--node", node, "--job", str(job), "--payload", payload, "--json", limit=240)
    return dict(json.loads(done.out))


def built_image(evs: list[dict[str, Any]]) -> str:
    return str(next(e for e in evs if e["kind"] == "built")["details"]["image"])


# ----------------------------------------------------------------------------- the single-template form


async def test_a_single_template_plugin_builds_and_runs_a_job(
    build_node: NodeFactory, tmp_path: Path, made_images: list[str]
) -> None:
    running = await build_node()
    job = copy_job("adder-single", tmp_path)
    result = await run_job(running.address, job)
    assert result["status"] == "success", result
    results = running.node.settings.executions_dir / result["execution_id"] / "results"
    assert (results / "stdout").read_text() == "6"
    async with NodeClient(running.address) as client:
        evs = await events(client, result["execution_id"])
    image = built_image(evs)
    made_images.append(image)
    steps = build_steps(evs)
    # One build FROM the configured image itself: no base image of the job type is built.
    assert steps[0].endswith(f"FROM {BASE_IMAGES['python3']}"), steps
    assert any("COPY .jobtype/wrapper.py" in s for s in steps), steps
    assert job_builder(running).builder.builds_started == 1
    listed = await haddock("jobtypes", "--node", running.address, "--json")
    found = {t["name"]: t for t in json.loads(listed.out)}
    assert found["pysingle"]["version"] == "0.1.0"


# ----------------------------------------------------------------------------- builds shared, bounded


async def test_concurrent_deploys_of_the_same_content_build_once(
    build_node: NodeFactory, tmp_path: Path, made_images: list[str]
) -> None:
    running = await build_node()
    job = copy_job("adder-single", tmp_path)
    unique(job, "job.py")
    first, second = await asyncio.gather(run_job(running.address, job), run_job(running.address, job))
    assert first["status"] == second["status"] == "success", (first, second)
    assert job_builder(running).builder.builds_started == 1  # one build on the engine, for both
    async with NodeClient(running.address) as client:
        one = await events(client, first["execution_id"])
        two = await events(client, second["execution_id"])
        assert built_image(one) == built_image(two)
        made_images.append(built_image(one))
        logs = [
            b"".join([entry.data async for entry in client.logs(r["execution_id"])]).decode() for r in (first, second)
        ]
    assert sum("already in progress" in text for text in logs) == 1, logs  # the other one waited for it
    builder = next(text for text in logs if "already in progress" not in text)
    assert "Step 1/" in builder, logs  # the build's output in the execution's log (the waiter's: from then on)


async def test_a_build_over_the_build_timeout_fails_saying_so(
    build_node: NodeFactory, tmp_path: Path, made_images: list[str]
) -> None:
    running = await build_node(build_timeout=1)
    job = copy_job("adder-single", tmp_path, build_env={"BUILD_SLEEP": "4"})
    unique(job, "job.py")
    result = await run_job(running.address, job)
    assert result["status"] == "error", result
    message = result["error_message"]
    assert "building job adder-single 1.0.0 failed" in message, message
    assert "longer than the build timeout of 1s ([jobtypes] build_timeout)" in message, message
    async with NodeClient(running.address) as client:
        evs = await events(client, result["execution_id"])
    assert not any(e["kind"] == "built" for e in evs)
    assert not any(e["kind"] == "started" for e in evs)  # nothing ran


async def test_a_changed_file_builds_only_the_job_layers(
    build_node: NodeFactory, tmp_path: Path, made_images: list[str]
) -> None:
    """The base image of the job type is not built again; the job image's layers start with all of its."""
    running = await build_node()
    job = copy_job("adder-python", tmp_path)
    first = await run_job(running.address, job)
    builds = job_builder(running).builder.builds_started
    unique(job, "entrypoint.py")
    second = await run_job(running.address, job)
    assert first["status"] == second["status"] == "success", (first, second)
    async with NodeClient(running.address) as client:
        evs = await events(client, second["execution_id"])
    made_images.append(built_image(evs))
    steps = build_steps(evs)
    assert steps, "the changed source was not built"
    base = steps[0].split("FROM ", 1)[1]
    assert base.startswith("haddock-jobtype/python3:"), steps
    assert not any("python_wrapper" in s for s in steps)  # the base image's own steps did not run
    assert job_builder(running).builder.builds_started == builds + 1  # the job image only
    engine = docker.from_env()
    try:
        base_layers = engine.images.get(base).attrs["RootFS"]["Layers"]
        job_layers = engine.images.get(built_image(evs)).attrs["RootFS"]["Layers"]
    finally:
        engine.close()
    assert job_layers[: len(base_layers)] == base_layers  # every layer of the base image reused
    assert len(job_layers) > len(base_layers)
