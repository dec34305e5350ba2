"""URL inputs against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from haddock.executor.errors import ErrorCode
from haddock.executor.sources import UrlSource
from haddock.storage.cache import ContentCache
from haddock.storage.config import UrlSettings
from haddock.storage.netpolicy import AddressPolicy
from haddock.storage.provider import StorageError
from haddock.storage.url import UrlStorage, file_name_for, safe_file_name
from tests.storage.conftest import Handler, HttpServer, leftovers

BODY = b"col1,col2\n" + b"1,2\n" * 1000
ETAG = '"v1"'

LOOPBACK = AddressPolicy(allow_private=True)  # the test servers are on 127.0.0.1

FAST = UrlSettings(
    max_bytes=64 * 1024,
    attempts=3,
    backoff_initial=0.01,
    backoff_max=0.05,
    connect_timeout=2,
    read_timeout=2,
    total_timeout=10,
    head_timeout=2,
    trust_env=False,
)


@pytest.fixture
async def storage() -> AsyncIterator[UrlStorage]:
    s = UrlStorage(None, FAST, policy=LOOPBACK)
    yield s
    await s.aclose()


@pytest.fixture
def cache(tmp_path: Path) -> ContentCache:
    return ContentCache(tmp_path / "cache", max_bytes=1024 * 1024)


@pytest.fixture
async def cached(cache: ContentCache) -> AsyncIterator[UrlStorage]:
    s = UrlStorage(cache, FAST, policy=LOOPBACK)
    yield s
    await s.aclose()


def static(body: bytes = BODY, **kw: object) -> object:
    def route(h: Handler) -> None:
        h.reply(200, body, **kw)  # type: ignore[arg-type]

    return route


def src(url: str, **kw: str) -> UrlSource:
    return UrlSource(url=url, target="/in/data.csv", **kw)  # type: ignore[arg-type]


async def test_download_with_content_length(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add(static(headers={"ETag": ETAG}), "data.csv")  # type: ignore[arg-type]
    s = src(url)
    assert await storage.get_volume_size(s) == len(BODY)
    assert not await storage.has_storage_locally(s)  # no cache
    vol = await storage.prepare_storage(s, tmp_path / "work")
    assert vol.host_path.read_bytes() == BODY
    assert vol.host_path.name == "data.csv" and vol.host_path.is_file()  # the FILE is mounted at the target
    assert vol.read_only and not vol.cached and vol.target == "/in/data.csv"
    assert http_server.count("GET", url) == 1
    await storage.cleanup_storage(vol)
    assert leftovers(tmp_path / "work") == []


async def test_chunked_without_content_length(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add(static(chunked=True, pieces=7), "chunked")  # type: ignore[arg-type]
    assert await storage.get_volume_size(src(url)) is None
    vol = await storage.prepare_storage(src(url), tmp_path / "work")
    assert vol.host_path.read_bytes() == BODY and vol.host_path.name == "chunked"
    # and a body that simply ends when the connection closes
    url = http_server.add(static(length=False), "")  # type: ignore[arg-type]
    vol = await storage.prepare_storage(src(url), tmp_path / "work")
    assert vol.host_path.read_bytes() == BODY and vol.host_path.name == "download"


async def test_slow_body_within_the_read_timeout(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add(static(pieces=5, delay=0.1), "slow")  # type: ignore[arg-type]
    vol = await storage.prepare_storage(src(url), tmp_path / "work")
    assert vol.host_path.read_bytes() == BODY
    assert http_server.count("GET", url) == 1


async def test_server_error_then_success_is_retried(
    storage: UrlStorage, http_server: HttpServer, tmp_path: Path
) -> None:
    seen: list[str] = []

    def flaky(h: Handler) -> None:
        if h.command == "GET":
            seen.append("GET")
            if len(seen) == 1:
                h.reply(500, b"oops")
                return
            if len(seen) == 2:
                h.reply(429, b"slow down", headers={"Retry-After": "0"})
                return
        h.reply(200, BODY)

    url = http_server.add(flaky, "flaky.csv")
    vol = await storage.prepare_storage(src(url), tmp_path / "work")
    assert vol.host_path.read_bytes() == BODY
    assert http_server.count("GET", url) == 3
    assert leftovers(tmp_path / "work") == [str(vol.scratch), str(vol.host_path)]


async def test_not_found_is_not_retried(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add(lambda h: h.reply(404, b"no such file"), "missing.csv")
    with pytest.raises(StorageError) as err:
        await storage.prepare_storage(src(url), tmp_path / "work")
    assert str(err.value) == (
        f"url input {url} could not be downloaded: the server answered 404 Not Found (not retried)"
    )
    assert err.value.code is ErrorCode.FAILED_PRECONDITION
    assert http_server.count("GET", url) == 1
    assert leftovers(tmp_path / "work") == []


async def test_persistent_server_errors_give_up(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add(lambda h: h.reply(503, b"down"), "down")
    with pytest.raises(StorageError, match=r"503 Service Unavailable \(gave up after 3 attempts\)") as err:
        await storage.prepare_storage(src(url), tmp_path / "work")
    assert err.value.code is ErrorCode.UNAVAILABLE
    assert http_server.count("GET", url) == 3
    assert leftovers(tmp_path / "work") == []


async def test_oversize_by_head_is_refused_without_a_get(
    storage: UrlStorage, http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add(static(b"x" * (FAST.max_bytes + 1)), "big")  # type: ignore[arg-type]
    with pytest.raises(StorageError) as err:
        await storage.prepare_storage(src(url), tmp_path / "work")
    assert str(err.value) == (
        f"url input {url} is larger than the size limit of 64Ki for URL inputs "
        "(the server's HEAD says 64Ki; nothing was downloaded)"
    ).replace("64Ki;", "64.0Ki;")
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert http_server.count("GET", url) == 0


async def test_oversize_by_content_length_on_get(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    def no_head(h: Handler) -> None:
        if h.command == "HEAD":
            h.reply(405, b"")
        else:
            h.reply(200, b"x" * (FAST.max_bytes + 1))

    url = http_server.add(no_head, "big")
    with pytest.raises(StorageError, match=r"Content-Length says 64.0Ki; nothing was downloaded"):
        await storage.prepare_storage(src(url), tmp_path / "work")
    assert http_server.count("GET", url) == 1
    assert leftovers(tmp_path / "work") == []


async def test_oversize_while_streaming_is_aborted_at_once(
    storage: UrlStorage, http_server: HttpServer, tmp_path: Path
) -> None:
    # 1 KiB every 5 ms for 10 s, no length: the cap (64 KiB) is hit after ~0.3 s
    url = http_server.add(static(b"z" * 2048 * 1024, chunked=True, pieces=2048, delay=0.005), "endless")  # type: ignore[arg-type]
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        await storage.prepare_storage(src(url), tmp_path / "work")
    assert time.monotonic() - start < 3
    message = "is larger than the size limit of 64Ki for URL inputs (download aborted after more than 64Ki arrived)"
    assert message in str(err.value)
    assert http_server.count("GET", url) == 1  # not retried
    assert leftovers(tmp_path / "work") == []


async def test_checksum(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add(static(), "data.csv")  # type: ignore[arg-type]
    good = hashlib.sha256(BODY).hexdigest()
    vol = await storage.prepare_storage(src(url, sha256=good), tmp_path / "work")
    assert vol.host_path.read_bytes() == BODY
    await storage.cleanup_storage(vol)
    wrong = "0" * 64
    with pytest.raises(StorageError) as err:
        await storage.prepare_storage(src(url, sha256=wrong), tmp_path / "work")
    assert str(err.value) == (
        f"url input {url} failed its checksum: expected sha256 {wrong}, got {good} (3.9Ki downloaded)"
    )
    assert leftovers(tmp_path / "work") == []


async def test_read_timeout_is_retried_then_reported(http_server: HttpServer, tmp_path: Path) -> None:
    def stall(h: Handler) -> None:
        if h.command == "HEAD":
            h.reply(200, b"", headers={"Content-Length": "10"}, length=False)
            return
        h.send_response(200)
        h.send_header("Content-Length", "10")
        h.end_headers()
        h.wfile.write(b"12345")
        h.wfile.flush()
        time.sleep(1.0)

    url = http_server.add(stall, "stall")
    s = UrlStorage(
        None, UrlSettings(read_timeout=0.2, attempts=2, backoff_initial=0.01, trust_env=False), policy=LOOPBACK
    )
    try:
        with pytest.raises(StorageError, match=r"timed out \(ReadTimeout\) \(gave up after 2 attempts\)") as err:
            await s.prepare_storage(src(url), tmp_path / "work")
    finally:
        await s.aclose()
    assert err.value.code is ErrorCode.UNAVAILABLE
    assert http_server.count("GET", url) == 2
    assert leftovers(tmp_path / "work") == []


async def test_total_timeout(http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add(static(pieces=20, delay=0.1), "slow")  # type: ignore[arg-type]
    s = UrlStorage(None, UrlSettings(total_timeout=0.3, trust_env=False), policy=LOOPBACK)
    try:
        with pytest.raises(StorageError, match=r"could not be downloaded within the total timeout of 300ms"):
            await s.prepare_storage(src(url), tmp_path / "work")
    finally:
        await s.aclose()
    assert leftovers(tmp_path / "work") == []


async def test_connection_refused(tmp_path: Path) -> None:
    s = UrlStorage(None, UrlSettings(attempts=2, backoff_initial=0.01, trust_env=False), policy=LOOPBACK)
    try:
        # port 9 (discard) on loopback: nothing listens there
        with pytest.raises(StorageError, match=r"ConnectError.*\(gave up after 2 attempts\)") as err:
            await s.prepare_storage(src("http://127.0.0.1:9/x"), tmp_path / "work")
        assert await s.get_volume_size(src("http://127.0.0.1:9/x")) is None
    finally:
        await s.aclose()
    assert err.value.code is ErrorCode.UNAVAILABLE
    assert leftovers(tmp_path / "work") == []


async def test_file_name_from_content_disposition(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add(static(headers={"Content-Disposition": 'attachment; filename="../../etc/evil.csv"'}), "x")  # type: ignore[arg-type]
    vol = await storage.prepare_storage(src(url), tmp_path / "work")
    assert vol.host_path.name == "evil.csv" and vol.host_path.parent == vol.scratch


def test_file_names_are_one_safe_segment() -> None:
    assert file_name_for("attachment; filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.pdf", "http://h/x") == (
        "naïve résumé.pdf"
    )
    assert file_name_for('inline; filename="a\\\\b\\\\c.txt"', "http://h/x") == "c.txt"
    assert file_name_for('attachment; filename=".."', "http://h/dir/f%20g.txt?q=1") == "f g.txt"
    assert file_name_for(None, "http://h/dir/..") == "download"
    assert file_name_for(None, "http://h/") == "download"
    assert file_name_for(None, "http://h/a%2Fb") == "b"
    assert safe_file_name("x\x00y\nz") == "xyz"
    long = safe_file_name("a" * 300 + ".tar.gz")
    assert long is not None and long.endswith(".gz") and len(long.encode()) <= 200


async def test_concurrent_prepares_of_one_url_get_it_once(
    cached: UrlStorage, cache: ContentCache, http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add(static(headers={"ETag": ETAG}, pieces=4, delay=0.05), "shared.csv")  # type: ignore[arg-type]
    s = src(url)
    assert not await cached.has_storage_locally(s)
    vols = await asyncio.gather(
        cached.prepare_storage(s, tmp_path / "work1"), cached.prepare_storage(s, tmp_path / "work2")
    )
    assert http_server.count("GET", url) == 1
    assert vols[0].host_path == vols[1].host_path and vols[0].host_path.read_bytes() == BODY
    assert all(v.cached and v.read_only for v in vols)
    assert vols[0].host_path.is_relative_to(cache.root)  # bound from the cache, read-only
    assert await cached.has_storage_locally(s)
    key = vols[0].lease.key  # type: ignore[union-attr]
    assert cache.refs(key) == 2
    for v in vols:
        await cached.cleanup_storage(v)
    assert cache.refs(key) == 0 and vols[0].host_path.exists()  # released, kept
    again = await cached.prepare_storage(s, tmp_path / "work3")
    assert again.lease is not None and again.lease.hit and http_server.count("GET", url) == 1
    assert leftovers(tmp_path / "work1", tmp_path / "work2", tmp_path / "work3") == []


async def test_content_addressed_by_sha256_across_urls(
    cached: UrlStorage, cache: ContentCache, http_server: HttpServer, tmp_path: Path
) -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    url1 = http_server.add(static(), "a.csv")  # type: ignore[arg-type]
    url2 = http_server.add(static(), "b.csv")  # type: ignore[arg-type]
    v1 = await cached.prepare_storage(src(url1, sha256=digest), tmp_path / "work")
    v2 = await cached.prepare_storage(src(url2, sha256=digest), tmp_path / "work")
    assert v1.host_path == v2.host_path and v2.lease is not None and v2.lease.hit
    assert (http_server.count("GET", url1), http_server.count("GET", url2)) == (1, 0)
    assert cache.keys() == [f"sha256-{digest}"]


async def test_no_validators_means_no_caching(
    cached: UrlStorage, cache: ContentCache, http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add(static(), "plain")  # type: ignore[arg-type]
    v1 = await cached.prepare_storage(src(url), tmp_path / "work")
    v2 = await cached.prepare_storage(src(url), tmp_path / "work")
    assert not v1.cached and not v2.cached and v1.host_path != v2.host_path
    assert http_server.count("GET", url) == 2 and cache.keys() == []
    for v in (v1, v2):
        await cached.cleanup_storage(v)
    assert leftovers(tmp_path / "work") == []


async def test_failures_leave_nothing_in_the_cache(
    cached: UrlStorage, cache: ContentCache, http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add(static(headers={"ETag": ETAG}), "x")  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="failed its checksum"):
        await cached.prepare_storage(src(url, sha256="1" * 64), tmp_path / "work")

    def changing(h: Handler) -> None:  # the content changes between the HEAD and the GET
        h.reply(200, BODY, headers={"ETag": '"head"' if h.command == "HEAD" else '"get"'})

    url = http_server.add(changing, "y")
    with pytest.raises(StorageError, match=r"changed on the server while being fetched \(etag \"head\" became"):
        await cached.prepare_storage(src(url), tmp_path / "work")
    assert cache.keys() == [] and leftovers(cache.root / "tmp", tmp_path / "work") == []


async def test_cancelled_download_leaves_nothing(
    cached: UrlStorage, cache: ContentCache, http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add(static(headers={"ETag": ETAG}, pieces=20, delay=0.1), "slow")  # type: ignore[arg-type]
    task = asyncio.create_task(cached.prepare_storage(src(url), tmp_path / "work"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cache.keys() == [] and leftovers(cache.root / "tmp", tmp_path / "work") == []


async def test_redirects_are_followed(storage: UrlStorage, http_server: HttpServer, tmp_path: Path) -> None:
    target = http_server.add(static(), "real.csv")  # type: ignore[arg-type]
    url = http_server.add(lambda h: h.reply(302, b"", headers={"Location": target}), "alias.csv")
    assert await storage.get_volume_size(src(url)) == len(BODY)
    vol = await storage.prepare_storage(src(url), tmp_path / "work")
    assert vol.host_path.read_bytes() == BODY and vol.host_path.name == "alias.csv"  # named as asked
