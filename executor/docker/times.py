"""The engine's timestamps: RFC 3339 with nanoseconds (``2026-11-30T20:11:35.123456789Z``), the zero time
(``0001-01-01T00:00:00Z``) for "not yet". One parser for the driver (container state, stats' ``read``); light
enough for the capture process (standard library only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["engine_time", "engine_timestamp"]

_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def engine_time(text: str) -> datetime | None:
    """The time in UTC (to the microsecond); None for the zero time or what is not such a timestamp."""
    m = _TIME_RE.match(text or "")
    if m is None or m.group(1).startswith("0001"):
        return None
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").astimezone(UTC)
    except ValueError:
        return None


def engine_timestamp(text: str) -> float | None:
    """:func:`engine_time` as POSIX seconds."""
    when = engine_time(text)
    return None if when is None else when.timestamp()
