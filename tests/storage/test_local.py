"""Local inputs: only under allow-listed roots, symlinks resolved, read-write only where allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from haddock.executor.sources import LocalSource
from haddock.storage.config import LocalRoot
from haddock.storage.local import LocalStorage
from haddock.storage.provider import StorageError


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data"
    (data / "dir" / "sub").mkdir(parents=True)
    (data / "file.txt").write_text("hello")
    (data / "dir" / "a").write_bytes(b"a" * 100)
    (data / "dir" / "sub" / "b").write_bytes(b"b" * 23)
    rw = tmp_path / "rw"
    (rw / "ref").mkdir(parents=True)
    (rw / "out.txt").write_text("w")
    (rw / "ref" / "r.txt").write_text("r")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("s3cr3t")
    return {"data": data, "rw": rw, "secret": secret, "tmp": tmp_path}


@pytest.fixture
def storage(layout: dict[str, Path]) -> LocalStorage:
    return LocalStorage(
        [
            LocalRoot(path=layout["data"]),
            LocalRoot(path=layout["rw"], read_write=True),
            LocalRoot(path=layout["rw"] / "ref"),  # a read-only corner of a read-write root
        ]
    )


async def test_allowed_file_is_mounted_in_place_read_only(storage: LocalStorage, layout: dict[str, Path]) -> None:
    src = LocalSource(path=str(layout["data"] / "file.txt"), target="/in/file.txt")
    assert await storage.has_storage_locally(src)
    assert await storage.get_volume_size(src) == 5
    vol = await storage.prepare_storage(src, layout["tmp"] / "work")
    assert vol.host_path == layout["data"] / "file.txt"
    assert vol.read_only and not vol.cached
    await storage.cleanup_storage(vol)
    assert (layout["data"] / "file.txt").read_text() == "hello"  # cleanup leaves the node's file alone
    assert not (layout["tmp"] / "work").exists()  # no copy was made


async def test_allowed_directory_and_its_size(storage: LocalStorage, layout: dict[str, Path]) -> None:
    src = LocalSource(path=str(layout["data"] / "dir"), target="/in/dir")
    assert await storage.get_volume_size(src) == 123
    vol = await storage.prepare_storage(src, layout["tmp"] / "work")
    assert vol.host_path == layout["data"] / "dir" and vol.read_only


async def test_read_write_only_under_a_read_write_root(storage: LocalStorage, layout: dict[str, Path]) -> None:
    ok = LocalSource(path=str(layout["rw"] / "out.txt"), target="/out", read_write=True)
    vol = await storage.prepare_storage(ok, layout["tmp"])
    assert not vol.read_only and vol.as_input_volume().read_only is False
    default = await storage.prepare_storage(LocalSource(path=str(layout["rw"]), target="/out"), layout["tmp"])
    assert default.read_only  # read-only unless asked

    src = LocalSource(path=str(layout["data"] / "file.txt"), target="/in", read_write=True)
    with pytest.raises(StorageError) as err:
        await storage.prepare_storage(src, layout["tmp"])
    assert str(err.value) == (
        f"local input {layout['data']}/file.txt asks to be read-write, but {layout['data']} is read-only on this node"
    )
    nested = LocalSource(path=str(layout["rw"] / "ref" / "r.txt"), target="/in", read_write=True)
    with pytest.raises(StorageError, match=f"but {layout['rw']}/ref is read-only"):
        await storage.prepare_storage(nested, layout["tmp"])


async def test_not_allowed_path_is_refused_with_the_allowed_list(
    storage: LocalStorage, layout: dict[str, Path]
) -> None:
    src = LocalSource(path="/etc/passwd", target="/in/passwd")
    with pytest.raises(StorageError) as err:
        await storage.prepare_storage(src, layout["tmp"])
    allowed = f"{layout['data']}, {layout['rw']}, {layout['rw']}/ref"
    assert str(err.value) == f"local input /etc/passwd is not under an allowed path (allowed: {allowed})"
    assert not await storage.has_storage_locally(src)
    for path in (layout["secret"] / "key", layout["tmp"], Path(str(layout["data"]) + "-other")):
        with pytest.raises(StorageError, match="is not under an allowed path"):
            await storage.prepare_storage(LocalSource(path=str(path), target="/in"), layout["tmp"])
    with pytest.raises(StorageError, match=r"\(no local paths are allowed on this node\)"):
        await LocalStorage([]).prepare_storage(LocalSource(path="/data/x", target="/in"), layout["tmp"])


async def test_symlink_escapes_are_refused(storage: LocalStorage, layout: dict[str, Path]) -> None:
    (layout["data"] / "escape").symlink_to(layout["secret"] / "key")
    (layout["data"] / "escape-dir").symlink_to(layout["secret"])
    (layout["data"] / "dir" / "up").symlink_to("../..")
    for path, real in (
        (layout["data"] / "escape", layout["secret"] / "key"),
        (layout["data"] / "escape-dir", layout["secret"]),
        (layout["data"] / "escape-dir" / "key", layout["secret"] / "key"),
        (layout["data"] / "dir" / "up" / "secret" / "key", layout["secret"] / "key"),
    ):
        src = LocalSource(path=str(path), target="/in")
        with pytest.raises(StorageError) as err:
            await storage.prepare_storage(src, layout["tmp"])
        assert str(err.value) == (
            f"local input {path} resolves to {real}, which is not under an allowed path "
            f"(allowed: {layout['data']}, {layout['rw']}, {layout['rw']}/ref)"
        )


async def test_symlinks_inside_the_roots_resolve_to_the_real_path(
    storage: LocalStorage, layout: dict[str, Path]
) -> None:
    (layout["data"] / "alias").symlink_to("dir/a")
    (layout["data"] / "to-rw").symlink_to(layout["rw"] / "out.txt")
    vol = await storage.prepare_storage(LocalSource(path=str(layout["data"] / "alias"), target="/in"), layout["tmp"])
    assert vol.host_path == layout["data"] / "dir" / "a"
    # read-write is decided by the root of the REAL path
    src = LocalSource(path=str(layout["data"] / "to-rw"), target="/in", read_write=True)
    vol = await storage.prepare_storage(src, layout["tmp"])
    assert vol.host_path == layout["rw"] / "out.txt" and not vol.read_only


async def test_a_root_that_is_a_symlink(layout: dict[str, Path]) -> None:
    link = layout["tmp"] / "data-link"
    link.symlink_to(layout["data"])
    storage = LocalStorage([LocalRoot(path=link)])
    vol = await storage.prepare_storage(LocalSource(path=str(link / "file.txt"), target="/in"), layout["tmp"])
    assert vol.host_path == layout["data"] / "file.txt"
    vol = await storage.prepare_storage(LocalSource(path=str(layout["data"] / "dir"), target="/in"), layout["tmp"])
    assert vol.host_path == layout["data"] / "dir"


async def test_missing_and_special_files(storage: LocalStorage, layout: dict[str, Path]) -> None:
    src = LocalSource(path=str(layout["data"] / "nope"), target="/in")
    with pytest.raises(StorageError, match=r"nope does not exist$"):
        await storage.prepare_storage(src, layout["tmp"])
    assert not await storage.has_storage_locally(src)
    loop = layout["data"] / "loop"
    loop.symlink_to("loop")
    with pytest.raises(StorageError, match="cannot be resolved"):
        await storage.prepare_storage(LocalSource(path=str(loop), target="/in"), layout["tmp"])


def test_dot_dot_and_relative_paths_are_refused_by_the_model(layout: dict[str, Path]) -> None:
    with pytest.raises(ValidationError, match=r"must not contain '\.\.'"):
        LocalSource(path=f"{layout['data']}/../secret/key", target="/in")
    with pytest.raises(ValidationError, match="must be an absolute path"):
        LocalSource(path="data/file.txt", target="/in")
    with pytest.raises(ValueError, match="must be absolute"):
        LocalStorage([LocalRoot(path=Path("relative"))])
