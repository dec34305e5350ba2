"""Output publishers: what happens to an execution's results dir after the run.

The results dir holds ``stdout``, ``stderr``, ``exitCode`` and one sub-directory per named output.
Where it goes is named by a :data:`haddock.executor.publishers.PublisherSpec` (the domain: specs, the
CLI form, key templates). :func:`publish_all` runs every publisher of an execution (concurrently) and
returns what was published and one message per publisher that failed; it never raises for a
publisher's failure.

- **Key templates** are rendered here (:func:`render_key`, ``{date}`` in UTC); the rendered key is
  always a prefix: a ``/`` is added when it does not end with one.
- **Symlinks** inside the results dir are never followed: they are skipped (with a log line) both
  when archiving and when uploading, as are sockets, FIFOs and devices. Directories are archived
  (so an empty output stays visible in the archive); S3 gets files only.
- **Archives** are gzip tarballs whose members are relative to the results dir (``stdout``,
  ``outputs/a/b.txt``). They are streamed to a temporary file beside the results dir, never held in
  memory; the local one is renamed into place (atomic), the S3 one is uploaded then removed.
- **S3** is :mod:`haddock.storage.publish_s3` (boto3 is imported only when an S3 publisher is made).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import tarfile
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from haddock.executor.publishers import LocalPublisherSpec, S3PublisherSpec, describe_publisher, fill_key_template
from haddock.executor.quantity import format_bytes
from haddock.storage.provider import run_blocking

if TYPE_CHECKING:
    import boto3.session

    from haddock.storage.config import S3Settings
    from haddock.storage.netpolicy import AddressPolicy
    from haddock.storage.publish_s3 import S3Publisher

__all__ = [
    "ARCHIVE_NAME",
    "LocalPublisher",
    "PublishContext",
    "PublishError",
    "Published",
    "Publisher",
    "ResultEntry",
    "key_prefix",
    "publish_all",
    "render_key",
    "scan_results",
    "write_archive",
]

log = logging.getLogger("haddock.storage.publish")

T = TypeVar("T")

ARCHIVE_NAME = "results.tar.gz"


# ------------------------------------------------------------------------------------------ key templates


def _utc(when: datetime) -> datetime:
    """``when`` in UTC; a naive datetime is taken to be UTC already."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def render_key(template: str, ctx: PublishContext) -> str:
    """The key template with its placeholders filled in from ``ctx`` (``{date}`` is ``ctx.when`` in UTC,
    YYYY-MM-DD). ValueError for an invalid template or a rendered key that starts with '/', contains
    '..' or an empty segment, a NUL byte, or is too long. Returned as rendered (see :func:`key_prefix`)."""
    values = {
        "job_id": ctx.job_id,
        "execution_id": ctx.execution_id,
        "node_id": ctx.node_id,
        "date": _utc(ctx.when).strftime("%Y-%m-%d"),
    }
    return fill_key_template(template, values)


def key_prefix(template: str, ctx: PublishContext) -> str:
    """The rendered key as the prefix objects are uploaded under: it always ends with '/'."""
    key = render_key(template, ctx)
    return key if key.endswith("/") else key + "/"


# ----------------------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class PublishContext:
    job_id: str
    execution_id: str
    node_id: str
    results_dir: Path
    when: datetime
    """For ``{date}``; a naive datetime is taken as UTC."""


@dataclass(frozen=True)
class Published:
    """What one publisher did. ``location``: the results dir (local) or ``s3://bucket/prefix/``.
    ``objects``/``bytes``: the files published (local: in the results dir; S3: the objects uploaded,
    1 with ``archive``). ``archive``: the archive's path or ``s3://`` URL when one was made."""

    spec: LocalPublisherSpec | S3PublisherSpec
    location: str
    objects: int
    bytes: int
    archive: str | None = None


