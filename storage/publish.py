"""Output publishers: what happens to an execution's results dir after the run.

The results dir holds ``stdout``, ``stderr``, ``exitCode`` and one sub-directory per named output.
A requester names where it goes with :data:`PublisherSpec` (JSON, discriminated by ``type``) or the
CLI form read by :func:`parse_publisher`::

    local                        the results stay in the results dir
    local+archive                ... and results.tar.gz is written beside it (<results_dir>/../results.tar.gz)
    s3://bucket                  every file uploaded under the key prefix {job_id}/{execution_id}/
    s3://bucket/runs/{date}/{execution_id}/?region=eu-west-1&endpoint=http://minio:9000&archive=1

:func:`publish_all` runs every publisher of an execution (concurrently) and returns what was
published and one message per publisher that failed; it never raises for a publisher's failure.

- **Key templates**: ``{job_id}``, ``{execution_id}``, ``{node_id}`` and ``{date}`` (UTC, YYYY-MM-DD).
  Any other placeholder, and any brace that is not part of one, is refused when the spec is
  validated. A rendered key must not start with ``/``, contain ``..`` or an empty segment (``//``).
  It is always a prefix: a ``/`` is added when it does not end with one.
- **Symlinks** inside the results dir are never followed: they are skipped (with a log line) both
  when archiving and when uploading, as are sockets, FIFOs and devices. Directories are archived
  (so an empty output stays visible in the archive); S3 gets files only.
- **Archives** are gzip tarballs whose members are relative to the results dir (``stdout``,
  ``outputs/a/b.txt``). They are streamed to a temporary file beside the results dir, never held in
  memory; the local one is renamed into place (atomic), the S3 one is uploaded then removed.
- **S3**: boto3 in a dedicated thread pool; credentials from boto3's chain; path-style addressing
  when ``endpoint_url`` is given; ``S3PublishConfig.allowed_endpoints`` can restrict the endpoints
  requesters may name. Files are uploaded with boto3's ``upload_file`` (multipart above
  ``multipart_threshold``), several at a time, and each object's size is checked with
  ``head_object`` after its upload (boto3 also sends a CRC32 checksum that S3 verifies). botocore
  retries single requests (``request_attempts``); the whole publish is retried with backoff
  (``attempts``, tenacity) on transient failures: connection errors, timeouts, 5xx, 408/429 and
  throttling, a size mismatch. Objects that were uploaded and verified are not uploaded again by a
  later attempt. Anything else (no such bucket, access denied, no credentials) fails at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import tarfile
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from haddock.executor.quantity import format_bytes, format_duration
from haddock.storage.models import S3Endpoint, S3Region
from haddock.storage.provider import backoff, run_blocking

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from haddock.storage.s3 import S3Config

__all__ = [
    "ARCHIVE_NAME",
    "DEFAULT_KEY",
    "KEY_PLACEHOLDERS",
    "PUBLISHER_SPEC_ADAPTER",
    "LocalPublisher",
    "LocalPublisherSpec",
    "PublishContext",
    "PublishError",
    "Published",
    "Publisher",
    "PublisherSpec",
    "ResultEntry",
    "S3PublishConfig",
    "S3Publisher",
    "S3PublisherSpec",
    "check_key_template",
    "describe_publisher",
    "describe_s3_error",
    "is_transient",
    "key_prefix",
    "parse_publisher",
    "publish_all",
    "render_key",
    "scan_results",
    "write_archive",
]

log = logging.getLogger("haddock.storage.publish")

T = TypeVar("T")
MiB = 1024**2

ARCHIVE_NAME = "results.tar.gz"
DEFAULT_KEY = "{job_id}/{execution_id}/"
KEY_PLACEHOLDERS = ("job_id", "execution_id", "node_id", "date")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_KNOWN = ", ".join("{" + n + "}" for n in KEY_PLACEHOLDERS)
_MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
CLI_FORMS = "'local', 'local+archive' or 's3://bucket[/key-prefix][?region=..&endpoint=..&archive=1]'"


# ------------------------------------------------------------------------------------------ key templates


def check_key_template(template: str) -> str:
    """The template itself, or ValueError saying what is wrong with it (placeholders, braces, '..', '/')."""
    if not template:
        raise ValueError(f"key must not be empty: give a prefix such as {DEFAULT_KEY!r}")
    if "\x00" in template:
        raise ValueError("key must not contain NUL bytes")
    if len(template.encode(errors="surrogatepass")) > _MAX_KEY_BYTES:
        raise ValueError(f"key is longer than {_MAX_KEY_BYTES} bytes")
    for name in _PLACEHOLDER_RE.findall(template):
        if name not in KEY_PLACEHOLDERS:
            raise ValueError(f"key {template!r} has an unknown placeholder {{{name}}}; the placeholders are {_KNOWN}")
    if any(c in _PLACEHOLDER_RE.sub("", template) for c in "{}"):
        raise ValueError(
            f"key {template!r} has a '{{' or '}}' that is not part of a placeholder; the placeholders are {_KNOWN}"
        )
    _check_key_text(template, _PLACEHOLDER_RE.sub("x", template))
    return template


def _check_key_text(template: str, key: str) -> None:
    shown = repr(template) if key == template else f"{template!r} (rendered {key!r})"
    if key.startswith("/"):
        raise ValueError(f"key {shown} must not start with '/'")
    if ".." in key.split("/"):  # a '..' segment; names like 'a..b' are fine
        raise ValueError(f"key {shown} must not contain '..'")
    if "//" in key:
        raise ValueError(f"key {shown} must not contain an empty path segment ('//')")


def _utc(when: datetime) -> datetime:
    """``when`` in UTC; a naive datetime is taken to be UTC already."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def render_key(template: str, ctx: PublishContext) -> str:
    """The key template with its placeholders filled in from ``ctx`` (``{date}`` is ``ctx.when`` in UTC,
    YYYY-MM-DD). ValueError for an invalid template or a rendered key that starts with '/', contains
    '..' or an empty segment, a NUL byte, or is too long. Returned as rendered (see :func:`key_prefix`)."""
    check_key_template(template)
    values = {
        "job_id": ctx.job_id,
        "execution_id": ctx.execution_id,
        "node_id": ctx.node_id,
        "date": _utc(ctx.when).strftime("%Y-%m-%d"),
    }
    key = _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)
    _check_key_text(template, key)
    if "\x00" in key:
        raise ValueError(f"key {template!r} renders to a key with a NUL byte")
    if len(key.encode(errors="surrogatepass")) > _MAX_KEY_BYTES:
        raise ValueError(f"key {template!r} renders to a key longer than {_MAX_KEY_BYTES} bytes")
    return key


