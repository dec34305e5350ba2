"""Benchmark 1: end-to-end latency of a no-op job (``true``), node vs raw docker-py.

Node side: a real server started in-process with ``node.server.start_server`` on 127.0.0.1:0
(data dir in a temp dir, ``on_shutdown=stop``) and the real ``node.client.NodeClient`` calling
``run``; the latency is the client's: from sending ``Run`` to having the result (the node inspects
the image, creates, attaches, starts, waits, inspects, writes the results dir, removes).

Raw side: the same process, docker-py's ``APIClient`` doing create (same config and labels),
attach, start, read the output to EOF, wait, remove (``bench/raw.py:run_noop``).

Sequential: warm-ups, then N jobs of each side, interleaved node, raw, node, raw, ...
Concurrent: rounds of C jobs at once (node: C ``run`` calls on one channel; raw: C threads),
interleaved by round; the latency is each job's, plus each round's wall time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common, profiling
from bench.common import IMAGE, NODE_ID, RUN_TOKEN, CpuMeter, Stats, log, ms, ratio, table
from bench.nodeproc import describe, node_processes, stop_leftovers
from bench.raw import HttpTrace, RawTiming, describe_config, run_noop
from haddock.executor.records import EventKind
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient
from haddock.node.config import OnShutdown, Settings
from haddock.node.server import RunningServer, start_server

COMMAND = ["true"]
GOAL_SEQ = 1.03
GOAL_CONC = 1.05


@dataclass
class E2EConfig:
    seq_n: int = 30
    warmup: int = 3
    concurrency: int = 20
    rounds: int = 3
    profile: str = "auto"  # auto (when a goal is missed), always, never


@dataclass
class Side:
    latencies: list[float] = field(default_factory=list)
    cpu_self: float = 0.0
    cpu_other: float = 0.0  # the node's other processes (e.g. its capture process)
    cpu_engine: float = 0.0
    busy_wall: float = 0.0  # machine-busy share x wall, summed
    wall: float = 0.0
    jobs: int = 0
    rounds_wall: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    calls: list[tuple[str, float]] = field(default_factory=list)


class Bench:
    def __init__(self, cfg: E2EConfig, running: RunningServer, client: NodeClient, tmp: Path) -> None:
        self.cfg = cfg
        self.running = running
        self.client = client
        self.tmp = tmp
        self.raw_client = common.docker_client(max_pool_size=cfg.concurrency + 8)
        self.pool = concurrent.futures.ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="bench-raw")
        self.node_trace = HttpTrace()
        self.raw_trace = HttpTrace()
        executor: Any = running.node.executor  # the DockerExecutor: trace its driver's docker-py client
        self.node_trace.install(executor.driver.engine.client)
        self.raw_trace.install(self.raw_client)
        self.seq = {"node": Side(), "raw": Side()}
        self.conc = {"node": Side(), "raw": Side()}
        self._n = 0
        self.others: list[int] = []

    def _id(self, side: str) -> str:
        self._n += 1
        return f"{RUN_TOKEN}-{side}-{self._n:04d}"

    # -- one job ------------------------------------------------------------

    async def node_job(self, side: Side | None) -> float:
        exec_id = self._id("n")
        request = RunCommandRequest.model_validate(
            {"job_id": "bench-job", "execution_id": exec_id, "engine": {"image": IMAGE, "parameters": COMMAND}}
        )
        t_wall = time.time()
        t0 = time.perf_counter()
        finished = await self.client.run(request)
        latency = time.perf_counter() - t0
        t_end = t_wall + latency
        if finished.result.status.value != "success":
            raise RuntimeError(f"node job {exec_id} ended {finished.result.status}: {finished.result.error_message}")
        if side is not None:
            side.latencies.append(latency)
            self._node_phases(side, exec_id, t_wall, t_end)
        return latency

    def _node_phases(self, side: Side, exec_id: str, t0: float, t1: float) -> None:
        record = self.running.node.executor.record(exec_id)
        at: dict[str, float] = {}
        for e in record.events:
            if e.kind not in at:
                at[e.kind] = e.time.timestamp()
        marks = [
            ("client → node accepted (gRPC, Node.start)", t0, at.get(EventKind.ACCEPTED)),
            (
                "image check (ImageManager.ensure: inspect_image)",
                at.get(EventKind.ACCEPTED),
                at.get(EventKind.IMAGE_READY),
            ),
            ("create + attach + start", at.get(EventKind.IMAGE_READY), at.get(EventKind.STARTED)),
            ("started → exit seen (EOF, wait, inspect)", at.get(EventKind.STARTED), at.get(EventKind.EXITED)),
            ("log close + results written (_finish)", at.get(EventKind.EXITED), at.get(EventKind.RESULTS_WRITTEN)),
            ("remove container", at.get(EventKind.RESULTS_WRITTEN), at.get(EventKind.CLEANED_UP)),
            ("node → client (gRPC response)", at.get(EventKind.CLEANED_UP), t1),
        ]
        for name, a, b in marks:
            if a is not None and b is not None:
                side.phases[name].append(b - a)

    async def raw_job(self, side: Side | None) -> float:
        exec_id = self._id("r")
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        timing: RawTiming = await loop.run_in_executor(self.pool, run_noop, self.raw_client, exec_id, COMMAND)
        latency = time.perf_counter() - t0
        if timing.exit_code != 0:
            raise RuntimeError(f"raw job {exec_id} exited {timing.exit_code}")
        if side is not None:
            side.latencies.append(latency)
            for k, v in timing.phases.items():
                side.phases[k].append(v)
        return latency

    # -- blocks -------------------------------------------------------------

    def other_pids(self) -> list[int]:
        """The node's processes besides this one (they name its data dir)."""
        return node_processes(self.tmp / "data", -1)

    def _other_cpu(self, pids: list[int]) -> float:
        return sum(common.proc_cpu_seconds(p) for p in pids)

    async def _measured(self, side: Side, name: str, coro_factory: object, jobs: int) -> None:
        trace = self.node_trace if name == "node" else self.raw_trace
        mark = trace.mark()
        others = self.others if name == "node" else []
        other0 = self._other_cpu(others)
        cpu = CpuMeter()
        await coro_factory()  # type: ignore[operator]
        use = cpu.stop()
        side.cpu_self += use.self_cpu
        side.cpu_other += self._other_cpu(others) - other0
        side.cpu_engine += use.engine_cpu
        side.busy_wall += use.machine_busy * use.wall
        side.wall += use.wall
        side.jobs += jobs
        side.calls += trace.since(mark)

    async def sequential(self) -> None:
        cfg = self.cfg
        log(f"e2e: {cfg.warmup} warm-ups per side")
        for _ in range(cfg.warmup):
            await self.node_job(None)
            await self.raw_job(None)
        self.others = self.other_pids()
        log(f"e2e: sequential, {cfg.seq_n} jobs per side, interleaved")
        for i in range(cfg.seq_n):
            await self._measured(self.seq["node"], "node", lambda: self.node_job(self.seq["node"]), 1)
            await self._measured(self.seq["raw"], "raw", lambda: self.raw_job(self.seq["raw"]), 1)
            if (i + 1) % 10 == 0:
                log(f"e2e: sequential {i + 1}/{cfg.seq_n}")

    async def _round(self, name: str, side: Side | None) -> None:
        job = self.node_job if name == "node" else self.raw_job
        t0 = time.perf_counter()
        await asyncio.gather(*(job(side) for _ in range(self.cfg.concurrency)))
        if side is not None:
            side.rounds_wall.append(time.perf_counter() - t0)

    async def concurrent(self) -> None:
        cfg = self.cfg
        if cfg.warmup:
            log(f"e2e: concurrent warm-up round ({cfg.concurrency} jobs per side)")
            await self._round("node", None)
            await self._round("raw", None)
        for r in range(cfg.rounds):
            log(f"e2e: concurrent round {r + 1}/{cfg.rounds} ({cfg.concurrency} jobs per side)")
            for name in ("node", "raw"):
                side = self.conc[name]
                await self._measured(side, name, lambda n=name, s=side: self._round(n, s), cfg.concurrency)

    async def profile(self) -> list[profiling.Profile]:
        """py-spy of the node's processes while the node alone runs jobs (sequential, then one concurrent
        round): this process (client + daemon) and the node's others, Python CPU (``--gil``)."""
        if profiling.pyspy_path() is None:
            log("e2e: py-spy is not installed; no profile (.venv/bin/pip install py-spy)")
            return []
        targets = [(os.getpid(), "e2e-node.txt", "node (this process: client + daemon)")]
        targets += [(pid, f"e2e-{describe(pid)}.txt", describe(pid)) for pid in self.other_pids()]
        log(f"e2e: profiling the node with py-spy ({len(targets)} process(es))")
        spies = [profiling.PySpy(pid, name, title, rate=250, mode="gil") for pid, name, title in targets]
        await asyncio.sleep(0.5)
        spies = [s for s in spies if s.started()]
        try:
            for _ in range(10):
                await self.node_job(None)
            await self._round("node", None)
        finally:
            profs = profiling.stop_spies(spies)
        return profs

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.raw_client.close()


