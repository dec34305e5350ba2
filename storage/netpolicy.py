"""Where requesters may make the node fetch from or publish to: network addresses, S3 endpoints and buckets.

A requester names URLs and S3 endpoints; the node fetches them with its own network position and
its own credentials. Unless the operator allows it (``storage.allow_private_networks``), addresses
that are not public (loopback, private ranges, link-local such as cloud metadata at
169.254.169.254, reserved, multicast) are refused, so that a job cannot read the node's
neighbourhood through its inputs (server-side request forgery).

One :class:`AddressPolicy` per node decides, and it is asked before *every* outbound request made
for a requester, on the address actually connected to:

- URL inputs go through ``storage.url.PinnedTransport`` (an httpx transport): each request, and so each
  redirect hop and the bid-time HEAD, has its host resolved and every address checked, and the
  connection is made to the checked address (the URL's host is replaced by it; ``Host`` and, for
  https, the TLS server name and certificate check keep the name), so a DNS answer cannot change
  between the check and the connection. Redirects are bounded by ``storage.url.max_redirects``.
- S3 clients check each request's endpoint before botocore sends it (:meth:`AddressPolicy.boto_hook`).
  botocore resolves the name again when it connects: a DNS answer that changes within that moment
  is not caught for S3 (endpoints the operator lists are trusted and not checked).

S3 buckets and endpoints are the operator's lists in ``storage.s3`` (``inputs.allowed_buckets``,
``publish.allowed_buckets``, ``allowed_endpoints``): the node acts with its own credentials, so a
requester may name only those. :func:`check_request` checks a whole request before anything is
sent (ShouldBid and Start); the providers and the publisher check again before each request.

Tests stand a local server in for a public host with an injected ``resolver`` and ``public``
addresses; the real policy has neither, and the operator's only switch is ``allow_private_networks``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from typing import Any

from haddock.executor.errors import ErrorCode, ExecutorError
from haddock.executor.publishers import S3PublisherSpec, describe_publisher
from haddock.executor.request import RunCommandRequest
from haddock.executor.sources import S3Source, UrlSource, describe_source, redact_url
from haddock.storage.config import StorageSettings

__all__ = [
    "AddressPolicy",
    "AddressRefused",
    "Resolver",
    "StorageRefused",
    "check_request",
    "default_port",
    "system_resolver",
]

Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> addresses`` (blocking; run in a thread). Raises OSError when the host does not resolve."""


class StorageRefused(ExecutorError):
    """A request names a place (address, S3 endpoint or bucket) the operator does not let requesters use."""

    code = ErrorCode.FAILED_PRECONDITION


class AddressRefused(StorageRefused):
    """A URL or endpoint resolves to an address requesters may not reach through the node.

    ``str()`` is ``"{what} '{url}' {detail}"``; ``url`` is the refused URL (redacted) and ``detail``
    says why (``resolves to 127.0.0.1, which is not a public address; ...``)."""

    code = ErrorCode.FAILED_PRECONDITION

    def __init__(self, what: str, url: str, detail: str) -> None:
        super().__init__(f"{what} {url!r} {detail}")
        self.url = url
        self.detail = detail


def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer (getaddrinfo), every address once, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