def key_prefix(template: str, ctx: PublishContext) -> str:
    """The rendered key as the prefix objects are uploaded under: it always ends with '/'."""
    key = render_key(template, ctx)
    return key if key.endswith("/") else key + "/"


# ----------------------------------------------------------------------------------------------- specs


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalPublisherSpec(_Spec):
    """The results stay in the results dir; ``archive`` also writes ``results.tar.gz`` beside it."""

    type: Literal["local"] = "local"
    archive: bool = Field(default=False, description="also write <results_dir>/../results.tar.gz")


class S3PublisherSpec(_Spec):
    """Every file of the results dir uploaded under the rendered ``key`` prefix, or with ``archive`` a
    single ``<prefix>results.tar.gz``."""

    type: Literal["s3"] = "s3"
    bucket: str
    key: str = Field(default=DEFAULT_KEY, description=f"key prefix template; placeholders {_KNOWN}")
    region: S3Region = None
    endpoint_url: S3Endpoint = Field(default=None, description="for S3-compatible servers")
    archive: bool = Field(default=False, description="upload one results.tar.gz instead of every file")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET_RE.match(v):
            raise ValueError(
                f"bucket {v!r} is not a valid bucket name (3-255 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit)"
            )
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        return check_key_template(v)


PublisherSpec = Annotated[LocalPublisherSpec | S3PublisherSpec, Field(discriminator="type")]
PUBLISHER_SPEC_ADAPTER: TypeAdapter[LocalPublisherSpec | S3PublisherSpec] = TypeAdapter(PublisherSpec)


