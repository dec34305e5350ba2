"""Inline inputs: RFC 2397 data URLs carried in the request.

Plain data becomes a read-only file at the target. A tar archive (gzip, or any compression tarfile
detects) becomes a read-only directory: every member is checked before anything is written — no
absolute names, no ``..``, no links pointing outside, no device files or FIFOs — and then extracted
with tarfile's ``data`` filter as a second line of defence. Decoded and unpacked sizes are capped.
"""

from __future__ import annotations

import gzip
import io
import lzma
import posixpath
import tarfile
import zlib
from pathlib import Path

from haddock.executor.errors import ErrorCode
from haddock.executor.quantity import format_bytes
from haddock.executor.sources import InlineSource
from haddock.storage.config import InlineSettings
from haddock.storage.provider import PreparedVolume, StorageError, prepare_fetched, release_volume, run_blocking

INLINE_FILE_NAME = "inline"
"""The name of the file an inline input becomes (the file itself is mounted at the target)."""


class InlineStorage:
    source_type = "inline"

    def __init__(self, config: InlineSettings | None = None) -> None:
        self.config = config or InlineSettings()
        self.max_bytes = self.config.max_bytes
        self.max_unpacked_bytes = self.config.max_unpacked_bytes
        self.max_members = self.config.max_members

    async def is_installed(self) -> bool:
        return True

    async def has_storage_locally(self, source: InlineSource) -> bool:
        return True  # the data is in the request

    async def get_volume_size(self, source: InlineSource) -> int | None:
        return len(self._decode(source))

    async def prepare_storage(self, source: InlineSource, work_dir: Path) -> PreparedVolume:
        data = self._decode(source)
        tarball = source.parsed().is_tarball

        async def write(dest: Path, _shared: bool) -> Path:
            if tarball:
                return await run_blocking(self._unpack, source, data, dest / "tree")
            path = dest / INLINE_FILE_NAME
            await run_blocking(_write_file, path, data)
            return path

        return await prepare_fetched(source, work_dir, write, prefix="inline")

    async def cleanup_storage(self, volume: PreparedVolume) -> None:
        await release_volume(volume)

    # ----------------------------------------------------------------------------------------------

    def _decode(self, source: InlineSource) -> bytes:
        parsed = source.parsed()
        cap = f"the inline size limit of {format_bytes(self.max_bytes)}"
        if parsed.decoded_size_estimate() > self.max_bytes + 3:
            raise StorageError(source, f"is larger than {cap}", code=ErrorCode.RESOURCE_EXHAUSTED)
        try:
            data = parsed.decode()
        except ValueError as exc:
            raise StorageError(source, f"cannot be decoded: {exc}", code=ErrorCode.INVALID_ARGUMENT) from None
        if len(data) > self.max_bytes:
            raise StorageError(
                source, f"is {format_bytes(len(data))}, larger than {cap}", code=ErrorCode.RESOURCE_EXHAUSTED
            )
        return data

    def _unpack(self, source: InlineSource, data: bytes, dest: Path) -> Path:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
                members = tf.getmembers()
                self._check_members(source, members)
                dest.mkdir()
                tf.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:  # the data filter caught what the checks did not
            raise StorageError(source, f"has an unsafe tar member: {exc}", code=ErrorCode.INVALID_ARGUMENT) from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
            raise StorageError(source, f"is not a valid tar archive ({exc})", code=ErrorCode.INVALID_ARGUMENT) from None
        except OSError as exc:
            raise StorageError(source, f"could not be unpacked: {exc}", code=ErrorCode.INTERNAL) from None
        return dest

    def _check_members(self, source: InlineSource, members: list[tarfile.TarInfo]) -> None:
        def bad(member: tarfile.TarInfo, why: str) -> StorageError:
            return StorageError(
                source, f"has an unsafe tar member {member.name!r}: {why}", code=ErrorCode.INVALID_ARGUMENT
            )

        if len(members) > self.max_members:
            raise StorageError(
                source,
                f"has {len(members)} tar members, more than the limit of {self.max_members}",
                code=ErrorCode.RESOURCE_EXHAUSTED,
            )
        total = 0
        for m in members:
            name = m.name
            if not name or "\x00" in name:
                raise bad(m, "empty name")
            if name.startswith("/") or posixpath.isabs(name):
                raise bad(m, "absolute path")
            if ".." in name.split("/"):
                raise bad(m, "path contains '..'")
            if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
                raise bad(m, "only files, directories and links are allowed (no devices or FIFOs)")
            if m.issym() or m.islnk():
                link = m.linkname
                if not link or link.startswith("/"):
                    raise bad(m, f"link to the absolute path {link!r}")
                base = posixpath.dirname(name) if m.issym() else ""
                resolved = posixpath.normpath(posixpath.join(base, link))
                if resolved == ".." or resolved.startswith("../"):
                    raise bad(m, f"link to {link!r} points outside the archive")
            total += m.size if m.isreg() else 0
            if total > self.max_unpacked_bytes:
                raise StorageError(
                    source,
                    f"unpacks to more than the limit of {format_bytes(self.max_unpacked_bytes)}",
                    code=ErrorCode.RESOURCE_EXHAUSTED,
                )


def _write_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o444)
