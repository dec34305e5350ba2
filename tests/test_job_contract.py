"""Racetrack's job contract, checked on deployed jobs: one service per shipped plugin (the fixtures adder-go and
adder-python), deployed once for this module on one node and asked directly (the container's host port) and
through the gateway (``/pub/job/adder/{version}/``).

The job images are tagged by content, so a rerun builds nothing (the python copy differs from the fixture only
by a ``metrics()`` and a ``git_version`` label: one job layer, once per machine).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from haddock.executor.jobspec import parse_manifest
from haddock.executor.records import epoch_ms
from haddock.node.client import NodeClient
from haddock.node.config import ServicesSettings
from haddock.node.jobtypes.config import JobTypesSettings
from haddock.node.server import RunningServer, start_server
from tests.conftest import TelemetryCapture, node_settings
from tests.test_job_services import job_service
from tests.test_jobtypes import JOBS, base_images  # noqa: F401
from tests.test_services import port_block

GIT_VERSION = "5f3a9c1"
PY_METRICS = """
    def metrics(self) -> list:
        return [{"name": "adder_calls", "description": "calls so far", "value": 7, "labels": {"kind": "sum"}}]
"""


@dataclass
class Deployed:
    exec_id: str
    version: str
    direct: str  # http://127.0.0.1:PORT (the container's port 7000 on the host)
    gateway: str  # http://GATEWAY/pub/job/adder/VERSION
    container: Any  # docker-py's Container
    created_at: datetime


@dataclass
class Jobs:
    node: RunningServer
    go: Deployed
    py: Deployed


def _python_job(into: Path) -> Path:
    job = into / "adder-python"
    job.mkdir()
    (job / "entrypoint.py").write_text((JOBS / "adder-python" / "entrypoint.py").read_text() + PY_METRICS)
    data = parse_manifest((JOBS / "adder-python" / "job.yaml").read_text()).model_dump(exclude={"not_applied"})
    data["labels"] = {"git_version": GIT_VERSION}
    (job / "job.yaml").write_text(json.dumps(data))
    return job


@pytest.fixture(scope="module")
async def jobs(
    tmp_path_factory: pytest.TempPathFactory,
    node_id: str,
    base_images: dict[str, str],  # noqa: F811
    telemetry: TelemetryCapture,
) -> AsyncIterator[Jobs]:
    tmp = tmp_path_factory.mktemp("contract")
    services = ServicesSettings(port_range=port_block(6), gateway_listen="127.0.0.1:0")
    settings = node_settings(
        tmp, node_id, services=services, jobtypes=JobTypesSettings(base_images=base_images, build_timeout=300)
    )
    running = await start_server(settings)
    engine = docker.from_env()
    try:
        async with NodeClient(running.address) as client:
            requests = [job_service(JOBS / "adder-go"), job_service(_python_job(tmp))]
            for request in requests:
                await client.start(request)
            ready = await asyncio.wait_for(asyncio.gather(*(client.wait_ready(r.execution_id) for r in requests)), 280)
            assert all(r.ready for r in ready), ready
            deployed = []
            for request in requests:
                assert request.job is not None
                container = engine.containers.get(f"haddock-{node_id}-{request.execution_id}")
                port = container.attrs["NetworkSettings"]["Ports"]["7000/tcp"][0]["HostPort"]
                described = await client.describe(request.execution_id)
                version = request.job.manifest.version
                deployed.append(
                    Deployed(
                        exec_id=request.execution_id,
                        version=version,
                        direct=f"http://127.0.0.1:{port}",
                        gateway=f"http://{running.node.gateway_address}/pub/job/adder/{version}",
                        container=container,
                        created_at=datetime.fromisoformat(described["created_at"]),
                    )
                )
            yield Jobs(running, *deployed)
            for d in deployed:
                await client.cancel(d.exec_id)
    finally:
        engine.close()
        await running.stop(1)


async def call(url: str, body: bytes | AsyncIterable[bytes] | None = None) -> tuple[int, str, str]:
    """(status, body, content type); GET without a body, else POST."""
    async with aiohttp.ClientSession() as s:
        method = s.get(url) if body is None else s.post(url, data=body)
        async with method as resp:
            return resp.status, await resp.text(), resp.headers.get("Content-Type", "")


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """A body aiohttp sends with Transfer-Encoding: chunked (it has no length)."""
    for part in parts:
        yield part
        await asyncio.sleep(0.01)


def bases(d: Deployed) -> list[str]:
    return [d.direct, d.gateway]


# ----------------------------------------------------------------------------- the body, however it is sent


@pytest.mark.parametrize("plugin", ["go", "py"])
async def test_a_chunked_post_is_read_directly_and_through_the_gateway(jobs: Jobs, plugin: str) -> None:
    deployed: Deployed = getattr(jobs, plugin)
    for base in bases(deployed):
        status, text, _ = await call(f"{base}/api/v1/perform", chunks(b'{"numbers":', b" [1, 1]}"))
        assert (status, text) == (200, "2"), base
        status, text, _ = await call(f"{base}/api/v1/perform", b'{"numbers": [1, 1]}')
        assert (status, text) == (200, "2"), base


async def raw_request(base: str, head: str, body: bytes) -> tuple[int, str]:
    """One request written as it is (a body no client library would send), then the end of what the client
    sends; the answer's status and body."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    status_line, _, rest = answer.decode(errors="replace").partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


