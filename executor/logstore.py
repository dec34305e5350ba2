"""The node-owned log store: every execution's stdout and stderr, kept apart from the container.

Each execution's output is captured into one append-only file, ``<root>/<execution_id>.log``,
which readers can replay from the start, follow live, resume from an offset, or tail. The file
outlives the container; it is deleted only by :meth:`LogStore.delete` (retention).

File format
===========

The file is a sequence of frames::

    offset  size  field
    0       1     magic, 0xAD
    1       1     stream: 1 = stdout, 2 = stderr, 0xFF = END marker
    2       2     reserved, zero
    4       4     data length N, uint32 big-endian (at most MAX_FRAME_DATA = 64 KiB)
    8       8     timestamp, uint64 big-endian, nanoseconds since the epoch
    16      N     data
    16+N    4     trailer: total frame length 16 + N + 4, uint32 big-endian

A write larger than ``MAX_FRAME_DATA`` is split into several frames (all with the same
timestamp). The trailer lets the file be scanned backwards (for ``tail_lines``).

The END frame (stream 0xFF, no data) marks the log complete: nothing follows it, and a follower
stops when it reaches it.

A frame cut short at the end of the file (the node crashed in the middle of a write) is not part
of the log: readers stop before it, and :meth:`LogStore.open_append` truncates it before
appending. A bad magic, stream, reserved field or length, or a trailer that does not match its
header, anywhere before the end raises :class:`LogCorrupted` with the frame's offset.

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
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from haddock.executor import logcap
from haddock.executor.errors import shown
from haddock.executor.logcap import LogBudget, LogCap, data_that_fits, frame_bytes
from haddock.executor.models import StreamType

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

MAGIC = 0xAD
END_STREAM = 0xFF
MAX_FRAME_DATA = logcap.MAX_FRAME_DATA
HEADER = struct.Struct(">BBHIQ")
TRAILER = struct.Struct(">I")
FRAME_OVERHEAD = HEADER.size + TRAILER.size  # 20
assert FRAME_OVERHEAD == logcap.FRAME_OVERHEAD
MAX_FRAME = FRAME_OVERHEAD + MAX_FRAME_DATA
READ_BLOCK = 1024 * 1024
"""Readers read the file in blocks of this size."""
WRITE_BATCH = 1024 * 1024
"""A large write is appended in batches of whole frames of about this size (one os.write each)."""

_VALID_STREAMS = frozenset({int(StreamType.STDOUT), int(StreamType.STDERR), END_STREAM})
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_END_FRAME_LEN = FRAME_OVERHEAD


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One frame of output (or, for the first entry of a ``tail_lines`` read, the end of one)."""

    stream: StreamType
    data: bytes
    offset: int
    """Byte position of this frame: resume with ``offset=entry.offset`` to get it again."""
    next_offset: int
    """Position after it: resume with ``offset=entry.next_offset`` for what follows."""
    timestamp_ns: int
    """When the node received the data, in nanoseconds since the epoch."""


class LogCorrupted(Exception):
    """The log file holds something that is not a frame where a frame should start."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"log {path} is corrupted at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class LogNotFound(Exception):
    """There is no log for this execution."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no log for execution {shown(execution_id)}")
        self.execution_id = execution_id


def _not_a_record(offset: int, why: str) -> ValueError:
    return ValueError(f"offset {offset} is not the start of a log record: {why}")


# ---------------------------------------------------------------------------
# Frame parsing (shared by readers, the forward scan and the backward scan)
# ---------------------------------------------------------------------------


def _parse_header(buf: bytes, i: int, offset: int, path: Path) -> tuple[int, int, int]:
    """Check the header at ``buf[i:i+16]`` (file position ``offset``); return (stream, length, ts)."""
    magic, stream, reserved, length, ts = HEADER.unpack_from(buf, i)
    if magic != MAGIC:
        raise LogCorrupted(path, offset, f"bad magic byte 0x{magic:02x}")
    if stream not in _VALID_STREAMS:
        raise LogCorrupted(path, offset, f"unknown stream {stream}")
    if reserved != 0:
        raise LogCorrupted(path, offset, "reserved header bytes are not zero")
    if length > MAX_FRAME_DATA:
        raise LogCorrupted(path, offset, f"frame length {length} is larger than {MAX_FRAME_DATA}")
    if stream == END_STREAM and length != 0:
        raise LogCorrupted(path, offset, "the END frame carries data")
    return stream, length, ts