async def run(cfg: E2EConfig) -> tuple[str, list[list[str]]]:
    """Run the benchmark; its markdown section and its goal rows."""
    tmp = Path(tempfile.mkdtemp(prefix="haddock-bench-e2e-"))
    settings = Settings(
        node_id=NODE_ID,
        listen="127.0.0.1:0",
        data_dir=tmp / "data",
        on_shutdown=OnShutdown.STOP,
        shutdown_grace=5,
    )
    running = await start_server(settings)
    client = NodeClient(running.address)
    bench = Bench(cfg, running, client, tmp)
    try:
        await bench.sequential()
        await bench.concurrent()
        seq_ratio = Stats.of(bench.seq["node"].latencies).mean / Stats.of(bench.seq["raw"].latencies).mean
        conc_ratio = Stats.of(bench.conc["node"].latencies).mean / Stats.of(bench.conc["raw"].latencies).mean
        missed = seq_ratio > GOAL_SEQ or conc_ratio > GOAL_CONC
        profs = []
        if cfg.profile == "always" or (cfg.profile == "auto" and missed):
            profs = await bench.profile()
        return report(bench, cfg, profs)
    finally:
        bench.close()
        await client.close()
        others = bench.other_pids()
        await running.stop(5)
        await asyncio.to_thread(stop_leftovers, others, tmp / "data")
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- report