@pytest.mark.parametrize(
    ("headers", "body", "status", "why"),
    [
        ("Transfer-Encoding: chunked\n", b"zz\r\n{}\r\n0\r\n\r\n", 400, "chunk"),
        ("Transfer-Encoding: chunked\n", b'10\r\n{"numbers": [1]}', 400, "chunk"),  # cut short
        ("Transfer-Encoding: gzip\n", b"x", 400, "Transfer-Encoding"),
        ("Transfer-Encoding: chunked\nContent-Length: 2\n", b"2\r\n{}\r\n0\r\n\r\n", 400, "Content-Length"),
        ("Content-Length: many\n", b"{}", 400, "Content-Length"),
        ("Content-Length: 40\n", b'{"numbers": [1]}', 400, "body"),  # the client stops sending
        ("Content-Length: 999999999999\n", b"", 413, "larger"),
    ],
)
async def test_python_wrapper_refuses_a_body_it_cannot_read(
    jobs: Jobs, headers: str, body: bytes, status: int, why: str
) -> None:
    """Never the example input for a body that was sent but not read: 400 (or 413), saying why."""
    head = f"POST /api/v1/perform HTTP/1.1\nHost: job\nConnection: close\n{headers}"
    got, text = await raw_request(jobs.py.direct, head, body)
    assert got == status, text
    assert why in json.loads(text)["error"], text


# ----------------------------------------------------------------------------- python3


async def test_python_perform_answers_and_errors(jobs: Jobs) -> None:
    for base in bases(jobs.py):
        url = f"{base}/api/v1/perform"
        status, text, _ = await call(url, b"{}")
        assert status == 500 and json.loads(text)["error"] == "'numbers' parameter was not given", text
        assert json.loads(text)["type"] == "RuntimeError"
        status, text, _ = await call(url, b"not json")
        assert status == 400 and "not JSON" in json.loads(text)["error"], text
        status, text, _ = await call(url, b'{"count": 3}')
        assert status == 400 and "count" in json.loads(text)["error"], text  # wrong arguments
        status, text, _ = await call(url, b"[1, 2]")
        assert status == 400 and "JSON object" in json.loads(text)["error"], text
        status, text, _ = await call(url, b'{"numbers": ["x"]}')
        assert (status, json.loads(text)) == (400, {"error": "'numbers' must hold numbers only", "type": "ValueError"})
        status, text, _ = await call(url, b"")  # no body: docs_input_example()
        assert (status, text) == (200, "42")


async def test_python_live_ready_health_parameters_metrics(jobs: Jobs) -> None:
    py = jobs.py
    for base in bases(py):
        status, text, _ = await call(f"{base}/live")
        assert status == 200 and json.loads(text)["deployment_timestamp"] == epoch_ms(py.created_at)
        status, text, _ = await call(f"{base}/ready")
        assert (status, json.loads(text)["status"]) == (200, "ready")
        status, text, _ = await call(f"{base}/health")
        health = json.loads(text)
        assert status == 200
        assert (health["job_name"], health["job_version"], health["git_version"], health["status"]) == (
            "adder",
            "0.0.2",
            GIT_VERSION,
            "pass",
        )
        assert health["deployed_by_racetrack_version"] == f"haddock {jobs.node.node.version}"
        status, text, _ = await call(f"{base}/api/v1/parameters")
        assert status == 200 and json.loads(text) == {
            "numbers": {"required": False, "type": "list | None", "default": None}
        }
    await call(f"{py.direct}/api/v1/perform", b'{"numbers": [1]}')
    status, text, ctype = await call(f"{py.gateway}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'adder_calls{kind="sum"} 7.0' in text and "# HELP adder_calls calls so far" in text
    requests = next(line for line in text.splitlines() if line.startswith("perform_requests_total "))
    assert int(requests.split()[1]) >= 1


# ----------------------------------------------------------------------------- golang


async def test_go_perform_errors_live_and_health(jobs: Jobs) -> None:
    go = jobs.go
    for base in bases(go):
        url = f"{base}/api/v1/perform"
        status, text, _ = await call(url, b"not json")
        assert status == 400 and text.strip() == "invalid character 'o' in literal null (expecting 'u')", text
        status, text, _ = await call(url, b"{}")
        assert (status, text.strip()) == (500, "'numbers' parameter was not given")
        status, text, _ = await call(url, b'{"numbers": [40, 2]}')
        assert (status, text) == (200, "42")
        status, text, _ = await call(f"{base}/live")
        assert status == 200 and json.loads(text)["deployment_timestamp"] == epoch_ms(go.created_at)
        status, text, _ = await call(f"{base}/health")
        health = json.loads(text)
        assert status == 200
        assert (health["job_name"], health["job_version"], health["git_version"], health["status"]) == (
            "adder",
            "0.0.1",
            "",
            "pass",
        )
        assert health["deployed_by_racetrack_version"] == f"haddock {jobs.node.node.version}"


# ----------------------------------------------------------------------------- the environment


@pytest.mark.parametrize("plugin", ["go", "py"])
async def test_the_platforms_environment_in_the_running_container(jobs: Jobs, plugin: str) -> None:
    deployed: Deployed = getattr(jobs, plugin)
    deployed.container.reload()
    env = dict(e.split("=", 1) for e in deployed.container.attrs["Config"]["Env"])
    assert env["JOB_NAME"] == "adder"
    assert env["JOB_VERSION"] == deployed.version
    assert env["JOB_DEPLOYMENT_TIMESTAMP"] == str(epoch_ms(deployed.created_at))
    assert env["GIT_VERSION"] == (GIT_VERSION if plugin == "py" else "")
    assert env["DEPLOYED_BY_RACETRACK_VERSION"] == f"haddock {jobs.node.node.version}"
    if plugin == "py":
        assert env["GREETING"] == "hello"  # the manifest's runtime_env
