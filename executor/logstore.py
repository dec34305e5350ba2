"""The node-owned log store: every execution's stdout and stderr, kept apart from the container.

Each execution's output is captured into one append-only file, ``<root>/<execution_id>.log``,
which readers can replay from the start, follow live, resume from an offset, or tail. The file
outlives the container; it is deleted only by :meth:`LogStore.delete` (retention).

The file format (frames, the END frame, what a crash leaves) is in :mod:`haddock.executor._logformat`.

Offsets
=======

An offset is the byte position of a frame. Each :class:`LogEntry` carries its frame's
``offset`` (read from there to get that entry again) and ``next_offset`` (read from there for
what follows). Offsets are stable forever: the file is only ever appended to.

Concurrency
===========

There is one writer per execution (:class:`LogWriter`). Its ``write`` and ``close`` may be
called from any thread and never wait for readers: each write appends whole frames with
``os.write`` on an ``O_APPEND`` descriptor (no user-space buffering, so readers see the data at
once), then advances ``committed``. Readers never read past ``committed`` of a live writer, so
they never see half a frame. The file is fsync'ed when the writer is closed.

Followers read from the file, not from an in-memory queue, so a slow follower can be arbitrarily
far behind without holding memory or slowing the writer or other followers. When a follower has
caught up it waits on a future; the writer wakes the waiting followers with
``loop.call_soon_threadsafe``, at most one wake-up pending at a time per log (so 100k writes/s
do not schedule 100k callbacks). There is no polling.

A :class:`LogStore` is bound to one event loop: the one running when it is constructed, or else
the first one it is used on from async code (``create``, ``open_append`` or a following
``read``). Writers created from a thread with no loop wake followers on that loop. Following a
log from a different loop raises ``RuntimeError`` (reading without ``follow`` works from any
loop). If the bound loop is closed, the store rebinds to the next loop that uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from haddock.executor._logformat import (
    END_STREAM,
    FRAME_OVERHEAD,
    HEADER,
    MAGIC,
    MAX_FRAME_DATA,
    READ_BLOCK,
    LogCorrupted,
    LogEntry,
    check_offset,
    frame_ending_at,
    parse_frame,
    scan_forward,
    tail_start,
    valid_tail_end,
)
from haddock.executor._logwriter import LogWriter
from haddock.executor._remotelog import RemoteLog
from haddock.executor.errors import shown
from haddock.executor.logcap import LogBudget, LogCap
from haddock.executor.streams import StreamType

__all__ = [
    "END_STREAM",
    "FRAME_OVERHEAD",
    "MAGIC",
    "MAX_FRAME_DATA",
    "LogCorrupted",
    "LogEntry",
    "LogNotFound",
    "LogStore",
    "LogWriter",
    "RemoteLog",
]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class LogNotFound(Exception):
    """There is no log for this execution."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no log for execution {shown(execution_id)}")
        self.execution_id = execution_id


