"""Resource statistics on a real engine and a real node: the OOM curve and peak, CPU accuracy under a CPU
limit, GetExecutionStats (follow, decimation, after a restart), ``haddock stats``, /metrics for
Prometheus, and sampling that fails or hangs without holding anything up."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from haddock.executor.docker.handle import DockerHandle
from haddock.executor.quantity import MiB
from haddock.executor.records import ExecutionRecord, ResultStatus, RunCommandResult
from haddock.executor.request import RunCommandRequest
from haddock.executor.stats import Stat
from haddock.node.client import NodeClient, NodeError
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, RequestFactory, TelemetryCapture, node_settings
from tests.test_cli import haddock


def job(script: str, **kw: object) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "stats",
            "execution_id": kw.pop("execution_id", f"e-{uuid.uuid4().hex[:12]}"),
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            **kw,
        }
    )


async def all_stats(client: NodeClient, exec_id: str, max_points: int = 0) -> tuple[list[Stat], object]:
    updates = [u async for u in client.stats(exec_id, max_points=max_points)]
    assert len(updates) == 1 and not updates[0].running
    return updates[0].samples, updates[0].summary


# Memory in steps that stays charged after the kill (tmpfs pages belong to the container's cgroup):
# 8 MiB every 0.5 s toward 48 MiB under a 32Mi limit. The writer that crosses the limit is killed.
STEPS = (
    "for i in 1 2 3 4 5 6; do dd if=/dev/zero of=/dev/shm/m$i bs=1M count=8 2>/dev/null || "
    "{ rc=$?; sleep 2; exit $rc; }; sleep 0.5; done"
)


async def test_oom_killed_job_shows_its_memory_reaching_the_limit(client: NodeClient) -> None:
    done = await client.run(job(STEPS, resources={"memory": "32Mi"}))
    result = done.result
    assert result.status is ResultStatus.KILLED, result
    assert result.stats is not None and result.stats.samples >= 2
    limit = 32 * MiB
    assert result.stats.memory_limit_bytes == limit
    assert 0.9 * limit <= result.stats.peak_memory_bytes <= 1.1 * limit, result.stats
    assert "memory limit of 32Mi; peak observed" in result.error_message, result.error_message
    samples, summary = await all_stats(client, done.execution_id)
    assert summary == result.stats
    used = [s.memory_bytes for s in samples]
    assert used[-1] > used[0] and max(used) >= 0.75 * limit, used  # a rising series that reaches the limit
    assert max(s.memory_peak_bytes for s in samples) >= 0.9 * limit


BUSY = "sh -c 'while :; do :; done' & sleep 5; kill $!"


def machine_idle_cores() -> tuple[float, float]:
    """(idle, total) CPU seconds of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    return (fields[3] + fields[4]) / tck, sum(fields[:8]) / tck


async def test_average_cpu_follows_the_cpu_limit(client: NodeClient) -> None:
    """One CPU-bound job at a time, 5 s at --cpu 0.5, then at --cpu 1. The machine has 2 cores shared with
    other people's work: the upper bound always holds (the limit, nothing counted twice); the lower one when
    the machine had the room to give the job what its limit allows (else it is tried again, at most 3 times,
    and a starved job only has to show it ran)."""
    for cpu, low, high in ((0.5, 0.35, 0.6), (1.0, 0.8, 1.1)):
        short: list[tuple[float, float]] = []  # (used, could have had) of each attempt below the bound
        for _attempt in range(3):
            idle0, total0 = machine_idle_cores()
            done = await client.run(job(BUSY, resources={"cpu": cpu}))
            idle1, total1 = machine_idle_cores()
            stats = done.result.stats
            assert done.result.status is ResultStatus.SUCCESS and stats is not None
            assert stats.samples >= 4, stats
            assert stats.avg_cpu_cores <= high, (cpu, stats)
            if stats.avg_cpu_cores >= low:
                break
            # What the job had, plus what nobody used meanwhile, is what it could have had.
            cores = os.cpu_count() or 1
            could = stats.avg_cpu_cores + cores * (idle1 - idle0) / max(total1 - total0, 1e-9)
            short.append((stats.avg_cpu_cores, could))
        else:
            # Starved every time: the machine was busy (with slack for idle time around the job).
            assert min(could for _, could in short) < low + 0.2, f"--cpu {cpu}: (used, could have had) {short}"
            assert all(used > 0.05 for used, _ in short), short


