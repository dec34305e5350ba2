"""URL inputs: a file downloaded over http(s), mounted read-only as a single FILE at the target.

(Like Bacalhau, the file itself is bound at ``target``; the file name on the node — from the
response's Content-Disposition, else the URL path's last segment, else ``download`` — is kept only
for people looking at the node's disk.)

- Size: a HEAD gives Content-Length before anything is fetched (None when the server does not say);
  over the cap the input is refused without a GET. The cap is also enforced while streaming: the
  download stops as soon as it is exceeded.
- The GET streams to a temporary file next to its final place; failures remove it.
- Transient failures (connect errors, timeouts, broken bodies, HTTP 5xx, 408, 429) are retried with
  exponential backoff and jitter (``Retry-After`` is honoured, bounded); other HTTP errors are not.
  The whole download, retries included, has a total timeout.
- ``sha256`` is checked after the download; a mismatch names both digests.
- Every request (the HEAD, the GET, each redirect hop) goes through :class:`PinnedTransport`: its
  host is resolved, every address checked by the node's :class:`~haddock.storage.netpolicy.AddressPolicy`
  and the connection made to the address checked. Redirects are bounded (``max_redirects``); a hop
  to a refused address fails the input before anything is sent to it.
- With a cache, content identified by its sha256 or by the server's validators (ETag / Last-Modified
  from the HEAD) is fetched once and shared: concurrent prepares of one URL make one GET. Without
  such identity the download goes to the execution's work dir and is removed at cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.utils
import hashlib
import logging
import os
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiofiles
import aiofiles.os
import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from haddock.executor.errors import ErrorCode
from haddock.executor.quantity import format_bytes, format_duration
from haddock.executor.sources import UrlSource, redact_url
from haddock.storage.cache import ContentCache, url_key
from haddock.storage.config import UrlSettings
from haddock.storage.netpolicy import AddressPolicy, AddressRefused, default_port
from haddock.storage.provider import (
    PreparedVolume,
    StorageError,
    backoff,
    prepare_fetched,
    release_volume,
    run_blocking,
)

log = logging.getLogger("haddock.storage.url")

DEFAULT_FILE_NAME = "download"
_MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class HeadInfo:
    size: int | None
    etag: str | None
    last_modified: str | None


class _TransientStatus(Exception):
    def __init__(self, status: int, reason: str, retry_after: float | None) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.retry_after = retry_after


_TRANSIENT = (_TransientStatus, httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks every request's host with the policy and connects to the
    address it checked. https connections are not kept alive: a pooled connection is keyed by
    address, and one verified for one name must not serve another name on the same address."""

    def __init__(
        self, policy: AddressPolicy, what: str = "url", *, verify: bool = True, trust_env: bool = True
    ) -> None:
        self.policy = policy
        self.what = what
        self._http = httpx.AsyncHTTPTransport(verify=verify, trust_env=trust_env)
        self._https = httpx.AsyncHTTPTransport(
            verify=verify, trust_env=trust_env, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.host
        port = url.port or default_port(url.scheme)
        addrs = await self.policy.aresolve(host, port, redact_url(str(url)), self.what)
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=addrs[0]),
            headers=request.headers,  # Host: the name, as the request was made
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": host},
        )
        inner = self._https if url.scheme == "https" else self._http
        response = await inner.handle_async_request(pinned)
        return response

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._https.aclose()


