"""Storage settings: one pydantic model per concern, nested into the node's settings as ``storage``.

Every field can be set in the TOML file (``[storage]``, ``[storage.url]``, ``[storage.s3]``,
``[storage.s3.inputs]``, ``[storage.s3.publish]``, ``[storage.cache]``, ``[storage.inline]``) and in
the environment with ``__`` between levels, e.g. ``HADDOCK_STORAGE__URL__MAX_BYTES=2Gi`` or
``HADDOCK_STORAGE__S3__ALLOWED_ENDPOINTS='["http://minio:9000"]'``. The providers and publishers
take these models as they are: nothing is copied field by field.

Pure pydantic: importing this module loads neither boto3 nor httpx.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from haddock.executor.fields import ByteQuantity, DurationSeconds
from haddock.executor.quantity import GiB, KiB, MiB
from haddock.executor.sources import S3Endpoint, S3Region, check_http_url

__all__ = [
    "CacheSettings",
    "InlineSettings",
    "LocalRoot",
    "S3InputSettings",
    "S3PublishSettings",
    "S3Settings",
    "StorageSettings",
    "UrlSettings",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _allowed_endpoint(v: str) -> str:
    return check_http_url(v, "allowed endpoint")


_BUCKET_PATTERN_RE = re.compile(r"^[A-Za-z0-9._*?-]{1,255}$")


def _bucket_pattern(v: str) -> str:
    if not _BUCKET_PATTERN_RE.match(v):
        raise ValueError(
            f"allowed bucket {v!r} must be a bucket name or a glob of one (letters, digits, '.', '_', '-', '*', '?')"
        )
    return v


Endpoints = tuple[Annotated[str, AfterValidator(_allowed_endpoint)], ...]
Buckets = tuple[Annotated[str, AfterValidator(_bucket_pattern)], ...]


def _listing(items: tuple[str, ...] | None) -> str:
    return ", ".join(items or ()) or "none"


class LocalRoot(_Section):
    """A directory the operator allows local (``file://``) inputs from, read-only unless ``read_write``."""

    path: Path
    read_write: bool = False

    @field_validator("path")
    @classmethod
    def _path(cls, v: Path) -> Path:
        if not v.is_absolute() or ".." in v.parts:
            raise ValueError(f"allowed local path {str(v)!r} must be absolute, without '..'")
        return v


class InlineSettings(_Section):
    """Inline (``data:``) inputs, carried in the request."""

    max_bytes: ByteQuantity = Field(
        default=1 * MiB, gt=0, description="largest inline input, decoded (gRPC messages are at most 4 MiB)"
    )
    max_unpacked_bytes: ByteQuantity = Field(default=100 * MiB, gt=0, description="what a tarball may unpack to")
    max_members: int = Field(default=10_000, ge=1, description="entries a tarball may hold")


class CacheSettings(_Section):
    """The content cache shared by URL and S3 inputs (under ``<data_dir>/cache``)."""

    max_bytes: ByteQuantity = Field(default=20 * GiB, ge=0, description="downloaded inputs kept for reuse (LRU)")


class UrlSettings(_Section):
    """URL (http/https) inputs."""

    max_bytes: ByteQuantity = Field(default=10 * GiB, gt=0, description="largest download accepted")
    attempts: int = Field(default=4, ge=1, description="tries of one GET, the first included")
    backoff_initial: DurationSeconds = Field(default=0.5, ge=0)
    backoff_max: DurationSeconds = Field(default=10.0, ge=0)
    connect_timeout: DurationSeconds = Field(default=10.0, gt=0)
    read_timeout: DurationSeconds = Field(default=60.0, gt=0, description="longest wait for the next bytes")
    total_timeout: DurationSeconds = Field(
        default=3600.0, gt=0, description="longest a whole download may take, retries included"
    )
    head_timeout: DurationSeconds = Field(default=10.0, gt=0)
    max_redirects: int = Field(
        default=5, ge=0, le=30, description="redirects followed at most; every hop's address is checked"
    )
    chunk_size: ByteQuantity = Field(default=256 * KiB, gt=0)
    user_agent: str = "haddock"
    trust_env: bool = Field(
        default=True, description="honour HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE from the environment"
    )


class S3InputSettings(_Section):
    """What only S3 inputs use."""

    max_bytes: ByteQuantity = Field(
        default=10 * GiB, gt=0, description="largest input (one object, or all objects under a prefix together)"
    )
    max_objects: int = Field(default=10_000, ge=1, description="objects under one prefix at most")
    parallel_downloads: int = Field(default=4, ge=1)
    chunk_size: ByteQuantity = Field(default=1 * MiB, gt=0)
    backoff_initial: DurationSeconds = Field(default=0.5, ge=0)
    backoff_max: DurationSeconds = Field(default=10.0, ge=0)
    allowed_buckets: Buckets | None = Field(
        default=None, description="buckets (names or globs) inputs may read with the node's credentials (unset: any)"
    )
    allowed_endpoints: Endpoints | None = Field(
        default=None, description="endpoints inputs may name (unset: s3.allowed_endpoints)"
    )


class S3PublishSettings(_Section):
    """What only the S3 publisher uses."""

    request_attempts: int = Field(default=3, ge=1, description="attempts of each single request (botocore)")
    parallel_uploads: int = Field(default=4, ge=1, description="files uploaded at the same time")
    multipart_threshold: ByteQuantity = Field(default=8 * MiB, gt=0)
    multipart_chunksize: ByteQuantity = Field(default=8 * MiB, gt=0)
    max_concurrency: int = Field(default=4, ge=1, description="threads per multipart upload")
    backoff_initial: DurationSeconds = Field(default=1.0, ge=0)
    backoff_max: DurationSeconds = Field(default=30.0, ge=0)
    allowed_buckets: Buckets | None = Field(
        default=None, description="buckets (names or globs) results may be published to (unset: any)"
    )
    allowed_endpoints: Endpoints | None = Field(
        default=None, description="endpoints publishers may name (unset: s3.allowed_endpoints)"
    )


class S3Settings(_Section):
    """S3: what inputs and publishers share, then ``inputs`` and ``publish`` for what only one uses."""

    region: S3Region = Field(default=None, description="when a request names none (else boto3's own default)")
    endpoint_url: S3Endpoint = Field(default=None, description="when a request names none (else AWS)")
    allowed_endpoints: Endpoints | None = Field(
        default=None,
        description="endpoints a request may name (unset: any); the node signs requests with its credentials",
    )
    attempts: int = Field(default=4, ge=1, description="attempts of a download, or of a whole publish")
    connect_timeout: DurationSeconds = Field(default=10.0, gt=0)
    read_timeout: DurationSeconds = Field(default=60.0, gt=0)
    total_timeout: DurationSeconds = Field(default=3600.0, gt=0, description="one input, or one publish")
    inputs: S3InputSettings = Field(default_factory=S3InputSettings)
    publish: S3PublishSettings = Field(default_factory=S3PublishSettings)

    def _endpoints(self, publish: bool) -> Endpoints | None:
        own = self.publish.allowed_endpoints if publish else self.inputs.allowed_endpoints
        return own if own is not None else self.allowed_endpoints

    def allows_endpoint(self, endpoint_url: str | None, *, publish: bool = False) -> bool:
        """Whether a request may name ``endpoint_url`` for inputs (or ``publish``); naming none always may."""
        allowed = self._endpoints(publish)
        return endpoint_url is None or allowed is None or endpoint_url in allowed

    def allowed_text(self, *, publish: bool = False) -> str:
        """The allowed endpoints, for messages."""
        return _listing(self._endpoints(publish))

    def trusted_endpoints(self) -> tuple[str, ...]:
        """The endpoints the operator named (the default and every allowed one): not subject to the
        address policy, since the operator chose them."""
        listed = [self.endpoint_url, *(self.allowed_endpoints or ())]
        listed += [*(self.inputs.allowed_endpoints or ()), *(self.publish.allowed_endpoints or ())]
        return tuple(dict.fromkeys(e for e in listed if e))

    def bucket_refusal(self, bucket: str, *, publish: bool = False) -> str | None:
        """Why a request may not name ``bucket`` for inputs (or ``publish``), or None when it may."""
        allowed = self.publish.allowed_buckets if publish else self.inputs.allowed_buckets
        if allowed is None or any(fnmatch.fnmatchcase(bucket, pattern) for pattern in allowed):
            return None
        use = "publishes to" if publish else "reads inputs from"
        return f"the bucket {bucket!r} is not one this node {use} (allowed: {_listing(allowed)})"


class StorageSettings(_Section):
    """Inputs and publishers: what the node may read, from where, how much, and how it retries."""

    local_roots: tuple[LocalRoot, ...] = Field(
        default=(), description="directories local (file://) inputs may come from; none by default"
    )
    allow_private_networks: bool = Field(
        default=False,
        description="let requesters name URLs and S3 endpoints on loopback, private or link-local addresses",
    )
    inline: InlineSettings = Field(default_factory=InlineSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    url: UrlSettings = Field(default_factory=UrlSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
