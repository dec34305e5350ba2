"""The one safe tar unpacker: inline inputs (``inline.py``) and the job builder's source tarballs use it.

Every member is checked before anything is written — no empty or absolute names, no ``..``, no links
pointing outside the archive (or to absolute paths), no member whose path goes through a link member seen
before it, nothing but files, directories and links (no devices or FIFOs), at most ``max_members`` members
and ``max_bytes`` of file contents — as the members are read (``tf.next()``), so a limit stops the reading
before the rest of the stream is parsed or decompressed; and then the archive is extracted with tarfile's
``data`` filter as a second line of defence. A refusal is :class:`UnsafeArchive`,
whose message is a predicate ("has an unsafe tar member 'x': ...") the caller puts its subject before.
"""

from __future__ import annotations

import gzip
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from haddock.executor.errors import ErrorCode
from haddock.executor.quantity import format_bytes

__all__ = ["TarLimits", "UnsafeArchive", "check_members", "unpack"]


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


class _Checker:
    """Checks members one at a time, in the archive's order: each as it is read, so a limit stops the reading."""

    def __init__(self, limits: TarLimits) -> None:
        self.limits = limits
        self.count = 0
        self.total = 0
        self.links: set[str] = set()  # the (normalised) names of the link members seen so far

    def add(self, m: tarfile.TarInfo) -> None:
        def bad(why: str) -> UnsafeArchive:
            return UnsafeArchive(f"has an unsafe tar member {m.name!r}: {why}")

        self.count += 1
        if self.count > self.limits.max_members:
            raise UnsafeArchive(
                f"has more than {self.limits.max_members} tar members, the limit", ErrorCode.RESOURCE_EXHAUSTED
            )
        name = m.name
        if not name or "\x00" in name:
            raise bad("empty name")
        if posixpath.isabs(name):
            raise bad("absolute path")
        if ".." in name.split("/"):
            raise bad("path contains '..'")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise bad("only files, directories and links are allowed (no devices or FIFOs)")
        # A parent that is a link would be followed when this member is written: wherever the link points,
        # the lexical checks no longer describe where it lands.
        path = posixpath.normpath(name)
        parent = posixpath.dirname(path)
        while parent:
            if parent in self.links:
                raise bad(f"its path goes through the link {parent!r} (an earlier member)")
            parent = posixpath.dirname(parent)
        if m.issym() or m.islnk():
            link = m.linkname
            if not link or link.startswith("/"):
                raise bad(f"link to the absolute path {link!r}")
            base = posixpath.dirname(name) if m.issym() else ""
            resolved = posixpath.normpath(posixpath.join(base, link))
            if resolved == ".." or resolved.startswith("../"):
                raise bad(f"link to {link!r} points outside the archive")
            self.links.add(path)
        self.total += m.size if m.isreg() else 0
        if self.total > self.limits.max_bytes:
            raise UnsafeArchive(
                f"unpacks to more than the limit of {format_bytes(self.limits.max_bytes)}", ErrorCode.RESOURCE_EXHAUSTED
            )


def check_members(members: Sequence[tarfile.TarInfo], limits: TarLimits) -> None:
    """Refuse (UnsafeArchive) an archive with an unsafe member or over ``limits``, before anything is written."""
    checker = _Checker(limits)
    for m in members:
        checker.add(m)


def unpack(archive: Path | IO[bytes], dest: Path, limits: TarLimits) -> Path:
    """Unpack ``archive`` (a path or a binary file; gzip, xz, bzip2 or none) into ``dest`` (created when
    missing). Each member is checked (:func:`check_members`' rules) as it is read, so a limit stops the
    reading there, before the rest is parsed or decompressed."""
    try:
        with (
            tarfile.open(archive, mode="r:*")
            if isinstance(archive, Path)
            else tarfile.open(fileobj=archive, mode="r:*") as tf
        ):
            checker = _Checker(limits)
            members: list[tarfile.TarInfo] = []
            while (member := tf.next()) is not None:
                checker.add(member)
                members.append(member)
            dest.mkdir(parents=True, exist_ok=True)
            tf.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:  # the data filter caught what the checks did not
        raise UnsafeArchive(f"has an unsafe tar member: {exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
        raise UnsafeArchive(f"is not a valid tar archive ({exc})") from None
    except OSError as exc:
        raise UnsafeArchive(f"could not be unpacked: {exc}", ErrorCode.INTERNAL) from None
    return dest