class PublishError(Exception):
    """A publisher failed. ``str(err)`` names it and says what failed, e.g. ``publishing to
    s3://b/x/ failed after 4 attempts: ...``. ``attempts`` is how many were made (1 when not retried)."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts


class Publisher(Protocol):
    async def publish(self, spec: LocalPublisherSpec | S3PublisherSpec, ctx: PublishContext) -> Published: ...


# ------------------------------------------------------------------------------------ the results dir


@dataclass(frozen=True)
class ResultEntry:
    rel: str
    """Path relative to the results dir, with '/' separators."""
    path: Path
    is_dir: bool
    size: int


def scan_results(root: Path) -> list[ResultEntry]:
    """(Blocking.) Every directory and regular file under ``root``, parents before their contents.
    Symlinks are skipped and never followed, as are other special files and names that are not
    UTF-8; each skip is logged. OSError when ``root`` is not a readable directory."""
    if root.is_symlink() or not root.is_dir():
        raise NotADirectoryError(f"the results dir {root} does not exist or is not a directory")
    out: list[ResultEntry] = []
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            items = list(it)
        for item in items:
            rel = prefix + item.name
            try:
                rel.encode()
            except UnicodeEncodeError:
                log.warning("not publishing %r in %s: its name is not valid UTF-8", rel, root)
                continue
            if item.is_symlink():
                log.warning(
                    "not publishing %s in %s: it is a symbolic link (symlinks are skipped, never followed)", rel, root
                )
            elif item.is_dir(follow_symlinks=False):
                out.append(ResultEntry(rel, Path(item.path), True, 0))
                stack.append((Path(item.path), rel + "/"))
            elif item.is_file(follow_symlinks=False):
                out.append(ResultEntry(rel, Path(item.path), False, item.stat(follow_symlinks=False).st_size))
            else:
                log.warning("not publishing %s in %s: it is not a regular file or directory", rel, root)
    out.sort(key=lambda e: e.rel)
    return out


class _Stopped(Exception):
    """The caller was cancelled: a thread stops early."""


def write_archive(entries: Sequence[ResultEntry], dest: Path, stop: threading.Event | None = None) -> int:
    """(Blocking.) Stream a gzip tarball of ``entries`` into ``dest`` (which must not exist); its size.
    Files are opened without following symlinks; one that became something else since the scan is skipped."""
    with open(dest, "xb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
            for entry in entries:
                if stop is not None and stop.is_set():
                    raise _Stopped()
                if entry.is_dir:
                    info = tar.gettarinfo(str(entry.path), arcname=entry.rel)
                    if info.isdir():
                        tar.addfile(info)
                    continue
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError as exc:
                    if os.path.islink(entry.path):
                        log.warning("not archiving %s: it became a symbolic link", entry.rel)
                        continue
                    raise OSError(exc.errno, f"cannot read {entry.rel}: {exc.strerror}") from exc
                with os.fdopen(fd, "rb") as f:
                    info = tar.gettarinfo(arcname=entry.rel, fileobj=f)
                    if not info.isreg():
                        log.warning("not archiving %s: it is no longer a regular file", entry.rel)
                        continue
                    tar.addfile(info, f)
        raw.flush()
        os.fsync(raw.fileno())
    return dest.stat().st_size


def _temp_beside(results_dir: Path, purpose: str) -> Path:
    return results_dir.absolute().parent / f".{ARCHIVE_NAME}.{purpose}.{uuid.uuid4().hex[:12]}.tmp"


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _archive_in_place(entries: Sequence[ResultEntry], results_dir: Path, stop: threading.Event) -> tuple[Path, int]:
    """(Blocking.) ``<results_dir>/../results.tar.gz``, written to a temporary file and renamed into place."""
    final = results_dir.absolute().parent / ARCHIVE_NAME
    tmp = _temp_beside(results_dir, "local")
    try:
        size = write_archive(entries, tmp, stop)
        os.replace(tmp, final)
    except BaseException:
        _unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return final, size


async def _in_thread(fn: Callable[[threading.Event], T], pool: concurrent.futures.Executor | None = None) -> T:
    """``fn(stop)`` in a thread. A cancelled caller sets ``stop`` and waits for the thread to end."""
    stop = threading.Event()
    fut = asyncio.get_running_loop().run_in_executor(pool, fn, stop)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        stop.set()
        while not fut.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(fut)
        raise


async def _scan(results_dir: Path, where: str) -> list[ResultEntry]:
    try:
        return await run_blocking(scan_results, results_dir)
    except OSError as exc:
        raise PublishError(f"publishing to {where} failed: {_os_error(exc)}") from None


def _os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


# ------------------------------------------------------------------------------------------------ local


class LocalPublisher:
    """Nothing to copy: the results dir is the location. ``archive`` writes results.tar.gz beside it."""

    async def publish(self, spec: LocalPublisherSpec | S3PublisherSpec, ctx: PublishContext) -> Published:
        if not isinstance(spec, LocalPublisherSpec):
            raise PublishError(f"the local publisher cannot publish to {describe_publisher(spec)}")
        where = f"local {ctx.results_dir}"
        entries = await _scan(ctx.results_dir, where)
        files = [e for e in entries if not e.is_dir]
        archive: str | None = None
        if spec.archive:
            try:
                path, size = await _in_thread(functools.partial(_archive_in_place, entries, ctx.results_dir))
            except OSError as exc:
                raise PublishError(f"publishing to {where} failed: cannot write {ARCHIVE_NAME}: {exc}") from None
            archive = str(path)
            log.info("archived %d files of %s into %s (%s)", len(files), ctx.results_dir, path, format_bytes(size))
        return Published(
            spec=spec,
            location=str(ctx.results_dir),
            objects=len(files),
            bytes=sum(f.size for f in files),
            archive=archive,
        )


# ---------------------------------------------------------------------------------------------- all of them


async def publish_all(
    specs: Sequence[LocalPublisherSpec | S3PublisherSpec],
    ctx: PublishContext,
    *,
    s3: S3Settings | None = None,
    session: boto3.session.Session | None = None,
    publishers: Mapping[str, Publisher] | None = None,
    policy: AddressPolicy | None = None,
) -> tuple[list[Published], list[str]]:
    """Run every publisher (concurrently). Returns what was published (in the order of ``specs``) and a
    message for each publisher that failed; a publisher's failure is never raised.

    ``publishers`` (by spec type) reuses long-lived publishers, such as the node's :class:`S3Publisher`;
    otherwise one is made for this call (with ``s3``, ``session`` and the address ``policy``) and closed
    afterwards."""
    table: dict[str, Publisher] = dict(publishers or {})
    table.setdefault("local", LocalPublisher())
    owned: S3Publisher | None = None
    if "s3" not in table and any(isinstance(s, S3PublisherSpec) for s in specs):
        from haddock.storage.publish_s3 import S3Publisher  # boto3: only when S3 is used

        owned = S3Publisher(s3, session=session, policy=policy)
        table["s3"] = owned

    async def one(spec: LocalPublisherSpec | S3PublisherSpec) -> Published | str:
        try:
            publisher = table[spec.type]
        except KeyError:
            return f"publishing to {describe_publisher(spec)} failed: this node has no {spec.type!r} publisher"
        try:
            return await publisher.publish(spec, ctx)
        except PublishError as exc:
            log.warning("%s", exc)
            return str(exc)
        except Exception as exc:
            log.exception("unexpected error publishing to %s", describe_publisher(spec))
            return f"publishing to {describe_publisher(spec)} failed: unexpected {type(exc).__name__}: {exc}"

    try:
        results = await asyncio.gather(*(one(s) for s in specs))
    finally:
        if owned is not None:
            await owned.aclose()
    published = [r for r in results if isinstance(r, Published)]
    errors = [r for r in results if isinstance(r, str)]
    return published, errors
