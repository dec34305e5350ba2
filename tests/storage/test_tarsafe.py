"""One safe tar unpacker (storage/tarsafe.py), used by inline inputs and by the job builder's source tarballs
(URL, S3, local): every member checked before anything is written — no absolute names, no ``..``, no links
pointing outside, no devices or FIFOs — a bound on members and unpacked bytes, tarfile's data filter after."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haddock.executor.errors import InvalidSpec
from haddock.node.jobtypes.builder import _unpack_source
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
    with pytest.raises(InvalidSpec, match="has 6 tar members, more than the limit of 5"):
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
