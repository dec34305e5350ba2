"""Resource statistics of an execution (after Fn's driver ``Stat`` and ``Decimate``), engine-independent.

A :class:`Stat` is one point of a container's resource use: a time and its metrics. The driver samples
them while the container runs (``ContainerHandle.stats``); the runner sums them up into a
:class:`StatsSummary` for the result and hands each to the node, which keeps them with the execution.

:func:`decimate` down-samples a long series with Fn's semantics: a series longer than ``max_points`` is
cut into ``max_points`` consecutive time windows of equal length ``(last - first) / max_points``; the
samples of each window are averaged (values and times) into one point, the last window takes the
remainder, and an empty window gives no point (a long gap yields fewer points, never invented ones).
Unlike Fn's it never modifies its input, averages in floating point (weighted by how many raw samples a
point already stands for, so merging merged points stays exact), and refuses unsorted input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "METRICS",
    "Stat",
    "StatsAccumulator",
    "StatsSummary",
    "UnsortedSeries",
    "decimate",
    "merge",
    "summarize",
    "windows",
]


class Stat(BaseModel):
    """One point of a container's resource use. Counters (``cpu_seconds``, block and network bytes) are
    cumulative since the container started; the others are what was in use at ``time``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time: datetime
    cpu_cores: float = Field(default=0.0, ge=0, description="cores used over the interval before this sample")
    cpu_seconds: float = Field(default=0.0, ge=0, description="CPU time used since the container started")
    memory_bytes: float = Field(default=0.0, ge=0, description="memory in use (less reclaimable file cache)")
    memory_peak_bytes: float = Field(default=0.0, ge=0, description="the container's peak so far")
    memory_limit_bytes: float = Field(default=0.0, ge=0)
    pids: float = Field(default=0.0, ge=0)
    block_read_bytes: float = Field(default=0.0, ge=0)
    block_write_bytes: float = Field(default=0.0, ge=0)
    net_rx_bytes: float = Field(default=0.0, ge=0)
    net_tx_bytes: float = Field(default=0.0, ge=0)
    samples: int = Field(default=1, ge=1, description="raw samples this point stands for (>1: merged)")

    @field_validator("time")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None or v.utcoffset() is None:
            raise ValueError("a sample's time needs a time zone")
        return v


METRICS: tuple[str, ...] = tuple(n for n in Stat.model_fields if n not in ("time", "samples"))
"""The metric fields of a :class:`Stat` (what is averaged when points merge)."""


class StatsSummary(BaseModel):
    """An execution's resource use summed up from its samples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int = Field(default=0, ge=0, description="raw samples taken")
    peak_memory_bytes: int = Field(default=0, ge=0)
    memory_limit_bytes: int = Field(default=0, ge=0)
    cpu_seconds: float = Field(default=0.0, ge=0)
    avg_cpu_cores: float = Field(default=0.0, ge=0)
    max_cpu_cores: float = Field(default=0.0, ge=0)
    block_read_bytes: int = Field(default=0, ge=0)
    block_write_bytes: int = Field(default=0, ge=0)
    net_rx_bytes: int = Field(default=0, ge=0)
    net_tx_bytes: int = Field(default=0, ge=0)


class UnsortedSeries(ValueError):
    """A series given to :func:`decimate` is not in time order."""


def _check_sorted(series: Sequence[Stat]) -> None:
    for i in range(1, len(series)):
        if series[i].time < series[i - 1].time:
            raise UnsortedSeries(
                f"samples must be in time order: sample {i} ({series[i].time.isoformat()}) comes before "
                f"sample {i - 1} ({series[i - 1].time.isoformat()})"
            )


def windows(series: Sequence[Stat], max_points: int) -> list[list[Stat]]:
    """The non-empty time windows of a sorted series, in order (see the module's documentation)."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")
    _check_sorted(series)
    if not series:
        return []
    first = series[0].time
    span = (series[-1].time - first).total_seconds()
    if span <= 0:
        return [list(series)]  # all at one instant: one window
    width = span / max_points
    groups: list[list[Stat]] = []
    current = -1
    for s in series:
        index = min(int((s.time - first).total_seconds() / width), max_points - 1)
        if index != current:
            groups.append([])
            current = index
        groups[-1].append(s)
    return groups


def merge(points: Sequence[Stat]) -> Stat:
    """One point for several: values and times averaged, weighted by the raw samples each stands for."""
    if not points:
        raise ValueError("nothing to merge")
    if len(points) == 1:
        return points[0]
    weight = sum(p.samples for p in points)
    first = min(p.time for p in points)
    last = max(p.time for p in points)
    offset = sum((p.time - first).total_seconds() * p.samples for p in points) / weight
    time = min(max(first + timedelta(seconds=offset), first), last)
    values: dict[str, float] = {}
    for name in METRICS:
        xs = [float(getattr(p, name)) for p in points]
        mean = sum(x * p.samples for x, p in zip(xs, points, strict=True)) / weight
        values[name] = min(max(mean, min(xs)), max(xs))  # no rounding error outside the window's range
    return Stat.model_construct(None, time=time, samples=weight, **values)


def decimate(series: Sequence[Stat], max_points: int) -> list[Stat]:
    """At most ``max_points`` points for ``series`` (a new list; the input is left as it is).

    Raises :class:`UnsortedSeries` when the series is not in time order, ValueError when
    ``max_points < 1``."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")
    if len(series) <= max_points:
        _check_sorted(series)
        return list(series)
    return [merge(group) for group in windows(series, max_points)]


class StatsAccumulator:
    """The running summary of an execution's samples, kept as they come (O(1) memory)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: Stat | None = None
        self.last: Stat | None = None
        self.peak_memory = 0.0
        self.max_cores = 0.0
        self._weighted_cores = 0.0

    def add(self, stat: Stat) -> None:
        if self.first is None:
            self.first = stat
        self.last = stat
        self.count += stat.samples
        self.peak_memory = max(self.peak_memory, stat.memory_peak_bytes, stat.memory_bytes)
        self.max_cores = max(self.max_cores, stat.cpu_cores)
        self._weighted_cores += stat.cpu_cores * stat.samples

    def summary(self) -> StatsSummary | None:
        """None before the first sample."""
        first, last = self.first, self.last
        if first is None or last is None:
            return None
        span = (last.time - first.time).total_seconds()
        # From the cumulative counter over the sampled time; a lone sample has only its own rate.
        avg = max(0.0, last.cpu_seconds - first.cpu_seconds) / span if span > 0 else self._weighted_cores / self.count
        return StatsSummary(
            samples=self.count,
            peak_memory_bytes=round(self.peak_memory),
            memory_limit_bytes=round(last.memory_limit_bytes),
            cpu_seconds=last.cpu_seconds,
            avg_cpu_cores=avg,
            max_cpu_cores=max(self.max_cores, avg),
            block_read_bytes=round(last.block_read_bytes),
            block_write_bytes=round(last.block_write_bytes),
            net_rx_bytes=round(last.net_rx_bytes),
            net_tx_bytes=round(last.net_tx_bytes),
        )


def summarize(series: Iterable[Stat]) -> StatsSummary | None:
    """The summary of a stored series (None when empty)."""
    acc = StatsAccumulator()
    for stat in series:
        acc.add(stat)
    return acc.summary()
