"""The blocking and the pure pieces of an S3 input (:mod:`haddock.storage.s3`): the objects it names,
one object's GET into a file (in a thread, stoppable), the wait on such a thread, and what an S3
failure means for the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import botocore.exceptions

from haddock.executor.errors import ErrorCode
from haddock.executor.sources import S3Source
from haddock.storage._s3client import error_parts
from haddock.storage.provider import StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

T = TypeVar("T")

STREAM_TRANSIENT = (
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.IncompleteReadError,
)


@dataclass(frozen=True)
class S3Object:
    key: str
    etag: str
    size: int
    version_id: str | None = None


class TooBig(Exception):
    pass


class Stopped(Exception):
    pass


async def wait_thread(fut: asyncio.Future[T], stop: threading.Event | None = None) -> T:
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        while not fut.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(fut)
        raise


def get_object(
    client: S3Client,
    bucket: str,
    obj: S3Object,
    path: Path,
    cap: int,
    chunk_size: int,
    stop: threading.Event,
    *,
    pinned: bool,
) -> tuple[int, str]:
    """(Runs in a thread.) GET one object into ``path``; the exact version listed or HEADed."""
    if obj.version_id:
        resp = client.get_object(Bucket=bucket, Key=obj.key, VersionId=obj.version_id)
    elif pinned:
        resp = client.get_object(Bucket=bucket, Key=obj.key, IfMatch=obj.etag)
    else:
        resp = client.get_object(Bucket=bucket, Key=obj.key)
    body = resp["Body"]
    part = path.with_name(f".part-{uuid.uuid4().hex[:12]}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(part, "wb") as f:
            for chunk in body.iter_chunks(chunk_size):
                if stop.is_set():
                    raise Stopped()
                size += len(chunk)
                if size > cap:
                    raise TooBig()
                digest.update(chunk)
                f.write(chunk)
        os.chmod(part, 0o444)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise
    finally:
        body.close()
    return size, digest.hexdigest()


def translate_error(source: S3Source, exc: BaseException) -> StorageError:
    """A StorageError saying plainly what an S3 failure means."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageError(
            source,
            "cannot be fetched: no AWS credentials were found (environment, shared credentials file or "
            "instance profile)",
        )
    if isinstance(exc, botocore.exceptions.ClientError):
        code, message, status = error_parts(exc)
        if code in ("NoSuchBucket",):
            return StorageError(source, f"cannot be fetched: the bucket {source.bucket!r} does not exist")
        if code in ("NoSuchVersion",) or (source.version_id and code in ("InvalidArgument", "400")):
            return StorageError(source, f"cannot be fetched: version {source.version_id!r} does not exist")
        if source.version_id and code in ("404", "NotFound"):
            return StorageError(
                source,
                f"cannot be fetched: version {source.version_id!r} does not exist (or the key or bucket does not)",
            )
        if code in ("404", "NoSuchKey", "NotFound"):
            return StorageError(source, "does not exist (no such key in the bucket, or no such bucket)")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return StorageError(
                source, f"cannot be fetched: access denied ({message}); check the node's AWS credentials"
            )
        if code in ("412", "PreconditionFailed"):
            return StorageError(
                source, "changed in the bucket while being fetched; try again", code=ErrorCode.UNAVAILABLE
            )
        return StorageError(
            source,
            f"cannot be fetched: {code}: {message}",
            code=ErrorCode.UNAVAILABLE if status >= 500 or status == 429 else ErrorCode.FAILED_PRECONDITION,
        )
    if isinstance(exc, STREAM_TRANSIENT):
        return StorageError(source, f"cannot be fetched: {exc}", code=ErrorCode.UNAVAILABLE)
    return StorageError(source, f"cannot be fetched: {type(exc).__name__}: {exc}", code=ErrorCode.UNAVAILABLE)