def _parse_frame(buf: bytes, i: int, base: int, path: Path) -> tuple[int, int, int] | None:
    """Parse the frame at ``buf[i:]`` (``buf[0]`` is at file position ``base``).

    Return (stream, data length, timestamp), or None if the buffer does not hold the whole frame.
    """
    if len(buf) - i < HEADER.size:
        return None
    offset = base + i
    stream, length, ts = _parse_header(buf, i, offset, path)
    end = i + HEADER.size + length
    if len(buf) < end + TRAILER.size:
        return None
    (total,) = TRAILER.unpack_from(buf, end)
    if total != length + FRAME_OVERHEAD:
        raise LogCorrupted(path, offset, f"trailer says {total} bytes, header says {length + FRAME_OVERHEAD}")
    return stream, length, ts


@dataclass(slots=True)
class _ScanResult:
    end: int  # position after the last whole frame (the END frame included)
    complete: bool  # an END frame was found (end is just after it)
    bytes_written: dict[StreamType, int]


def _scan_forward(fd: int, path: Path, size: int) -> _ScanResult:
    """Walk every frame from the start; stop at END or at a frame cut short by the end of the file."""
    counts = {StreamType.STDOUT: 0, StreamType.STDERR: 0}
    buf = b""
    base = 0  # file position of buf[0]
    i = 0
    while True:
        frame = _parse_frame(buf, i, base, path)
        if frame is None:
            read_at = base + len(buf)
            if read_at >= size:
                return _ScanResult(base + i, False, counts)
            chunk = os.pread(fd, min(READ_BLOCK, size - read_at), read_at)
            if not chunk:
                return _ScanResult(base + i, False, counts)
            buf = buf[i:] + chunk
            base += i
            i = 0
            continue
        stream, length, _ = frame
        i += length + FRAME_OVERHEAD
        if stream == END_STREAM:
            return _ScanResult(base + i, True, counts)
        counts[StreamType(stream)] += length


