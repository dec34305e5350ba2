"""Storage settings: declared once (storage/config.py), set from the node's TOML file and HADDOCK_STORAGE__*
environment, and what the providers and publishers are built with."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from haddock.executor.errors import ErrorCode
from haddock.executor.request import RunCommandRequest
from haddock.executor.sources import S3Source, UrlSource
from haddock.node.config import load_settings
from haddock.storage import build_registry
from haddock.storage.config import LocalRoot, StorageSettings
from haddock.storage.hooks import RegistryPublisher
from haddock.storage.provider import StorageError
from tests.storage.conftest import Handler, HttpServer

MINIO = "http://minio.example:9000"

TOML = f"""
[storage]
local_roots = [{{ path = "/srv/shared", read_write = true }}]
allow_private_networks = true

[storage.inline]
max_bytes = "2Ki"

[storage.cache]
max_bytes = "3Gi"

[storage.url]
max_bytes = 100
attempts = 2
total_timeout = "30s"
trust_env = false

[storage.s3]
region = "eu-west-1"
allowed_endpoints = ["{MINIO}"]
attempts = 2

[storage.s3.inputs]
max_objects = 5

[storage.s3.publish]
parallel_uploads = 2
backoff_max = "5s"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("HADDOCK_"):
            monkeypatch.delenv(key)


def test_every_section_is_read_from_the_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(TOML)
    st = load_settings(cfg).storage
    assert st.local_roots == (LocalRoot(path=Path("/srv/shared"), read_write=True),)
    assert st.allow_private_networks
    assert st.inline.max_bytes == 2048
    assert st.cache.max_bytes == 3 * 1024**3
    assert st.url.max_bytes == 100 and st.url.attempts == 2 and st.url.total_timeout == 30 and not st.url.trust_env
    assert st.s3.region == "eu-west-1" and st.s3.allowed_endpoints == (MINIO,) and st.s3.attempts == 2
    assert st.s3.inputs.max_objects == 5
    assert st.s3.publish.parallel_uploads == 2 and st.s3.publish.backoff_max == 5
    assert st.s3.publish.backoff_initial == 1.0 and st.s3.inputs.backoff_initial == 0.5  # defaults stay


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(TOML)
    monkeypatch.setenv("HADDOCK_STORAGE__URL__MAX_BYTES", "1Mi")
    monkeypatch.setenv("HADDOCK_STORAGE__S3__ALLOWED_ENDPOINTS", '["https://s3.internal.example"]')
    monkeypatch.setenv("HADDOCK_STORAGE__S3__PUBLISH__MULTIPART_THRESHOLD", "16Mi")
    monkeypatch.setenv("HADDOCK_STORAGE__CACHE__MAX_BYTES", "1Gi")
    monkeypatch.setenv("HADDOCK_STORAGE__ALLOW_PRIVATE_NETWORKS", "false")
    st = load_settings(cfg).storage
    assert st.url.max_bytes == 1024**2
    assert st.url.attempts == 2  # still from the file
    assert st.s3.allowed_endpoints == ("https://s3.internal.example",)
    assert st.s3.publish.multipart_threshold == 16 * 1024**2
    assert st.cache.max_bytes == 1024**3
    assert not st.allow_private_networks


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"local_roots": [{"path": "relative"}]}, "must be absolute"),
        ({"s3": {"allowed_endpoints": ["ftp://x"]}}, "must use http or https"),
        ({"s3": {"endpoint_url": "minio:9000"}}, "endpoint_url"),
        ({"s3": {"region": "EU WEST"}}, "not a valid region"),
        ({"url": {"attempts": 0}}, "greater than or equal to 1"),
        ({"url": {"max_size": 1}}, "Extra inputs"),
        ({"cache_max_bytes": "1Gi"}, "Extra inputs"),
    ],
)
def test_bad_values_are_refused_plainly(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StorageSettings.model_validate(data)


async def test_the_file_reaches_the_providers(tmp_path: Path, http_server: HttpServer) -> None:
    """A URL size limit and an S3 allowed endpoint set in TOML are what the registry enforces."""
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(TOML)
    settings = load_settings(cfg)

    def big(h: Handler) -> None:
        h.reply(200, b"x" * 1000)

    registry = build_registry(settings.storage, cache_dir=tmp_path / "cache")
    try:
        url = UrlSource(url=http_server.add(big), target="/in/x")
        with pytest.raises(StorageError, match=r"larger than the size limit of 100B for URL inputs") as err:
            await registry.prepare_all([url], tmp_path / "work")
        assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED

        other = S3Source(bucket="bkt", key="k", endpoint_url="http://elsewhere.example:9000", target="/in/k")
        with pytest.raises(StorageError, match=f"which this node does not use \\(allowed: {MINIO}\\)"):
            await registry.get_volume_sizes([other])
    finally:
        await registry.aclose()


async def test_the_file_reaches_the_s3_publisher(tmp_path: Path) -> None:
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(TOML)
    settings = load_settings(cfg)
    results = tmp_path / "results"
    results.mkdir()
    request = RunCommandRequest.model_validate(
        {
            "job_id": "job-1",
            "execution_id": "exec-1",
            "engine": {"image": "busybox", "parameters": ["true"]},
            "publishers": [{"type": "s3", "bucket": "bkt", "endpoint_url": "http://elsewhere.example:9000"}],
        }
    ).model_copy(update={"results_dir": results})
    publisher = RegistryPublisher("node-a", settings.storage.s3)
    try:
        done, errors = await publisher.publish(request)
    finally:
        await publisher.aclose()
    assert done == []
    assert errors == [
        "publishing to s3://bkt/job-1/exec-1/ failed: the endpoint http://elsewhere.example:9000 is not one this "
        f"node uses (allowed: {MINIO})"
    ]


def test_allowed_buckets_and_endpoints_per_direction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(
        TOML.replace("max_objects = 5", 'max_objects = 5\nallowed_buckets = ["datasets", "shared-*"]')
        + 'allowed_endpoints = ["https://results.example"]\n'
    )
    monkeypatch.setenv("HADDOCK_STORAGE__S3__PUBLISH__ALLOWED_BUCKETS", '["results-*"]')
    s3 = load_settings(cfg).storage.s3
    assert s3.inputs.allowed_buckets == ("datasets", "shared-*")
    assert s3.publish.allowed_buckets == ("results-*",)
    assert s3.bucket_refusal("datasets") is None and s3.bucket_refusal("shared-2024") is None
    assert s3.bucket_refusal("results-a") == (
        "the bucket 'results-a' is not one this node reads inputs from (allowed: datasets, shared-*)"
    )
    assert s3.bucket_refusal("results-a", publish=True) is None
    assert s3.bucket_refusal("datasets", publish=True) == (
        "the bucket 'datasets' is not one this node publishes to (allowed: results-*)"
    )
    # inputs use the shared endpoint list; publishing has its own
    assert s3.allows_endpoint(MINIO) and not s3.allows_endpoint("https://results.example")
    assert s3.allows_endpoint("https://results.example", publish=True) and not s3.allows_endpoint(MINIO, publish=True)
    assert set(s3.trusted_endpoints()) == {MINIO, "https://results.example"}
    # unset: any bucket (the node's credentials decide)
    assert StorageSettings().s3.bucket_refusal("anything") is None


@pytest.mark.parametrize("pattern", ["", "a/b", "bucket name", "s3://bucket"])
def test_bad_bucket_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValidationError, match="must be a bucket name or a glob of one"):
        StorageSettings.model_validate({"s3": {"inputs": {"allowed_buckets": [pattern]}}})
