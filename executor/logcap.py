"""How much of a job's output the node keeps in its log store: per execution, and across running ones.

A job may print without end; the node's disk may not fill with it. Two bounds, enforced by the
:class:`~haddock.executor.logstore.LogWriter` while output is captured (whatever captures it):

* :class:`LogCap`, per execution: each stream is kept up to what its results need (the larger of its
  file and inline-return limits, and one byte more, so that the result knows it was cut), and the
  whole file, framing included, up to a total (default: the two streams' caps plus framing, see
  :func:`framing_allowance`). Output beyond is read and dropped, so the job never blocks on it.
* :class:`LogBudget`, across the logs being written: their bytes together stay within the node's
  ``log_max_bytes`` (finished logs are pruned to it by the node's housekeeping). Output that finds no
  room is dropped and counted as lost, and the execution's result says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from haddock.executor.quantity import MiB
from haddock.executor.streams import StreamType

if TYPE_CHECKING:
    from haddock.executor.request import OutputLimits

__all__ = ["FRAME_OVERHEAD", "MAX_FRAME_DATA", "LogBudget", "LogCap", "data_that_fits", "frame_bytes"]

MAX_FRAME_DATA = 64 * 1024
FRAME_OVERHEAD = 20  # header 16 + trailer 4; see logstore's file format
_MAX_FRAME = MAX_FRAME_DATA + FRAME_OVERHEAD


def frame_bytes(data: int) -> int:
    """Bytes in the file for ``data`` bytes written at once (split into frames of MAX_FRAME_DATA)."""
    if data <= 0:
        return 0
    frames = -(-data // MAX_FRAME_DATA)
    return data + frames * FRAME_OVERHEAD


def data_that_fits(room: int) -> int:
    """The most data bytes one write can carry in ``room`` file bytes."""
    if room <= FRAME_OVERHEAD:
        return 0
    full, rest = divmod(room, _MAX_FRAME)
    return full * MAX_FRAME_DATA + max(0, rest - FRAME_OVERHEAD)


def framing_allowance(data: int) -> int:
    """Room for frame headers beyond ``data`` bytes: a quarter of it, and at least 1 MiB (a job that
    writes a line at a time makes one small frame per line)."""
    return max(1 * MiB, data // 4)


@dataclass(frozen=True)
class LogCap:
    """The most one execution's log holds: data bytes per stream, and file bytes in all (END frame included)."""

    stdout: int
    stderr: int
    total: int

    @classmethod
    def for_limits(cls, limits: OutputLimits, total: int | None = None) -> LogCap:
        """What the results need of each stream; ``total`` (the operator's cap) or their sum plus framing."""
        out = max(limits.max_stdout_file_length, limits.max_stdout_return_length) + 1
        err = max(limits.max_stderr_file_length, limits.max_stderr_return_length) + 1
        if total is None:
            total = out + err + framing_allowance(out + err)
        return cls(stdout=out, stderr=err, total=total)

    def stream(self, stream: StreamType) -> int:
        return self.stdout if stream is StreamType.STDOUT else self.stderr


class LogBudget:
    """File bytes shared by the logs being written (thread-safe): taken as they are written, given back
    when a log is closed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, wanted: int) -> int:
        """Up to ``wanted`` bytes; what is granted is used until :meth:`give_back`."""
        with self._lock:
            granted = max(0, min(wanted, self.max_bytes - self._used))
            self._used += granted
            return granted

    def give_back(self, n: int) -> None:
        with self._lock:
            self._used = max(0, self._used - n)
