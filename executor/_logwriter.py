"""The writer of a log in this process: appends frames from any thread and wakes the followers.

Private to :mod:`haddock.executor.logstore` (see its docstring for the concurrency rules); use it from there.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

from haddock.executor._livelog import LiveLog
from haddock.executor._logformat import FRAME_OVERHEAD, HEADER, MAGIC, MAX_FRAME_DATA, TRAILER, end_frame
from haddock.executor.errors import shown
from haddock.executor.logcap import LogBudget, LogCap, data_that_fits, frame_bytes
from haddock.executor.streams import StreamType

if TYPE_CHECKING:
    from haddock.executor.logstore import LogStore

WRITE_BATCH = 1024 * 1024
"""A large write is appended in batches of whole frames of about this size (one os.write each)."""
_END_FRAME_LEN = FRAME_OVERHEAD


class LogWriter(LiveLog):
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
        super().__init__(store, execution_id, committed)
        self._fd = fd
        self._lock = threading.Lock()
        self._bytes = dict(bytes_written)
        self._wake_pending = False  # the followers (only read by writer threads here) are woken once at a time

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

    def _hold(self, n: int) -> None:
        """Count ``n`` bytes already in the file against the budget (as much of them as it has room for)."""
        if self._budget is not None and n:
            self._taken += self._budget.take(n)

    def _release_budget(self) -> None:
        if self._budget is not None:
            self._budget.give_back(self._taken)
        self._taken = 0

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
                    self._append(end_frame(time.time_ns()))
                    self._complete = True
                os.fsync(self._fd)
            finally:
                self._closed = True
                self._release_budget()
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
        super()._wake()
