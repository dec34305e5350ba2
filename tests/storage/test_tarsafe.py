"""One safe tar unpacker (storage/tarsafe.py), used by inline inputs and by the job builder's source tarballs
(URL, S3, local): every member checked before anything is written — no absolute names, no ``..``, no links
pointing outside, no devices or FIFOs — a bound on members and unpacked bytes, tarfile's data filter after."""

from __future__ import annotations

import random
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haddock.executor.errors import InvalidSpec
from haddock.node.jobtypes.builder import _unpack_source
from haddock.storage.tarsafe import TarLimits, unpack
from tests.storage.test_inline import entry, make_tar

UNSAFE = [
    ((entry("../evil"), b"evil"), "path contains '..'"),
    ((entry("ok/../../evil"), b"evil"), "path contains '..'"),
    ((entry("/tmp/evil-abs-job"), b"evil"), "absolute path"),
    ((entry("link", tarfile.SYMTYPE, "../../outside"), None), "points outside the archive"),
    ((entry("link", tarfile.SYMTYPE, "/etc/passwd"), None), "link to the absolute path"),
    ((entry("hard", tarfile.LNKTYPE, "../outside"), None), "points outside the archive"),
    ((entry("dev", tarfile.CHRTYPE), None), "no devices or FIFOs"),
    ((entry("fifo", tarfile.FIFOTYPE), None), "no devices or FIFOs"),
]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("member", "message"), UNSAFE)
def test_the_job_builder_refuses_what_inline_inputs_refuse(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    archive = tmp_path / "source.tar.gz"
    archive.write_bytes(make_tar([(entry("job.yaml"), b"name: x"), member, (entry("after.txt"), b"after")]))
    into = tmp_path / "src" / "tree"
    into.mkdir(parents=True)
    with pytest.raises(InvalidSpec, match=message) as err:
        _unpack_source(archive, into)
    assert str(err.value).startswith("the job's source has an unsafe tar member")
    assert _files(tmp_path / "src") == ["tree"]  # nothing was written
    assert not Path("/tmp/evil-abs-job").exists()


def test_the_job_builder_refuses_a_link_then_a_path_through_it(tmp_path: Path) -> None:
    archive = tmp_path / "source.tar"
    archive.write_bytes(make_tar([(entry("d", tarfile.SYMTYPE, "."), None), (entry("d/../x"), b"x")], mode="w"))
    into = tmp_path / "tree"
    into.mkdir()
    with pytest.raises(InvalidSpec, match=r"unsafe tar member 'd/\.\./x'"):
        _unpack_source(archive, into)


def test_the_job_builder_bounds_members_and_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from haddock.node.jobtypes import builder

    monkeypatch.setattr(builder, "SOURCE_LIMITS", builder.TarLimits(max_bytes=1000, max_members=5))
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(make_tar([(entry(f"f{i}"), b"") for i in range(6)]))
    with pytest.raises(InvalidSpec, match="has more than 5 tar members, the limit"):
        _unpack_source(archive, tmp_path)
    archive.write_bytes(make_tar([(entry("zeros"), b"\x00" * 2000)]))
    with pytest.raises(InvalidSpec, match="unpacks to more than the limit of 1000B"):
        _unpack_source(archive, tmp_path)


def test_the_job_builder_unpacks_a_directory_tarball_at_its_root(tmp_path: Path) -> None:
    archive = tmp_path / "source.tar.gz"
    archive.write_bytes(
        make_tar(
            [(entry("adder", tarfile.DIRTYPE), None), (entry("adder/job.yaml"), b"name: x"), (entry("adder/a"), b"")]
        )
    )
    into = tmp_path / "tree"
    into.mkdir()
    _unpack_source(archive, into)
    assert _files(into) == ["a", "job.yaml"]


_SEGMENT = st.text(alphabet="ab.", min_size=1, max_size=3)


@given(st.lists(_SEGMENT, min_size=1, max_size=4), st.booleans())
def test_a_member_name_is_refused_exactly_when_it_is_absolute_or_climbs(parts: list[str], absolute: bool) -> None:
    from haddock.storage.tarsafe import TarLimits, UnsafeArchive, check_members

    name = ("/" if absolute else "") + "/".join(parts)
    info = tarfile.TarInfo(name)
    refused = absolute or ".." in parts
    try:
        check_members([info], TarLimits(max_bytes=1, max_members=1))
    except UnsafeArchive as exc:
        assert refused, exc
        assert f"unsafe tar member {name!r}" in str(exc)
    else:
        assert not refused


def _unpack(data: bytes, dest: Path, limits: TarLimits | None = None) -> Path:
    import io

    return unpack(io.BytesIO(data), dest, limits or TarLimits(max_bytes=1 << 20, max_members=100))


@pytest.mark.parametrize(
    ("members", "refused"),
    [
        # a -> ., then a/x -> ../ (lexically inside: a/../ is the root), then a/x/evil climbs out through both.
        ([("a", "."), ("a/x", "../"), ("a/x/evil", None)], "a/x"),
        ([("d", "sub"), ("sub", None), ("d/f", None)], "d/f"),  # a file written through a link to a directory
        ([("h", "sub"), ("h/f", None)], "h/f"),  # a hard link as a parent
        ([("./l", "."), ("l//deep/f", None)], "l//deep/f"),  # spelled otherwise, the same parent
    ],
)
def test_a_member_whose_parent_goes_through_an_earlier_link_is_refused(
    tmp_path: Path, members: list[tuple[str, str | None]], refused: str
) -> None:
    from haddock.storage.tarsafe import UnsafeArchive

    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name, link in members:
        if link is None:
            entries.append((entry(name), b"evil"))
        else:
            kind = tarfile.LNKTYPE if name == "h" else tarfile.SYMTYPE
            entries.append((entry(name, kind, link), None))
    if members[0][0] == "h":
        entries.insert(0, (entry("sub", tarfile.DIRTYPE), None))
    dest = tmp_path / "out" / "tree"
    with pytest.raises(UnsafeArchive, match=rf"unsafe tar member {refused!r}: .*goes through the link"):
        _unpack(make_tar(entries, mode="w"), dest)
    assert not dest.exists()  # nothing was written
    assert not (tmp_path / "out" / "evil").exists()


class _Counting:
    """A binary stream that counts what was read of it."""

    def __init__(self, data: bytes) -> None:
        import io

        self._f = io.BytesIO(data)
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self.read_bytes += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def test_the_limits_stop_the_reading_before_the_whole_stream_is_parsed(tmp_path: Path) -> None:
    from typing import IO, cast

    from haddock.storage.tarsafe import UnsafeArchive

    # Over the member limit early: the rest (many members) is never read.
    many = make_tar([(entry(f"f{i}"), b"x" * 512) for i in range(2000)], mode="w")
    stream = _Counting(many)
    with pytest.raises(UnsafeArchive, match="has more than 5 tar members, the limit"):
        unpack(cast(IO[bytes], stream), tmp_path / "a", TarLimits(max_bytes=1 << 30, max_members=5))
    assert stream.read_bytes < 64 * 1024, stream.read_bytes  # the archive is ~2 MB

    # Over the byte limit with its first member: the gzip stream after it is not decompressed.
    noise = random.Random(7)
    big = make_tar([(entry("zeros"), b"\x00" * 2048), *[(entry(f"f{i}"), noise.randbytes(4096)) for i in range(500)]])
    stream = _Counting(big)
    with pytest.raises(UnsafeArchive, match="unpacks to more than the limit of 1000B"):
        unpack(cast(IO[bytes], stream), tmp_path / "b", TarLimits(max_bytes=1000, max_members=10_000))
    assert stream.read_bytes < len(big) // 4, (stream.read_bytes, len(big))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
