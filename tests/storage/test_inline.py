"""Inline inputs: files, tarballs unpacked safely, size caps."""

from __future__ import annotations

import base64
import io
import tarfile
import urllib.parse
from pathlib import Path

import pytest

from haddock.executor.errors import ErrorCode
from haddock.executor.sources import InlineSource
from haddock.storage import tarsafe
from haddock.storage.config import InlineSettings
from haddock.storage.inline import InlineStorage
from haddock.storage.provider import StorageError
from tests.storage.conftest import leftovers, tree


def data_url(data: bytes, media_type: str = "application/octet-stream") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


async def test_plain_data_becomes_a_read_only_file(tmp_path: Path) -> None:
    storage = InlineStorage()
    src = InlineSource(data_url=data_url(b"hello\x00world"), target="/in/data.bin")
    assert await storage.get_volume_size(src) == 11
    assert await storage.has_storage_locally(src)
    vol = await storage.prepare_storage(src, tmp_path / "work")
    assert vol.host_path.read_bytes() == b"hello\x00world"
    assert vol.host_path.is_file() and vol.read_only and not vol.cached
    iv = vol.as_input_volume()
    assert (iv.source, iv.target, iv.read_only) == (vol.host_path, "/in/data.bin", True)
    await storage.cleanup_storage(vol)
    await storage.cleanup_storage(vol)  # idempotent
    assert leftovers(tmp_path / "work") == []


async def test_percent_encoded_data(tmp_path: Path) -> None:
    text = "a,b;c = ü\n"
    src = InlineSource(data_url="data:text/csv;charset=utf-8," + urllib.parse.quote(text), target="/in/x.csv")
    vol = await InlineStorage().prepare_storage(src, tmp_path)
    assert vol.host_path.read_text() == text


@pytest.mark.parametrize(
    ("media_type", "mode"),
    [("application/gzip", "w:gz"), ("application/x-tar+gzip", "w:gz"), ("application/octet-stream;tar", "w")],
)
async def test_tarball_becomes_a_directory(tmp_path: Path, media_type: str, mode: str) -> None:
    blob = make_tar(
        [
            (entry("top.txt"), b"top"),
            (entry("sub", tarfile.DIRTYPE), None),
            (entry("sub/inner.txt"), b"inner"),
            (entry("sub/link", tarfile.SYMTYPE, "inner.txt"), None),
            (entry("./dot/ok.txt"), b"dot"),
        ],
        mode,
    )
    src = InlineSource(data_url=data_url(blob, media_type), target="/in/tree")
    storage = InlineStorage()
    vol = await storage.prepare_storage(src, tmp_path / "work")
    assert vol.host_path.is_dir() and vol.read_only
    assert tree(vol.host_path) == {
        "dot": "dir",
        "dot/ok.txt": b"dot",
        "sub": "dir",
        "sub/inner.txt": b"inner",
        "sub/link": "-> inner.txt",
        "top.txt": b"top",
    }
    await storage.cleanup_storage(vol)
    assert leftovers(tmp_path / "work") == []


async def test_oversize_is_refused(tmp_path: Path) -> None:
    storage = InlineStorage(InlineSettings(max_bytes=100))
    for url in (data_url(b"x" * 101), "data:," + "x" * 101, data_url(b"x" * 10_000)):
        src = InlineSource(data_url=url, target="/in/x")
        with pytest.raises(StorageError, match=r"larger than the inline size limit of 100B$") as err:
            await storage.prepare_storage(src, tmp_path / "work")
        assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert str(err.value).startswith("inline input for /in/x ")
    vol = await storage.prepare_storage(InlineSource(data_url=data_url(b"x" * 100), target="/in/x"), tmp_path / "w2")
    assert vol.host_path.stat().st_size == 100
    assert leftovers(tmp_path / "work") == []