def _latency_rows(sides: dict[str, Side]) -> list[list[str]]:
    rows = []
    for name in ("node", "raw"):
        s = Stats.of(sides[name].latencies)
        rows.append([name, str(s.n), ms(s.mean), ms(s.p50), ms(s.p95), ms(s.min), ms(s.max)])
    n, r = Stats.of(sides["node"].latencies), Stats.of(sides["raw"].latencies)
    rows.append(["**node/raw**", "", ratio(n.mean, r.mean), ratio(n.p50, r.p50), ratio(n.p95, r.p95), "", ""])
    return rows


def _calls_table(sides: dict[str, Side]) -> str:
    per: dict[str, dict[str, list[float]]] = {"node": defaultdict(list), "raw": defaultdict(list)}
    for name in ("node", "raw"):
        for ep, dt in sides[name].calls:
            per[name][ep].append(dt)
    endpoints = sorted(set(per["node"]) | set(per["raw"]), key=lambda e: -sum(per["node"].get(e, [])))
    rows = []
    for ep in endpoints:
        cells = [f"`{ep}`"]
        for name in ("node", "raw"):
            xs = per[name].get(ep, [])
            jobs = sides[name].jobs or 1
            cells += [f"{len(xs) / jobs:.2f}", ms(sum(xs) / len(xs)) if xs else "-"]
        rows.append(cells)
    totals = ["**all calls**"]
    for name in ("node", "raw"):
        xs = [dt for _, dt in sides[name].calls]
        jobs = sides[name].jobs or 1
        totals += [f"{len(xs) / jobs:.2f}", f"{ms(sum(xs) / jobs)} per job"]
    rows.append(totals)
    return table(rows, ("engine call", "node calls/job", "node mean ms", "raw calls/job", "raw mean ms"))


