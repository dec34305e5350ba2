"""Which output stream a chunk of a job's output came from: a tiny module without pydantic, so that the
node's capture process (and the log store it writes) can use it without loading the request models."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["StreamType"]


class StreamType(IntEnum):
    """Which output stream a chunk of log data came from (values match Docker's multiplexing)."""

    STDOUT = 1
    STDERR = 2