async def test_unpacked_size_and_member_count_are_capped(tmp_path: Path) -> None:
    bomb = make_tar([(entry("zeros"), b"\x00" * 200_000)])
    assert len(bomb) < 2000
    src = InlineSource(data_url=data_url(bomb, "application/gzip"), target="/in/t")
    with pytest.raises(StorageError, match=r"unpacks to more than the limit of 100Ki$"):
        await InlineStorage(InlineSettings(max_unpacked_bytes=100 * 1024)).prepare_storage(src, tmp_path / "work")
    many = make_tar([(entry(f"f{i}"), b"") for i in range(20)])
    src = InlineSource(data_url=data_url(many, "application/gzip"), target="/in/t")
    with pytest.raises(StorageError, match="has more than 10 tar members, the limit"):
        await InlineStorage(InlineSettings(max_members=10)).prepare_storage(src, tmp_path / "work")
    assert leftovers(tmp_path / "work") == []


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ((entry("../evil"), b"evil"), "path contains '..'"),
        ((entry("ok/../../evil"), b"evil"), "path contains '..'"),
        ((entry("/tmp/evil-abs"), b"evil"), "absolute path"),
        ((entry("link", tarfile.SYMTYPE, "../../outside"), None), "points outside the archive"),
        ((entry("d/link", tarfile.SYMTYPE, "../.."), None), "points outside the archive"),
        ((entry("link", tarfile.SYMTYPE, "/etc/passwd"), None), "link to the absolute path"),
        ((entry("hard", tarfile.LNKTYPE, "../outside"), None), "points outside the archive"),
        ((entry("dev", tarfile.CHRTYPE), None), "no devices or FIFOs"),
        ((entry("fifo", tarfile.FIFOTYPE), None), "no devices or FIFOs"),
    ],
)
async def test_unsafe_tarballs_are_refused_and_nothing_is_written(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    work = tmp_path / "a" / "b" / "work"
    blob = make_tar([(entry("fine.txt"), b"fine"), member, (entry("after.txt"), b"after")])
    src = InlineSource(data_url=data_url(blob, "application/gzip"), target="/in/t")
    with pytest.raises(StorageError, match=message) as err:
        await InlineStorage().prepare_storage(src, work)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert str(err.value).startswith("inline input for /in/t has an unsafe tar member")
    # nothing anywhere: not in the work dir, not next to it, not above it
    assert leftovers(tmp_path) == [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(work)]
    assert not Path("/tmp/evil-abs").exists()


async def test_a_symlink_then_a_file_through_it_is_refused(tmp_path: Path) -> None:
    # "d -> ." is inside, but "d/../x" would then escape: refused on its '..'
    blob = make_tar([(entry("d", tarfile.SYMTYPE, "."), None), (entry("d/../x"), b"x")])
    src = InlineSource(data_url=data_url(blob, "application/gzip"), target="/in/t")
    with pytest.raises(StorageError, match=r"unsafe tar member 'd/\.\./x'"):
        await InlineStorage().prepare_storage(src, tmp_path / "work")
    # a link whose target climbs out through a subdirectory
    outside = tmp_path / "outside"
    outside.mkdir()
    blob = make_tar([(entry("esc", tarfile.SYMTYPE, "sub/../.."), None)])
    src = InlineSource(data_url=data_url(blob, "application/gzip"), target="/in/t")
    with pytest.raises(StorageError, match="unsafe tar member"):
        await InlineStorage().prepare_storage(src, tmp_path / "work")
    assert leftovers(tmp_path / "work", outside) == []


async def test_garbage_is_reported_plainly(tmp_path: Path) -> None:
    src = InlineSource(data_url="data:application/gzip;base64,bm90IGEgdGFyYmFsbA==", target="/in/t")
    with pytest.raises(StorageError, match="is not a valid tar archive") as err:
        await InlineStorage().prepare_storage(src, tmp_path / "work")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    src = InlineSource(data_url="data:;base64,@@@@", target="/in/t")
    with pytest.raises(StorageError, match="cannot be decoded: the data URL's payload is not valid base64"):
        await InlineStorage().prepare_storage(src, tmp_path / "work")
    assert leftovers(tmp_path / "work") == []


@pytest.mark.parametrize(
    "member",
    [
        (entry("../evil"), b"evil"),
        (entry("link", tarfile.SYMTYPE, "/etc/passwd"), None),
        (entry("dev", tarfile.CHRTYPE), None),
    ],
)
async def test_the_data_filter_is_a_second_line_of_defence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: tuple[tarfile.TarInfo, bytes | None]
) -> None:
    # the member checks off: what is refused now is the data filter's doing
    monkeypatch.setattr(tarsafe._Checker, "add", lambda self, member: None)
    work = tmp_path / "work"
    blob = make_tar([member])
    src = InlineSource(data_url=data_url(blob, "application/gzip"), target="/in/t")
    with pytest.raises(StorageError, match="has an unsafe tar member"):
        await InlineStorage().prepare_storage(src, work)
    assert leftovers(tmp_path) == [str(work)]