async def test_stats_follow_decimate_survive_a_restart_and_the_cli(
    tmp_path: Path, node_id: str, busybox_image: str, telemetry: TelemetryCapture
) -> None:
    settings = node_settings(tmp_path, node_id)
    first = await start_server(settings)
    try:
        async with NodeClient(first.address) as c:
            started = await c.start(job("i=0; while [ $i -lt 3 ]; do sleep 1; i=$((i+1)); done"))
            updates = [u async for u in c.stats(started.execution_id, follow=True)]
            assert updates[0].running and updates[-1].running is False
            followed = [s for u in updates for s in u.samples]
            assert len(followed) >= 2
            assert [s.time for s in followed] == sorted({s.time for s in followed})  # no sample twice
            done = await c.wait(started.execution_id)
            assert updates[-1].summary == done.result.stats
    finally:
        await first.stop(1)

    # A synthetic 10-minute series of a finished execution, fed to the store of the restarted node.
    second = await start_server(settings)
    try:
        node = second.node
        record = ExecutionRecord(request=node.prepare(job("true", execution_id="synthetic")))
        await node.store.create(record)
        await node.store.set_result("synthetic", RunCommandResult(status=ResultStatus.SUCCESS, exit_code=0))
        t0 = datetime(2024, 5, 1, tzinfo=UTC)
        await node.store.add_stats(
            {"synthetic": [Stat(time=t0 + timedelta(seconds=i), cpu_cores=0.5) for i in range(600)]},
            max_samples=3600,
        )
        async with NodeClient(second.address) as c:
            samples, summary = await all_stats(c, started.execution_id)  # survived the restart
            assert len(samples) == len(followed) and summary == done.result.stats
            points, _ = await all_stats(c, "synthetic", max_points=120)
            assert len(points) <= 120
            assert points[0].time - t0 < timedelta(seconds=6) and t0 + timedelta(seconds=599) - points[-1].time < (
                timedelta(seconds=6)
            )
            with pytest.raises(NodeError) as err:
                await all_stats(c, "no-such-execution")
            assert err.value.code.name == "NOT_FOUND"

        shown = await haddock("stats", "--json", "--max-points", "2", started.execution_id, node=second.address)
        assert shown.code == 0, shown.stderr
        assert '"peak_memory_bytes"' in shown.stdout and shown.stdout.count('"cpu_cores"') <= 2
        chart = await haddock("stats", started.execution_id, node=second.address)
        assert chart.code == 0, chart.stderr
        assert "seconds since start" in chart.stdout and "memory" in chart.stdout
        unknown = await haddock("stats", "nope", node=second.address)
        assert unknown.code == 125 and "NOT_FOUND" in unknown.stderr
        described = await haddock("describe", started.execution_id, node=second.address)
        assert '"peak_memory_bytes"' in described.stdout
    finally:
        await second.stop(1)


async def test_a_result_sums_up_the_samples_from_before_a_restart(
    tmp_path: Path, node_id: str, busybox_image: str
) -> None:
    from haddock.node.config import OnShutdown

    # 24 MiB early, then freed: on cgroup v2 only the samples from before the restart saw it.
    script = "dd if=/dev/zero of=/dev/shm/m bs=1M count=24 2>/dev/null; sleep 2.5; rm /dev/shm/m; sleep 3"
    settings = node_settings(tmp_path, node_id).model_copy(update={"on_shutdown": OnShutdown.LEAVE_RUNNING})
    req = job(script)
    first = await start_server(settings)
    try:
        async with NodeClient(first.address) as c:
            await c.start(req)
            async for update in c.stats(req.execution_id, follow=True):
                if any(s.memory_bytes >= 20 * MiB for s in update.samples):
                    break
    finally:
        await first.stop(1)  # leaves the job running; its samples so far are in the store
    second = await start_server(settings)
    try:
        async with NodeClient(second.address) as c:
            done = await c.wait(req.execution_id)
            samples, summary = await all_stats(c, req.execution_id)
        stats = done.result.stats
        assert stats is not None and summary == stats
        assert stats.samples == sum(s.samples for s in samples), (stats, len(samples))
        assert stats.peak_memory_bytes >= 20 * MiB, stats
        assert max(s.memory_bytes for s in samples[-2:]) < 20 * MiB  # freed before the end
    finally:
        await second.stop(1)


def scrape(port: int) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