class _BackReader:
    """Random access to the file for backward scans, through a cached block."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._start = 0
        self._data = b""

    def get(self, pos: int, n: int) -> bytes:
        if not (self._start <= pos and pos + n <= self._start + len(self._data)):
            lo = max(0, pos + n - READ_BLOCK)
            self._data = os.pread(self._fd, pos + n - lo, lo)
            self._start = lo
            if len(self._data) < pos + n - lo:
                raise OSError(f"short read at {lo}")
        i = pos - self._start
        return self._data[i : i + n]


def _frame_ending_at(fd: int, path: Path, end: int) -> tuple[int, int, int, int] | None:
    """If a whole, consistent frame ends exactly at ``end``, return (start, stream, length, ts)."""
    if end < FRAME_OVERHEAD:
        return None
    (total,) = TRAILER.unpack(os.pread(fd, TRAILER.size, end - TRAILER.size))
    if not FRAME_OVERHEAD <= total <= MAX_FRAME or total > end:
        return None
    start = end - total
    head = os.pread(fd, HEADER.size, start)
    if len(head) < HEADER.size:
        return None
    try:
        stream, length, ts = _parse_header(head, 0, start, path)
    except LogCorrupted:
        return None
    if length + FRAME_OVERHEAD != total:
        return None
    return start, stream, length, ts


def _valid_tail_end(fd: int, path: Path, size: int) -> int:
    """The end of the last whole frame: the file size if the file ends with a frame, else a scan.

    The fast path trusts the last trailer when it points back at a consistent header; only a file
    with a cut-short last frame (after a crash) is scanned from the start.
    """
    if size == 0 or _frame_ending_at(fd, path, size) is not None:
        return size
    return _scan_forward(fd, path, size).end


def _check_offset(fd: int, path: Path, offset: int, end: int) -> None:
    """Cheaply check that ``offset`` is a frame boundary at or before ``end``."""
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")
    if offset == 0:
        return
    if offset > end:
        raise _not_a_record(offset, f"the log ends at {end}")
    if _frame_ending_at(fd, path, offset) is None:
        raise _not_a_record(offset, "no frame ends there")
    if offset < end:
        head = os.pread(fd, 1, offset)
        if not head or head[0] != MAGIC:
            raise _not_a_record(offset, "no frame starts there")


def _tail_start(
    fd: int, path: Path, floor: int, end: int, lines: int, streams: frozenset[StreamType]
) -> tuple[int, LogEntry | None]:
    """Where the last ``lines`` lines of ``streams`` begin, between ``floor`` and ``end``.

    Returns the frame boundary to read from, and, if the first line begins inside a frame, a
    partial entry holding the rest of that frame (to be yielded before reading on from its
    ``next_offset``). A newline at the very end does not count as a line.
    """
    if lines == 0:
        return end, None
    wanted = {int(s) for s in streams}
    reader = _BackReader(fd)
    remaining = lines
    seen_last = False
    pos = end
    while pos > floor:
        (total,) = TRAILER.unpack(reader.get(pos - TRAILER.size, TRAILER.size))
        if not FRAME_OVERHEAD <= total <= MAX_FRAME or pos - total < floor:
            raise LogCorrupted(path, pos - TRAILER.size, f"trailer {total} does not point at a frame")
        start = pos - total
        stream, length, ts = _parse_header(reader.get(start, HEADER.size), 0, start, path)
        if length + FRAME_OVERHEAD != total:
            raise LogCorrupted(path, start, f"trailer says {total} bytes, header says {length + FRAME_OVERHEAD}")
        if stream in wanted and length:
            data = reader.get(start + HEADER.size, length)
            hi = length
            if not seen_last:
                seen_last = True
                if data.endswith(b"\n"):
                    hi -= 1
            while True:
                k = data.rfind(b"\n", 0, hi)
                if k < 0:
                    break
                remaining -= 1
                if remaining == 0:
                    if k + 1 == length:
                        return pos, None
                    return pos, LogEntry(StreamType(stream), data[k + 1 :], start, pos, ts)
                hi = k
        pos = start
    return floor, None


# ---------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------


class LogWriter:
    """Single writer per execution. ``write()`` and ``close()`` may be called from ANY thread (the
    Docker attach reader runs in a worker thread), and never block on readers.

    Use it as a context manager, or call :meth:`close` when the execution ends.
    """

    def __init__(
        self,
        store: LogStore,
        execution_id: str,
        fd: int,
        committed: int,
        bytes_written: dict[StreamType, int],
        *,
        cap: LogCap | None = None,
        budget: LogBudget | None = None,
    ) -> None:
        self._cap = cap
        self._budget = budget
        self._taken = 0  # bytes of the budget this writer holds
        self._dropped = {StreamType.STDOUT: 0, StreamType.STDERR: 0}
        self._lost = 0  # data bytes dropped because the budget had no room
        self._store = store
        self._execution_id = execution_id
        self._fd = fd
        self._lock = threading.Lock()
        self._committed = committed
        self._closed = False
        self._complete = False
        self._bytes = dict(bytes_written)
        # Followers waiting for data (touched on the store's loop; only read by writer threads).
        self._waiters: list[asyncio.Future[None]] = []
        self._wake_pending = False

    @property
    def execution_id(self) -> str:
        return self._execution_id

    @property
    def committed(self) -> int:
        """Offset up to which complete frames are written."""
        return self._committed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def complete(self) -> bool:
        """Closed with an END frame."""
        return self._complete

    @property
    def bytes_written(self) -> dict[StreamType, int]:
        """Data bytes in the log per stream (for an appended log, including those written before)."""
        return dict(self._bytes)

    @property
    def cap(self) -> LogCap | None:
        """The most this log may hold (None: no cap)."""
        return self._cap

    @property
    def dropped(self) -> dict[StreamType, int]:
        """Data bytes per stream not kept because of the cap or the budget (since this writer was opened)."""
        return dict(self._dropped)

    @property
    def lost_bytes(self) -> int:
        """Data bytes not kept because the logs being written had used the node's whole budget."""
        return self._lost

    def _room(self, stream: StreamType, n: int) -> int:
        """How many of ``n`` bytes of ``stream`` are kept (called with the lock held); takes the budget for them."""
        cap = self._cap
        if cap is not None:
            n = min(n, max(0, cap.stream(stream) - self._bytes[stream]))
            n = min(n, data_that_fits(cap.total - self._committed - _END_FRAME_LEN))
        if self._budget is not None and n:
            want = frame_bytes(n)
            granted = self._budget.take(want)
            if granted < want:
                kept = data_that_fits(granted)
                self._budget.give_back(granted - frame_bytes(kept))
                granted = frame_bytes(kept)
                self._lost += n - kept
                n = kept
            self._taken += granted
        return n

    @property
    def stdout_bytes(self) -> int:
        return self._bytes[StreamType.STDOUT]

    @property
    def stderr_bytes(self) -> int:
        return self._bytes[StreamType.STDERR]

    def write(self, stream: StreamType, data: bytes) -> None:
        """Append ``data`` as one or more frames of ``stream``; empty data is a no-op.

        Raises ValueError if the writer is closed, OSError if the disk refuses (the log then
        stays as it was before this call).
        """
        stream = StreamType(stream)
        if not data:
            return
        view = memoryview(data).cast("B")
        ts = time.time_ns()
        with self._lock:
            if self._closed:
                raise ValueError(f"the log of execution {shown(self._execution_id)} is closed")
            pos = 0
            n = len(view)
            if self._cap is not None or self._budget is not None:
                kept = self._room(stream, n)
                self._dropped[stream] += n - kept
                n = kept
                view = view[:n]
            while pos < n:
                parts: list[bytes | memoryview] = []
                batch_start = pos
                while pos < n and pos - batch_start < WRITE_BATCH:
                    chunk = view[pos : pos + MAX_FRAME_DATA]
                    size = len(chunk)
                    parts += (
                        HEADER.pack(MAGIC, stream, 0, size, ts),
                        chunk,
                        TRAILER.pack(size + FRAME_OVERHEAD),
                    )
                    pos += size
                self._append(b"".join(parts))
                self._bytes[stream] += pos - batch_start
                self._notify()

    def _append(self, buf: bytes) -> None:
        """Write whole frames and advance ``committed``; on failure, cut what was half written."""
        done = 0
        try:
            while done < len(buf):
                done += os.write(self._fd, buf[done:] if done else buf)
        except BaseException:
            if done:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._committed)
            raise
        self._committed += len(buf)

    def sync(self) -> None:
        """Make what is committed durable (fsync); a no-op once closed. Callable from any thread."""
        with self._lock:
            if self._closed:
                return
            fd = os.dup(self._fd)  # fsync outside the lock: writers need not wait for the disk
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self, *, complete: bool = True) -> None:
        """Append the END frame, fsync, and wake followers; idempotent.

        With ``complete=False`` no END frame is written: the log stays open for
        :meth:`LogStore.open_append` (e.g. the node shuts down leaving the container running, and
        reattaches after a restart). Followers stop where the log ends.
        """
        with self._lock:
            if self._closed:
                return
            try:
                if complete:
                    self._append(HEADER.pack(MAGIC, END_STREAM, 0, 0, time.time_ns()) + TRAILER.pack(20))
                    self._complete = True
                os.fsync(self._fd)
            finally:
                self._closed = True
                if self._budget is not None:
                    self._budget.give_back(self._taken)
                    self._taken = 0
                try:
                    os.close(self._fd)
                finally:
                    self._notify()
                    self._store._release(self)

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<LogWriter {shown(self._execution_id)} {state} committed={self._committed}>"

    # -- waking followers ---------------------------------------------------

    def _notify(self) -> None:
        """Called with the lock held, from any thread, after ``committed`` or ``closed`` changed.

        Followers register their future *before* re-checking ``committed``, and this reads the
        waiter list *after* advancing it, so no wake-up is lost. At most one wake-up is pending.
        """
        if not self._waiters or self._wake_pending:
            return
        loop = self._store._loop
        if loop is None:
            return
        self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is left to wake
            self._wake_pending = False

    def _wake(self) -> None:
        """Runs on the store's loop."""
        self._wake_pending = False
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait_beyond(self, pos: int) -> None:
        """Wait until the log grows past ``pos`` or the writer is closed (on the store's loop)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if self._committed > pos or self._closed:
                return
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)


class RemoteLog:
    """A log written by another process (the capture process), as this process's followers see it.

    The writing process reports how far the log has grown (:meth:`advance`, always a frame
    boundary) and when it stopped writing (:meth:`end`); followers in this process read up to
    ``committed`` and are woken by each report, as by a local :class:`LogWriter`. No polling.
    Used only on the store's event loop.
    """

    def __init__(self, store: LogStore, execution_id: str, committed: int) -> None:
        self._store = store
        self._execution_id = execution_id
        self._committed = committed
        self._closed = False
        self._complete = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def execution_id(self) -> str:
        return self._execution_id

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def complete(self) -> bool:
        return self._complete

    def advance(self, committed: int) -> None:
        """The writer has whole frames up to ``committed``."""
        if committed > self._committed and not self._closed:
            self._committed = committed
            self._wake()

    def end(self, *, complete: bool) -> None:
        """The writer closed the log (with an END frame if ``complete``); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._complete = complete
        self._store._release(self)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait_beyond(self, pos: int) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if self._committed > pos or self._closed:
                return
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def __repr__(self) -> str:
        return f"<RemoteLog {self._execution_id!r} {'closed' if self._closed else 'open'} committed={self._committed}>"


# ---------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------


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
                scan = _scan_forward(fd, path, size)
                if scan.complete:
                    raise ValueError(f"the log of execution {shown(execution_id)} is complete; it cannot be appended")
                if scan.end < size:
                    os.ftruncate(fd, scan.end)
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            writer = LogWriter(self, execution_id, fd, scan.end, scan.bytes_written, cap=cap, budget=self.budget)
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
            found = _frame_ending_at(fd, path, size)
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
            return _valid_tail_end(fd, path, os.fstat(fd).st_size)
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
            _check_offset(fd, path, offset, size)
            start, first = offset, None
            if tail_lines is not None:
                if writer is None:
                    end = _valid_tail_end(fd, path, size)
                if offset <= end:
                    start, first = _tail_start(fd, path, offset, end, tail_lines, streams)
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
                    frame = _parse_frame(buf, i, base, path)
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
