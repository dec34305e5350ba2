"""The address policy against real HTTP servers on 127.0.0.1: a redirect chain through a server standing
in for a public host never reaches the secret, every hop is checked, the checked address is the one
connected to, and redirects are bounded."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from haddock.executor.sources import UrlSource
from haddock.storage.config import UrlSettings
from haddock.storage.netpolicy import AddressPolicy, AddressRefused, system_resolver
from haddock.storage.provider import StorageError
from haddock.storage.url import UrlStorage
from tests.storage.conftest import Handler, HttpServer

SECRET = b"the node's neighbour's secret"
PUBLIC_NAME = "public.test"  # not in any DNS: only the test's resolver knows it

SETTINGS = UrlSettings(attempts=1, connect_timeout=2, read_timeout=2, total_timeout=10, head_timeout=2, max_redirects=3)


@pytest.fixture
def secret_server() -> Iterator[HttpServer]:
    """A private service on 127.0.0.1 the node must never fetch from for a requester."""
    server = HttpServer()
    yield server
    server.close()


class StandIn:
    """The policy of a node on which ``http_server`` counts as a public host called ``public.test``:
    the real policy (public addresses only), with that one loopback port declared public."""

    def __init__(self, public: HttpServer) -> None:
        self.public = public
        self.lookups: list[str] = []
        self.policy = AddressPolicy(resolver=self.resolve, public=[("127.0.0.1", public.port)])

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return ["127.0.0.1"] if host == PUBLIC_NAME else system_resolver(host, port)

    def url(self, loopback_url: str) -> str:
        return loopback_url.replace("127.0.0.1", PUBLIC_NAME, 1)


def redirect_to(location: str) -> object:
    def route(h: Handler) -> None:
        h.reply(302, b"", headers={"Location": location})

    return route


def serve(body: bytes, hosts: list[str] | None = None) -> object:
    def route(h: Handler) -> None:
        if hosts is not None:
            hosts.append(h.headers.get("Host", ""))
        h.reply(200, body)

    return route


async def test_a_redirect_to_a_private_address_is_never_followed(
    http_server: HttpServer, secret_server: HttpServer, tmp_path: Path
) -> None:
    secret = secret_server.add(serve(SECRET), "secret")  # type: ignore[arg-type]
    stand_in = StandIn(http_server)
    hop2 = stand_in.url(http_server.add(redirect_to(secret), "hop2"))  # type: ignore[arg-type]
    hop1 = stand_in.url(http_server.add(redirect_to(hop2), "hop1"))  # type: ignore[arg-type]
    storage = UrlStorage(None, SETTINGS, policy=stand_in.policy)
    try:
        source = UrlSource(url=hop1, target="/in/x")
        with pytest.raises(StorageError) as refused:
            await storage.get_volume_size(source)  # the bid-time HEAD
        with pytest.raises(StorageError) as refused_get:
            await storage.prepare_storage(source, tmp_path / "work")
    finally:
        await storage.aclose()
    for err in (refused, refused_get):
        assert str(err.value).startswith(f"url input {hop1} was redirected to {secret!r}, which resolves to 127.0.0.1")
        assert "not a public address" in str(err.value)
    # the chain was followed up to the secret, which was never asked for anything
    assert http_server.count("HEAD", hop1) == 2 and http_server.count("HEAD", hop2) == 2  # bid, then prepare
    assert secret_server.count("HEAD", secret) == 0 and secret_server.count("GET", secret) == 0
    assert list(tmp_path.rglob("*")) in ([], [tmp_path / "work"])


async def test_a_redirect_only_on_get_is_refused_too(
    http_server: HttpServer, secret_server: HttpServer, tmp_path: Path
) -> None:
    """A server that refuses HEAD (as presigned URLs do) and redirects the GET to a private address."""
    secret = secret_server.add(serve(SECRET), "secret")  # type: ignore[arg-type]
    stand_in = StandIn(http_server)

    def sneaky(h: Handler) -> None:
        h.reply(405, b"") if h.command == "HEAD" else h.reply(302, b"", headers={"Location": secret})

    url = stand_in.url(http_server.add(sneaky, "data"))
    storage = UrlStorage(None, SETTINGS, policy=stand_in.policy)
    try:
        assert await storage.get_volume_size(UrlSource(url=url, target="/in/x")) is None
        with pytest.raises(StorageError, match=f"was redirected to {secret!r}, which resolves to 127.0.0.1"):
            await storage.prepare_storage(UrlSource(url=url, target="/in/x"), tmp_path / "work")
    finally:
        await storage.aclose()
    assert http_server.count("GET", url) == 1
    assert secret_server.count("HEAD", secret) == 0 and secret_server.count("GET", secret) == 0


async def test_the_checked_address_is_the_one_connected_to(http_server: HttpServer, tmp_path: Path) -> None:
    """``public.test`` resolves only through the policy: a second lookup by the HTTP client would fail.
    The server sees the name in ``Host``; each request (HEAD, GET, redirect hop) is looked up once."""
    hosts: list[str] = []
    stand_in = StandIn(http_server)
    final = stand_in.url(http_server.add(serve(b"public data", hosts), "data.txt"))  # type: ignore[arg-type]
    first = stand_in.url(http_server.add(redirect_to(final), "alias.txt"))  # type: ignore[arg-type]
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(PUBLIC_NAME, http_server.port)
    storage = UrlStorage(None, SETTINGS, policy=stand_in.policy)
    try:
        volume = await storage.prepare_storage(UrlSource(url=first, target="/in/x"), tmp_path / "work")
    finally:
        await storage.aclose()
    assert volume.host_path.read_bytes() == b"public data"
    assert hosts == [f"{PUBLIC_NAME}:{http_server.port}"] * 2  # HEAD and GET
    assert stand_in.lookups == [PUBLIC_NAME] * 4  # HEAD, its hop, GET, its hop


async def test_redirects_are_bounded(http_server: HttpServer, tmp_path: Path) -> None:
    stand_in = StandIn(http_server)
    url = stand_in.url(http_server.add(serve(b"end"), "end"))  # type: ignore[arg-type]
    for i in range(SETTINGS.max_redirects + 1):
        url = stand_in.url(http_server.add(redirect_to(url), f"r{i}"))  # type: ignore[arg-type]
    storage = UrlStorage(None, SETTINGS, policy=stand_in.policy)
    try:
        with pytest.raises(StorageError, match="more than 3 redirects"):
            await storage.prepare_storage(UrlSource(url=url, target="/in/x"), tmp_path / "work")
    finally:
        await storage.aclose()


async def test_the_bid_time_head_is_checked_before_it_is_sent(http_server: HttpServer) -> None:
    url = http_server.add(serve(b"x"), "private")  # type: ignore[arg-type]
    storage = UrlStorage(None, SETTINGS)  # the real policy
    try:
        for target in (url, "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/x", "http://10.0.0.1/x"):
            with pytest.raises(StorageError, match="which is not a public address"):
                await storage.get_volume_size(UrlSource(url=target, target="/in/x"))
    finally:
        await storage.aclose()
    assert http_server.count("HEAD", url) == 0 and http_server.count("GET", url) == 0


def test_what_counts_as_public() -> None:
    real = AddressPolicy()
    for addr in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0"):
        assert not real.allows(addr, 80), addr
    for addr in ("::ffff:127.0.0.1", "::ffff:169.254.169.254", "224.0.0.1", "100.64.0.1", "not an address"):
        assert not real.allows(addr, 80), addr
    assert real.allows("8.8.8.8", 53) and real.allows("2001:4860:4860::8888", 443)
    stand_in = AddressPolicy(public=[("127.0.0.1", 8080)])
    assert stand_in.allows("127.0.0.1", 8080) and not stand_in.allows("127.0.0.1", 8081)
    assert not stand_in.allows("127.0.0.2", 8080)
    assert AddressPolicy(allow_private=True).allows("127.0.0.1", 1)


async def test_every_address_of_a_name_must_be_public() -> None:
    policy = AddressPolicy(resolver=lambda host, port: ["8.8.8.8", "10.0.0.7"])
    with pytest.raises(AddressRefused, match=r"input URL 'https://mixed.example/x' resolves to 10\.0\.0\.7"):
        await policy.check_url("https://user:pw@mixed.example/x?sig=1", "input URL")


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(AddressRefused, match="that does not resolve"):
        await AddressPolicy().check_url("http://no-such-host.invalid/x", "input URL")


def test_the_boto_hook_checks_every_request_but_the_operators_endpoints() -> None:
    hook = AddressPolicy().boto_hook("S3 endpoint", trusted=["http://minio.internal:9000"])
    with pytest.raises(AddressRefused, match=r"S3 endpoint 'http://127\.0\.0\.1:9/b/k' resolves to 127\.0\.0\.1"):
        hook(request=SimpleNamespace(url="http://127.0.0.1:9/b/k?x-amz-signature=s"))
    with pytest.raises(AddressRefused, match=r"169\.254\.169\.254"):
        hook(request=SimpleNamespace(url="http://169.254.169.254/latest/meta-data/"))
    hook(request=SimpleNamespace(url="http://minio.internal:9000/bucket/key"))  # trusted: not even resolved
    AddressPolicy(allow_private=True).boto_hook("S3 endpoint")(request=SimpleNamespace(url="http://127.0.0.1/b"))