def describe_publisher(spec: LocalPublisherSpec | S3PublisherSpec) -> str:
    """How messages name a publisher before its key is rendered."""
    if isinstance(spec, LocalPublisherSpec):
        return "local results dir" + (" (with archive)" if spec.archive else "")
    return f"s3://{spec.bucket}/{spec.key}"


def parse_publisher(text: str) -> LocalPublisherSpec | S3PublisherSpec:
    """The CLI form: ``local``, ``local+archive`` or ``s3://bucket[/key-template][?region=..&endpoint=..&archive=1]``
    (no key: ``{job_id}/{execution_id}/``). The key is taken literally (no percent-decoding).
    ValueError with a plain message for anything else."""
    raw = text.strip()
    lowered = raw.lower()
    if lowered in ("local", "local+archive"):
        return LocalPublisherSpec(archive=lowered == "local+archive")
    if lowered.startswith("s3://"):
        return _parse_s3(text, raw[len("s3://") :])
    if not raw:
        raise ValueError(f"a publisher must not be empty: use {CLI_FORMS}")
    raise ValueError(f"publisher {text!r} is not understood: use {CLI_FORMS}")


def _parse_s3(text: str, rest: str) -> S3PublisherSpec:
    location, _, query = rest.partition("?")
    bucket, _, key = location.partition("/")
    if not bucket:
        raise ValueError(f"publisher {text!r} names no bucket: use s3://bucket/key-prefix/")
    fields: dict[str, Any] = {"bucket": bucket}
    if key:
        fields["key"] = key
    seen: set[str] = set()
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        canonical = {"endpoint": "endpoint_url"}.get(name, name)
        if canonical in seen:
            raise ValueError(f"publisher {text!r} gives {name!r} twice")
        seen.add(canonical)
        if canonical in ("region", "endpoint_url"):
            fields[canonical] = value
        elif canonical == "archive":
            fields["archive"] = _flag(text, value)
        else:
            raise ValueError(f"publisher {text!r} has an unknown parameter {name!r} (known: region, endpoint, archive)")
    try:
        return S3PublisherSpec(**fields)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"publisher {text!r}: {problems}") from None


