"""The registry: all inputs of an execution prepared in parallel, all or nothing; sizes."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from haddock.executor.errors import ErrorCode
from haddock.executor.request import EngineSpec, RunCommandRequest
from haddock.executor.sources import InlineSource, InputSource, LocalSource, S3Source, UrlSource
from haddock.storage import build_registry
from haddock.storage.cache import ContentCache
from haddock.storage.config import LocalRoot, StorageSettings, UrlSettings
from haddock.storage.inline import InlineStorage
from haddock.storage.local import LocalStorage
from haddock.storage.netpolicy import AddressPolicy
from haddock.storage.provider import PreparedVolume, StorageError, StorageRegistry
from haddock.storage.url import UrlStorage
from tests.storage.conftest import Handler, HttpServer, leftovers

BODY = b"payload " * 100


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "in.txt").write_bytes(b"local data")
    return d


@pytest.fixture
async def registry(tmp_path: Path, data_dir: Path) -> AsyncIterator[StorageRegistry]:
    cache = ContentCache(tmp_path / "cache", max_bytes=1024 * 1024)
    reg = StorageRegistry(
        [
            InlineStorage(),
            LocalStorage([LocalRoot(path=data_dir)]),
            UrlStorage(cache, UrlSettings(attempts=1, trust_env=False), policy=AddressPolicy(allow_private=True)),
        ]
    )
    yield reg
    await reg.aclose()


def inline(data: bytes, target: str) -> InlineSource:
    return InlineSource(data_url="data:;base64," + base64.b64encode(data).decode(), target=target)


async def test_prepare_all_in_parallel_and_clean_up(
    registry: StorageRegistry, http_server: HttpServer, data_dir: Path, tmp_path: Path
) -> None:
    def slow(h: Handler) -> None:
        h.reply(200, BODY, headers={"ETag": '"x"'}, pieces=3, delay=0.3)

    urls = [http_server.add(slow, f"f{i}") for i in range(3)]
    sources: list[InputSource] = [
        inline(b"inline data", "/in/inline"),
        LocalSource(path=str(data_dir / "in.txt"), target="/in/local"),
        *(UrlSource(url=u, target=f"/in/url{i}") for i, u in enumerate(urls)),
    ]
    start = time.monotonic()
    vols = await registry.prepare_all(sources, tmp_path / "work")
    assert time.monotonic() - start < 1.5  # three downloads of 0.6 s or more each, side by side
    assert [v.target for v in vols] == [s.target for s in sources]  # in the order asked
    assert vols[0].host_path.read_bytes() == b"inline data"
    assert vols[1].host_path == data_dir / "in.txt"
    assert all(v.host_path.read_bytes() == BODY for v in vols[2:])
    # what the executor gets
    request = RunCommandRequest(
        job_id="j",
        execution_id="e",
        engine=EngineSpec(image="busybox"),
        inputs=[v.as_input_volume() for v in vols],
    )
    assert [(i.target, i.read_only) for i in request.inputs][:2] == [("/in/inline", True), ("/in/local", True)]
    await registry.cleanup_all(vols)
    assert leftovers(tmp_path / "work") == []
    assert (data_dir / "in.txt").exists()


async def test_one_failure_cleans_up_the_others(
    registry: StorageRegistry, http_server: HttpServer, data_dir: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    done = http_server.add(lambda h: h.reply(200, BODY, headers={"ETag": '"d"'}), "done")
    # still downloading when the failure comes: cancelled
    slow = http_server.add(lambda h: h.reply(200, BODY, headers={"ETag": '"s"'}, pieces=50, delay=0.1), "slow")

    def late_404(h: Handler) -> None:
        time.sleep(0.3)  # after the fast inputs are ready
        h.reply(404, b"gone")

    missing = http_server.add(late_404, "missing.csv")
    sources: list[InputSource] = [
        inline(b"x" * 1000, "/in/inline"),
        LocalSource(path=str(data_dir / "in.txt"), target="/in/local"),
        UrlSource(url=done, target="/in/done"),
        UrlSource(url=slow, target="/in/slow"),
        UrlSource(url=missing, target="/in/missing"),
    ]
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        await registry.prepare_all(sources, tmp_path / "work")
    assert time.monotonic() - start < 3  # the slow one (5 s) was cancelled, not awaited
    assert str(err.value) == (
        f"url input {missing} could not be downloaded: the server answered 404 Not Found (not retried)"
    )
    assert err.value.source == sources[4]
    assert leftovers(tmp_path / "work", cache_dir / "tmp") == []  # no temporary file anywhere
    # the finished download stays in the cache, unreferenced
    provider = registry.provider_for(sources[2])
    assert isinstance(provider, UrlStorage) and provider.cache is not None
    assert [provider.cache.refs(k) for k in provider.cache] == [0]
    assert (data_dir / "in.txt").exists()


async def test_failures_at_the_same_moment_are_all_named(registry: StorageRegistry, tmp_path: Path) -> None:
    # the first failure cancels the rest; failures that happen before that cancellation are all named
    sources: list[InputSource] = [
        inline(b"fine", "/in/ok"),
        InlineSource(data_url="data:;base64,@@@@", target="/in/a"),
        InlineSource(data_url="data:;base64,!!!!", target="/in/b"),
    ]
    with pytest.raises(StorageError) as err:
        await registry.prepare_all(sources, tmp_path / "work")
    text = str(err.value)
    assert text.startswith("inline input for /in/a cannot be decoded")
    assert "(also failed: inline input for /in/b cannot be decoded" in text
    assert err.value.source == sources[1]
    assert leftovers(tmp_path / "work") == []


async def test_cancelling_prepare_all_cleans_up(
    registry: StorageRegistry, http_server: HttpServer, tmp_path: Path
) -> None:
    slow = http_server.add(lambda h: h.reply(200, BODY, pieces=50, delay=0.1), "slow")
    task = asyncio.create_task(
        registry.prepare_all([inline(b"i", "/in/i"), UrlSource(url=slow, target="/in/s")], tmp_path / "work")
    )
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(tmp_path / "work") == []


async def test_unknown_types_and_duplicate_targets(registry: StorageRegistry, tmp_path: Path) -> None:
    s3 = S3Source(bucket="bkt", key="k", target="/in/s3")
    with pytest.raises(StorageError) as err:
        await registry.prepare_all([inline(b"x", "/in/x"), s3], tmp_path / "work")
    assert str(err.value) == (
        "s3 input s3://bkt/k cannot be prepared: this node has no provider for inputs of type 's3' "
        "(it has: inline, local, url)"
    )
    with pytest.raises(StorageError, match="each container path may be mounted once; inputs repeat: /in/x") as err:
        await registry.prepare_all([inline(b"x", "/in/x"), inline(b"y", "/in/x")], tmp_path / "work")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert leftovers(tmp_path / "work") == []


async def test_sizes_are_summed(
    registry: StorageRegistry, http_server: HttpServer, data_dir: Path, tmp_path: Path
) -> None:
    sized = http_server.add(lambda h: h.reply(200, BODY), "sized")
    chunked = http_server.add(lambda h: h.reply(200, BODY, chunked=True), "chunked")
    sources: list[InputSource] = [
        inline(b"12345", "/in/a"),
        LocalSource(path=str(data_dir), target="/in/b"),
        UrlSource(url=sized, target="/in/c"),
    ]
    assert await registry.get_volume_sizes(sources) == [5, 10, len(BODY)]
    assert await registry.get_volume_size(sources) == 5 + 10 + len(BODY)
    unknown = [*sources, UrlSource(url=chunked, target="/in/d")]
    assert await registry.get_volume_sizes(unknown) == [5, 10, len(BODY), None]
    assert await registry.get_volume_size(unknown) is None
    assert await registry.get_volume_size([]) == 0
    assert http_server.count("GET", sized) == 0  # sizes come from HEAD, nothing is downloaded


async def test_a_provider_bug_is_reported_as_a_storage_error(registry: StorageRegistry, tmp_path: Path) -> None:
    class Broken(InlineStorage):
        async def prepare_storage(self, source: InlineSource, work_dir: Path) -> PreparedVolume:
            raise KeyError("oops")

    reg = StorageRegistry([Broken()])
    with pytest.raises(StorageError, match=r"inline input for /in/x could not be prepared: unexpected KeyError") as err:
        await reg.prepare_all([inline(b"x", "/in/x")], tmp_path / "work")
    assert err.value.code is ErrorCode.INTERNAL


async def test_build_registry(tmp_path: Path, data_dir: Path) -> None:
    reg = build_registry(StorageSettings(local_roots=(LocalRoot(path=data_dir),)), cache_dir=tmp_path / "cache")
    try:
        assert reg.source_types == ["inline", "local", "s3", "url"]
        assert await reg.installed_types() == ["inline", "local", "s3", "url"]
        assert await reg.has_storage_locally(LocalSource(path=str(data_dir / "in.txt"), target="/in"))
    finally:
        await reg.aclose()


async def test_sizes_of_an_unusable_input_raise_a_storage_error(registry: StorageRegistry, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="local input /etc/passwd is not under an allowed path"):
        await registry.get_volume_sizes([inline(b"x", "/in/x"), LocalSource(path="/etc/passwd", target="/in/p")])
