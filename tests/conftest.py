"""Shared fixtures: a real Docker engine, locally built test images, a node id per test session.

Tests that need the engine FAIL when it is absent (never skip): `make test` starts one.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from haddock.executor.docker import LABEL_NODE, DockerConfig, DockerExecutor
from haddock.executor.request import EngineSpec, RunCommandRequest

BUSYBOX = "haddock-test/busybox:latest"
STOPSIGNAL_IMAGE = "haddock-test/busybox-usr1:latest"

SESSION_NODE_ID = f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"no Docker engine answers ({exc}); run `make test` (or scripts/bootstrap.sh) to install and start one",
            pytrace=False,
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(BUSYBOX)
    except docker.errors.ImageNotFound:
        pytest.fail(f"test image {BUSYBOX} is missing; run scripts/build-test-images.sh", pytrace=False)
    return BUSYBOX


@pytest.fixture(scope="session")
def stopsignal_image(docker_client: docker.DockerClient, busybox_image: str) -> str:
    """busybox with STOPSIGNAL SIGUSR1, built locally from the busybox test image."""
    dockerfile = f"FROM {busybox_image}\nSTOPSIGNAL SIGUSR1\n".encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=STOPSIGNAL_IMAGE, rm=True, pull=False)
    return STOPSIGNAL_IMAGE


@pytest.fixture(scope="session")
def node_id(docker_client: docker.DockerClient) -> Iterator[str]:
    """A node id unique to this session; at the end no container with its label may remain."""
    yield SESSION_NODE_ID
    left = docker_client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={SESSION_NODE_ID}"})
    for c in left:
        c.remove(force=True)
    assert not left, f"containers left behind by the test session: {[c.name for c in left]}"


@pytest.fixture
def executor_config() -> DockerConfig:
    return DockerConfig(stop_grace=2)


ExecutorFactory = Callable[..., DockerExecutor]


@pytest.fixture
def new_executor(executor_config: DockerConfig, node_id: str, tmp_path: Path) -> ExecutorFactory:
    """A Docker executor of the test node: the test's config (or ``config``), logs under tmp_path."""

    def make(config: DockerConfig | None = None, *, log_dir: Path | None = None, **kwargs: Any) -> DockerExecutor:
        return DockerExecutor(
            config or executor_config, node_id=node_id, log_dir=log_dir or tmp_path / "logs", **kwargs
        )

    return make


@pytest.fixture
async def executor(new_executor: ExecutorFactory, busybox_image: str) -> AsyncIterator[DockerExecutor]:
    ex = new_executor()
    yield ex
    await ex.shutdown(stop_running=True)


RequestFactory = Callable[..., RunCommandRequest]


@pytest.fixture
def make_request(tmp_path: Path, busybox_image: str) -> RequestFactory:
    """Build a request running a shell script in the busybox test image."""

    def make(script: str | None = None, *, image: str = busybox_image, **kw: Any) -> RunCommandRequest:
        exec_id = kw.pop("execution_id", None) or f"e-{uuid.uuid4().hex[:12]}"
        engine_kw = kw.pop("engine", {})
        params = ["sh", "-c", script] if script is not None else engine_kw.pop("parameters", [])
        return RunCommandRequest.model_validate(
            {
                "job_id": kw.pop("job_id", "job-1"),
                "execution_id": exec_id,
                "results_dir": tmp_path / "results" / exec_id,
                "engine": EngineSpec.model_validate({"image": image, "parameters": params, **engine_kw}),
                **kw,
            }
        )

    return make


def node_containers(client: docker.DockerClient, node: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={node}"}))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


# ----------------------------------------------------------------------------- the node over gRPC

from opentelemetry import metrics as otel_metrics  # noqa: E402
from opentelemetry import trace as otel_trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from haddock.node.client import NodeClient  # noqa: E402
from haddock.node.config import OnShutdown, Settings  # noqa: E402
from haddock.node.server import RunningServer, start_server  # noqa: E402
from haddock.storage.config import StorageSettings  # noqa: E402


class TelemetryCapture:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        otel_trace.set_tracer_provider(tracer_provider)
        otel_metrics.set_meter_provider(MeterProvider(metric_readers=[self.metrics]))


_TELEMETRY: TelemetryCapture | None = None


@pytest.fixture(scope="session")
def telemetry() -> TelemetryCapture:
    """In-memory exporters, installed once per process (the OpenTelemetry globals can be set once)."""
    global _TELEMETRY
    if _TELEMETRY is None:
        _TELEMETRY = TelemetryCapture()
    return _TELEMETRY


def node_settings(tmp_path: Path, node_id: str, **kw: Any) -> Settings:
    """A node for tests: on 127.0.0.1, where the test servers (HTTP, S3) are, so private networks are allowed."""
    kw.setdefault("storage", StorageSettings(allow_private_networks=True))
    kw.setdefault("docker", DockerConfig(stop_grace=2))
    return Settings(
        node_id=node_id,
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        on_shutdown=OnShutdown.STOP,
        shutdown_grace=1,
        **kw,
    )


@pytest.fixture
async def node_server(
    tmp_path: Path, node_id: str, busybox_image: str, telemetry: TelemetryCapture
) -> AsyncIterator[RunningServer]:
    running = await start_server(node_settings(tmp_path, node_id))
    yield running
    await running.stop(1)


@pytest.fixture
async def client(node_server: RunningServer) -> AsyncIterator[NodeClient]:
    async with NodeClient(node_server.address) as c:
        yield c


# The fixtures of the NCL tests (tests/test_cluster*.py): one in-process node joined to the test orchestrator.
pytest_plugins = ("tests.support.nclnode",)