def _flag(text: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("", "1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"publisher {text!r}: archive={value!r} must be 1/true/yes or 0/false/no")


# ----------------------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class PublishContext:
    job_id: str
    execution_id: str
    node_id: str
    results_dir: Path
    when: datetime
    """For ``{date}``; a naive datetime is taken as UTC."""


@dataclass(frozen=True)
class Published:
    """What one publisher did. ``location``: the results dir (local) or ``s3://bucket/prefix/``.
    ``objects``/``bytes``: the files published (local: in the results dir; S3: the objects uploaded,
    1 with ``archive``). ``archive``: the archive's path or ``s3://`` URL when one was made."""

    spec: LocalPublisherSpec | S3PublisherSpec
    location: str
    objects: int
    bytes: int
    archive: str | None = None


class PublishError(Exception):
    """A publisher failed. ``str(err)`` names it and says what failed, e.g. ``publishing to
    s3://b/x/ failed after 4 attempts: ...``. ``attempts`` is how many were made (1 when not retried)."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts


class Publisher(Protocol):
    async def publish(self, spec: LocalPublisherSpec | S3PublisherSpec, ctx: PublishContext) -> Published: ...


# ------------------------------------------------------------------------------------ the results dir


@dataclass(frozen=True)
class ResultEntry:
    rel: str
    """Path relative to the results dir, with '/' separators."""
    path: Path
    is_dir: bool
    size: int


def scan_results(root: Path) -> list[ResultEntry]:
    """(Blocking.) Every directory and regular file under ``root``, parents before their contents.
    Symlinks are skipped and never followed, as are other special files and names that are not
    UTF-8; each skip is logged. OSError when ``root`` is not a readable directory."""
    if root.is_symlink() or not root.is_dir():
        raise NotADirectoryError(f"the results dir {root} does not exist or is not a directory")
    out: list[ResultEntry] = []
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            items = list(it)
        for item in items:
            rel = prefix + item.name
            try:
                rel.encode()
            except UnicodeEncodeError:
                log.warning("not publishing %r in %s: its name is not valid UTF-8", rel, root)
                continue
            if item.is_symlink():
                log.warning(
                    "not publishing %s in %s: it is a symbolic link (symlinks are skipped, never followed)", rel, root
                )
            elif item.is_dir(follow_symlinks=False):
                out.append(ResultEntry(rel, Path(item.path), True, 0))
                stack.append((Path(item.path), rel + "/"))
            elif item.is_file(follow_symlinks=False):
                out.append(ResultEntry(rel, Path(item.path), False, item.stat(follow_symlinks=False).st_size))
            else:
                log.warning("not publishing %s in %s: it is not a regular file or directory", rel, root)
    out.sort(key=lambda e: e.rel)
    return out


class _Stopped(Exception):
    """The caller was cancelled: a thread stops early."""


def write_archive(entries: Sequence[ResultEntry], dest: Path, stop: threading.Event | None = None) -> int:
    """(Blocking.) Stream a gzip tarball of ``entries`` into ``dest`` (which must not exist); its size.
    Files are opened without following symlinks; one that became something else since the scan is skipped."""
    with open(dest, "xb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
            for entry in entries:
                if stop is not None and stop.is_set():
                    raise _Stopped()
                if entry.is_dir:
                    info = tar.gettarinfo(str(entry.path), arcname=entry.rel)
                    if info.isdir():
                        tar.addfile(info)
                    continue
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError as exc:
                    if os.path.islink(entry.path):
                        log.warning("not archiving %s: it became a symbolic link", entry.rel)
                        continue
                    raise OSError(exc.errno, f"cannot read {entry.rel}: {exc.strerror}") from exc
                with os.fdopen(fd, "rb") as f:
                    info = tar.gettarinfo(arcname=entry.rel, fileobj=f)
                    if not info.isreg():
                        log.warning("not archiving %s: it is no longer a regular file", entry.rel)
                        continue
                    tar.addfile(info, f)
        raw.flush()
        os.fsync(raw.fileno())
    return dest.stat().st_size


def _temp_beside(results_dir: Path, purpose: str) -> Path:
    return results_dir.absolute().parent / f".{ARCHIVE_NAME}.{purpose}.{uuid.uuid4().hex[:12]}.tmp"


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _archive_in_place(entries: Sequence[ResultEntry], results_dir: Path, stop: threading.Event) -> tuple[Path, int]:
    """(Blocking.) ``<results_dir>/../results.tar.gz``, written to a temporary file and renamed into place."""
    final = results_dir.absolute().parent / ARCHIVE_NAME
    tmp = _temp_beside(results_dir, "local")
    try:
        size = write_archive(entries, tmp, stop)
        os.replace(tmp, final)
    except BaseException:
        _unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return final, size


async def _in_thread(fn: Callable[[threading.Event], T], pool: concurrent.futures.Executor | None = None) -> T:
    """``fn(stop)`` in a thread. A cancelled caller sets ``stop`` and waits for the thread to end."""
    stop = threading.Event()
    fut = asyncio.get_running_loop().run_in_executor(pool, fn, stop)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        stop.set()
        while not fut.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(fut)
        raise


async def _scan(results_dir: Path, where: str) -> list[ResultEntry]:
    try:
        return await run_blocking(scan_results, results_dir)
    except OSError as exc:
        raise PublishError(f"publishing to {where} failed: {_os_error(exc)}") from None


def _os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


# ------------------------------------------------------------------------------------------------ local


class LocalPublisher:
    """Nothing to copy: the results dir is the location. ``archive`` writes results.tar.gz beside it."""

    async def publish(self, spec: LocalPublisherSpec | S3PublisherSpec, ctx: PublishContext) -> Published:
        if not isinstance(spec, LocalPublisherSpec):
            raise PublishError(f"the local publisher cannot publish to {describe_publisher(spec)}")
        where = f"local {ctx.results_dir}"
        entries = await _scan(ctx.results_dir, where)
        files = [e for e in entries if not e.is_dir]
        archive: str | None = None
        if spec.archive:
            try:
                path, size = await _in_thread(functools.partial(_archive_in_place, entries, ctx.results_dir))
            except OSError as exc:
                raise PublishError(f"publishing to {where} failed: cannot write {ARCHIVE_NAME}: {exc}") from None
            archive = str(path)
            log.info("archived %d files of %s into %s (%s)", len(files), ctx.results_dir, path, format_bytes(size))
        return Published(
            spec=spec,
            location=str(ctx.results_dir),
            objects=len(files),
            bytes=sum(f.size for f in files),
            archive=archive,
        )


# --------------------------------------------------------------------------------------------------- s3


@dataclass(frozen=True)
class S3PublishConfig:
    region: str | None = None
    """Region when a spec names none (else boto3's own default)."""
    endpoint_url: str | None = None
    """Endpoint when a spec names none (else AWS)."""
    allowed_endpoints: tuple[str, ...] | None = None
    """Endpoints a spec may name (None: any). The node signs requests with its credentials for them."""
    attempts: int = 4
    """Attempts of the whole publish (tenacity) on transient failures."""
    request_attempts: int = 3
    """Attempts of each single request (botocore's standard retry mode)."""
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    total_timeout: float = 3600.0
    """For the whole publish, retries included."""
    parallel_uploads: int = 4
    """Files uploaded at the same time."""
    multipart_threshold: int = 8 * MiB
    multipart_chunksize: int = 8 * MiB
    max_concurrency: int = 4
    """Threads per multipart upload."""

    @classmethod
    def from_s3_config(cls, config: S3Config, **overrides: Any) -> S3PublishConfig:
        """Region, endpoint, allowed endpoints, attempts, timeouts and backoff of the node's S3 input settings."""
        values: dict[str, Any] = {
            "region": config.region,
            "endpoint_url": config.endpoint_url,
            "allowed_endpoints": config.allowed_endpoints,
            "attempts": config.attempts,
            "backoff_initial": config.backoff_initial,
            "backoff_max": config.backoff_max,
            "connect_timeout": config.connect_timeout,
            "read_timeout": config.read_timeout,
            "total_timeout": config.total_timeout,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class _Upload:
    path: Path
    key: str
    size: int


class _SizeMismatch(Exception):
    def __init__(self, key: str, expected: int, got: int) -> None:
        super().__init__(f"object {key!r} has {got} bytes in the bucket after its upload, not {expected}")


_TRANSIENT_TYPES = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ChecksumError,
    _SizeMismatch,
)
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "BadDigest",
    }
)


def _client_error(exc: BaseException) -> BaseException:
    """boto3's upload_file turns a ClientError into an S3UploadFailedError: the ClientError back."""
    if isinstance(exc, boto3.exceptions.S3UploadFailedError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, botocore.exceptions.ClientError):
            return cause
    return exc


def _status(exc: botocore.exceptions.ClientError) -> tuple[str, str, int]:
    err: dict[str, Any] = dict(exc.response.get("Error", {}))
    code = str(err.get("Code", ""))
    message = str(err.get("Message", "")) or code
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return code, message, status


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: connection errors and timeouts, 5xx, 408, 429, throttling, a size mismatch."""
    exc = _client_error(exc)
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        code, _message, status = _status(exc)
        return status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES
    return False


def describe_s3_error(exc: BaseException, bucket: str) -> str:
    """What an S3 failure means, in a few words."""
    exc = _client_error(exc)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials were found (environment, shared credentials file or instance profile)"
    if isinstance(exc, botocore.exceptions.ClientError):
        code, message, status = _status(exc)
        if code == "NoSuchBucket":
            return f"the bucket {bucket!r} does not exist"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return f"access denied to the bucket {bucket!r} ({message}); check the node's AWS credentials"
        return f"{code}: {message} (HTTP {status})" if status else f"{code}: {message}"
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, botocore.exceptions.BotoCoreError | _SizeMismatch):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _outcome(outcome: Any, bucket: str) -> str:
    exc = outcome.exception() if outcome is not None else None
    return describe_s3_error(exc, bucket) if isinstance(exc, BaseException) else "?"


def _upload_one(
    client: S3Client, bucket: str, upload: _Upload, config: TransferConfig, done: set[str], stop: threading.Event
) -> None:
    """(Runs in a thread.) Upload one file (multipart when big), check the object's size, and add its key
    to ``done`` (here, so that an upload that ends while its caller is being cancelled still counts)."""

    def progress(_sent: int) -> None:
        if stop.is_set():
            raise _Stopped()

    if stop.is_set():
        raise _Stopped()
    try:
        client.upload_file(str(upload.path), bucket, upload.key, Config=config, Callback=progress)
    except boto3.exceptions.S3UploadFailedError as exc:
        cause = _client_error(exc)
        if cause is not exc:
            raise cause from None
        raise
    head = client.head_object(Bucket=bucket, Key=upload.key)
    size = int(head.get("ContentLength", -1))
    if size != upload.size:
        raise _SizeMismatch(upload.key, upload.size, size)
    done.add(upload.key)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                leaves.append(e)

    walk(group)
    for e in leaves:
        if not isinstance(e, asyncio.CancelledError):
            return e
    return leaves[0]


class S3Publisher:
    """Uploads results to S3 (or an S3-compatible server). Keep one per node; :meth:`aclose` at shutdown."""

    def __init__(self, config: S3PublishConfig | None = None, *, session: boto3.session.Session | None = None) -> None:
        self.config = config or S3PublishConfig()
        self._session = session
        self._clients: dict[tuple[str | None, str | None], S3Client] = {}
        self._client_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.parallel_uploads + 2, thread_name_prefix="haddock-publish"
        )

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def publish(self, spec: LocalPublisherSpec | S3PublisherSpec, ctx: PublishContext) -> Published:
        if not isinstance(spec, S3PublisherSpec):
            raise PublishError(f"the S3 publisher cannot publish to the {describe_publisher(spec)}")
        try:
            prefix = key_prefix(spec.key, ctx)
        except ValueError as exc:
            raise PublishError(f"publishing to s3://{spec.bucket}/{spec.key} failed: {exc}") from None
        where = f"s3://{spec.bucket}/{prefix}"
        allowed = self.config.allowed_endpoints
        if spec.endpoint_url is not None and allowed is not None and spec.endpoint_url not in allowed:
            raise PublishError(
                f"publishing to {where} failed: the endpoint {spec.endpoint_url} is not one this node uses "
                f"(allowed: {', '.join(allowed) or 'none'})"
            )
        timeout = asyncio.timeout(self.config.total_timeout)
        try:
            async with timeout:
                return await self._publish(spec, ctx, prefix, where)
        except TimeoutError:
            if not timeout.expired():
                raise
            raise PublishError(
                f"publishing to {where} failed: not done within the total timeout of "
                f"{format_duration(self.config.total_timeout)}"
            ) from None

    async def _publish(self, spec: S3PublisherSpec, ctx: PublishContext, prefix: str, where: str) -> Published:
        c = self.config
        entries = await _scan(ctx.results_dir, where)
        tmp: Path | None = None
        try:
            if spec.archive:
                tmp = _temp_beside(ctx.results_dir, "upload")
                try:
                    size = await _in_thread(functools.partial(write_archive, entries, tmp))
                except OSError as exc:
                    raise PublishError(f"publishing to {where} failed: cannot write {ARCHIVE_NAME}: {exc}") from None
                uploads = [_Upload(tmp, prefix + ARCHIVE_NAME, size)]
            else:
                uploads = [_Upload(e.path, prefix + e.rel, e.size) for e in entries if not e.is_dir]
            client = await self._client(spec)
            done: set[str] = set()
            retrying = AsyncRetrying(
                stop=stop_after_attempt(max(1, c.attempts)),
                wait=lambda rs: backoff(rs.attempt_number, c.backoff_initial, c.backoff_max),
                retry=retry_if_exception(is_transient),
                before_sleep=lambda rs: log.warning(
                    "publishing to %s failed (attempt %d of %d): %s; retrying",
                    where,
                    rs.attempt_number,
                    c.attempts,
                    _outcome(rs.outcome, spec.bucket),
                ),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._upload_all(client, spec.bucket, [u for u in uploads if u.key not in done], done)
            except Exception as exc:
                attempts = int(retrying.statistics.get("attempt_number", 1))
                after = f" after {attempts} attempts" if attempts > 1 else ""
                raise PublishError(
                    f"publishing to {where} failed{after}: {describe_s3_error(exc, spec.bucket)}", attempts=attempts
                ) from None
        finally:
            if tmp is not None:
                await run_blocking(_unlink, tmp)
        total = sum(u.size for u in uploads)
        log.info("published %d objects (%s) to %s", len(uploads), format_bytes(total), where)
        return Published(
            spec=spec,
            location=where,
            objects=len(uploads),
            bytes=total,
            archive=f"{where}{ARCHIVE_NAME}" if spec.archive else None,
        )

    async def _upload_all(self, client: S3Client, bucket: str, uploads: list[_Upload], done: set[str]) -> None:
        c = self.config
        transfer = TransferConfig(
            multipart_threshold=c.multipart_threshold,
            multipart_chunksize=c.multipart_chunksize,
            max_concurrency=c.max_concurrency,
        )
        sem = asyncio.Semaphore(max(1, c.parallel_uploads))

        async def one(upload: _Upload) -> None:
            async with sem:
                await _in_thread(functools.partial(_upload_one, client, bucket, upload, transfer, done), self._pool)

        try:
            async with asyncio.TaskGroup() as tg:
                for upload in uploads:
                    tg.create_task(one(upload))
        except BaseExceptionGroup as eg:
            raise _first_error(eg) from None

    async def _client(self, spec: S3PublisherSpec) -> S3Client:
        region = spec.region or self.config.region
        endpoint = spec.endpoint_url or self.config.endpoint_url
        client = self._clients.get((region, endpoint))
        if client is None:
            client = await run_blocking(self._make_client, region, endpoint)
        return client

    def _make_client(self, region: str | None, endpoint: str | None) -> S3Client:
        c = self.config
        with self._client_lock:  # boto3 sessions are not thread-safe
            existing = self._clients.get((region, endpoint))
            if existing is not None:
                return existing
            if self._session is None:
                self._session = boto3.session.Session()
            cfg = botocore.config.Config(
                region_name=region,
                retries={"total_max_attempts": max(1, c.request_attempts), "mode": "standard"},
                connect_timeout=c.connect_timeout,
                read_timeout=c.read_timeout,
                max_pool_connections=max(10, c.parallel_uploads * (c.max_concurrency + 1)),
                s3={"addressing_style": "path"} if endpoint else {},
            )
            client = self._session.client("s3", endpoint_url=endpoint, config=cfg)
            self._clients[(region, endpoint)] = client
            return client


# ---------------------------------------------------------------------------------------------- all of them


async def publish_all(
    specs: Sequence[LocalPublisherSpec | S3PublisherSpec],
    ctx: PublishContext,
    *,
    s3_config: S3PublishConfig | None = None,
    session: boto3.session.Session | None = None,
    publishers: Mapping[str, Publisher] | None = None,
) -> tuple[list[Published], list[str]]:
    """Run every publisher (concurrently). Returns what was published (in the order of ``specs``) and a
    message for each publisher that failed; a publisher's failure is never raised.

    ``publishers`` (by spec type) reuses long-lived publishers, such as the node's :class:`S3Publisher`;
    otherwise one is made for this call (with ``s3_config`` and ``session``) and closed afterwards."""
    table: dict[str, Publisher] = dict(publishers or {})
    table.setdefault("local", LocalPublisher())
    owned: S3Publisher | None = None
    if "s3" not in table and any(isinstance(s, S3PublisherSpec) for s in specs):
        owned = S3Publisher(s3_config, session=session)
        table["s3"] = owned

    async def one(spec: LocalPublisherSpec | S3PublisherSpec) -> Published | str:
        try:
            publisher = table[spec.type]
        except KeyError:
            return f"publishing to {describe_publisher(spec)} failed: this node has no {spec.type!r} publisher"
        try:
            return await publisher.publish(spec, ctx)
        except PublishError as exc:
            log.warning("%s", exc)
            return str(exc)
        except Exception as exc:
            log.exception("unexpected error publishing to %s", describe_publisher(spec))
            return f"publishing to {describe_publisher(spec)} failed: unexpected {type(exc).__name__}: {exc}"

    try:
        results = await asyncio.gather(*(one(s) for s in specs))
    finally:
        if owned is not None:
            await owned.aclose()
    published = [r for r in results if isinstance(r, Published)]
    errors = [r for r in results if isinstance(r, str)]
    return published, errors
