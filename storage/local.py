"""Local inputs: a file or directory on the node, mounted in place (no copy).

Only paths under roots the operator allows (:class:`LocalRoot`) are served. The requested path is
resolved with every symlink followed, and the REAL path must lie inside an allowed root; that real
path is what gets mounted. Read-write mounts need ``read_write`` on the most specific root that
contains the path (so ``/data`` rw with ``/data/ref`` ro keeps ``/data/ref`` read-only).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from haddock.executor.errors import ErrorCode
from haddock.executor.sources import LocalSource
from haddock.storage.config import LocalRoot
from haddock.storage.provider import PreparedVolume, StorageError, run_blocking


class LocalStorage:
    source_type = "local"

    def __init__(self, roots: Iterable[LocalRoot]) -> None:
        self.configured = list(roots)  # absolute, without '..': LocalRoot checks
        # a root that is itself a symlink (/data -> /mnt/data) allows its real location;
        # the most specific root comes first
        self.roots = sorted(
            (LocalRoot(path=r.path.resolve(strict=False), read_write=r.read_write) for r in self.configured),
            key=lambda r: len(r.path.parts),
            reverse=True,
        )

    async def is_installed(self) -> bool:
        return True

    async def has_storage_locally(self, source: LocalSource) -> bool:
        try:
            await run_blocking(self._resolve, source)
        except StorageError:
            return False
        return True

    async def get_volume_size(self, source: LocalSource) -> int | None:
        path, _ = await run_blocking(self._resolve, source)
        return await run_blocking(_du, path)

    async def prepare_storage(self, source: LocalSource, work_dir: Path) -> PreparedVolume:
        path, _ = await run_blocking(self._resolve, source)
        return PreparedVolume(
            source=source, host_path=path, target=source.target, read_only=not source.read_write, cached=False
        )

    async def cleanup_storage(self, volume: PreparedVolume) -> None:
        return None  # the node's own file: nothing was made, nothing is removed

    # ----------------------------------------------------------------------------------------------

    def _allowed(self) -> str:
        if not self.configured:
            return "no local paths are allowed on this node"
        return "allowed: " + ", ".join(str(r.path) for r in self.configured)

    def _resolve(self, source: LocalSource) -> tuple[Path, LocalRoot]:
        requested = Path(source.path)
        if not requested.is_absolute() or ".." in requested.parts:
            raise StorageError(source, "must be an absolute path without '..'", code=ErrorCode.INVALID_ARGUMENT)
        # refuse before touching the file system when the request itself is outside every root
        if not any(_inside(requested, r.path) for r in [*self.configured, *self.roots]):
            raise StorageError(source, f"is not under an allowed path ({self._allowed()})")
        try:
            real = requested.resolve(strict=True)
        except FileNotFoundError:
            raise StorageError(source, "does not exist") from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise StorageError(source, f"cannot be resolved: {exc}") from None
        root = next((r for r in self.roots if _inside(real, r.path)), None)
        if root is None:
            raise StorageError(source, f"resolves to {real}, which is not under an allowed path ({self._allowed()})")
        mode = real.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise StorageError(source, "is neither a regular file nor a directory")
        if source.read_write and not root.read_write:
            raise StorageError(source, f"asks to be read-write, but {root.path} is read-only on this node")
        if not os.access(real, os.R_OK):
            raise StorageError(source, "is not readable by the node")
        return real, root


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _du(path: Path) -> int:
    """Bytes in a file or directory tree (symlinks are not followed)."""
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
