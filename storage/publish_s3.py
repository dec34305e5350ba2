"""The S3 publisher: an execution's results uploaded to S3 (or an S3-compatible server).

boto3 in a dedicated thread pool; credentials from boto3's chain; path-style addressing when
``endpoint_url`` is given; ``storage.s3.allowed_endpoints`` (or ``publish.allowed_endpoints``) and
``storage.s3.publish.allowed_buckets`` restrict the endpoints and buckets requesters may name, and
every request's endpoint address passes the node's address policy before botocore sends it.
Files are uploaded with boto3's ``upload_file`` (multipart above
``storage.s3.publish.multipart_threshold``), several at a time, and each object's size is checked
with ``head_object`` after its upload (boto3 also sends a CRC32 checksum that S3 verifies). botocore
retries single requests (``publish.request_attempts``); the whole publish is retried with backoff
(``attempts``, tenacity) on transient failures: connection errors, timeouts, 5xx, 408/429 and
throttling, a size mismatch. Objects that were uploaded and verified are not uploaded again by a
later attempt. Anything else (no such bucket, access denied, no credentials) fails at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from haddock.executor.publishers import LocalPublisherSpec, S3PublisherSpec, describe_publisher
from haddock.executor.quantity import format_bytes, format_duration
from haddock.storage._s3client import S3Clients, error_parts
from haddock.storage.config import S3Settings
from haddock.storage.netpolicy import AddressPolicy, AddressRefused
from haddock.storage.provider import backoff, run_blocking
from haddock.storage.publish import (
    ARCHIVE_NAME,
    PublishContext,
    Published,
    PublishError,
    _in_thread,
    _os_error,
    _scan,
    _Stopped,
    _temp_beside,
    _unlink,
    key_prefix,
    write_archive,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = ["S3Publisher", "describe_s3_error", "is_transient"]

log = logging.getLogger("haddock.storage.publish")


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


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: connection errors and timeouts, 5xx, 408, 429, throttling, a size mismatch."""
    exc = _client_error(exc)
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        code, _message, status = error_parts(exc)
        return status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES
    return False


def describe_s3_error(exc: BaseException, bucket: str) -> str:
    """What an S3 failure means, in a few words."""
    exc = _client_error(exc)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials were found (environment, shared credentials file or instance profile)"
    if isinstance(exc, botocore.exceptions.ClientError):
        code, message, status = error_parts(exc)
        if code == "NoSuchBucket":
            return f"the bucket {bucket!r} does not exist"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return f"access denied to the bucket {bucket!r} ({message}); check the node's AWS credentials"
        return f"{code}: {message} (HTTP {status})" if status else f"{code}: {message}"
    if isinstance(exc, AddressRefused):
        return f"the {exc}"
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

    def __init__(
        self,
        config: S3Settings | None = None,
        *,
        policy: AddressPolicy | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.config = config or S3Settings()
        self.policy = policy or AddressPolicy()
        c = self.config
        self._clients = S3Clients(
            c,
            self.policy,
            session,
            retries={"total_max_attempts": max(1, c.publish.request_attempts), "mode": "standard"},
            max_pool_connections=max(10, c.publish.parallel_uploads * (c.publish.max_concurrency + 1)),
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.publish.parallel_uploads + 2, thread_name_prefix="haddock-publish"
        )

    async def aclose(self) -> None:
        self._clients.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def publish(self, spec: LocalPublisherSpec | S3PublisherSpec, ctx: PublishContext) -> Published:
        if not isinstance(spec, S3PublisherSpec):
            raise PublishError(f"the S3 publisher cannot publish to the {describe_publisher(spec)}")
        try:
            prefix = key_prefix(spec.key, ctx)
        except ValueError as exc:
            raise PublishError(f"publishing to s3://{spec.bucket}/{spec.key} failed: {exc}") from None
        where = f"s3://{spec.bucket}/{prefix}"
        why = self.config.bucket_refusal(spec.bucket, publish=True)
        if why is not None:
            raise PublishError(f"publishing to {where} failed: {why}")
        if not self.config.allows_endpoint(spec.endpoint_url, publish=True):
            raise PublishError(
                f"publishing to {where} failed: the endpoint {spec.endpoint_url} is not one this node uses "
                f"(allowed: {self.config.allowed_text(publish=True)})"
            )
        if spec.endpoint_url and spec.endpoint_url not in self.config.trusted_endpoints():
            try:
                await self.policy.check_url(spec.endpoint_url, "S3 endpoint")
            except AddressRefused as exc:
                raise PublishError(f"publishing to {where} failed: the {exc}") from None
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
                wait=lambda rs: backoff(rs.attempt_number, c.publish.backoff_initial, c.publish.backoff_max),
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
            multipart_threshold=c.publish.multipart_threshold,
            multipart_chunksize=c.publish.multipart_chunksize,
            max_concurrency=c.publish.max_concurrency,
        )
        sem = asyncio.Semaphore(max(1, c.publish.parallel_uploads))

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
        return await self._clients.get(region, endpoint)
