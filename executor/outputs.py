"""The output cap: how much a job may write to its named outputs, enforced by watching.

Each named output of a job is a host directory ``<results_dir>/<name>`` bind-mounted read-write into
the container. The job may write at most a cap in total to all of them (its disk resource, else a
node default). There are no filesystem quotas to lean on (plain ext4 or overlay), so the node
enforces the cap in three steps:

1. :class:`OutputWatcher` scans the output directories while the job runs and calls back once when
   their usage goes over the cap, so that the caller can stop the container; it scans once more when
   the watch ends, so that a burst written between two polls is caught too.
2. :func:`trim_to_cap` then brings the outputs back to the cap, deterministically: the earliest
   written files are kept, the one crossing the cap is truncated to fit, the rest are deleted.
3. :meth:`OutputWatcher.message` says what happened, naming the cap.

What is counted
===============

:func:`directory_usage` counts the *apparent* size (``st_size``) of the regular files under the
paths, each inode once however many hard links it has. Apparent size is what ``ls -l`` and the job
itself see, and it does not depend on the filesystem's block size, compression or preallocation, so
the cap means the same thing on every node. (A sparse file counts at its full length; that errs on
the side of the node.) Directories, symbolic links, FIFOs, sockets and device nodes count nothing.
Symbolic links are never followed.

Safety against a hostile job
============================

The job controls everything under the output directories, and keeps changing it while it runs.

- Directories are entered with ``openat(parent, name, O_NOFOLLOW | O_DIRECTORY)``, never by path,
  so a directory swapped for a symbolic link mid-scan is not entered: a scan never leaves the output
  directories, and trees deeper than ``PATH_MAX`` are seen like any other (data cannot be hidden by
  nesting directories). Descriptors are held only for the innermost directories of the walk; going
  back up re-opens a directory through ``..`` and checks that it is the same directory (device and
  inode), else walks down again from the output directory by name.
- Files vanishing (or turning into something else) while a scan runs are skipped.
- :func:`trim_to_cap` deletes and truncates relative to the directory descriptor of the walk, opening
  files with ``O_NOFOLLOW | O_NONBLOCK`` and checking that the file opened is the one planned, so it
  never touches anything outside the given paths.

Limits (what watching cannot do): a watcher only sees what was written by the time it looks, so
the node may hold up to (write rate x poll interval) beyond the cap until the job is stopped and
:func:`trim_to_cap` runs; a job that keeps renaming directories while it is scanned can make a scan
miss part of the tree (it cannot make one count anything outside its outputs); the space taken by
directories themselves and by empty files (inodes) is not counted; a directory the node may not read
(``PermissionError``) cannot be scanned — the node should run with the privileges needed to read
what its jobs write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from haddock.executor._walk import Ident, directory_usage, inode_of, tree_usage, walk
from haddock.executor.quantity import format_bytes, parse_bytes

__all__ = [
    "OutputWatcher",
    "TrimReport",
    "directory_usage",
    "trim_to_cap",
]

_log = logging.getLogger(__name__)

_TRUNCATE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Symbolic links followed while deciding where one link points, as the kernel's own limit (ELOOP).
_MAX_LINK_HOPS = 40

# --- trimming ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrimReport:
    """What :func:`trim_to_cap` did."""

    kept_bytes: int
    """Bytes of regular files left under the paths (each inode once), at most the cap."""
    truncated: list[Path] = field(default_factory=list)
    """Files cut short, sorted."""
    removed: list[Path] = field(default_factory=list)
    """Files and symbolic links deleted, sorted."""


@dataclass
class _Planned:
    size: int
    mtime_ns: int
    path: str
    """The smallest of its names (hard links share one inode and one mtime)."""


def _plan(paths: Sequence[Path], cap: int) -> dict[Ident, int | None]:
    """For every regular file (inode) under the paths: the size it may keep, or None to delete it."""
    files: dict[Ident, _Planned] = {}
    for root in paths:
        with contextlib.closing(walk(root)) as entries:
            for _dir_fd, parts, entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                path = os.path.join(root, *parts, entry.name)
                ident = inode_of(st)
                known = files.get(ident)
                if known is None:
                    files[ident] = _Planned(st.st_size, st.st_mtime_ns, path)
                elif path < known.path:
                    known.path = path
    plan: dict[Ident, int | None] = {}
    kept = 0
    for ident, planned in sorted(files.items(), key=lambda item: (item[1].mtime_ns, item[1].path)):
        if kept + planned.size <= cap:
            plan[ident] = planned.size
            kept += planned.size
        elif kept < cap:
            plan[ident] = cap - kept
            kept = cap
        else:
            plan[ident] = None
    return plan


def _link_stays_inside(root: Path, parts: tuple[str, ...], target: str) -> bool:
    """Whether a symbolic link in ``root/parts`` with ``target`` resolves inside ``root``.

    Only relative targets can: an absolute one means one thing in the container and another on the
    host. The target is resolved component by component, following links met on the way (themselves
    only if relative), and fails as soon as a ``..`` would climb above ``root``. Past a component
    that does not exist the rest is taken as written. Only ``lstat`` and ``readlink`` are used, on
    paths whose every component below ``root`` was just seen to be a real directory.
    """
    if os.path.isabs(target):
        return False
    pos = list(parts)
    pending = list(reversed(target.split("/")))
    hops = 0
    missing = False
    while pending:
        comp = pending.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if not pos:
                return False
            pos.pop()
            continue
        if missing:
            pos.append(comp)
            continue
        path = os.path.join(root, *pos, comp)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            missing = True
            pos.append(comp)
            continue
        except OSError:  # ENOTDIR, ENAMETOOLONG, EACCES...: not shown to stay inside
            return False
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return False
            try:
                nested = os.readlink(path)
            except OSError:
                return False
            if os.path.isabs(nested):
                return False
            pending.extend(reversed(nested.split("/")))
            continue
        pos.append(comp)
    return True


def _truncate(dir_fd: int, name: str, ident: Ident, size: int) -> bool:
    """Cut the file ``name`` to ``size`` if it is still the planned inode; False if it is not."""
    try:
        fd = os.open(name, _TRUNCATE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # no longer a regular file
            return False
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or inode_of(st) != ident:
            return False
        os.ftruncate(fd, size)
        return True
    finally:
        os.close(fd)


def _unlink(dir_fd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def trim_to_cap(paths: Sequence[Path], cap: int) -> TrimReport:
    """Bring the regular files under ``paths`` to at most ``cap`` bytes in total, deterministically.

    Files (inodes, counted as :func:`directory_usage` counts them) are taken in order of
    (``st_mtime_ns``, path) — the earliest written first, ties broken by path, a hard-linked file by
    the smallest of its names. Each is kept while the total stays within the cap; the one crossing
    the cap is truncated to fit exactly; every later one is deleted (all of its names). An empty file
    costs nothing and is kept. Directories, FIFOs, sockets and device nodes are left alone.

    A symbolic link is never followed: it is deleted unless its target resolves inside its own output
    directory (a relative target that never climbs above it through ``..``, also not through the
    links it passes). An absolute target is deleted: it means one thing in the container and another
    on the host. Either way the target itself is untouched.

    Meant to run once the job has stopped. If something still writes meanwhile, a file that grew
    since it was planned is cut back to its planned size and a file that appeared since is deleted,
    so what the walk saw ends within the cap.

    Raises ``ValueError`` for a negative cap, and ``OSError`` if a file cannot be deleted.
    """
    if cap < 0:
        raise ValueError(f"cap must not be negative, got {cap}")
    plan = _plan(paths, cap)
    truncated: list[Path] = []
    removed: list[Path] = []
    counted: set[Ident] = set()
    kept = 0
    for root in paths:
        with contextlib.closing(walk(root)) as entries:
            for dir_fd, parts, entry in entries:
                path = Path(root, *parts, entry.name)
                try:
                    st = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    try:
                        target = os.readlink(entry.name, dir_fd=dir_fd)
                    except FileNotFoundError:
                        continue
                    if not _link_stays_inside(root, parts, target) and _unlink(dir_fd, entry.name):
                        removed.append(path)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                ident = inode_of(st)
                allowed = plan.get(ident)  # a file that appeared after planning is deleted
                if allowed is not None and st.st_size > allowed:
                    try:
                        if _truncate(dir_fd, entry.name, ident, allowed):
                            truncated.append(path)
                            st = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
                    except PermissionError:
                        allowed = None  # cannot be written to: delete it instead
                    if allowed is not None and st.st_size > allowed:
                        allowed = None  # still not what was planned (replaced meanwhile)
                if allowed is None:
                    if _unlink(dir_fd, entry.name):
                        removed.append(path)
                    continue
                if ident not in counted:
                    counted.add(ident)
                    kept += st.st_size
    return TrimReport(kept_bytes=kept, truncated=sorted(truncated), removed=sorted(removed))


# --- watching ---------------------------------------------------------------------------------------


class OutputWatcher:
    """Watches output directories while a job runs; calls ``on_exceeded`` once when usage goes over the cap.

    ::

        async with OutputWatcher(dirs, cap, stop_container) as watcher:
            await run_job()
        if watcher.exceeded:
            await asyncio.to_thread(trim_to_cap, dirs, cap)
            fail(watcher.message())

    Entering starts a polling task; each scan runs in a thread (``asyncio.to_thread``), stops counting
    as soon as the total is over the cap, and the next one waits ``max(interval, 5 x last scan
    time)``, at most ``max_interval``: however many files the job writes, the watcher spends about a
    sixth of a core at most (more only once scans take over ``max_interval / 5``).

    The first time a scan sees more than ``cap`` bytes, ``exceeded`` becomes true and
    ``on_exceeded(usage)`` is awaited (an exception from it is logged, not raised); polling then
    stops. Leaving the block stops the polling task — letting a running ``on_exceeded``
    finish rather than cancelling it — and, unless the block was cancelled, scans once more, so that
    a burst written since the last poll is caught (``on_exceeded`` is called then if it was not
    before). Scans that fail (``OSError``) are logged and retried.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        cap: int,
        on_exceeded: Callable[[int], Awaitable[None]],
        *,
        interval: float = 0.2,
        max_interval: float = 10.0,
    ) -> None:
        if cap < 0:
            raise ValueError(f"cap must not be negative, got {cap}")
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        if not max_interval >= interval:
            raise ValueError(f"max_interval ({max_interval}) must be at least interval ({interval})")
        self._paths = tuple(paths)
        self._cap = cap
        self._on_exceeded = on_exceeded
        self._interval = interval
        self._max_interval = max_interval
        self._exceeded = False
        self._in_callback = False
        self._peak = 0
        self._last_scan_seconds = 0.0
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def cap(self) -> int:
        return self._cap

    @property
    def exceeded(self) -> bool:
        """A scan saw more than ``cap`` bytes (and ``on_exceeded`` was called)."""
        return self._exceeded

    @property
    def peak(self) -> int:
        """The highest usage seen; once over the cap, a lower bound (scans stop counting there)."""
        return self._peak

    def message(self) -> str:
        """What to tell the requester when the cap was exceeded."""
        return (
            f"the job wrote more than its output cap of {format_bytes(self._cap)} to its outputs "
            f"(at least {_more_than(self._peak, self._cap)}); it was stopped, and what it wrote up to "
            "the cap is kept"
        )

    async def check(self) -> int:
        """Scan now; call ``on_exceeded`` if this is the first time usage is over the cap.

        Returns the usage (a lower bound once over the cap). Raises ``OSError`` if the scan fails.
        """
        usage = await self._scan()
        if usage > self._cap:
            await self._trip(usage)
        return usage

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("an OutputWatcher can be entered only once")
        self._task = asyncio.create_task(self._poll(), name=f"output-watcher-{id(self):x}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if task is not None and not task.done():
            if not self._in_callback:
                task.cancel()
            # asyncio.wait neither raises the task's CancelledError nor swallows our own.
            await asyncio.wait([task])
        if exc_type is not None and not issubclass(exc_type, Exception):
            return  # cancelled (or interrupted): no final scan
        try:
            await self.check()
        except OSError as error:
            self._log_scan_error(error)

    async def _scan(self) -> int:
        started = time.monotonic()
        try:
            usage = await asyncio.to_thread(tree_usage, self._paths, self._cap)
        finally:
            self._last_scan_seconds = time.monotonic() - started
        self._peak = max(self._peak, usage)
        return usage

    async def _trip(self, usage: int) -> None:
        if self._exceeded:
            return
        self._exceeded = True
        self._in_callback = True
        try:
            await self._on_exceeded(usage)
        except Exception:
            _log.exception("output watcher: on_exceeded failed (usage %d bytes, cap %d)", usage, self._cap)
        finally:
            self._in_callback = False

    async def _poll(self) -> None:
        while not self._exceeded:
            try:
                await self.check()
            except OSError as error:
                self._log_scan_error(error)
            if self._exceeded:
                return
            await asyncio.sleep(self._next_delay())

    def _next_delay(self) -> float:
        """The pause before the next scan: backs off when scans are slow (many files)."""
        return min(max(self._interval, 5 * self._last_scan_seconds), self._max_interval)

    def _log_scan_error(self, error: OSError) -> None:
        text = str(error)
        if text != self._last_error:  # once per distinct error, not once per poll
            _log.warning("output watcher: cannot scan %s: %s", ", ".join(map(str, self._paths)), text)
            self._last_error = text


def _more_than(usage: int, cap: int) -> str:
    """``usage`` as a size, exact in bytes when rounding would make it look no larger than ``cap``."""
    text = format_bytes(usage)
    if usage > cap and parse_bytes(text) <= cap:
        return f"{usage} bytes"
    return text