class LogStore:
    """Log files of executions under one directory. See the module docstring for the format."""

    def __init__(self, root: Path, *, max_live_bytes: int | None = None) -> None:
        """Create ``root`` (mode 0o700) if missing. ``max_live_bytes``: what the logs being written may hold
        together (:class:`~haddock.executor.logcap.LogBudget`); None: no bound."""
        self.budget = LogBudget(max_live_bytes) if max_live_bytes is not None else None
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards _live together with creating/opening files
        self._live: dict[str, LogWriter | RemoteLog] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def set_live_limit(self, max_live_bytes: int | None) -> None:
        """Change what the logs being written may hold together (None: no bound). Logs already open keep
        the budget they took from; a smaller limit stops them writing until others give room back."""
        if max_live_bytes is None:
            self.budget = None
        elif self.budget is None:
            self.budget = LogBudget(max_live_bytes)
        else:
            self.budget.max_bytes = max_live_bytes

    # -- loop binding -------------------------------------------------------

    def _bind_loop(self, *, strict: bool) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._loop is None or self._loop.is_closed():
            self._loop = running
        elif strict and self._loop is not running:
            raise RuntimeError("this LogStore is bound to another event loop; follow it from that loop")

    # -- paths --------------------------------------------------------------

    def path(self, execution_id: str) -> Path:
        if not _ID_RE.match(execution_id):
            raise ValueError(
                f"execution id {shown(execution_id)} must be 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return self.root / f"{execution_id}.log"

    # -- writers ------------------------------------------------------------

    def create(self, execution_id: str, cap: LogCap | None = None) -> LogWriter:
        """Start a new log, holding at most ``cap``. FileExistsError if one exists."""
        path = self.path(execution_id)
        self._bind_loop(strict=False)
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            empty = {StreamType.STDOUT: 0, StreamType.STDERR: 0}
            writer = LogWriter(self, execution_id, fd, 0, empty, cap=cap, budget=self.budget)
            self._live[execution_id] = writer
        return writer

    def create_empty(self, execution_id: str) -> None:
        """Start a new, empty log that another process will write (see :meth:`track`). FileExistsError if one
        exists. Not synced: an empty log lost in a machine crash holds nothing."""
        path = self.path(execution_id)
        with self._lock:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

    def open_append(self, execution_id: str, cap: LogCap | None = None) -> LogWriter:
        """Reopen an incomplete log after a restart, cutting a frame left half written by a crash.

        LogNotFound if there is no log; ValueError if the log is complete (has END) or already has
        a live writer; LogCorrupted if it is damaged before its end.
        """
        path = self.path(execution_id)
        self._bind_loop(strict=False)
        with self._lock:
            if execution_id in self._live:
                raise ValueError(f"the log of execution {shown(execution_id)} already has a writer")
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:
                raise LogNotFound(execution_id) from None
            try:
                size = os.fstat(fd).st_size
                scan = scan_forward(fd, path, size)
                if scan.complete:
                    raise ValueError(f"the log of execution {shown(execution_id)} is complete; it cannot be appended")
                if scan.end < size:
                    os.ftruncate(fd, scan.end)
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            writer = LogWriter(self, execution_id, fd, scan.end, scan.bytes_written, cap=cap, budget=self.budget)
            writer._hold(scan.end)  # what it holds already counts in the budget of the logs being written
            self._live[execution_id] = writer
        return writer

    def track(self, execution_id: str, committed: int) -> RemoteLog:
        """Register a log that another process writes (see :class:`RemoteLog`); must run on the store's loop.

        ValueError if the log already has a writer or tracker in this process."""
        self.path(execution_id)
        self._bind_loop(strict=True)
        with self._lock:
            if execution_id in self._live:
                raise ValueError(f"the log of execution {execution_id!r} already has a writer")
            remote = RemoteLog(self, execution_id, committed)
            self._live[execution_id] = remote
        return remote

    def hand_over(self, writer: LogWriter) -> RemoteLog:
        """Hand a log this process writes over to another process (the capture process), which reopens it
        with :meth:`open_append`: the writer is closed without an END frame (and without an fsync: the new
        writer's fsyncs cover the file), and the log is tracked instead (:meth:`track`). Followers go on
        following it. Must run on the store's loop."""
        execution_id = writer.execution_id
        with writer._lock:
            if writer._closed:
                raise ValueError(f"the log of execution {execution_id!r} is closed")
            writer._closed = True
            os.close(writer._fd)
            writer._release_budget()  # the process that writes it now counts it
        with self._lock:
            remote = RemoteLog(self, execution_id, writer.committed)
            self._live[execution_id] = remote
        writer._wake()
        return remote

    def _release(self, writer: LogWriter | RemoteLog) -> None:
        with self._lock:
            if self._live.get(writer.execution_id) is writer:
                del self._live[writer.execution_id]

    def writer(self, execution_id: str) -> LogWriter | None:
        """The live writer of this log in this process, if any."""
        live = self._live.get(execution_id)
        return live if isinstance(live, LogWriter) else None

    # -- queries ------------------------------------------------------------

    def exists(self, execution_id: str) -> bool:
        return self.path(execution_id).exists()

    def is_complete(self, execution_id: str) -> bool:
        """Whether the log ends with an END frame. LogNotFound if there is no log."""
        path = self.path(execution_id)
        with self._lock:
            writer = self._live.get(execution_id)
            if writer is not None:
                return writer.complete
            fd = self._open_read(execution_id, path)
        try:
            size = os.fstat(fd).st_size
            found = frame_ending_at(fd, path, size)
            return found is not None and found[1] == END_STREAM
        finally:
            os.close(fd)

    def end_offset(self, execution_id: str) -> int:
        """The end of the log: ``committed`` of a live writer, else the end of the last whole frame.

        Reading from here yields only what is written later. LogNotFound if there is no log.
        """
        path = self.path(execution_id)
        with self._lock:
            writer = self._live.get(execution_id)
            if writer is not None:
                return writer.committed
            fd = self._open_read(execution_id, path)
        try:
            return valid_tail_end(fd, path, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def delete(self, execution_id: str) -> None:
        """Remove the log (a missing log is not an error). ValueError while it is being written.

        Readers that already opened it read on to its end.
        """
        path = self.path(execution_id)
        with self._lock:
            writer = self._live.get(execution_id)
            if writer is not None and not writer.closed:
                raise ValueError(f"the log of execution {shown(execution_id)} is still being written")
            path.unlink(missing_ok=True)

    @staticmethod
    def _open_read(execution_id: str, path: Path) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LogNotFound(execution_id) from None

    # -- reading ------------------------------------------------------------

    def _prepare_read(
        self,
        execution_id: str,
        offset: int,
        streams: frozenset[StreamType],
        tail_lines: int | None,
    ) -> tuple[int, LogWriter | RemoteLog | None, int, int, LogEntry | None]:
        """Runs in a worker thread: open, validate the offset, find the tail.

        Returns (fd, live writer, end, start, first partial entry).
        """
        path = self.path(execution_id)
        with self._lock:  # so that a log being created is seen with its writer
            writer = self._live.get(execution_id)
            fd = self._open_read(execution_id, path)
        try:
            if writer is not None:
                end = writer.committed
                size = end
            else:
                size = os.fstat(fd).st_size
                end = size
            check_offset(fd, path, offset, size)
            start, first = offset, None
            if tail_lines is not None:
                if writer is None:
                    end = valid_tail_end(fd, path, size)
                if offset <= end:
                    start, first = tail_start(fd, path, offset, end, tail_lines, streams)
            return fd, writer, end, start, first
        except BaseException:
            os.close(fd)
            raise

    async def read(
        self,
        execution_id: str,
        *,
        offset: int = 0,
        follow: bool = False,
        streams: frozenset[StreamType] = frozenset(StreamType),
        tail_lines: int | None = None,
    ) -> AsyncIterator[LogEntry]:
        """Entries of the selected streams, in the order they were written.

        - ``offset``: a frame boundary (0, or an ``offset``/``next_offset`` seen before);
          ValueError otherwise.
        - ``tail_lines=N``: start at the last N lines (at or after ``offset``) of the selected
          streams; a newline at the very end does not count as a line. The first entry may hold
          only the end of its frame: its ``offset`` is still the frame's, so resuming there repeats
          the part of the frame before the tail.
        - Without ``follow``: everything up to the current end. With ``follow``: then wait for
          new data and go on until the END frame; if no writer in this process is writing the
          log or tracking it (:meth:`track`), stop at its end, as no one will write more.

        LogNotFound if there is no log (raised on the first iteration).
        """
        path = self.path(execution_id)
        if tail_lines is not None and tail_lines < 0:
            raise ValueError(f"tail_lines must not be negative, got {tail_lines}")
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        if follow:
            self._bind_loop(strict=True)
        wanted = frozenset(int(s) for s in streams)
        fd, writer, end, start, first = await asyncio.to_thread(
            self._prepare_read, execution_id, offset, streams, tail_lines
        )
        try:
            if first is not None:
                yield first
                start = first.next_offset
            limit: int | None = None  # never read past this (None: to the end of the file)
            if writer is not None:
                limit = writer.committed if follow else end
            buf = b""
            base = start  # file position of buf[0]
            i = 0
            while True:
                # Yield the whole frames in the buffer.
                while True:
                    frame = parse_frame(buf, i, base, path)
                    if frame is None:
                        break
                    stream, length, ts = frame
                    at = base + i
                    nxt = at + length + FRAME_OVERHEAD
                    if stream == END_STREAM:
                        return
                    if stream in wanted:
                        data = buf[i + HEADER.size : i + HEADER.size + length]
                        i = nxt - base
                        yield LogEntry(StreamType(stream), data, at, nxt, ts)
                    else:
                        i = nxt - base
                buf = buf[i:]
                base += i
                i = 0
                read_at = base + len(buf)
                if writer is not None and follow:
                    limit = writer.committed
                if limit is not None and read_at >= limit:
                    if follow and writer is not None and writer.closed and not writer.complete:
                        successor = self._live.get(execution_id)
                        if successor is not None and successor is not writer:
                            writer = successor  # handed over (see hand_over): follow the new writer
                            continue
                    if not follow or writer is None or writer.closed:
                        return
                    await writer._wait_beyond(read_at)
                    continue
                want = READ_BLOCK if limit is None else min(READ_BLOCK, limit - read_at)
                chunk = await asyncio.to_thread(os.pread, fd, want, read_at)
                if not chunk:
                    return  # end of a log no one is writing (a cut-short frame is left unread)
                buf += chunk
        finally:
            os.close(fd)