def _phase_table(side: Side) -> str:
    rows = [
        [name, ms(Stats.of(xs).mean), ms(Stats.of(xs).p50), ms(Stats.of(xs).p95)] for name, xs in side.phases.items()
    ]
    return table(rows, ("phase", "mean ms", "p50 ms", "p95 ms"))


def _ci_note(d: float, ci: float, base: float, goal: float) -> str:
    lo, hi = (d - ci) / base, (d + ci) / base
    limit = goal - 1
    if lo <= limit <= hi:
        return f" -- the goal's +{100 * limit:.0f}% lies inside this interval: met or missed is within the noise"
    return f" -- the whole interval is {'under' if hi < limit else 'over'} the goal's +{100 * limit:.0f}%"


def _node_only(seq: dict[str, Side], raw_mean: float, diff: float) -> str:
    """The sequential node job's steps that the raw side does not have, summed."""
    node = seq["node"]

    def mean(name: str) -> float:
        for k, xs in node.phases.items():
            if k.startswith(name) and xs:
                return Stats.of(xs).mean
        return 0.0

    calls: dict[str, list[float]] = defaultdict(list)
    for ep, dt in node.calls:
        calls[ep].append(dt)
    inspect = calls.get("GET /containers/{id}/json", [])
    parts = {
        "gRPC in + out": mean("client → node") + mean("node → client"),
        "image check": mean("image check"),
        "inspect after exit": sum(inspect) / max(1, node.jobs),
        "results + log close (`_finish`)": mean("log close"),
    }
    total = sum(parts.values())
    listed = ", ".join(f"{k} {ms(v)}" for k, v in parts.items())
    return (
        f"**Node-only steps** (no raw equivalent), mean ms per sequential job: {listed}; together {ms(total)} ms "
        f"= {100 * total / raw_mean:.1f}% of the raw job ({ms(raw_mean)} ms), against a measured mean "
        f"difference of {ms(diff)} ms."
    )


def _cpu_rows(sides: dict[str, Side]) -> list[list[str]]:
    rows = []
    for name in ("node", "raw"):
        s = sides[name]
        jobs = s.jobs or 1
        busy = f"{100 * s.busy_wall / s.wall:.0f}%" if s.wall else "-"
        other = ms(s.cpu_other / jobs) if name == "node" else "-"
        rows.append([name, ms(s.cpu_self / jobs), other, ms(s.cpu_engine / jobs), busy])
    return rows


def goal_rows(bench: Bench, cfg: E2EConfig) -> list[list[str]]:
    seq, conc = bench.seq, bench.conc
    sn, sr = Stats.of(seq["node"].latencies), Stats.of(seq["raw"].latencies)
    cn, cr = Stats.of(conc["node"].latencies), Stats.of(conc["raw"].latencies)
    d, ci = common.paired_diff(seq["node"].latencies, seq["raw"].latencies)
    return [
        [
            "no-op Run, sequential: node / raw docker-py (mean latency)",
            f"≤ {GOAL_SEQ:.2f}x",
            f"{sn.mean / sr.mean:.3f}x ({ms(sn.mean)} vs {ms(sr.mean)} ms; node - raw {ms(d)} ± {ms(ci)} ms)",
            judge(sn.mean / sr.mean <= GOAL_SEQ),
        ],
        [
            f"no-op Run, {cfg.concurrency}-way concurrent: node / raw docker-py (mean latency)",
            f"≤ {GOAL_CONC:.2f}x",
            f"{cn.mean / cr.mean:.3f}x ({ms(cn.mean)} vs {ms(cr.mean)} ms)",
            judge(cn.mean / cr.mean <= GOAL_CONC),
        ],
    ]


