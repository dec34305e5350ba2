"""Inline inputs: RFC 2397 data URLs carried in the request.

Plain data becomes a read-only file at the target. A tar archive (gzip, or any compression tarfile
detects) becomes a read-only directory, unpacked by the one safe unpacker (``tarsafe.py``: every member
checked before anything is written — no absolute names, no ``..``, no links pointing outside, no device
files or FIFOs — then tarfile's ``data`` filter). Decoded and unpacked sizes and the members are capped.
"""

from __future__ import annotations

import io
from pathlib import Path

from haddock.executor.errors import ErrorCode
from haddock.executor.quantity import format_bytes
from haddock.executor.sources import InlineSource
from haddock.storage.config import InlineSettings
from haddock.storage.provider import PreparedVolume, StorageError, prepare_fetched, release_volume, run_blocking
from haddock.storage.tarsafe import TarLimits, UnsafeArchive, unpack

INLINE_FILE_NAME = "inline"
"""The name of the file an inline input becomes (the file itself is mounted at the target)."""


class InlineStorage:
    source_type = "inline"

    def __init__(self, config: InlineSettings | None = None) -> None:
        self.config = config or InlineSettings()
        self.max_bytes = self.config.max_bytes
        self.max_unpacked_bytes = self.config.max_unpacked_bytes
        self.max_members = self.config.max_members
        self.limits = TarLimits(max_bytes=self.max_unpacked_bytes, max_members=self.max_members)

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
            return unpack(io.BytesIO(data), dest, self.limits)
        except UnsafeArchive as exc:
            raise StorageError(source, str(exc), code=exc.code) from None


def _write_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o444)
