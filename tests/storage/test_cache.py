"""The content cache: pure key derivation, LRU eviction under a size bound, references, dedup."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from haddock.storage.cache import ContentCache, s3_object_key, s3_prefix_key, sha256_key, url_key
from tests.storage.conftest import leftovers

SHA = "0123456789abcdef" * 4


# ------------------------------------------------------------------------------------------- keys


def test_sha256_key_is_the_digest() -> None:
    assert sha256_key(SHA) == f"sha256-{SHA}"
    assert sha256_key("sha256:" + SHA.upper()) == f"sha256-{SHA}"
    with pytest.raises(ValueError):
        sha256_key("xyz")


def test_url_key() -> None:
    base = url_key("https://h/f", sha256=None, etag='"v1"', last_modified=None)
    assert base is not None and base.startswith("url-")
    assert base == url_key("https://h/f", sha256=None, etag='"v1"', last_modified=None)  # deterministic
    assert base == url_key("https://h/f#part", sha256=None, etag='"v1"', last_modified=None)  # fragment ignored
    assert base != url_key("https://h/f", sha256=None, etag='"v2"', last_modified=None)
    assert base != url_key("https://h/g", sha256=None, etag='"v1"', last_modified=None)
    assert base != url_key("https://h/f", sha256=None, etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    by_date = url_key("https://h/f", sha256=None, etag=None, last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    assert by_date is not None and by_date != base
    # nothing identifies the content: not cached
    assert url_key("https://h/f", sha256=None, etag=None, last_modified=None) is None
    # a checksum identifies the content whatever the URL or validators
    assert url_key("https://h/f", sha256=SHA, etag='"v1"', last_modified=None) == f"sha256-{SHA}"
    assert url_key("https://other/x", sha256=SHA, etag=None, last_modified=None) == f"sha256-{SHA}"


def test_s3_keys() -> None:
    kw = {"endpoint_url": None, "bucket": "b", "key": "k"}
    by_version = s3_object_key(**kw, version_id="v1", etag='"e"')  # type: ignore[arg-type]
    assert by_version == s3_object_key(**kw, version_id="v1", etag='"other"')  # type: ignore[arg-type]
    assert by_version != s3_object_key(**kw, version_id="v2", etag='"e"')  # type: ignore[arg-type]
    by_etag = s3_object_key(**kw, version_id=None, etag='"e"')  # type: ignore[arg-type]
    assert by_etag is not None and by_etag != by_version
    assert by_etag != s3_object_key(**kw, version_id=None, etag='"f"')  # type: ignore[arg-type]
    assert by_etag != s3_object_key(endpoint_url="http://minio:9000", bucket="b", key="k", version_id=None, etag='"e"')
    assert s3_object_key(**kw, version_id=None, etag=None) is None  # type: ignore[arg-type]
    assert s3_object_key(**kw, version_id="v1", etag='"e"', sha256=SHA) == f"sha256-{SHA}"  # type: ignore[arg-type]

    objs = [("p/a", '"1"', 1), ("p/b", '"2"', 2)]
    k1 = s3_prefix_key(endpoint_url=None, bucket="b", prefix="p/", filter=None, objects=objs)
    assert k1 == s3_prefix_key(endpoint_url=None, bucket="b", prefix="p/", filter=None, objects=objs[::-1])
    assert k1 != s3_prefix_key(
        endpoint_url=None, bucket="b", prefix="p/", filter=None, objects=[("p/a", '"1"', 1), ("p/b", '"3"', 2)]
    )
    assert k1 != s3_prefix_key(endpoint_url=None, bucket="b", prefix="p/", filter="a", objects=objs)
    assert k1 != s3_prefix_key(endpoint_url=None, bucket="b", prefix="p/", filter=None, objects=objs[:1])


# ------------------------------------------------------------------------------------------ cache


def filler(size: int, calls: list[str] | None = None, name: str = "f", delay: float = 0.0):  # type: ignore[no-untyped-def]
    async def fetch(dest: Path) -> Path:
        if calls is not None:
            calls.append(name)
        if delay:
            await asyncio.sleep(delay)
        path = dest / name
        path.write_bytes(b"x" * size)
        return path

    return fetch


def key(n: int) -> str:
    return sha256_key(f"{n:064x}")


async def test_entries_are_shared_and_released(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "c", max_bytes=1000)
    calls: list[str] = []
    a = await cache.get_or_fetch(key(1), filler(10, calls))
    b = await cache.get_or_fetch(key(1), filler(10, calls))
    assert calls == ["f"] and (a.hit, b.hit) == (False, True)
    assert a.path == b.path and a.path.read_bytes() == b"x" * 10
    assert cache.refs(key(1)) == 2 and cache.total_bytes == 10
    await a.release()
    await a.release()  # idempotent
    assert cache.refs(key(1)) == 1
    await b.release()
    assert cache.refs(key(1)) == 0 and key(1) in cache  # released, not deleted
    assert cache.lookup(key(1)) == a.path


async def test_lru_eviction_under_the_size_bound(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "c", max_bytes=300)
    for n in (1, 2, 3):
        await (await cache.get_or_fetch(key(n), filler(100))).release()
        await asyncio.sleep(0.01)
    await (await cache.get_or_fetch(key(1), filler(100))).release()  # 1 is now the most recently used
    await (await cache.get_or_fetch(key(4), filler(100))).release()
    assert sorted(cache.keys()) == sorted([key(1), key(3), key(4)])  # 2 was the least recently used
    assert cache.total_bytes == 300
    assert not (tmp_path / "c" / "entries" / key(2)).exists()
    assert leftovers(tmp_path / "c" / "tmp") == []


async def test_entries_in_use_are_never_evicted(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "c", max_bytes=250)
    held = await cache.get_or_fetch(key(1), filler(100))
    await asyncio.sleep(0.01)
    for n in (2, 3, 4):
        await (await cache.get_or_fetch(key(n), filler(100))).release()
    assert key(1) in cache and held.path.exists()  # the oldest, but in use
    assert sorted(cache.keys()) == sorted([key(1), key(4)])
    # in use beyond the bound: the bound is exceeded while it must be
    big = await cache.get_or_fetch(key(5), filler(400))
    assert key(5) in cache and key(1) in cache and cache.total_bytes == 500
    await big.release()  # no longer used and over the bound: evicted
    assert key(5) not in cache
    await held.release()
    assert key(1) in cache and cache.total_bytes == 100
    assert cache.accepts(250) and not cache.accepts(251) and cache.accepts(None)


async def test_room_is_made_before_a_fetch_of_known_size(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "c", max_bytes=200)
    for n in (1, 2):
        await (await cache.get_or_fetch(key(n), filler(100))).release()

    async def fetch(dest: Path) -> Path:
        assert cache.total_bytes <= 100  # evicted before the download started
        (dest / "f").write_bytes(b"y" * 100)
        return dest / "f"

    await (await cache.get_or_fetch(key(3), fetch, expected_size=100)).release()
    assert sorted(cache.keys()) == sorted([key(2), key(3)])


async def test_concurrent_requests_for_one_key_fetch_once(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "c", max_bytes=1000)
    calls: list[str] = []
    leases = await asyncio.gather(*(cache.get_or_fetch(key(1), filler(10, calls, delay=0.05)) for _ in range(5)))
    assert calls == ["f"]
    assert [lease.hit for lease in leases].count(False) == 1
    assert cache.refs(key(1)) == 5
    # different keys do not wait for each other
    calls.clear()
    other = await asyncio.gather(*(cache.get_or_fetch(key(n), filler(10, calls, delay=0.05)) for n in (2, 3, 4)))
    assert len(calls) == 3 and all(not lease.hit for lease in other)


async def test_a_failed_or_cancelled_fetch_leaves_nothing_and_the_next_caller_fetches(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "c", max_bytes=1000)

    async def broken(dest: Path) -> Path:
        (dest / "partial").write_bytes(b"half")
        raise RuntimeError("network down")

    with pytest.raises(RuntimeError, match="network down"):
        await cache.get_or_fetch(key(1), broken)
    assert key(1) not in cache
    assert sorted(leftovers(tmp_path / "c")) == [str(tmp_path / "c" / "entries"), str(tmp_path / "c" / "tmp")]

    calls: list[str] = []
    slow = asyncio.create_task(cache.get_or_fetch(key(1), filler(10, calls, name="slow", delay=5)))
    waiter = asyncio.create_task(cache.get_or_fetch(key(1), filler(10, calls, name="waiter")))
    await asyncio.sleep(0.05)
    slow.cancel()
    lease = await waiter  # the waiter was not cancelled with it: it fetched itself
    assert calls == ["slow", "waiter"] and lease.path.name == "waiter"
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert leftovers(tmp_path / "c" / "tmp") == []


async def test_the_cache_survives_a_restart(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "c", max_bytes=1000)
    lease = await cache.get_or_fetch(key(1), filler(10))
    await lease.release()
    (tmp_path / "c" / "tmp" / "half-download").write_bytes(b"junk")
    (tmp_path / "c" / "entries" / key(9)).mkdir()  # no meta: an unfinished entry
    again = ContentCache(tmp_path / "c", max_bytes=1000)
    assert again.keys() == [key(1)] and again.total_bytes == 10
    assert again.lookup(key(1)) == lease.path
    assert leftovers(tmp_path / "c" / "tmp") == [] and not (tmp_path / "c" / "entries" / key(9)).exists()
    meta = json.loads((tmp_path / "c" / "entries" / key(1) / "meta.json").read_text())
    assert meta["size"] == 10 and meta["content"] == "content/f"
    reused = await again.get_or_fetch(key(1), filler(10))
    assert reused.hit


async def test_directories_are_entries_too(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "c", max_bytes=1000)

    async def fetch(dest: Path) -> Path:
        (dest / "tree" / "sub").mkdir(parents=True)
        (dest / "tree" / "a").write_bytes(b"a" * 30)
        (dest / "tree" / "sub" / "b").write_bytes(b"b" * 12)
        return dest / "tree"

    lease = await cache.get_or_fetch(key(1), fetch)
    assert lease.size == 42 and lease.path.is_dir() and (lease.path / "sub" / "b").read_bytes() == b"b" * 12
    with pytest.raises(ValueError, match="not a cache key"):
        await cache.get_or_fetch("../escape", fetch)
