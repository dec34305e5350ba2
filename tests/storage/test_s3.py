"""S3 inputs against moto's S3 server on 127.0.0.1, through boto3."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from haddock.executor.errors import ErrorCode
from haddock.executor.sources import S3Source
from haddock.storage.cache import ContentCache
from haddock.storage.config import S3InputSettings, S3Settings
from haddock.storage.netpolicy import AddressPolicy
from haddock.storage.provider import StorageError
from haddock.storage.s3 import S3Storage, relative_paths
from tests.storage.conftest import leftovers, tree

LOOPBACK = AddressPolicy(allow_private=True)  # moto is on 127.0.0.1


@pytest.fixture
def cache(tmp_path: Path) -> ContentCache:
    return ContentCache(tmp_path / "cache", max_bytes=1024 * 1024)


@pytest.fixture
async def s3(s3_endpoint: str, cache: ContentCache) -> AsyncIterator[S3Storage]:
    s = S3Storage(cache, S3Settings(attempts=2, inputs=S3InputSettings(max_bytes=100_000)), policy=LOOPBACK)
    yield s
    await s.aclose()


@pytest.fixture
async def s3_nocache(s3_endpoint: str) -> AsyncIterator[S3Storage]:
    s = S3Storage(None, S3Settings(attempts=2, inputs=S3InputSettings(max_bytes=100_000)), policy=LOOPBACK)
    yield s
    await s.aclose()


def source(endpoint: str, bucket: str, **kw: Any) -> S3Source:
    return S3Source(bucket=bucket, endpoint_url=endpoint, region="us-east-1", target="/in/data", **kw)


async def test_single_object_is_a_read_only_file_from_the_cache(
    s3: S3Storage, cache: ContentCache, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    s3_client.put_object(Bucket=bucket, Key="dir/report.csv", Body=b"a,b\n1,2\n")
    src = source(s3_endpoint, bucket, key="dir/report.csv")
    assert await s3.get_volume_size(src) == 8
    assert not await s3.has_storage_locally(src)
    vol = await s3.prepare_storage(src, tmp_path / "work")
    assert vol.host_path.read_bytes() == b"a,b\n1,2\n" and vol.host_path.name == "report.csv"
    assert vol.cached and vol.read_only and vol.host_path.is_relative_to(cache.root)
    assert await s3.has_storage_locally(src)
    again = await s3.prepare_storage(src, tmp_path / "work")
    assert again.host_path == vol.host_path and again.lease is not None and again.lease.hit
    key = again.lease.key
    assert cache.refs(key) == 2
    for v in (vol, again):
        await s3.cleanup_storage(v)
    assert cache.refs(key) == 0 and vol.host_path.exists()
    # a new object under the same key is new content (another ETag): fetched again
    s3_client.put_object(Bucket=bucket, Key="dir/report.csv", Body=b"changed")
    fresh = await s3.prepare_storage(src, tmp_path / "work")
    assert fresh.host_path.read_bytes() == b"changed" and fresh.lease is not None and not fresh.lease.hit
    assert leftovers(tmp_path / "work") == []


async def test_without_a_cache_the_download_goes_to_the_work_dir(
    s3_nocache: S3Storage, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    s3_client.put_object(Bucket=bucket, Key="x.bin", Body=b"\x00" * 100)
    vol = await s3_nocache.prepare_storage(source(s3_endpoint, bucket, key="x.bin"), tmp_path / "work")
    assert not vol.cached and vol.host_path.is_relative_to(tmp_path / "work") and vol.host_path.stat().st_size == 100
    await s3_nocache.cleanup_storage(vol)
    assert leftovers(tmp_path / "work") == []


async def test_version_id(s3: S3Storage, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    s3_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3_client.put_object(Bucket=bucket, Key="model.bin", Body=b"version one")["VersionId"]
    s3_client.put_object(Bucket=bucket, Key="model.bin", Body=b"version two!")
    old = await s3.prepare_storage(source(s3_endpoint, bucket, key="model.bin", version_id=v1), tmp_path / "w")
    new = await s3.prepare_storage(source(s3_endpoint, bucket, key="model.bin"), tmp_path / "w")
    assert old.host_path.read_bytes() == b"version one"
    assert new.host_path.read_bytes() == b"version two!"
    assert await s3.get_volume_size(source(s3_endpoint, bucket, key="model.bin", version_id=v1)) == 11
    with pytest.raises(
        StorageError,
        match=r"versionId=nope cannot be fetched: version 'nope' does not exist \(or the key or bucket does not\)",
    ):
        await s3.prepare_storage(source(s3_endpoint, bucket, key="model.bin", version_id="nope"), tmp_path / "w")


async def test_prefix_and_filter_make_a_directory_tree(
    s3: S3Storage, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    for key, body in {
        "data/a.txt": b"a",
        "data/sub/b.txt": b"bb",
        "data/sub/deeper/c.txt": b"ccc",
        "data/skip.log": b"log",
        "data/empty-dir/": b"",  # a "directory" marker
        "database.txt": b"not under data/",
        "other/x.txt": b"x",
    }.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    src = source(s3_endpoint, bucket, prefix="data/", filter=r"\.txt$")
    assert await s3.get_volume_size(src) == 6
    vol = await s3.prepare_storage(src, tmp_path / "work")
    assert vol.host_path.is_dir() and vol.read_only and vol.cached
    assert tree(vol.host_path) == {
        "a.txt": b"a",
        "sub": "dir",
        "sub/b.txt": b"bb",
        "sub/deeper": "dir",
        "sub/deeper/c.txt": b"ccc",
    }
    # without the slash, "data" also matches "database.txt": paths are then relative to the bucket's root
    vol = await s3.prepare_storage(source(s3_endpoint, bucket, prefix="data", filter=r"\.txt$"), tmp_path / "work")
    assert sorted(tree(vol.host_path)) == ["data", "data/a.txt", "data/sub", "data/sub/b.txt", "data/sub/deeper",
                                           "data/sub/deeper/c.txt", "database.txt"]  # fmt: skip
    # a prefix that ends inside a name: relative to its last '/'
    vol = await s3.prepare_storage(source(s3_endpoint, bucket, prefix="data/s"), tmp_path / "work")
    assert sorted(tree(vol.host_path)) == ["skip.log", "sub", "sub/b.txt", "sub/deeper", "sub/deeper/c.txt"]
    with pytest.raises(StorageError, match=r"has no objects matching the filter '\\\\.csv\$'"):
        await s3.prepare_storage(source(s3_endpoint, bucket, prefix="data/", filter=r"\.csv$"), tmp_path / "work")
    with pytest.raises(StorageError, match="has no objects under the prefix"):
        await s3.prepare_storage(source(s3_endpoint, bucket, prefix="nothing/"), tmp_path / "work")
    assert leftovers(tmp_path / "work") == []


def test_relative_paths() -> None:
    src = S3Source(bucket="bkt", prefix="data", target="/in")
    assert relative_paths(src, ["data/a", "data/b/c"]) == {"data/a": "a", "data/b/c": "b/c"}
    assert relative_paths(src, ["data/a", "data.csv"]) == {"data/a": "data/a", "data.csv": "data.csv"}
    src = S3Source(bucket="bkt", prefix="p/", target="/in")
    for bad in ("p/../../etc/x", "p/a//b", "p/./a", "p/a/.."):
        with pytest.raises(StorageError, match="cannot be a path under the target"):
            relative_paths(src, [bad])
    with pytest.raises(StorageError, match="make 'p/a' both a file and a directory"):
        relative_paths(src, ["p/a", "p/a/b"])


async def test_unsafe_keys_are_refused_before_fetching(
    s3: S3Storage, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    s3_client.put_object(Bucket=bucket, Key="p/ok.txt", Body=b"ok")
    s3_client.put_object(Bucket=bucket, Key="p/../../evil.txt", Body=b"evil")
    with pytest.raises(StorageError, match=r"has the key 'p/\.\./\.\./evil\.txt', which cannot be a path") as err:
        await s3.prepare_storage(source(s3_endpoint, bucket, prefix="p/"), tmp_path / "a" / "work")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert leftovers(tmp_path / "a") == []


async def test_checksum(
    s3: S3Storage, cache: ContentCache, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    body = b"weights" * 100
    s3_client.put_object(Bucket=bucket, Key="w.bin", Body=body)
    good = hashlib.sha256(body).hexdigest()
    vol = await s3.prepare_storage(source(s3_endpoint, bucket, key="w.bin", sha256=good), tmp_path / "work")
    assert vol.host_path.read_bytes() == body and vol.lease is not None and vol.lease.key == f"sha256-{good}"
    wrong = "f" * 64
    with pytest.raises(StorageError) as err:
        await s3.prepare_storage(source(s3_endpoint, bucket, key="w.bin", sha256=wrong), tmp_path / "work")
    assert str(err.value) == (
        f"s3 input s3://{bucket}/w.bin failed its checksum: expected sha256 {wrong}, got {good} (700B downloaded)"
    )
    assert cache.keys() == [f"sha256-{good}"] and leftovers(cache.root / "tmp", tmp_path / "work") == []


async def test_missing_key_and_bucket(s3: S3Storage, s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as err:
        await s3.prepare_storage(source(s3_endpoint, bucket, key="no/such.csv"), tmp_path / "work")
    assert str(err.value) == (
        f"s3 input s3://{bucket}/no/such.csv does not exist (no such key in the bucket, or no such bucket)"
    )
    assert err.value.code is ErrorCode.FAILED_PRECONDITION
    with pytest.raises(StorageError, match="does not exist"):
        await s3.get_volume_size(source(s3_endpoint, bucket, key="no/such.csv"))
    with pytest.raises(StorageError, match="the bucket 'no-such-bucket-here' does not exist"):
        await s3.prepare_storage(source(s3_endpoint, "no-such-bucket-here", prefix="p/"), tmp_path / "work")
    assert leftovers(tmp_path / "work") == []


async def test_size_cap(s3: S3Storage, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=bucket, Key="big", Body=b"x" * 100_001)
    with pytest.raises(StorageError, match=r"is 97.7Ki, larger than the size limit of 97.7Ki for S3 inputs") as err:
        await s3.prepare_storage(source(s3_endpoint, bucket, key="big"), tmp_path / "work")
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    for i in range(3):
        s3_client.put_object(Bucket=bucket, Key=f"many/{i}", Body=b"x")
    few = S3Storage(None, S3Settings(inputs=S3InputSettings(max_objects=2)), policy=LOOPBACK)
    try:
        with pytest.raises(StorageError, match="has more than 2 objects, the limit for one S3 input"):
            await few.prepare_storage(source(s3_endpoint, bucket, prefix="many/"), tmp_path / "work")
    finally:
        await few.aclose()


async def test_endpoints_can_be_restricted(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    s = S3Storage(None, S3Settings(allowed_endpoints=("https://s3.internal.example",)))
    try:
        with pytest.raises(StorageError, match=r"names the endpoint http://127\.0\.0\.1:\d+, which this node does not"):
            await s.prepare_storage(source(s3_endpoint, bucket, key="k"), tmp_path / "work")
    finally:
        await s.aclose()


async def test_concurrent_prepares_share_one_download(
    s3: S3Storage, cache: ContentCache, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    s3_client.put_object(Bucket=bucket, Key="shared/a", Body=b"a" * 1000)
    s3_client.put_object(Bucket=bucket, Key="shared/b", Body=b"b" * 1000)
    src = source(s3_endpoint, bucket, prefix="shared/")
    vols = await asyncio.gather(*(s3.prepare_storage(src, tmp_path / f"w{i}") for i in range(3)))
    assert len({v.host_path for v in vols}) == 1
    assert [v.lease.hit for v in vols if v.lease].count(False) == 1
    assert len(cache.keys()) == 1 and cache.total_bytes == 2000


async def test_buckets_can_be_restricted(s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"data")
    s = S3Storage(None, S3Settings(inputs=S3InputSettings(allowed_buckets=("datasets-*",))), policy=LOOPBACK)
    try:
        with pytest.raises(StorageError) as refused:
            await s.get_volume_size(source(s3_endpoint, bucket, key="k"))
        assert str(refused.value) == (
            f"s3 input s3://{bucket}/k is refused: the bucket {bucket!r} is not one this node reads inputs from "
            "(allowed: datasets-*)"
        )
        assert refused.value.code is ErrorCode.FAILED_PRECONDITION
    finally:
        await s.aclose()


async def test_private_endpoints_are_refused_before_any_request(bucket: str, tmp_path: Path) -> None:
    from tests.storage.conftest import HttpServer

    server = HttpServer()  # stands in for an S3 server on the node's network
    s = S3Storage(None, S3Settings(attempts=1))  # the real policy
    try:
        with pytest.raises(StorageError, match=r"cannot be fetched: the S3 endpoint .* which is not a public address"):
            await s.prepare_storage(source(f"http://127.0.0.1:{server.port}", bucket, key="k"), tmp_path / "work")
    finally:
        await s.aclose()
        server.close()
    assert sum(server.counts.values()) == 0