class AddressPolicy:
    """Decides whether the node may connect to an address for a requester (see the module doc).

    ``allow_private``: the operator's ``storage.allow_private_networks``, every address allowed.
    ``resolver``: how names become addresses (default: the system's). ``public``: ``(address, port)``
    pairs counted as public although they are not — for tests that stand a local server in for a
    public host; never set from configuration.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolver: Resolver | None = None,
        public: Collection[tuple[str, int]] = (),
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver or system_resolver
        self._public = frozenset((str(ipaddress.ip_address(a)), int(p)) for a, p in public)

    @classmethod
    def of(cls, settings: StorageSettings) -> AddressPolicy:
        """The node's policy: public addresses only unless ``settings.allow_private_networks``."""
        return cls(allow_private=settings.allow_private_networks)

    @property
    def enforcing(self) -> bool:
        return not self.allow_private

    def allows(self, addr: str, port: int) -> bool:
        """Whether a connection to ``addr:port`` is allowed."""
        if self.allow_private:
            return True
        try:
            canonical = str(ipaddress.ip_address(addr.split("%", 1)[0]))
        except ValueError:
            return False
        return (canonical, port) in self._public or _public(canonical)

    def resolve(
        self,
        host: str,
        port: int,
        shown: str,
        what: str,
        *,
        serves: str = "fetches from and publishes to",
        setting: str = "storage.allow_private_networks",
    ) -> list[str]:
        """(Blocking.) The addresses of ``host``, every one of them allowed; else AddressRefused.
        ``shown`` is what messages call the URL (redacted), ``what`` what it is ("input URL"); a refusal
        says what the node only ``serves`` public addresses for and which ``setting`` lets the operator
        allow private ones."""
        host = host.strip("[]")
        try:
            addrs = self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise AddressRefused(what, shown, f"has a host {host!r} that does not resolve ({reason})") from None
        if not addrs:
            raise AddressRefused(what, shown, f"has a host {host!r} that does not resolve")
        for addr in addrs:
            if not self.allows(addr, port):
                raise AddressRefused(
                    what,
                    shown,
                    f"resolves to {addr}, which is not a public address; this node only {serves} public "
                    f"addresses (the operator can set {setting})",
                )
        return addrs

    async def aresolve(self, host: str, port: int, shown: str, what: str, **wording: str) -> list[str]:
        return await asyncio.to_thread(self.resolve, host, port, shown, what, **wording)

    async def check_url(self, url: str, what: str) -> None:
        """Refuse ``url`` unless its host resolves to allowed addresses only (nothing is sent)."""
        if self.allow_private:
            return
        shown = redact_url(url)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or default_port(parts.scheme)
        except ValueError:
            raise AddressRefused(what, shown, "is not a valid URL") from None
        if not parts.hostname:
            raise AddressRefused(what, shown, "has no host")
        await self.aresolve(parts.hostname, port, shown, what)

    def boto_hook(self, what: str, trusted: Iterable[str | None] = ()) -> Callable[..., None]:
        """A botocore ``before-send`` handler checking each request's endpoint (blocking, in boto's thread).
        Requests to the ``trusted`` endpoints (the operator's own) are not checked."""
        trusted_origins = {_origin(t) for t in trusted if t}

        def before_send(request: Any, **_: Any) -> None:
            if self.allow_private:
                return
            url = str(request.url)
            if _origin(url) in trusted_origins:
                return
            parts = urllib.parse.urlsplit(url)
            if parts.hostname:
                self.resolve(parts.hostname, parts.port or default_port(parts.scheme), redact_url(url), what)

        return before_send


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default_port(parts.scheme))


async def check_request(request: RunCommandRequest, settings: StorageSettings, policy: AddressPolicy) -> None:
    """Refuse (StorageRefused, naming the input or publisher) a request whose inputs or publishers name
    an S3 bucket or endpoint the operator does not list, or a URL or endpoint on an address ``policy``
    refuses. Nothing is sent to any of them."""
    s3 = settings.s3
    trusted = set(s3.trusted_endpoints())
    for src in request.input_sources:
        if isinstance(src, UrlSource):
            await policy.check_url(src.url, "input URL")
        elif isinstance(src, S3Source):
            why = s3.bucket_refusal(src.bucket)
            if why is None and not s3.allows_endpoint(src.endpoint_url):
                why = f"the endpoint {src.endpoint_url} is not one this node uses (allowed: {s3.allowed_text()})"
            if why is not None:
                raise StorageRefused(f"{describe_source(src)} is refused: {why}")
            if src.endpoint_url and src.endpoint_url not in trusted:
                await policy.check_url(src.endpoint_url, "S3 endpoint")
    for pub in request.publishers:
        if isinstance(pub, S3PublisherSpec):
            why = s3.bucket_refusal(pub.bucket, publish=True)
            if why is None and not s3.allows_endpoint(pub.endpoint_url, publish=True):
                why = (
                    f"the endpoint {pub.endpoint_url} is not one this node uses "
                    f"(allowed: {s3.allowed_text(publish=True)})"
                )
            if why is not None:
                raise StorageRefused(f"publishing to {describe_publisher(pub)} is refused: {why}")
            if pub.endpoint_url and pub.endpoint_url not in trusted:
                await policy.check_url(pub.endpoint_url, "S3 publisher endpoint")
