"""Benchmark 2: output at the speed of the engine (issue 9, "Done means").

**Case 1, short lines**: ``yes 0123456789abcdef | head -c <size>`` (512 MiB by default) in
``haddock-test/busybox``, run through the node (``haddock serve`` in its own process, default
settings; timed by ``NodeClient.run`` from the call to the result, the results file checked to hold
every byte) and, interleaved with it, the **floor**: the same container (the node's name pattern,
labels, env and host config) run by the docker CLI, attached, with ``--log-driver none``, its output
to /dev/null (``bench/raw.py:cli_run``). Goal: node ≤ 1.5x the floor (median of the per-pair ratios).

**Memory**: the VmHWM of the daemon and of each other process of the node (found by
``bench/nodeproc.py``), read after the runs, reported separately and summed. Goal: the sum ≤ 64 MiB.

**Case 2, a few large lines**: the same byte count as ``long_lines`` lines (8 by default, 64 MiB
each for 512 MiB), ``head -c <n-1> /dev/zero | tr '\\0' x; echo`` each. Goal: through the node no
slower than case 1 (median of the per-rep ratios node case 2 / node case 1 ≤ 1.0); its floor is
measured too, for reference.

When a goal is missed (or with ``--profile always``) the benchmark adds where the time or memory
goes: one more node run of each missed case under py-spy (every process of the node, ``--gil`` and
``--idle``), CPU per thread, the floor with the node's engine log driver, and what importing each of
the node's programs costs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import common, profiling
from bench.common import IMAGE, RUN_TOKEN, CpuMeter, log
from bench.nodeproc import Mem, NodeProcess, ProcWatch
from bench.raw import cli_run, node_defaults
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient

MiB = 1024 * 1024
GOAL_FLOOR = 1.5  # node / floor, case 1
GOAL_RSS_MIB = 64  # sum of the node's processes' VmHWM
GOAL_LONG = 1.0  # node case 2 / node case 1
LINE = "0123456789abcdef"


@dataclass
class OutputConfig:
    reps: int = 5
    warmup: int = 1
    size: int = 512 * MiB
    long_lines: int = 8
    profile: str = "auto"  # diagnosis and py-spy: when a goal is missed (auto), always, never
    node_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    key: str  # "short" or "long"
    title: str
    script: str  # the job's `sh -c` script

    @property
    def command(self) -> list[str]:
        return ["sh", "-c", self.script]


def short_lines(size: int) -> Case:
    return Case("short", f"{size / MiB:.0f} MiB of short lines", f"yes {LINE} | head -c {size}")


def long_lines(size: int, lines: int) -> Case:
    """``lines`` lines of x's, each ending in a newline, ``size`` bytes in all."""
    lines = max(1, min(lines, size))
    lengths = [size // lines] * lines
    lengths[-1] += size - sum(lengths)
    script = f"for n in {' '.join(map(str, lengths))}; do head -c $((n - 1)) /dev/zero | tr '\\0' x; echo; done"
    return Case("long", f"{size / MiB:.0f} MiB as {lines} lines of {lengths[0] / MiB:.4g} MiB", script)


@dataclass
class NodeRun:
    wall: float
    cpu: dict[str, float]  # CPU seconds: "daemon", each other process by name, "engine"
    machine_busy: float
    rss: dict[str, int]  # max VmRSS KiB over the run, by process name, and "sum" (of same-instant samples)
    spans: list[tuple[str, float]]  # (from -> to, seconds) from the execution's events


@dataclass
class FloorRun:
    wall: float
    engine_cpu: float
    machine_busy: float


@dataclass
class Diagnosis:
    """What the benchmark adds when a goal is missed."""

    profiled: dict[str, NodeRun] = field(default_factory=dict)  # case key -> the run under py-spy
    profiles: list[profiling.Profile] = field(default_factory=list)
    thread_cpu: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # process -> kind -> cpu
    log_driver_floor: dict[str, float] = field(default_factory=dict)  # case key -> CLI with the node's driver
    # program -> (module, RSS KiB after importing it, top-level packages it loaded first)
    imports: dict[str, list[tuple[str, int, list[str]]]] = field(default_factory=dict)
    note: str = ""


@dataclass
class Results:
    cfg: OutputConfig
    cases: list[Case]
    node: dict[str, list[NodeRun]]
    floor: dict[str, list[FloorRun]]
    idle: dict[int, Mem]  # after start-up and a warm-up `true` job
    end: dict[int, Mem]  # after the measured runs
    diagnosis: Diagnosis

    def ratio_floor(self, key: str) -> float:
        return _median_ratio([n.wall for n in self.node[key]], [f.wall for f in self.floor[key]])

    def ratio_long(self) -> float:
        return _median_ratio([n.wall for n in self.node["long"]], [n.wall for n in self.node["short"]])

    @property
    def hwm_sum_kib(self) -> int:
        """The goal's figure: VmHWM summed over the node's processes alive after the runs."""
        return sum(m.hwm for m in self.end.values() if m.alive)

    @property
    def missed(self) -> dict[str, bool]:
        return {
            "short": self.ratio_floor("short") > GOAL_FLOOR,
            "long": self.ratio_long() > GOAL_LONG,
            "memory": self.hwm_sum_kib / 1024 > GOAL_RSS_MIB,
        }


def _median_ratio(a: list[float], b: list[float]) -> float:
    """Median of a[i]/b[i] over the interleaved pairs: a run disturbed from outside moves it least."""
    return statistics.median(x / y for x, y in zip(a, b, strict=False)) if a and b else float("nan")


class Bench:
    def __init__(self, cfg: OutputConfig, tmp: Path) -> None:
        self.cfg = cfg
        self.data_dir = tmp / "data"
        self.node = NodeProcess(self.data_dir, tmp / "node.log", cfg.node_env)
        self.client = NodeClient(self.node.address)
        self.watch = ProcWatch(self.node)
        self._n = 0
        self.alive: set[int] = set()

    def _id(self, what: str) -> str:
        self._n += 1
        return f"{RUN_TOKEN}-{what}{self._n:03d}"

    async def node_run(self, case: Case) -> NodeRun:
        exec_id = self._id(f"n{case.key[0]}")
        request = RunCommandRequest.model_validate(
            {"job_id": "bench-job", "execution_id": exec_id, "engine": {"image": IMAGE, "parameters": case.command}}
        )
        os.sync()  # no dirty pages of the previous run left to write back during this one
        cpu0 = self.watch.cpu()
        meter = CpuMeter()
        t0_wall, t0 = time.time(), time.perf_counter()
        finished = await self.client.run(request)
        t1 = time.perf_counter()
        use = meter.stop()
        cpu1 = self.watch.cpu()
        r = finished.result
        if r.status.value != "success" or r.exit_code != 0:
            raise RuntimeError(f"node job {exec_id} ended {r.status.value} (exit {r.exit_code}): {r.error_message}")
        results = Path(finished.results_dir)
        got = (results / "stdout").stat().st_size
        if got != self.cfg.size or r.stdout_file_truncated:
            raise RuntimeError(f"node job {exec_id}: results/stdout has {got} bytes, expected {self.cfg.size}")
        spans = await self._spans(exec_id, t0_wall, t1 - t0)
        # Free the disk: the node is done with this execution's files.
        shutil.rmtree(results.parent if results.parent.name == exec_id else results, ignore_errors=True)
        for f in (self.data_dir / "logs").glob(f"{exec_id}*"):
            f.unlink(missing_ok=True)
        names = self.names()
        cpu = {}
        for pid, name in names.items():
            used = cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0)
            if pid in self.alive or used >= 0.005:  # not a transient helper (a launcher) that did nothing
                cpu[name] = used
        cpu["engine"] = use.engine_cpu
        return NodeRun(t1 - t0, cpu, use.machine_busy, self._rss(t0, t1, names), spans)

    def names(self) -> dict[int, str]:
        """The node's processes seen so far, by pid: their names, made unique (``name-pid`` for a repeat)."""
        out: dict[int, str] = {}
        self.alive = set()
        for pid, m in self.watch.snapshot().items():
            out[pid] = m.name if m.name not in out.values() else f"{m.name}-{pid}"
            if m.alive:
                self.alive.add(pid)
        return out

    def _rss(self, t0: float, t1: float, names: dict[int, str]) -> dict[str, int]:
        window = self.watch.between(t0, t1)
        out = {names[pid]: max((k for _, k in s), default=0) for pid, s in window.items() if pid in names}
        at: dict[float, int] = {}
        for samples in window.values():
            for t, kib in samples:
                at[t] = at.get(t, 0) + kib
        out["sum"] = max(at.values(), default=0)
        return out

    async def _spans(self, exec_id: str, t0_wall: float, wall: float) -> list[tuple[str, float]]:
        msg = await self.client.get_execution(exec_id)
        marks: list[tuple[str, float]] = [("call", 0.0)]
        for e in msg.events:
            if e.kind not in {k for k, _ in marks}:
                marks.append((e.kind, e.time.ToDatetime(tzinfo=dt.UTC).timestamp() - t0_wall))
        marks.append(("result", wall))
        return [(f"{a} → {b}", tb - ta) for (a, ta), (b, tb) in itertools.pairwise(marks)]

    def floor_run(self, case: Case, log_driver: str = "none", log_opts: dict[str, str] | None = None) -> FloorRun:
        os.sync()
        meter = CpuMeter()
        wall = cli_run(self._id(f"f{case.key[0]}"), case.command, log_driver=log_driver, log_opts=log_opts)
        use = meter.stop()
        return FloorRun(wall, use.engine_cpu, use.machine_busy)

    async def measure(self, cases: list[Case]) -> tuple[dict[str, list[NodeRun]], dict[str, list[FloorRun]]]:
        cfg = self.cfg
        for i in range(cfg.warmup):
            # The first big job of a process (and of fresh page cache memory) is slower: unmeasured.
            log(f"output: warm-up {i + 1}/{cfg.warmup}: a node run and a floor run of case 1, not measured")
            await self.node_run(cases[0])
            await asyncio.to_thread(self.floor_run, cases[0])
        node: dict[str, list[NodeRun]] = {c.key: [] for c in cases}
        floor: dict[str, list[FloorRun]] = {c.key: [] for c in cases}
        for i in range(cfg.reps):
            for case in cases:
                node[case.key].append(await self.node_run(case))
                floor[case.key].append(await asyncio.to_thread(self.floor_run, case))
                n, f = node[case.key][-1], floor[case.key][-1]
                log(
                    f"output: rep {i + 1}/{cfg.reps}, {case.key} lines: node {n.wall:.2f} s "
                    f"(RSS max {n.rss['sum'] / 1024:.1f} MiB), floor {f.wall:.2f} s"
                )
        return node, floor

    async def diagnose(self, cases: list[Case], missed: dict[str, bool]) -> Diagnosis:
        cfg, d = self.cfg, Diagnosis()
        if cfg.profile == "never":
            return d
        slow = [c for c in cases if missed[c.key] or cfg.profile == "always"]
        if missed["memory"] or cfg.profile == "always":
            log("output: import footprint of the node's programs")
            d.imports = await asyncio.to_thread(import_footprint, self.watch.snapshot())
        driver = node_defaults()
        if slow and driver["log_driver"] != "none":
            for case in slow:
                log(f"output: the floor with the node's log driver ({driver['log_driver']}), {case.key} lines")
                opts = driver["log_opts"]
                run = await asyncio.to_thread(self.floor_run, case, log_driver=driver["log_driver"], log_opts=opts)
                d.log_driver_floor[case.key] = run.wall
        if not slow:
            return d
        if profiling.pyspy_path() is None:
            d.note = "py-spy is not installed (`.venv/bin/pip install py-spy`): no profile was taken."
            log(f"output: {d.note}")
            return d
        for case in slow:
            mem = {pid: m for pid, m in self.watch.snapshot().items() if m.alive}
            targets = [(pid, f"output-{case.key}-{m.name}", f"{m.name} ({case.key} lines)") for pid, m in mem.items()]
            log(f"output: one more node run of {case.key} lines under py-spy ({len(targets)} process(es))")
            spies = profiling.start_spies(targets)
            before = {pid: common.task_cpu(pid) for pid in mem}
            try:
                d.profiled[case.key] = await self.node_run(case)
            finally:
                after = {pid: common.task_cpu(pid) for pid in mem}
                profs = profiling.stop_spies(spies)
            d.profiles += profs
            for pid, m in mem.items():
                own = [p for p in profs if p.path.name.startswith(f"output-{case.key}-{m.name}-")]
                kinds = profiling.cpu_by_thread_kind(before[pid], after[pid], own)
                d.thread_cpu[f"{m.name} ({case.key} lines)"] = kinds
        return d

    async def close(self) -> None:
        self.watch.stop()
        await self.client.close()
        await asyncio.to_thread(self.node.stop)


