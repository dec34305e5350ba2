"""Image pulls from a real registry on 127.0.0.1 (Debian's docker-registry)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from haddock.executor.docker import DockerConfig, DockerExecutor
from haddock.executor.docker.images import is_transient_pull_error
from haddock.executor.records import EventKind, ExecutionEvent, ResultStatus
from tests.conftest import ExecutorFactory, RequestFactory
from tests.support.registry import count_manifest_gets, push_image, registry_log, run_registry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    with run_registry(tmp_path) as address:
        yield address


@pytest.fixture
def fresh_image(docker_client: docker.DockerClient, busybox_image: str, registry: str) -> Iterator[str]:
    """An image in the registry whose manifest the engine has never seen."""
    ref = push_image(docker_client, busybox_image, registry, "haddock-test/pulled", "v1", fresh_manifest=True)
    yield ref
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(ref, force=True)


async def test_concurrent_executions_pull_once(
    executor: DockerExecutor, make_request: RequestFactory, fresh_image: str, tmp_path: Path
) -> None:
    reqs = [make_request("echo pulled", image=fresh_image) for _ in range(2)]
    results = await asyncio.gather(*(executor.run(r) for r in reqs))
    for r in results:
        assert r.status is ResultStatus.SUCCESS, r.error_message
        assert r.stdout == "pulled\n"
    assert executor.driver.images.pulls_started == 1
    assert count_manifest_gets(registry_log(tmp_path)) == 1
    for r in reqs:
        kinds = [e.kind for e in executor.events(r.execution_id)]
        assert EventKind.PULLING in kinds and EventKind.IMAGE_READY in kinds


async def test_pull_progress_events(
    new_executor: ExecutorFactory, make_request: RequestFactory, fresh_image: str
) -> None:
    seen = []
    ex = new_executor(event_sink=seen.append)
    try:
        result = await ex.run(make_request("true", image=fresh_image))
        assert result.status is ResultStatus.SUCCESS, result.error_message
    finally:
        await ex.shutdown()
    progress = [e for e in seen if e.kind is EventKind.PULL_PROGRESS]
    assert progress, "pull progress is reported"
    assert any("Pull complete" in e.message or "Downloaded" in e.message for e in progress)


async def test_pull_policy_always_pulls_present_image(
    executor: DockerExecutor, make_request: RequestFactory, fresh_image: str
) -> None:
    first = await executor.run(make_request("true", image=fresh_image))
    assert first.status is ResultStatus.SUCCESS
    second = await executor.run(make_request("true", image=fresh_image, engine={"pull_policy": "always"}))
    assert second.status is ResultStatus.SUCCESS
    assert executor.driver.images.pulls_started == 2
    third = await executor.run(make_request("true", image=fresh_image))
    assert third.status is ResultStatus.SUCCESS
    assert executor.driver.images.pulls_started == 2  # if-not-present: no pull


async def test_image_not_in_registry_fails_without_retry(
    new_executor: ExecutorFactory, make_request: RequestFactory, registry: str
) -> None:
    seen: list[ExecutionEvent] = []
    ex = new_executor(event_sink=seen.append)
    try:
        req = make_request("true", image=f"{registry}/haddock-test/absent:v1")
        result = await ex.run(req)
    finally:
        await ex.shutdown()
    assert result.status is ResultStatus.ERROR
    assert result.exit_code is None
    assert "pulling image" in result.error_message and "absent" in result.error_message
    assert not any("Retrying" in e.message for e in seen), "a missing image is final: no retry"


async def test_unreachable_registry_retries_then_fails(
    new_executor: ExecutorFactory, make_request: RequestFactory
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    seen: list[ExecutionEvent] = []
    ex = new_executor(DockerConfig(stop_grace=2, pull_attempts=3), event_sink=seen.append)
    try:
        req = make_request("true", image=f"127.0.0.1:{port}/haddock-test/none:v1")
        result = await ex.run(req)
    finally:
        await ex.shutdown()
    assert result.status is ResultStatus.ERROR
    assert "connection refused" in result.error_message.lower()
    retries = [e.message for e in seen if "Retrying" in e.message]
    assert retries == [
        f"Retrying pull of {req.engine.image} (attempt 2 of 3)",
        f"Retrying pull of {req.engine.image} (attempt 3 of 3)",
    ]
    assert ex.driver.images.pulls_started == 1


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("Get https://r/v2/: net/http: TLS handshake timeout", True),
        ("dial tcp 127.0.0.1:1: connect: connection refused", True),
        ("toomanyrequests: rate limit", True),
        ("received unexpected HTTP status: 503 Service Unavailable", True),
        ("manifest for x:1 not found: manifest unknown", False),
        ("pull access denied for x, repository does not exist", False),
        ("unauthorized: authentication required", False),
        ("something else entirely", False),
    ],
)
def test_transient_classification(message: str, transient: bool) -> None:
    assert is_transient_pull_error(message) is transient