class UrlStorage:
    source_type = "url"

    def __init__(
        self,
        cache: ContentCache | None = None,
        config: UrlSettings | None = None,
        *,
        policy: AddressPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cache = cache
        self.config = config or UrlSettings()
        self.policy = policy or AddressPolicy()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            c = self.config
            transport = self._transport
            if transport is None and self.policy.enforcing:
                transport = PinnedTransport(self.policy, trust_env=c.trust_env)
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(c.read_timeout, connect=c.connect_timeout),
                follow_redirects=True,
                max_redirects=c.max_redirects,
                headers={"User-Agent": c.user_agent, "Accept-Encoding": "identity"},
                # Checked addresses are connected to directly: an environment proxy would connect on its own.
                trust_env=c.trust_env and not self.policy.enforcing,
                transport=transport,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---------------------------------------------------------------------------------- the protocol

    async def is_installed(self) -> bool:
        return True

    async def has_storage_locally(self, source: UrlSource) -> bool:
        if self.cache is None:
            return False
        head = None if source.sha256 else await self.head(source)
        key = await self._cache_key(source, head)
        return key is not None and key in self.cache

    async def get_volume_size(self, source: UrlSource) -> int | None:
        head = await self.head(source)
        return head.size if head is not None else None

    async def prepare_storage(self, source: UrlSource, work_dir: Path) -> PreparedVolume:
        head = await self.head(source)
        if head is not None and head.size is not None and head.size > self.config.max_bytes:
            raise self._too_big(source, f"the server's HEAD says {format_bytes(head.size)}; nothing was downloaded")
        key = await self._cache_key(source, head)
        # the validators must still match on the GET when they are what identifies shared content
        expect = head if source.sha256 is None else None

        async def fetch(dest: Path, shared: bool) -> Path:
            return await self._download(source, dest, expect if shared else None)

        return await prepare_fetched(
            source,
            work_dir,
            fetch,
            prefix="url",
            cache=self.cache,
            cache_key=key,
            size=head.size if head else None,
        )

    async def cleanup_storage(self, volume: PreparedVolume) -> None:
        await release_volume(volume)

    # ------------------------------------------------------------------------------------------ HEAD

    async def head(self, source: UrlSource) -> HeadInfo | None:
        """What a HEAD says (size and validators), or None when it fails: many servers refuse HEAD
        (presigned URLs are signed for GET only), so this is advice, never an error — except that an
        address the node may not reach raises StorageError (nothing was sent to it)."""
        try:
            resp = await self.client.head(source.url, timeout=self.config.head_timeout)
        except AddressRefused as exc:
            raise refused(source, exc) from None
        except httpx.HTTPError as exc:
            log.debug("HEAD %s failed: %s", redact_url(source.url), exc)
            return None
        if not resp.is_success:
            return None
        return HeadInfo(
            size=_content_length(resp),
            etag=resp.headers.get("etag"),
            last_modified=resp.headers.get("last-modified"),
        )

    async def _cache_key(self, source: UrlSource, head: HeadInfo | None) -> str | None:
        return url_key(
            source.url,
            sha256=source.sha256,
            etag=head.etag if head else None,
            last_modified=head.last_modified if head else None,
        )

    # -------------------------------------------------------------------------------------- download

    async def _download(self, source: UrlSource, dest_dir: Path, expect: HeadInfo | None) -> Path:
        """GET the URL into ``dest_dir`` (retrying), verify it, return the file's path."""
        c = self.config
        retrying = AsyncRetrying(
            stop=stop_after_attempt(c.attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_TRANSIENT),
            before_sleep=lambda rs: log.warning(
                "GET %s failed (attempt %d of %d): %s; retrying",
                redact_url(source.url),
                rs.attempt_number,
                c.attempts,
                _describe_exc(rs.outcome.exception() if rs.outcome else None),
            ),
            reraise=True,
        )
        try:
            async with asyncio.timeout(c.total_timeout):
                async for attempt in retrying:
                    with attempt:
                        return await self._get_once(source, dest_dir, expect)
        except TimeoutError:
            raise StorageError(
                source,
                f"could not be downloaded within the total timeout of {format_duration(c.total_timeout)}",
                code=ErrorCode.UNAVAILABLE,
            ) from None
        except AddressRefused as exc:
            raise refused(source, exc) from None
        except httpx.TooManyRedirects:
            raise StorageError(
                source, f"could not be downloaded: more than {c.max_redirects} redirects (not retried)"
            ) from None
        except _TRANSIENT as exc:
            attempts = retrying.statistics.get("attempt_number", c.attempts)
            raise StorageError(
                source,
                f"could not be downloaded: {_describe_exc(exc)} (gave up after {attempts} attempts)",
                code=ErrorCode.UNAVAILABLE,
            ) from None
        except httpx.HTTPError as exc:
            raise StorageError(source, f"could not be downloaded: {_describe_exc(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, _TransientStatus) and exc.retry_after is not None:
            return min(exc.retry_after, self.config.backoff_max)
        return backoff(rs.attempt_number, self.config.backoff_initial, self.config.backoff_max)

    async def _get_once(self, source: UrlSource, dest_dir: Path, expect: HeadInfo | None) -> Path:
        c = self.config
        part = dest_dir / f".part-{uuid.uuid4().hex[:12]}"
        try:
            async with self.client.stream("GET", source.url) as resp:
                if not resp.is_success:
                    reason = resp.reason_phrase
                    if resp.status_code >= 500 or resp.status_code in (408, 429):
                        raise _TransientStatus(resp.status_code, reason, _retry_after(resp))
                    raise StorageError(
                        source,
                        f"could not be downloaded: the server answered {resp.status_code} {reason} (not retried)",
                        code=ErrorCode.FAILED_PRECONDITION,
                    )
                length = _content_length(resp)
                if length is not None and length > c.max_bytes:
                    raise self._too_big(source, f"Content-Length says {format_bytes(length)}; nothing was downloaded")
                if expect is not None:
                    for header, expected in (("etag", expect.etag), ("last-modified", expect.last_modified)):
                        got = resp.headers.get(header)
                        if expected and got and got != expected:
                            raise StorageError(
                                source,
                                f"changed on the server while being fetched ({header} {expected} became {got}); "
                                "try again",
                                code=ErrorCode.UNAVAILABLE,
                            )
                name = file_name_for(resp.headers.get("content-disposition"), source.url)
                digest = hashlib.sha256()
                received = 0
                async with aiofiles.open(part, "wb") as f:
                    async for chunk in resp.aiter_bytes(c.chunk_size):
                        received += len(chunk)
                        if received > c.max_bytes:
                            raise self._too_big(
                                source, f"download aborted after more than {format_bytes(c.max_bytes)} arrived"
                            )
                        digest.update(chunk)
                        await f.write(chunk)
            if source.sha256 is not None and digest.hexdigest() != source.sha256:
                raise StorageError(
                    source,
                    f"failed its checksum: expected sha256 {source.sha256}, got {digest.hexdigest()} "
                    f"({format_bytes(received)} downloaded)",
                    code=ErrorCode.FAILED_PRECONDITION,
                )
            final = dest_dir / name
            await aiofiles.os.replace(part, final)
            await run_blocking(os.chmod, final, 0o444)
            log.info("downloaded %s (%s) to %s", redact_url(source.url), format_bytes(received), final)
            return final
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(part)
            raise

    def _too_big(self, source: UrlSource, detail: str) -> StorageError:
        return StorageError(
            source,
            f"is larger than the size limit of {format_bytes(self.config.max_bytes)} for URL inputs ({detail})",
            code=ErrorCode.RESOURCE_EXHAUSTED,
        )


# ---------------------------------------------------------------------------------------------- helpers


def refused(source: UrlSource, exc: AddressRefused) -> StorageError:
    """The StorageError for a URL input (or one of its redirect hops) the address policy refused."""
    if exc.url == redact_url(source.url):
        return StorageError(source, exc.detail)
    return StorageError(source, f"was redirected to {exc.url!r}, which {exc.detail}")


def _content_length(resp: httpx.Response) -> int | None:
    if resp.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        return None  # the length of the encoded body, not of the file
    value = resp.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - datetime.now(UTC).timestamp())


def _describe_exc(exc: BaseException | None) -> str:
    if isinstance(exc, _TransientStatus):
        return f"the server answered {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, httpx.HTTPError) else text


def safe_file_name(name: str | None) -> str | None:
    """One safe path segment from an untrusted name, or None: the last segment after any '/' or '\\',
    without control characters, not '.' or '..', at most 200 bytes (the extension kept)."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", "..") or name.startswith(".part-"):
        return None
    encoded = name.encode()
    if len(encoded) > _MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext_bytes = (dot + ext).encode() if dot and len(ext.encode()) <= 16 else b""
        stem_bytes = (stem.encode() if ext_bytes else encoded)[: _MAX_NAME_BYTES - len(ext_bytes)]
        name = stem_bytes.decode(errors="ignore") + ext_bytes.decode()
    return name or None


def file_name_for(content_disposition: str | None, url: str) -> str:
    """The downloaded file's name: Content-Disposition's filename (RFC 6266/5987 ``filename*`` too),
    else the URL path's last segment, else ``download`` — always one safe segment."""
    if content_disposition:
        msg = email.message.Message()
        msg["content-disposition"] = content_disposition
        with contextlib.suppress(Exception):
            name = safe_file_name(msg.get_filename())
            if name:
                return name
    with contextlib.suppress(ValueError):
        path = urllib.parse.urlsplit(url).path
        name = safe_file_name(urllib.parse.unquote(path.rsplit("/", 1)[-1]))
        if name:
            return name
    return DEFAULT_FILE_NAME
