"""The local registry used by pull tests works end to end: push, pull, and a countable log."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.support.registry import (
    count_manifest_gets,
    count_manifest_requests,
    pull_image,
    push_image,
    registry_log,
    run_registry,
)

BUSYBOX = "haddock-test/busybox:latest"
REPOSITORY = "haddock-test/registry-support"


@pytest.fixture
def engine() -> Iterator[Any]:
    """A client of a live engine that has the busybox test image; FAILS (never skips) otherwise.

    Self-contained on purpose (no conftest fixtures): the registry support must be testable on its own.
    """
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"no Docker engine answers ({exc}); run scripts/bootstrap.sh to install and start one",
            pytrace=False,
        )
    try:
        client.images.get(BUSYBOX)
    except docker.errors.ImageNotFound:
        client.close()
        pytest.fail(f"test image {BUSYBOX} is missing; run scripts/build-test-images.sh", pytrace=False)
    yield client
    client.close()


def _pull_and_remove(client: Any, ref: str, expected_id: str | None) -> None:
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(ref)  # push_image removed the local tag: the pull must go to the registry
    try:
        pull_image(client, ref)
        pulled = client.images.get(ref)
        if expected_id is not None:
            assert pulled.id == expected_id
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.api.remove_image(ref)


@pytest.mark.engine
def test_push_then_pull_through_local_registry(engine: Any, tmp_path: Path) -> None:
    nonce = uuid.uuid4().hex[:12]
    busybox_id = engine.images.get(BUSYBOX).id
    with run_registry(tmp_path) as registry:
        log = registry_log(tmp_path)

        # The image as it is. Its manifest may already be in the engine's content store (pulled
        # before), in which case the pull only HEADs the tag; either way the registry is asked.
        ref = push_image(engine, BUSYBOX, registry, REPOSITORY, nonce)
        assert ref == f"{registry}/{REPOSITORY}:{nonce}"
        _pull_and_remove(engine, ref, busybox_id)
        assert count_manifest_requests(log) >= 1

        # A manifest the engine has never seen: the pull must GET it.
        gets_before = count_manifest_gets(log)
        fresh = push_image(engine, BUSYBOX, registry, REPOSITORY, f"fresh-{nonce}", fresh_manifest=True)
        _pull_and_remove(engine, fresh, None)
        assert count_manifest_gets(log) >= gets_before + 1
