"""``haddock stats``: an execution's resource samples as a terminal chart (plotext, loaded only when
drawing), a summary line, and the ``--json`` shape."""

from __future__ import annotations

from typing import Any

from haddock.executor.quantity import format_bytes
from haddock.executor.stats import Stat, StatsSummary

__all__ = ["render_stats_chart", "stats_json", "summary_line"]


def stats_json(samples: list[Stat], summary: StatsSummary | None, execution_id: str) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "summary": summary.model_dump() if summary is not None else None,
        "samples": [s.model_dump(mode="json") for s in samples],
    }


def render_stats_chart(
    samples: list[Stat], summary: StatsSummary | None, *, width: int = 100, height: int = 30, color: bool = True
) -> str:
    """CPU and memory over seconds since the first sample, as a terminal chart (plotext), the memory
    limit as a line when it is within reach (the title always names it)."""
    import plotext as plt

    plt.clear_figure()
    plt.subplots(2, 1)
    plt.plotsize(width, height)
    t0 = samples[0].time if samples else None
    xs = [(s.time - t0).total_seconds() for s in samples] if t0 is not None else []
    mib = 1024 * 1024
    limit = summary.memory_limit_bytes if summary is not None else 0
    if not limit and samples:
        limit = round(samples[-1].memory_limit_bytes)
    plt.subplot(1, 1)
    plt.theme("clear" if not color else "pro")
    peak_cores = max([s.cpu_cores for s in samples] or [0.0])
    plt.title(f"CPU (cores; peak {peak_cores:.2f})")
    if xs:
        plt.plot(xs, [s.cpu_cores for s in samples], label="cores")
    plt.subplot(2, 1)
    plt.theme("clear" if not color else "pro")
    peak = summary.peak_memory_bytes if summary is not None else 0
    plt.title(f"memory (MiB; peak {format_bytes(peak)}, limit {format_bytes(limit) if limit else 'none'})")
    if xs:
        plt.plot(xs, [s.memory_bytes / mib for s in samples], label="in use")
        plt.plot(xs, [s.memory_peak_bytes / mib for s in samples], label="peak so far")
    if limit and xs and limit <= 4 * max(peak, 1):  # a far limit (none: the host's memory) would flatten the curve
        plt.hline(limit / mib)
    plt.xlabel("seconds since start")
    chart: str = plt.build()
    return chart if color else plt.uncolorize(chart)


def summary_line(summary: StatsSummary | None) -> str:
    if summary is None:
        return "no samples"
    return (
        f"samples {summary.samples}  CPU {summary.cpu_seconds:.2f}s (avg {summary.avg_cpu_cores:.2f}, "
        f"max {summary.max_cpu_cores:.2f} cores)  memory peak {format_bytes(summary.peak_memory_bytes)}"
        f"{' of ' + format_bytes(summary.memory_limit_bytes) if summary.memory_limit_bytes else ''}  "
        f"block I/O {format_bytes(summary.block_read_bytes)} read, {format_bytes(summary.block_write_bytes)} written"
    )