async def _main(cfg: OutputConfig, tmp: Path) -> Results:
    bench = Bench(cfg, tmp)
    log(f"output: haddock serve pid {bench.node.pid} on {bench.node.address}")
    try:
        await bench.node.ready()
        bench.watch.start()
        engine = {"image": IMAGE, "parameters": ["true"]}
        warm = {"job_id": "bench-job", "execution_id": f"{RUN_TOKEN}-warm", "engine": engine}
        await bench.client.run(RunCommandRequest.model_validate(warm))
        idle = bench.watch.snapshot()
        log("output: node idle: " + ", ".join(f"{m.name} RSS {m.rss / 1024:.1f} MiB" for m in idle.values()))
        cases = [short_lines(cfg.size), long_lines(cfg.size, cfg.long_lines)]
        node, floor = await bench.measure(cases)
        end = bench.watch.snapshot()
        res = Results(cfg, cases, node, floor, idle, end, Diagnosis())
        res.diagnosis = await bench.diagnose(cases, res.missed)
        return res
    finally:
        await bench.close()


def run(cfg: OutputConfig) -> tuple[str, list[list[str]]]:
    """Run the benchmark; its markdown section and its goal rows."""
    from bench.output_report import report

    tmp = Path(tempfile.mkdtemp(prefix="haddock-bench-output-"))
    try:
        return report(asyncio.run(_main(cfg, tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- import footprint

_IMPORT_PROBE = """
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
std = set(sys.stdlib_module_names)
def tops():
    return {m.split(".")[0] for m in sys.modules}
out = [("python itself", rss(), [])]
for mod in sys.argv[1:]:
    before = tops()
    try:
        __import__(mod)
    except ImportError:
        continue
    new = sorted(t for t in tops() - before if t not in std and not t.startswith("_"))
    out.append((mod, rss(), new))
print(json.dumps(out))
"""

# What each of the node's programs imports, in the order that shows who brings in what.
IMPORTS = {
    "daemon": (
        "pydantic",
        "grpc",
        "docker",
        "opentelemetry.sdk.trace",
        "opentelemetry.instrumentation.grpc",
        "typer",
        "haddock.executor.records",
        "haddock.executor.runner",
        "haddock.executor.docker.driver",
        "haddock.node.store",
        "haddock.node.service",
        "haddock.node.server",
        "haddock.node.cli",
    ),
    "capture_proc": (
        "pydantic",
        "haddock.executor.records",
        "haddock.executor.logstore",
        "haddock.executor.results",
        "haddock.executor.docker.capture_proc",
    ),
}


def import_footprint(procs: dict[int, Mem]) -> dict[str, list[tuple[str, int, list[str]]]]:
    """RSS (KiB) of a fresh interpreter after importing, cumulatively, what each running program of the
    node imports (those of :data:`IMPORTS` whose name matches a process of the node)."""
    import json

    out = {}
    for program, modules in IMPORTS.items():
        if program not in {m.name for m in procs.values()}:
            continue
        res = subprocess.run(
            [str(common.VENV_BIN / "python"), "-c", _IMPORT_PROBE, *modules],
            capture_output=True,
            text=True,
            cwd=common.ROOT,
            check=False,
            timeout=60,
        )
        if res.returncode == 0:
            out[program] = [(m, int(k), list(new)) for m, k, new in json.loads(res.stdout)]
    return out