async def test_every_phase_reaches_metrics_and_describe(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    from haddock.node.config import CapacitySettings

    settings = node_settings(tmp_path, node_id, metrics_listen="127.0.0.1:0", capacity=CapacitySettings(max_running=1))
    running: RunningServer = await start_server(settings)
    try:
        listener = running.node.metrics_listener
        assert listener is not None and listener.port
        async with NodeClient(running.address) as c:
            first = job("sleep 1")
            queued = job(
                "cat /in/x",
                input_sources=[{"type": "inline", "data_url": "data:,hello", "target": "/in/x"}],
                publishers=[{"type": "local"}],
            )
            await c.start(first)
            await c.start(queued, queue=True)
            async for event in c.watch(queued.execution_id):
                if event.kind.value == "inputs-prepared":
                    break  # admitted and running: describe answers from the executor's record
            live = await c.get_execution(queued.execution_id)  # admitted: the executor's record
            assert live.events[0].kind == "queued", [e.kind for e in live.events]
            done = await c.wait(queued.execution_id)
            assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
            await c.wait(first.execution_id)
            described = await c.get_execution(queued.execution_id)
            kinds = [e.kind for e in described.events]
            assert kinds[0] == "queued" and kinds.count("queued") == 1, kinds
        families = await asyncio.to_thread(scrape, listener.port)
        phases = {
            labels["phase"]
            for name, labels, value in families["haddock_execution_phase_duration_seconds"]
            if name == "haddock_execution_phase_duration_seconds_count" and value
        }
        assert phases == {"queue_wait", "input_fetch", "image_pull", "run", "results", "publish"}
    finally:
        await running.stop(1)


async def test_metrics_go_to_prometheus_and_the_telemetry_exporter(
    tmp_path: Path, node_id: str, busybox_image: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from haddock.node.config import Exporter, TelemetrySettings

    settings = node_settings(
        tmp_path,
        node_id,
        metrics_listen="127.0.0.1:0",
        telemetry=TelemetrySettings(exporter=Exporter.CONSOLE, metrics_interval_seconds=3600),
    )
    running: RunningServer = await start_server(settings)
    try:
        listener = running.node.metrics_listener
        assert listener is not None and listener.port
        async with NodeClient(running.address) as c:
            await c.run(job("echo hi"))
        families = await asyncio.to_thread(scrape, listener.port)
        assert [v for name, _, v in families["haddock_executions"] if name == "haddock_executions_total"] == [1.0]
    finally:
        await running.stop(1)  # the exporter's reader exports what it has when the node stops
    exported = capfd.readouterr().out
    assert '"name": "haddock.executions"' in exported, exported[-2000:]


async def test_metrics_for_prometheus(
    tmp_path: Path, node_id: str, busybox_image: str, telemetry: TelemetryCapture
) -> None:
    running: RunningServer = await start_server(node_settings(tmp_path, node_id, metrics_listen="127.0.0.1:0"))
    try:
        listener = running.node.metrics_listener
        assert listener is not None and listener.port
        async with NodeClient(running.address) as c:
            await asyncio.gather(c.run(job("echo hi")), c.run(job("exit 3")))
        await asyncio.sleep(2.5)  # the gauges are refreshed every 2 s
        families = await asyncio.to_thread(scrape, listener.port)
        phases = {labels["phase"] for _, labels, _ in families["haddock_execution_phase_duration_seconds"]}
        assert {"image_pull", "run", "results"} <= phases
        counts = {
            labels["status"]: value
            for name, labels, value in families["haddock_executions"]
            if name == "haddock_executions_total"
        }
        assert counts == {"success": 1.0, "error": 1.0}
        outputs = {labels["stream"] for _, labels, _ in families["haddock_execution_output_bytes"]}
        assert outputs == {"stdout", "stderr"}
        for gauge in (
            "haddock_capacity_cpu",
            "haddock_capacity_memory_bytes",
            "haddock_capacity_disk_bytes",
            "haddock_capacity_gpu",
            "haddock_allocated_cpu",
            "haddock_allocated_memory_bytes",
            "haddock_executions_running",
            "haddock_executions_queued",
        ):
            assert gauge in families, sorted(families)
        assert families["haddock_engine_up"][0][2] == 1.0
        assert families["haddock_process_memory_rss_bytes"][0][2] > 10 * MiB
    finally:
        await running.stop(1)


async def test_sampling_that_hangs_or_fails_holds_nothing_up(
    executor: object, make_request: RequestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haddock.executor.docker import DockerExecutor

    assert isinstance(executor, DockerExecutor)

    async def hangs(self: DockerHandle, interval: float) -> AsyncIterator[Stat]:
        await asyncio.Event().wait()
        yield  # type: ignore[misc]  # pragma: no cover

    async def fails(self: DockerHandle, interval: float) -> AsyncIterator[Stat]:
        raise ConnectionError("the engine does not answer stats")
        yield  # type: ignore[unreachable]  # pragma: no cover

    for broken in (hangs, fails):
        monkeypatch.setattr(DockerHandle, "stats", broken)
        began = time.monotonic()
        result = await executor.run(make_request("echo ok"))
        assert result.status is ResultStatus.SUCCESS and result.stdout == "ok\n"
        assert result.stats is None
        assert time.monotonic() - began < 30
