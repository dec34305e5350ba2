"""Which network addresses requesters may make the node fetch from or publish to.

A requester names URLs and S3 endpoints; the node fetches them with its own network position and
its own credentials. Unless the operator allows it, addresses that are not public (loopback,
private ranges, link-local such as cloud metadata at 169.254.169.254, reserved) are refused, so
that a job cannot read the node's neighbourhood through its inputs (SSRF).

The check resolves the host when the execution is accepted; a DNS answer that changes between
the check and the fetch is not caught (a resolver that pins answers closes that gap).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse

from haddock.executor.errors import ErrorCode, ExecutorError


class AddressRefused(ExecutorError):
    """A URL or endpoint resolves to an address requesters may not reach through the node."""

    code = ErrorCode.FAILED_PRECONDITION


def _public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


async def check_public(url: str, what: str) -> None:
    """Refuse ``url`` unless every address its host resolves to is public."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise AddressRefused(f"{what} {url!r} has no host")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressRefused(f"{what} {url!r}: the host {host!r} does not resolve ({exc.strerror})") from None
    for info in infos:
        addr = str(info[4][0])
        if not _public(addr):
            raise AddressRefused(
                f"{what} {url!r} resolves to {addr}, which is not a public address; this node only fetches "
                "from and publishes to public addresses (the operator can set storage.allow_private_networks)"
            )
