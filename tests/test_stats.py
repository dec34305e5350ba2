"""Resource statistics without an engine: Decimate (hypothesis and Fn's own examples), the summary, the
Docker stats parser on cgroup v1 and v2 documents, and the bounded store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haddock.executor.docker.stats import parse_stats
from haddock.executor.records import ExecutionRecord, ResultStatus, RunCommandResult
from haddock.executor.request import RunCommandRequest
from haddock.executor.stats import METRICS, Stat, StatsAccumulator, UnsortedSeries, decimate, merge, windows
from haddock.node.store import ExecutionStore, store_path

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def series(n: int, *, step: float = 1.0, gap_after: int | None = None, gap: float = 0.0) -> list[Stat]:
    out = []
    t = 0.0
    for i in range(n):
        out.append(Stat(time=T0 + timedelta(seconds=t), cpu_cores=i % 7 / 7, memory_bytes=float(i * 1024)))
        t += step + (gap if gap_after is not None and i + 1 == gap_after else 0.0)
    return out


# ------------------------------------------------------------------ Fn's examples


@pytest.mark.parametrize(("n", "expected"), [(480, 240), (700, 240), (300, 240), (240, 240), (10, 10)])
def test_fn_examples(n: int, expected: int) -> None:
    assert len(decimate(series(n), 240)) == expected


def test_fn_gap_example_gives_far_fewer_points() -> None:
    """300 samples a second apart with a 20-minute gap after the 150th: Fn gets 49."""
    out = decimate(series(300, gap_after=150, gap=20 * 60), 240)
    assert 40 <= len(out) <= 60, len(out)


def test_decimate_leaves_its_input_alone_and_averages_in_floats() -> None:
    s = series(4)
    before = [x.model_copy() for x in s]
    out = decimate(s, 2)
    assert s == before
    assert len(out) == 2
    assert out[0].memory_bytes == 512.0  # (0 + 1024) / 2: no integer rounding
    assert out[0].samples == 2
    assert out[0].time == T0 + timedelta(seconds=0.5)


def test_unsorted_input_is_refused_with_a_clear_error() -> None:
    s = series(5)
    s[2], s[3] = s[3], s[2]
    with pytest.raises(UnsortedSeries, match="samples must be in time order: sample 3"):
        decimate(s, 2)
    with pytest.raises(UnsortedSeries):
        decimate(s, 100)  # even when nothing needs merging
    with pytest.raises(ValueError, match="max_points must be at least 1"):
        decimate(series(3), 0)


def test_merging_merged_points_weighs_them_by_their_samples() -> None:
    a = merge(series(3))  # stands for 3 samples, memory mean 1024
    b = Stat(time=T0 + timedelta(seconds=10), memory_bytes=5120.0)
    m = merge([a, b])
    assert m.samples == 4
    assert m.memory_bytes == (1024 * 3 + 5120) / 4


# ------------------------------------------------------------------ invariants

times = st.lists(st.floats(min_value=0, max_value=10_000, allow_nan=False), min_size=0, max_size=300)


def from_offsets(offsets: list[float], values: list[float]) -> list[Stat]:
    return [
        Stat(time=T0 + timedelta(seconds=t), cpu_cores=v, memory_bytes=v * 1000, pids=v)
        for t, v in zip(sorted(offsets), values, strict=False)
    ]


@settings(max_examples=100, deadline=None)
@given(
    offsets=times,
    values=st.lists(st.floats(min_value=0, max_value=64, allow_nan=False), min_size=300, max_size=300),
    max_points=st.integers(min_value=1, max_value=400),
)
def test_decimate_invariants(offsets: list[float], values: list[float], max_points: int) -> None:
    s = from_offsets(offsets, values)
    out = decimate(s, max_points)
    assert len(out) <= max_points
    assert [p.time for p in out] == sorted(p.time for p in out)  # order kept
    assert sum(p.samples for p in out) == len(s)  # every sample counted, none invented
    if len(s) <= max_points:
        assert out == s
        return
    groups = windows(s, max_points)
    assert len(groups) == len(out)
    assert [x for g in groups for x in g] == s  # consecutive windows, in order
    for point, group in zip(out, groups, strict=True):
        assert min(x.time for x in group) <= point.time <= max(x.time for x in group)
        for name in METRICS:
            lo = min(getattr(x, name) for x in group)
            hi = max(getattr(x, name) for x in group)
            assert lo <= getattr(point, name) <= hi
    if out:
        assert out[0].time >= s[0].time and out[-1].time <= s[-1].time


def test_a_ten_minute_series_decimated_to_120_spans_the_whole_run() -> None:
    s = series(600)
    out = decimate(s, 120)
    assert len(out) == 120
    assert out[0].time - s[0].time < timedelta(seconds=5)
    assert s[-1].time - out[-1].time < timedelta(seconds=5)


# ------------------------------------------------------------------ the summary


def test_summary_from_the_cumulative_counters() -> None:
    acc = StatsAccumulator()
    assert acc.summary() is None
    for i in range(6):  # half a core for 5 s
        acc.add(
            Stat(
                time=T0 + timedelta(seconds=i),
                cpu_cores=0.5 if i else 0.0,
                cpu_seconds=0.5 * i,
                memory_bytes=1000.0 * i,
                memory_peak_bytes=1500.0 * i,
                memory_limit_bytes=8000,
                block_read_bytes=10.0 * i,
            )
        )
    s = acc.summary()
    assert s is not None
    assert s.samples == 6
    assert s.avg_cpu_cores == pytest.approx(0.5)
    assert s.max_cpu_cores == pytest.approx(0.5)
    assert s.cpu_seconds == pytest.approx(2.5)
    assert s.peak_memory_bytes == 7500
    assert s.memory_limit_bytes == 8000
    assert s.block_read_bytes == 50


# ------------------------------------------------------------------ the engine's documents


def v1_doc(read: str, cpu_ns: int, usage: int, max_usage: int) -> dict[str, Any]:
    return {
        "read": read,
        "pids_stats": {"current": 3},
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"major": 8, "minor": 0, "op": "Read", "value": 4096},
                {"major": 8, "minor": 0, "op": "Write", "value": 8192},
                {"major": 8, "minor": 0, "op": "Total", "value": 12288},
            ]
        },
        "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}, "online_cpus": 2},
        "memory_stats": {
            "usage": usage,
            "max_usage": max_usage,
            "stats": {"total_inactive_file": 1024, "cache": 2048},
            "limit": 33554432,
        },
        "networks": {"eth0": {"rx_bytes": 100, "tx_bytes": 50}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
    }


def test_parse_cgroup_v1() -> None:
    first = parse_stats(v1_doc("2024-05-01T12:00:00.123456789Z", 1_000_000_000, 10 * 1024, 30 * 1024), None)
    assert first is not None
    stat, reading = first
    assert stat.time == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert stat.cpu_cores == 0.0  # nothing to compare with yet
    assert stat.cpu_seconds == 1.0
    assert stat.memory_bytes == 9 * 1024  # less the inactive file cache, as `docker stats` shows it
    assert stat.memory_peak_bytes == 30 * 1024  # the kernel's high-water mark
    assert stat.memory_limit_bytes == 33554432
    assert (stat.pids, stat.block_read_bytes, stat.block_write_bytes) == (3, 4096, 8192)
    assert (stat.net_rx_bytes, stat.net_tx_bytes) == (101, 52)
    second = parse_stats(v1_doc("2024-05-01T12:00:02.123456789Z", 2_000_000_000, 10 * 1024, 30 * 1024), reading)
    assert second is not None
    assert second[0].cpu_cores == pytest.approx(0.5)  # 1 s of CPU over 2 s


def test_parse_cgroup_v2_keeps_the_highest_usage_as_peak() -> None:
    def doc(read: str, cpu_ns: int, usage: int) -> dict[str, Any]:
        return {
            "read": read,
            "pids_stats": {"current": 1},
            "blkio_stats": {"io_service_bytes_recursive": [{"op": "read", "value": 7}, {"op": "write", "value": 9}]},
            "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}},
            "memory_stats": {"usage": usage, "stats": {"inactive_file": 100, "anon": usage}, "limit": 1 << 30},
        }

    first = parse_stats(doc("2024-05-01T12:00:00Z", 0, 5000), None)
    assert first is not None
    second = parse_stats(doc("2024-05-01T12:00:01Z", 250_000_000, 3000), first[1])
    assert second is not None
    stat = second[0]
    assert stat.cpu_cores == pytest.approx(0.25)
    assert stat.memory_bytes == 2900
    assert stat.memory_peak_bytes == 5000  # no max_usage on v2: the highest usage seen
    assert (stat.block_read_bytes, stat.block_write_bytes, stat.net_rx_bytes) == (7, 9, 0)


def test_parse_a_stopped_container_gives_nothing() -> None:
    assert parse_stats({"read": "0001-01-01T00:00:00Z", "memory_stats": {}}, None) is None


# ------------------------------------------------------------------ the store


def request(exec_id: str) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {"job_id": "j", "execution_id": exec_id, "engine": {"image": "busybox"}, "results_dir": "/tmp/r"}
    )


async def test_store_bounds_samples_by_merging_the_oldest(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    async with await ExecutionStore.open(path) as store:
        await store.create(ExecutionRecord(request=request("e1")))
        assert await store.add_stats({"e1": series(50), "nobody": series(2)}, max_samples=64) == ["nobody"]
        await store.add_stats({"e1": series(100)[50:]}, max_samples=64)
        kept = await store.stats("e1")
        assert len(kept) <= 64
        assert sum(s.samples for s in kept) == 100  # merged, never dropped
        assert [s.time for s in kept] == sorted(s.time for s in kept)
        assert kept[0].time <= T0 + timedelta(seconds=10) and kept[-1].time == T0 + timedelta(seconds=99)
        assert kept[-1].samples == 1  # the newest are raw
    async with await ExecutionStore.open(path) as store:  # durable
        assert sum(s.samples for s in await store.stats("e1")) == 100
        await store.set_result("e1", RunCommandResult(status=ResultStatus.SUCCESS, exit_code=0))
        assert await store.prune(datetime.now(UTC) + timedelta(days=1)) == ["e1"]
        assert await store.stats("e1") == []  # pruned with the execution


# ------------------------------------------------------------------ configuration


def test_stats_and_metrics_settings(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from haddock.node.config import Settings

    s = Settings(data_dir=tmp_path, stats={"interval": "2s", "max_samples": 100}, metrics_listen="127.0.0.1:9464")
    assert (s.stats.interval, s.stats.max_samples, s.metrics_listen) == (2.0, 100, "127.0.0.1:9464")
    assert Settings(data_dir=tmp_path).metrics_listen is None  # off by default
    assert Settings(data_dir=tmp_path, stats={"interval": 0}).stats.interval == 0  # sampling off
    with pytest.raises(ValidationError, match="at least 1s"):
        Settings(data_dir=tmp_path, stats={"interval": "200ms"})
    with pytest.raises(ValidationError, match="must be HOST:PORT"):
        Settings(data_dir=tmp_path, metrics_listen="9464")
