"""Which output stream a chunk of a job's output came from, and what a reader asks of an execution's output
(:class:`LogQuery`): a tiny module without pydantic, so that the node's capture process (and the log store it
writes) can use it without loading the request models."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["LogQuery", "StreamType"]


class StreamType(IntEnum):
    """Which output stream a chunk of log data came from (values match Docker's multiplexing)."""

    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True)
class LogQuery:
    """What a reader asks of an execution's log: history and/or live output, from where, which streams.

    ``offset`` (a position from an earlier read) beats ``tail_lines``; without either, history starts at
    the beginning, or at the current end when ``with_history`` is false.
    """

    with_history: bool = True
    follow: bool = False
    offset: int | None = None
    tail_lines: int | None = None
    streams: frozenset[StreamType] = frozenset({StreamType.STDOUT, StreamType.STDERR})
