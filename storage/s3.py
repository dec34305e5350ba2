"""S3 inputs: one object mounted read-only as a FILE at the target, or every object under a prefix
(optionally filtered) as a read-only directory tree.

- boto3 is blocking: its calls run in a dedicated thread pool. Credentials come from boto3's usual
  chain (environment, shared files, instance profile); ``endpoint_url`` selects an S3-compatible
  server (path-style addressing is then used).
- API calls are retried by botocore (standard mode); a body that breaks while streaming is fetched
  again with tenacity. Each object is fetched with ``If-Match`` on the ETag seen before (or by its
  version id), so a prepared input never mixes old and new content.
- Under a prefix, an object's path is its key relative to the prefix: to the prefix itself when it
  ends with ``/`` or when every key continues it with ``/`` (``data`` -> ``a.txt``), else to the
  prefix's last ``/`` (``data/run-`` -> ``run-1.csv``). ``filter`` is searched (``re.search``) in each
  full key. Keys that would escape the directory (``.``/``..`` segments, empty segments) or collide
  (a file where a directory must be) are refused; "directory marker" keys ending in ``/`` are skipped.
- The bucket must be one ``storage.s3.inputs.allowed_buckets`` lists (when set) and a named endpoint
  one the operator allows; every request's endpoint address passes the node's address policy
  (:mod:`haddock.storage.netpolicy`) before botocore sends it.
- With a cache, content is keyed by sha256, else (endpoint, bucket, key, version id or ETag); a
  prefix by every (key, ETag, size) listed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from haddock.executor.errors import ErrorCode
from haddock.executor.quantity import format_bytes, format_duration
from haddock.executor.sources import S3Source
from haddock.storage._s3client import S3Clients
from haddock.storage._s3fetch import STREAM_TRANSIENT, S3Object, TooBig, get_object, translate_error, wait_thread
from haddock.storage.cache import ContentCache, s3_object_key, s3_prefix_key
from haddock.storage.config import S3Settings
from haddock.storage.netpolicy import AddressPolicy, AddressRefused
from haddock.storage.provider import (
    PreparedVolume,
    StorageError,
    backoff,
    prepare_fetched,
    release_volume,
    run_blocking,
)
from haddock.storage.url import safe_file_name

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

log = logging.getLogger("haddock.storage.s3")

T = TypeVar("T")
DEFAULT_OBJECT_NAME = "object"


class S3Storage:
    source_type = "s3"

    def __init__(
        self,
        cache: ContentCache | None = None,
        config: S3Settings | None = None,
        *,
        policy: AddressPolicy | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.cache = cache
        self.config = config or S3Settings()
        self.policy = policy or AddressPolicy()
        self._clients = S3Clients(
            self.config,
            self.policy,
            session,
            retries={"max_attempts": self.config.attempts, "mode": "standard"},
            max_pool_connections=max(10, self.config.inputs.parallel_downloads * 2),
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.inputs.parallel_downloads + 4, thread_name_prefix="haddock-s3"
        )

    async def aclose(self) -> None:
        self._clients.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------------------------- the protocol

    async def is_installed(self) -> bool:
        return True

    async def has_storage_locally(self, source: S3Source) -> bool:
        if self.cache is None:
            return False
        try:
            key, _size, _objects = await self._identify(source)
        except StorageError:
            return False
        return key is not None and key in self.cache

    async def get_volume_size(self, source: S3Source) -> int | None:
        """The object's size, or the sum under the prefix. A missing object or bucket raises StorageError."""
        _key, size, _objects = await self._identify(source)
        return size

    async def prepare_storage(self, source: S3Source, work_dir: Path) -> PreparedVolume:
        cache_key, size, objects = await self._identify(source)
        if size > self.config.inputs.max_bytes:
            raise StorageError(
                source,
                f"is {format_bytes(size)}, larger than the size limit of {format_bytes(self.config.inputs.max_bytes)} "
                "for S3 inputs",
                code=ErrorCode.RESOURCE_EXHAUSTED,
            )

        async def fetch(dest: Path) -> Path:
            try:
                async with asyncio.timeout(self.config.total_timeout):
                    return await self._fetch(source, objects, dest)
            except TimeoutError:
                raise StorageError(
                    source,
                    f"could not be downloaded within the total timeout of {format_duration(self.config.total_timeout)}",
                    code=ErrorCode.UNAVAILABLE,
                ) from None

        async def fetch_into(dest: Path, _shared: bool) -> Path:
            return await fetch(dest)

        return await prepare_fetched(
            source, work_dir, fetch_into, prefix="s3", cache=self.cache, cache_key=cache_key, size=size
        )

    async def cleanup_storage(self, volume: PreparedVolume) -> None:
        await release_volume(volume)

    # ------------------------------------------------------------------------------------- identify

    async def _identify(self, source: S3Source) -> tuple[str | None, int, list[S3Object]]:
        """(cache key, total size, the objects to fetch) from a HEAD (one key) or a listing (a prefix)."""
        endpoint = self._endpoint(source)
        if source.key:
            obj = await self._head(source)
            key = s3_object_key(
                endpoint_url=endpoint,
                bucket=source.bucket,
                key=source.key,
                version_id=source.version_id,
                etag=obj.etag,
                sha256=source.sha256,
            )
            return key, obj.size, [obj]
        objects = await self._list(source)
        key = s3_prefix_key(
            endpoint_url=endpoint,
            bucket=source.bucket,
            prefix=source.prefix,
            filter=source.filter,
            objects=[(o.key, o.etag, o.size) for o in objects],
        )
        return key, sum(o.size for o in objects), objects

    async def _head(self, source: S3Source) -> S3Object:
        client = await self._client(source)

        def head() -> S3Object:
            if source.version_id:
                resp = client.head_object(Bucket=source.bucket, Key=source.key, VersionId=source.version_id)
            else:
                resp = client.head_object(Bucket=source.bucket, Key=source.key)
            return S3Object(
                key=source.key,
                etag=resp.get("ETag", ""),
                size=int(resp.get("ContentLength", 0)),
                version_id=source.version_id,
            )

        return await self._call(source, head)

    async def _list(self, source: S3Source) -> list[S3Object]:
        client = await self._client(source)
        pattern = re.compile(source.filter) if source.filter is not None else None
        limit = self.config.inputs.max_objects

        def list_objects() -> list[S3Object]:
            out: list[S3Object] = []
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=source.bucket, Prefix=source.prefix):
                for item in page.get("Contents", []):
                    key = item.get("Key", "")
                    if not key or key.endswith("/"):
                        continue  # a "directory" marker
                    if pattern is not None and not pattern.search(key):
                        continue
                    out.append(S3Object(key=key, etag=item.get("ETag", ""), size=int(item.get("Size", 0))))
                    if len(out) > limit:
                        raise StorageError(
                            source,
                            f"has more than {limit} objects, the limit for one S3 input",
                            code=ErrorCode.RESOURCE_EXHAUSTED,
                        )
            return out

        objects = await self._call(source, list_objects)
        if not objects:
            what = f"matching the filter {source.filter!r}" if source.filter is not None else "under the prefix"
            raise StorageError(source, f"has no objects {what}")
        relative_paths(source, [o.key for o in objects])  # refuse an unsafe layout before fetching
        return objects

    # ---------------------------------------------------------------------------------------- fetch

    async def _fetch(self, source: S3Source, objects: list[S3Object], dest: Path) -> Path:
        if source.key:
            obj = objects[0]
            path = dest / (safe_file_name(source.key.rsplit("/", 1)[-1]) or DEFAULT_OBJECT_NAME)
            size, digest = await self._download(source, obj, path, self.config.inputs.max_bytes)
            if source.sha256 is not None and digest != source.sha256:
                raise StorageError(
                    source,
                    f"failed its checksum: expected sha256 {source.sha256}, got {digest} "
                    f"({format_bytes(size)} downloaded)",
                )
            return path
        tree = dest / "tree"
        paths = relative_paths(source, [o.key for o in objects])
        await run_blocking(tree.mkdir)
        budget = [self.config.inputs.max_bytes]
        sem = asyncio.Semaphore(self.config.inputs.parallel_downloads)

        async def one(obj: S3Object) -> None:
            async with sem:
                target = tree / paths[obj.key]
                await run_blocking(functools.partial(target.parent.mkdir, parents=True, exist_ok=True))
                size, _ = await self._download(source, obj, target, budget[0])
                budget[0] -= size

        async with asyncio.TaskGroup() as tg:
            for obj in objects:
                tg.create_task(one(obj))
        return tree

    async def _download(self, source: S3Source, obj: S3Object, path: Path, cap: int) -> tuple[int, str]:
        """Stream one object to ``path`` (via a temporary file), retrying broken bodies. (size, sha256)."""
        client = await self._client(source)
        c = self.config
        retrying = AsyncRetrying(
            stop=stop_after_attempt(c.attempts),
            wait=lambda rs: backoff(rs.attempt_number, c.inputs.backoff_initial, c.inputs.backoff_max),
            retry=retry_if_exception_type(STREAM_TRANSIENT),
            before_sleep=lambda rs: log.warning(
                "fetching s3://%s/%s failed (attempt %d): %s; retrying",
                source.bucket,
                obj.key,
                rs.attempt_number,
                rs.outcome.exception() if rs.outcome else None,
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._stoppable(
                        source,
                        functools.partial(
                            get_object,
                            client,
                            source.bucket,
                            obj,
                            path,
                            cap,
                            c.inputs.chunk_size,
                            pinned=bool(obj.etag),
                        ),
                    )
        except TooBig:
            raise StorageError(
                source,
                f"is larger than the size limit of {format_bytes(c.inputs.max_bytes)} for S3 inputs "
                f"(download aborted at {obj.key!r})",
                code=ErrorCode.RESOURCE_EXHAUSTED,
            ) from None
        except STREAM_TRANSIENT as exc:
            raise StorageError(
                source,
                f"cannot be fetched: {exc} (object {obj.key!r}, gave up after {c.attempts} attempts)",
                code=ErrorCode.UNAVAILABLE,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------------------------ plumbing

    def _endpoint(self, source: S3Source) -> str | None:
        return source.endpoint_url or self.config.endpoint_url

    async def _client(self, source: S3Source) -> S3Client:
        region = source.region or self.config.region
        endpoint = self._endpoint(source)
        why = self.config.bucket_refusal(source.bucket)
        if why is not None:
            raise StorageError(source, f"is refused: {why}")
        if not self.config.allows_endpoint(source.endpoint_url):
            raise StorageError(
                source,
                f"names the endpoint {source.endpoint_url}, which this node does not use "
                f"(allowed: {self.config.allowed_text()})",
            )
        if source.endpoint_url and source.endpoint_url not in self.config.trusted_endpoints():
            try:
                await self.policy.check_url(source.endpoint_url, "S3 endpoint")
            except AddressRefused as exc:
                raise StorageError(source, f"cannot be fetched: the {exc}") from None
        return await self._clients.get(region, endpoint)

    async def _call(self, source: S3Source, fn: Callable[[], T]) -> T:
        """A blocking boto3 call in the pool, its errors translated."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, fn)
        try:
            return await wait_thread(fut)
        except StorageError:
            raise
        except AddressRefused as exc:
            raise StorageError(source, f"cannot be fetched: the {exc}") from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate_error(source, exc) from None

    async def _stoppable(self, source: S3Source, fn: Callable[[threading.Event], T]) -> T:
        """Like _call, for a long transfer: a cancelled caller tells the thread to stop, and waits."""
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, fn, stop)
        try:
            return await wait_thread(fut, stop)
        except (TooBig, StorageError, *STREAM_TRANSIENT):
            raise
        except AddressRefused as exc:
            raise StorageError(source, f"cannot be fetched: the {exc}") from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate_error(source, exc) from None


# ----------------------------------------------------------------------------------------- pure parts


def relative_paths(source: S3Source, keys: list[str]) -> dict[str, str]:
    """Each key's path inside the input's directory (see the module doc); StorageError for keys that
    would escape it or collide."""
    prefix = source.prefix
    if prefix.endswith("/") or all(k.startswith(prefix + "/") for k in keys):
        base = prefix if prefix.endswith("/") else prefix + "/"
    else:
        base = prefix[: prefix.rfind("/") + 1]
    out: dict[str, str] = {}
    files: set[str] = set()
    dirs: set[str] = set()
    for key in keys:
        rel = key[len(base) :]
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise StorageError(
                source,
                f"has the key {key!r}, which cannot be a path under the target (empty, '.' or '..' segments)",
                code=ErrorCode.INVALID_ARGUMENT,
            )
        if any(len(p.encode()) > 255 for p in parts):
            raise StorageError(
                source,
                f"has the key {key!r}, with a path segment longer than 255 bytes",
                code=ErrorCode.INVALID_ARGUMENT,
            )
        out[key] = rel
        files.add(rel)
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    clash = sorted(files & dirs)
    if clash:
        raise StorageError(
            source,
            f"has keys that make {base + clash[0]!r} both a file and a directory",
            code=ErrorCode.INVALID_ARGUMENT,
        )
    return out
