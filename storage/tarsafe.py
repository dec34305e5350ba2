"""The one safe tar unpacker: inline inputs (``inline.py``) and the job builder's source tarballs use it.

Every member is checked before anything is written — no empty or absolute names, no ``..``, no links
pointing outside the archive (or to absolute paths), nothing but files, directories and links (no devices
or FIFOs), at most ``max_members`` members and ``max_bytes`` of file contents — and then the archive is
extracted with tarfile's ``data`` filter as a second line of defence. A refusal is :class:`UnsafeArchive`,
whose message is a predicate ("has an unsafe tar member 'x': ...") the caller puts its subject before.
"""

from __future__ import annotations

import gzip
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from haddock.executor.errors import ErrorCode
from haddock.executor.quantity import format_bytes

__all__ = ["Check", "TarLimits", "UnsafeArchive", "check_members", "unpack"]


@dataclass(frozen=True)
class TarLimits:
    max_bytes: int  # file contents, unpacked
    max_members: int


class UnsafeArchive(Exception):
    """The archive is refused (``code``: INVALID_ARGUMENT, RESOURCE_EXHAUSTED over a limit, INTERNAL when the
    node could not write it); ``str()`` completes a sentence about the archive."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.code = code


Check = Callable[[Sequence[tarfile.TarInfo]], None]


def check_members(members: Sequence[tarfile.TarInfo], limits: TarLimits) -> None:
    """Refuse (UnsafeArchive) an archive with an unsafe member or over ``limits``, before anything is written."""

    def bad(member: tarfile.TarInfo, why: str) -> UnsafeArchive:
        return UnsafeArchive(f"has an unsafe tar member {member.name!r}: {why}")

    if len(members) > limits.max_members:
        raise UnsafeArchive(
            f"has {len(members)} tar members, more than the limit of {limits.max_members}", ErrorCode.RESOURCE_EXHAUSTED
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
        if total > limits.max_bytes:
            raise UnsafeArchive(
                f"unpacks to more than the limit of {format_bytes(limits.max_bytes)}", ErrorCode.RESOURCE_EXHAUSTED
            )


def unpack(archive: Path | IO[bytes], dest: Path, limits: TarLimits, *, check: Check | None = None) -> Path:
    """Unpack ``archive`` (a path or a binary file; gzip, xz, bzip2 or none) into ``dest`` (created when
    missing) once its members passed ``check`` (default: :func:`check_members` with ``limits``)."""
    try:
        with (
            tarfile.open(archive, mode="r:*")
            if isinstance(archive, Path)
            else tarfile.open(fileobj=archive, mode="r:*") as tf
        ):
            members = tf.getmembers()
            if check is None:
                check_members(members, limits)
            else:
                check(members)
            dest.mkdir(parents=True, exist_ok=True)
            tf.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:  # the data filter caught what the checks did not
        raise UnsafeArchive(f"has an unsafe tar member: {exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
        raise UnsafeArchive(f"is not a valid tar archive ({exc})") from None
    except OSError as exc:
        raise UnsafeArchive(f"could not be unpacked: {exc}", ErrorCode.INTERNAL) from None
    return dest