def judge(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def report(bench: Bench, cfg: E2EConfig, profs: list[profiling.Profile]) -> tuple[str, list[list[str]]]:
    seq, conc = bench.seq, bench.conc
    sn, sr = Stats.of(seq["node"].latencies), Stats.of(seq["raw"].latencies)
    cn, cr = Stats.of(conc["node"].latencies), Stats.of(conc["raw"].latencies)
    wn, wr = Stats.of(conc["node"].rounds_wall), Stats.of(conc["raw"].rounds_wall)
    d, ci = common.paired_diff(seq["node"].latencies, seq["raw"].latencies)
    rows = goal_rows(bench, cfg)
    out = [
        "### 1. End-to-end: a no-op job (`true` in `haddock-test/busybox`)",
        "",
        f"Run {common.machine_info()['date']}; execution ids `{RUN_TOKEN}-*`.",
        "",
        common.goals_block("e2e", rows),
        "",
        "- **node**: `start_server` in this process (127.0.0.1:0, temp data dir, `on_shutdown=stop`, "
        "otherwise default settings, pull policy `if-not-present`), the real `NodeClient.run` over gRPC. "
        "Latency = the client's, from sending `Run` to holding the result (the node checks the image, "
        "creates, attaches, starts, waits, inspects, writes `stdout`/`stderr`/`exitCode` to the results dir "
        "with fsyncs, removes the container).",
        "- **raw**: docker-py `APIClient` in this process: create with the same name pattern, labels, env and "
        f"host config as the node's defaults ({describe_config()}), attach before start, start, read the attach "
        "stream to EOF, wait, remove (`bench/raw.py:run_noop`).",
        f"- Sequential: {cfg.warmup} warm-ups per side, then {cfg.seq_n} jobs per side interleaved "
        f"node, raw, node, raw, … Concurrent: {1 if cfg.warmup else 0} warm-up round per side, then {cfg.rounds} "
        f"rounds of {cfg.concurrency} jobs at once per side, interleaved by round (node round, raw round, …).",
        "- The ratio is node/raw; the goal is judged on the mean.",
        "",
        f"**Sequential** (goal ≤ {GOAL_SEQ:.2f}x): {common.verdict(sn.mean / sr.mean, GOAL_SEQ)}; p50 ratio "
        f"{ratio(sn.p50, sr.p50)}; paired difference node - raw {ms(d)} ms ± {ms(ci)} ms (~95% CI), i.e. "
        f"{100 * (d - ci) / sr.mean:+.1f}% to {100 * (d + ci) / sr.mean:+.1f}% of raw"
        + _ci_note(d, ci, sr.mean, GOAL_SEQ),
        "",
        table(_latency_rows(seq), ("side", "n", "mean ms", "p50 ms", "p95 ms", "min ms", "max ms")),
        "",
        f"**{cfg.concurrency}-way concurrent** (goal ≤ {GOAL_CONC:.2f}x): "
        f"{common.verdict(cn.mean / cr.mean, GOAL_CONC)}; "
        f"p50 ratio {ratio(cn.p50, cr.p50)}; round wall time node {ms(wn.mean)} ms vs raw {ms(wr.mean)} ms "
        f"({ratio(wn.mean, wr.mean)})",
        "",
        table(_latency_rows(conc), ("side", "n", "mean ms", "p50 ms", "p95 ms", "min ms", "max ms")),
        "",
        "**CPU per job** (this process = client + node for `node`, docker-py for `raw`; the node's other "
        "processes, e.g. its capture process; engine = dockerd + containerd; read from /proc):",
        "",
        table(
            [[f"{r[0]} sequential", *r[1:]] for r in _cpu_rows(seq)]
            + [[f"{r[0]} concurrent", *r[1:]] for r in _cpu_rows(conc)],
            (
                "side",
                "this process ms/job",
                "node's other processes ms/job",
                "engine ms/job",
                "machine busy (all cores, anyone)",
            ),
        ),
        "",
        "**Engine calls per job, sequential** (every HTTP request of the node's and the raw docker-py client; "
        "ms = until the response headers, so `wait` includes the container's run and `attach` only the upgrade):",
        "",
        _calls_table(seq),
        "",
        "**Engine calls per job, concurrent:**",
        "",
        _calls_table(conc),
        "",
        _node_only(seq, sr.mean, d),
        "",
        "**Where a sequential node job's time goes** (from the execution's event timestamps):",
        "",
        _phase_table(seq["node"]),
        "",
        "Raw, the same way:",
        "",
        _phase_table(seq["raw"]),
    ]
    for prof in profs:
        out += ["", *profiling.profile_markdown(prof)]
    return "\n".join(out), rows
