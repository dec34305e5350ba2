"""Benchmark 2: a job printing 1 GiB to stdout: the node's peak RSS and wall time vs ``docker logs``.

Node side: ``haddock serve`` as its own process (``.venv/bin/haddock``; env ``HADDOCK_DATA_DIR``
in a temp dir, ``HADDOCK_NODE_ID=bench``, ``HADDOCK_ON_SHUTDOWN=stop``,
``HADDOCK_LISTEN=127.0.0.1:<free port>``), its RSS sampled from ``/proc/<pid>/status`` (VmRSS
every 20 ms; VmHWM, the kernel's high-water mark, at the end). A ``NodeClient.run`` of
``head -c <size> /dev/zero`` is timed from the call to the result.

Raw side: docker-py creates an equivalent container whose log driver keeps the whole output
(``local``, max-size above the output, one file, no compression), starts it, waits for it to
exit, reads all of its logs with the low-level ``logs(stream=True)`` to nowhere, and removes it.
For reference, ``docker logs <id> > /dev/null`` (the CLI) is timed on the same container too.

Node and raw runs are interleaved (node, raw, node, raw, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.types

from bench import common
from bench.common import (
    IMAGE,
    NODE_ID,
    RUN_TOKEN,
    CpuMeter,
    RssSampler,
    log,
    proc_cpu_seconds,
    proc_status_kib,
    table,
)
from bench.raw import (
    AttachSample,
    attach,
    attach_sample,
    container_spec,
    describe_config,
    multiplexed,
    read_frames,
)
from haddock.executor.models import RunCommandRequest
from haddock.node.client import NodeClient, NodeError

RUNNING_PHASE = "running: output streamed into the log store, until exit seen"
GOAL_RSS_MIB = 100
GOAL_TIME = 1.2
MiB = 1024 * 1024


@dataclass
class OutputConfig:
    reps: int = 4
    warmup: int = 1
    size: int = 1 << 30
    profile: str = "auto"
    node_env: dict[str, str] = field(default_factory=dict)


@dataclass
class NodeRun:
    wall: float
    node_cpu: float
    engine_cpu: float
    machine_busy: float
    max_rss_kib: int
    hwm_kib: int
    stdout_file_bytes: int
    log_file_bytes: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    probes: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the call, latency)
    phase_marks: dict[str, float] = field(default_factory=dict)  # event kind -> seconds since the call
    t0: float = 0.0  # perf_counter at the call

    def phase_at(self, since_call: float) -> str:
        """The phase (by the node's events) a moment of this run falls in."""
        order = [
            ("accepted", "before acceptance"),
            ("started", "preparing (image check, create, attach, start)"),
            ("exited", "running: output streamed into the log store"),
            ("results-written", "_finish: log fsync + results writer"),
            ("cleaned-up", "removing the container"),
        ]
        for kind, name in order:
            at = self.phase_marks.get(kind)
            if at is not None and since_call < at:
                return name
        return "after clean-up (response)"

    @property
    def worst_probe(self) -> tuple[float, float]:
        return max(self.probes, key=lambda p: p[1], default=(0.0, 0.0))


@dataclass
class RawRun:
    wall: float
    phases: dict[str, float]
    engine_cpu: float
    self_cpu: float
    bytes_read: int
    cli_read: float | None
    machine_busy: float = 0.0


class NodeProcess:
    """``haddock serve`` in its own session; stopped with SIGTERM (then SIGKILL) by its pid only."""

    def __init__(self, data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = common.free_port()
        self.address = f"127.0.0.1:{self.port}"
        # The caller's HADDOCK_* settings are not inherited: the node runs with defaults plus ours.
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HADDOCK_")},
            **(extra_env or {}),
            "HADDOCK_DATA_DIR": str(data_dir),
            "HADDOCK_NODE_ID": NODE_ID,
            "HADDOCK_ON_SHUTDOWN": "stop",
            "HADDOCK_LISTEN": self.address,
            "HADDOCK_SHUTDOWN_GRACE": "5",
        }
        self.log_path = log_path
        exe = common.VENV_BIN / "haddock"
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(exe), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = self.proc.pid

    async def ready(self, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        async with NodeClient(self.address, timeout=2) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haddock serve exited ({self.proc.returncode}): {self.tail()}")
                try:
                    if await client.is_installed():
                        return
                except NodeError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"haddock serve did not answer within {limit} s: {self.tail()}")
                await asyncio.sleep(0.2)

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            log(f"output: haddock serve (pid {self.pid}) ignored SIGTERM for 30 s; killing it")
            self.proc.kill()
            self.proc.wait(10)


def _request(exec_id: str, size: int) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "bench-job",
            "execution_id": exec_id,
            "engine": {"image": IMAGE, "parameters": ["head", "-c", str(size), "/dev/zero"]},
        }
    )


async def _probe(address: str, t0: float, out: list[tuple[float, float]], interval: float = 0.05) -> None:
    """Every ``interval``, a cheap call (ListExecutions, limit 1): how long the node keeps it waiting
    (its event loop busy or blocked). Runs until cancelled."""
    async with NodeClient(address) as probe:
        while True:
            a = time.perf_counter()
            await probe.list_executions(limit=1)
            b = time.perf_counter()
            out.append((a - t0, b - a))
            await asyncio.sleep(max(0.0, interval - (b - a)))


async def _node_phases(
    client: NodeClient, exec_id: str, t0_wall: float, wall: float
) -> tuple[dict[str, float], dict[str, float]]:
    msg = await client.get_execution(exec_id)
    at: dict[str, float] = {}
    for e in msg.events:
        at.setdefault(e.kind, e.time.ToDatetime(tzinfo=dt.UTC).timestamp() - t0_wall)
    spans = [
        ("call -> accepted", 0.0, at.get("accepted")),
        ("image check", at.get("accepted"), at.get("image-ready")),
        ("create + attach + start", at.get("image-ready"), at.get("started")),
        (RUNNING_PHASE, at.get("started"), at.get("exited")),
        ("_finish: log fsync + results writer (re-read, write, fsync)", at.get("exited"), at.get("results-written")),
        ("remove container", at.get("results-written"), at.get("cleaned-up")),
        ("-> client", at.get("cleaned-up"), wall),
    ]
    phases = {name: b - a for name, a, b in spans if a is not None and b is not None}
    return phases, at


async def node_run(node: NodeProcess, client: NodeClient, data_dir: Path, exec_id: str, size: int) -> NodeRun:
    sampler = RssSampler(node.pid)
    sampler.start()
    cpu0 = proc_cpu_seconds(node.pid)
    meter = CpuMeter()
    probes: list[tuple[float, float]] = []
    t0_wall = time.time()
    t0 = time.perf_counter()
    prober = asyncio.create_task(_probe(node.address, t0, probes))
    try:
        finished = await client.run(_request(exec_id, size))
    finally:
        wall = time.perf_counter() - t0
        sampler.stop()
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError, NodeError):
            await prober
    use = meter.stop()
    node_cpu = proc_cpu_seconds(node.pid) - cpu0
    r = finished.result
    if r.status.value != "success":
        raise RuntimeError(f"node job {exec_id} ended {r.status.value}: {r.error_message}")
    phases, marks = await _node_phases(client, exec_id, t0_wall, wall)
    results = Path(finished.results_dir)
    stdout_bytes = (results / "stdout").stat().st_size
    log_file = data_dir / "logs" / f"{exec_id}.log"
    log_bytes = log_file.stat().st_size if log_file.exists() else 0
    if stdout_bytes != size or r.stdout_file_truncated:
        raise RuntimeError(f"node job {exec_id}: stdout file has {stdout_bytes} bytes, expected {size}")
    # Free the disk (2 GiB per run): the node is done with these files.
    shutil.rmtree(results.parent, ignore_errors=True)
    log_file.unlink(missing_ok=True)
    return NodeRun(
        wall=wall,
        node_cpu=node_cpu,
        engine_cpu=use.engine_cpu,
        machine_busy=use.machine_busy,
        max_rss_kib=sampler.max_rss_kib,
        hwm_kib=proc_status_kib(node.pid, "VmHWM"),
        stdout_file_bytes=stdout_bytes,
        log_file_bytes=log_bytes,
        samples=sampler.samples,
        phases=phases,
        probes=probes,
        phase_marks=marks,
        t0=t0,
    )


@dataclass
class Replay:
    """The node's own work for the output, replayed in this process without an engine or socket."""

    frames: int = 0  # frames in the engine sample
    recvs: int = 0  # reads in the engine sample
    sample_bytes: int = 0
    capture: float = 0.0  # Demuxer.feed + LogWriter.write of everything
    close: float = 0.0  # LogWriter.close (END frame + fsync)
    results: float = 0.0  # write_job_results from LogStore.read
    plain_copy: float = 0.0  # the same log file copied by hand (1 MiB preads and writes, fsync)
    log_bytes: int = 0
    capture_calls: list[tuple[str, int, float, float]] = field(default_factory=list)
    results_calls: list[tuple[str, int, float, float]] = field(default_factory=list)
    error: str = ""


def _pstats_rows(prof: Any) -> list[tuple[str, int, float, float]]:
    import pstats

    stats = pstats.Stats(prof)
    rows = []
    for (file, _line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rel = file.replace(str(common.ROOT) + "/", "")
        if "/python3" in rel:
            rel = rel.split("/python3", 1)[1].split("/", 1)[-1]
        rows.append((f"{rel}:{func}", ncalls, tottime, cumtime))
    return rows


def _plain_copy(src: Path, dst: Path) -> float:
    """The floor of the results writer's disk work: copy a file with 1 MiB preads and writes, fsync."""
    t0 = time.perf_counter()
    fd_in = os.open(src, os.O_RDONLY)
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        off = 0
        while True:
            chunk = os.pread(fd_in, MiB, off)
            if not chunk:
                break
            os.write(fd_out, chunk)
            off += len(chunk)
        os.fsync(fd_out)
    finally:
        os.close(fd_in)
        os.close(fd_out)
        dst.unlink(missing_ok=True)
    return time.perf_counter() - t0


def replay_node_work(directory: Path, size: int, sample: AttachSample) -> Replay:
    """The node's work on the output, without the engine: the capture (``Demuxer.feed`` of the engine's
    stream as it really arrives -- the sampled reads and frames, repeated up to ``size`` -- and
    ``LogWriter.write`` of each payload), ``LogWriter.close``, then ``write_job_results`` from
    ``LogStore.read`` as ``_finish`` does. Each is timed once plain, once under cProfile (call counts).

    Uses the executor's public pieces; if their interface changed, the replay is skipped with the error.
    """
    import cProfile

    from haddock.executor.docker.stream import Demuxer
    from haddock.executor.logstore import LogStore
    from haddock.executor.models import OutputLimits, StreamType
    from haddock.executor.results import write_job_results

    out = Replay(frames=len(sample.frame_sizes), recvs=len(sample.recv_sizes), sample_bytes=sum(sample.frame_sizes))
    root = directory / "replay"
    try:
        chunks = multiplexed(sample)
        repeat = max(1, size // max(1, out.sample_bytes))
        store = LogStore(root / "logs")

        def capture(exec_id: str) -> Any:
            writer = store.create(exec_id)
            demux = Demuxer()
            for _ in range(repeat):
                for chunk in chunks:
                    for kind, payload in demux.feed(chunk):
                        writer.write(kind, payload)
            return writer

        async def results(exec_id: str, dest: Path) -> None:
            async def stream(kind: StreamType) -> Any:
                async for entry in store.read(exec_id, streams=frozenset({kind})):
                    yield entry.data

            await write_job_results(dest, stream(StreamType.STDOUT), stream(StreamType.STDERR), 0, OutputLimits())

        os.sync()
        t0 = time.perf_counter()
        writer = capture("plain")
        t1 = time.perf_counter()
        writer.close()
        t2 = time.perf_counter()
        out.capture, out.close = t1 - t0, t2 - t1
        os.sync()
        t3 = time.perf_counter()
        asyncio.run(results("plain", root / "results-plain"))
        out.results = time.perf_counter() - t3
        shutil.rmtree(root / "results-plain", ignore_errors=True)
        log_path = store.path("plain")
        out.log_bytes = log_path.stat().st_size
        os.sync()
        out.plain_copy = _plain_copy(log_path, root / "plain-copy")
        store.delete("plain")

        os.sync()
        prof = cProfile.Profile()
        prof.enable()
        capture("profiled").close()
        prof.disable()
        out.capture_calls = _pstats_rows(prof)
        os.sync()
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(results("profiled", root / "results-profiled"))
        prof.disable()
        out.results_calls = _pstats_rows(prof)
    except Exception as exc:  # the executor's internals changed: say so, keep the benchmark going
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


_IMPORT_PROBE = """
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
out = [("python itself", rss())]
for mod in sys.argv[1:]:
    try:
        __import__(mod)
    except ImportError:
        continue
    out.append((mod, rss()))
print(json.dumps(out))
"""

IMPORTS = (
    "pydantic",
    "docker",
    "grpc",
    "opentelemetry.sdk.trace",
    "opentelemetry.instrumentation.grpc",
    "typer",
    "rich.progress",
    "boto3",
    "httpx",
    "haddock.storage",
    "haddock.executor.models",
    "haddock.executor.docker",
    "haddock.node.server",
    "haddock.node.cli",
)


def import_footprint() -> list[tuple[str, int]]:
    """RSS (KiB) of a fresh interpreter after importing, cumulatively, what ``haddock serve`` imports."""
    import json

    res = subprocess.run(
        [str(common.VENV_BIN / "python"), "-c", _IMPORT_PROBE, *IMPORTS],
        capture_output=True,
        text=True,
        cwd=common.ROOT,
        check=False,
        timeout=60,
    )
    if res.returncode != 0:
        return []
    return [(m, int(k)) for m, k in json.loads(res.stdout)]


def raw_run(exec_id: str, size: int, with_cli: bool) -> RawRun:
    client = common.docker_client()
    try:
        log_config = docker.types.LogConfig(
            type="local",
            config={"max-size": f"{size // MiB + 64}m", "max-file": "1", "compress": "false"},
        )
        meter = CpuMeter()
        t0 = time.perf_counter()
        spec = container_spec(client, exec_id, ["head", "-c", str(size), "/dev/zero"], log_config=log_config)
        cid = client.create_container(**spec)["Id"]
        t1 = time.perf_counter()
        client.start(cid)
        t2 = time.perf_counter()
        code = int(client.wait(cid)["StatusCode"])
        t3 = time.perf_counter()
        n = 0
        for chunk in client.logs(cid, stdout=True, stderr=True, stream=True, follow=False):
            n += len(chunk)
        t4 = time.perf_counter()
        client.remove_container(cid, force=True, v=True)
        t5 = time.perf_counter()
        use = meter.stop()
        if code != 0 or n != size:
            raise RuntimeError(f"raw job {exec_id}: exit code {code}, read {n} bytes of {size}")
        cli = None
        if with_cli:
            cli = _cli_read(client, exec_id, size, log_config)
        phases = {"create": t1 - t0, "start": t2 - t1, "run to exit (wait)": t3 - t2, "logs read": t4 - t3}
        phases["remove"] = t5 - t4
        return RawRun(t5 - t0, phases, use.engine_cpu, use.self_cpu, n, cli, use.machine_busy)
    finally:
        client.close()


def raw_attach_run(exec_id: str, size: int) -> dict[str, float]:
    """Reference: the node's way without the node: the node's default container config (engine log driver
    included), attach before start, read the stream to EOF in a plain thread (frames parsed, bytes
    counted, nothing stored), wait, remove. Separates the engine's cost of attaching from the node's
    cost of capturing."""
    client = common.docker_client()
    try:
        t0 = time.perf_counter()
        spec = container_spec(client, exec_id, ["head", "-c", str(size), "/dev/zero"])
        cid = client.create_container(**spec)["Id"]
        response, sock = attach(client, cid)
        t1 = time.perf_counter()
        try:
            client.start(cid)
            counts = read_frames(sock)
            t2 = time.perf_counter()
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with contextlib.suppress(Exception):
                response.close()
        code = int(client.wait(cid)["StatusCode"])
        t3 = time.perf_counter()
        client.remove_container(cid, force=True, v=True)
        t4 = time.perf_counter()
        if code != 0 or sum(counts.values()) != size:
            raise RuntimeError(f"raw attach job {exec_id}: exit code {code}, read {sum(counts.values())} of {size}")
        return {
            "create + attach": t1 - t0,
            "start + read the stream to EOF": t2 - t1,
            "wait": t3 - t2,
            "remove": t4 - t3,
            "total": t4 - t0,
        }
    finally:
        client.close()


def _cli_read(client: Any, exec_id: str, size: int, log_config: Any) -> float | None:
    """The same container again, read with ``docker logs > /dev/null``: the CLI's read time alone."""
    exe = shutil.which("docker")
    if exe is None:
        return None
    cli_id = exec_id + "-cli"
    spec = container_spec(client, cli_id, ["head", "-c", str(size), "/dev/zero"], log_config=log_config)
    cid = client.create_container(**spec)["Id"]
    try:
        client.start(cid)
        client.wait(cid)
        t0 = time.perf_counter()
        subprocess.run([exe, "logs", cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - t0
    finally:
        client.remove_container(cid, force=True, v=True)


def _cpu_by_thread_kind(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], profs: list[common.Profile]
) -> dict[str, tuple[float, float]]:
    """The node's (user, system) CPU seconds per kind of thread over the profiled run."""
    kinds: dict[int, str] = {}
    for prof in profs:
        kinds.update(prof.thread_kinds_by_tid())
    out: dict[str, tuple[float, float]] = {}
    for tid, (u1, s1) in after.items():
        u0, s0 = before.get(tid, (0.0, 0.0))
        kind = kinds.get(tid, "threads py-spy did not see (grpc core, ...)")
        u, s = out.get(kind, (0.0, 0.0))
        out[kind] = (u + u1 - u0, s + s1 - s0)
    return out


def pair_ratio(nodes: list[NodeRun], raws: list[RawRun]) -> float:
    """Median of node/raw over the interleaved pairs: one disturbed run (the machine is shared) moves it least."""
    import statistics

    return statistics.median(n.wall / r.wall for n, r in zip(nodes, raws, strict=False))


@dataclass(frozen=True)
class Idle:
    rss: int
    hwm: int
    threads: int


async def _main(cfg: OutputConfig, tmp: Path) -> str:
    data_dir = tmp / "data"
    node = NodeProcess(data_dir, tmp / "node.log", cfg.node_env)
    log(f"output: haddock serve pid {node.pid} on {node.address}")
    client = NodeClient(node.address)
    try:
        await node.ready()
        warm_id = f"{RUN_TOKEN}-n-warm"
        await client.run(
            RunCommandRequest.model_validate(
                {"job_id": "bench-job", "execution_id": warm_id, "engine": {"image": IMAGE, "parameters": ["true"]}}
            )
        )
        idle_rss = proc_status_kib(node.pid, "VmRSS")
        idle_hwm = proc_status_kib(node.pid, "VmHWM")
        idle_threads = common.proc_threads(node.pid)
        log(f"output: node idle RSS {idle_rss / 1024:.1f} MiB (peak so far {idle_hwm / 1024:.1f} MiB)")
        for i in range(cfg.warmup):
            # The first big job of a process (and of fresh page cache memory) is slower: one of each, unmeasured.
            os.sync()
            log(f"output: warm-up {i + 1}/{cfg.warmup}: one node run and one raw run, not measured")
            await node_run(node, client, data_dir, f"{RUN_TOKEN}-n-warm{i}", cfg.size)
            os.sync()
            await asyncio.to_thread(raw_run, f"{RUN_TOKEN}-r-warm{i}", cfg.size, False)
        nodes: list[NodeRun] = []
        raws: list[RawRun] = []
        attach_refs: list[dict[str, float]] = []
        for i in range(cfg.reps):
            os.sync()  # start each run with no dirty pages left by the previous one
            log(f"output: node run {i + 1}/{cfg.reps} ({cfg.size / MiB:.0f} MiB)")
            nodes.append(await node_run(node, client, data_dir, f"{RUN_TOKEN}-n-out{i}", cfg.size))
            log(f"output: node run {i + 1}: {nodes[-1].wall:.1f} s, peak RSS {nodes[-1].hwm_kib / 1024:.1f} MiB")
            os.sync()
            log(f"output: raw run {i + 1}/{cfg.reps}")
            raws.append(await asyncio.to_thread(raw_run, f"{RUN_TOKEN}-r-out{i}", cfg.size, i == 0))
            log(f"output: raw run {i + 1}: {raws[-1].wall:.1f} s")
            os.sync()
            attach_refs.append(await asyncio.to_thread(raw_attach_run, f"{RUN_TOKEN}-r-attach{i}", cfg.size))
            log(f"output: attach reference {i + 1}: {attach_refs[-1]['total']:.1f} s")
        hwm = proc_status_kib(node.pid, "VmHWM")
        missed = hwm / 1024 > GOAL_RSS_MIB or pair_ratio(nodes, raws) > GOAL_TIME
        log("output: import footprint")
        log("output: sampling the engine's attach stream, replaying the node's work in-process")
        sample = await asyncio.to_thread(_attach_sample, f"{RUN_TOKEN}-r-sample", min(cfg.size, 64 * MiB))
        replay = await asyncio.to_thread(replay_node_work, tmp, cfg.size, sample)
        imports = await asyncio.to_thread(import_footprint)
        profs: list[common.Profile] = []
        prof_run = None
        thread_cpu: dict[str, tuple[float, float]] = {}
        if cfg.profile == "always" or (cfg.profile == "auto" and missed):
            if common.pyspy_path() is None:
                log("output: py-spy is not installed; no profile (.venv/bin/pip install py-spy)")
            else:
                log("output: profiling one more node run with py-spy (bench/profiles/output-node-*.txt)")
                os.sync()
                spies: list[common.PySpy] = []
                cpu_before = common.task_cpu(node.pid)
                try:
                    spies.append(common.PySpy(node.pid, common.PROFILES_DIR / "output-node-gil.txt", mode="gil"))
                    spies.append(
                        common.PySpy(node.pid, common.PROFILES_DIR / "output-node-idle.txt", rate=50, mode="idle")
                    )
                    prof_run = await node_run(node, client, data_dir, f"{RUN_TOKEN}-n-prof", cfg.size)
                finally:
                    cpu_after = common.task_cpu(node.pid)
                    profs = [spy.stop() for spy in spies]
                thread_cpu = _cpu_by_thread_kind(cpu_before, cpu_after, profs)
        idle = Idle(idle_rss, idle_hwm, idle_threads)
        return report(cfg, nodes, raws, attach_refs, idle, hwm, replay, imports, profs, prof_run, thread_cpu)
    finally:
        await client.close()
        node.stop()


def run(cfg: OutputConfig) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="haddock-bench-output-"))
    try:
        return asyncio.run(_main(cfg, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- report


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _rss_profile(samples: list[tuple[float, int]]) -> str:
    """RSS over the run in tenths of the wall time (max of each tenth), MiB."""
    if not samples:
        return "-"
    t0, t1 = samples[0][0], samples[-1][0]
    span = (t1 - t0) or 1
    buckets = [0] * 10
    for t, rss in samples:
        i = min(9, int((t - t0) / span * 10))
        buckets[i] = max(buckets[i], rss)
    return " → ".join(f"{b / 1024:.0f}" for b in buckets)


def report(
    cfg: OutputConfig,
    nodes: list[NodeRun],
    raws: list[RawRun],
    attach_refs: list[dict[str, float]],
    idle: Idle,
    hwm: int,
    replay: Replay,
    imports: list[tuple[str, int]],
    profs: list[common.Profile],
    prof_run: NodeRun | None,
    thread_cpu: dict[str, tuple[float, float]],
) -> str:
    node_mean = sum(n.wall for n in nodes) / len(nodes)
    raw_mean = sum(r.wall for r in raws) / len(raws)
    cli = next((r.cli_read for r in raws if r.cli_read is not None), None)
    rss_ok = hwm / 1024 <= GOAL_RSS_MIB
    time_ratio = pair_ratio(nodes, raws)
    size_mib = cfg.size / MiB
    out = [
        f"### 2. A job printing {size_mib:.0f} MiB to stdout (`head -c {cfg.size} /dev/zero`)",
        "",
        f"Run {common.machine_info()['date']}; {cfg.warmup} unmeasured warm-up run(s) per side, then {cfg.reps} "
        "runs per side, interleaved node, raw, node, raw; `sync` before each run.",
        "",
        "- **node**: `haddock serve` as its own process (env `HADDOCK_DATA_DIR` in a temp dir, "
        "`HADDOCK_NODE_ID=bench`, `HADDOCK_ON_SHUTDOWN=stop`, `HADDOCK_LISTEN=127.0.0.1:<free port>`); "
        "wall = `NodeClient.run` from the call to the result. It includes: image check, create (the node's "
        f"default container config: {describe_config()}, the engine's log driver with its default rotation), "
        "attach, start, the whole output engine -> attach socket -> the node's capture "
        "(`executor/docker/capture.py`) -> log store file (framed), wait, inspect, the log's fsync, "
        "`executor/results.py:write_job_results` re-reading the log into `results/stdout` (the whole "
        "output: the default file limit is 1 GiB) with fsync, removing the container; 2 KiB come back inline.",
        "- **raw**: docker-py: create an equivalent container (same config, but log driver `local` with "
        f"max-size {size_mib + 64:.0f}m, one file, no compression, so that the engine keeps all of the output), "
        "start, wait for the exit (the engine writes the output to its log file meanwhile), read all of it with "
        "the low-level `logs(stream=True)` into nowhere, remove. No fsync anywhere.",
        "- Peak RSS: VmHWM of the node process (its whole life: start-up, a warm-up `true` job, then "
        "the measured runs). While each node run goes on, another client calls `ListExecutions` (limit 1, "
        "a cheap call) every 50 ms: its latency shows how long the node keeps other calls waiting.",
        "",
        f"**Peak RSS** (goal <= {GOAL_RSS_MIB} MiB): **{'met' if rss_ok else 'missed'}**: VmHWM "
        f"{_mib(hwm)} MiB after the runs; {_mib(idle.hwm)} MiB before them (idle RSS {_mib(idle.rss)} MiB, "
        f"{idle.threads} threads).",
        "",
        f"**Wall time** (goal <= {GOAL_TIME:.1f}x, judged on the median of the per-pair ratios): "
        f"{common.verdict(time_ratio, GOAL_TIME)}; means: node {node_mean:.2f} s vs raw {raw_mean:.2f} s "
        f"({common.ratio(node_mean, raw_mean)}); best runs: node {min(n.wall for n in nodes):.2f} s vs raw "
        f"{min(r.wall for r in raws):.2f} s ({common.ratio(min(n.wall for n in nodes), min(r.wall for r in raws))}). "
        "The machine is shared (see 'machine busy'): when others load it, both sides slow down and the "
        "ratio moves.",
        "",
    ]
    rows = []
    for i, (n, r) in enumerate(zip(nodes, raws, strict=False)):
        worst_at, worst = n.worst_probe
        rows.append(
            [
                str(i + 1),
                f"{n.wall:.2f}",
                f"{r.wall:.2f}",
                common.ratio(n.wall, r.wall),
                f"{size_mib / n.wall:.0f}",
                f"{size_mib / r.wall:.0f}",
                _mib(n.max_rss_kib),
                f"{n.node_cpu:.2f}",
                f"{n.engine_cpu:.2f}",
                f"{r.engine_cpu:.2f}",
                f"{100 * n.machine_busy:.0f}% / {100 * r.machine_busy:.0f}%",
                f"{worst * 1000:.0f} ms ({n.phase_at(worst_at)})",
            ]
        )
    out.append(
        table(
            rows,
            (
                "run",
                "node s",
                "raw s",
                "node/raw",
                "node MiB/s",
                "raw MiB/s",
                "node max RSS MiB",
                "node CPU s",
                "engine CPU s (node run)",
                "engine CPU s (raw run)",
                "machine busy, node / raw run",
                "worst ListExecutions latency (in phase)",
            ),
        )
    )
    out += ["", "**Where the node's time goes** (from the execution's events, s):", ""]
    names = list(nodes[0].phases)
    out.append(
        table(
            [[name, *(f"{n.phases.get(name, float('nan')):.2f}" for n in nodes)] for name in names],
            ("node phase", *(f"run {i + 1}" for i in range(len(nodes)))),
        )
    )
    out += ["", "Raw, the same way (s):", ""]
    out.append(
        table(
            [[name, *(f"{r.phases[name]:.2f}" for r in raws)] for name in raws[0].phases],
            ("raw phase", *(f"run {i + 1}" for i in range(len(raws)))),
        )
    )
    out += [
        "",
        "Reference, **the node's attach path without the node** (`bench/output.py:raw_attach_run`, run right "
        "after each raw run): docker-py with the node's default container config (engine log driver included), "
        "attach before start, read the stream to EOF in a plain thread (frames parsed, bytes counted, nothing "
        "stored), wait, remove. Its read-to-EOF time is what the engine needs to push the output through an "
        "attach stream; the node's running phase minus it is what the node's own capture costs:",
        "",
        table(
            [
                [name, *(f"{a.get(name, float('nan')):.2f}" for a in attach_refs)]
                for name in (attach_refs[0] if attach_refs else {})
            ]
            + [
                [
                    "**node running phase minus this read**",
                    *(
                        f"{n.phases.get(RUNNING_PHASE, float('nan')) - a['start + read the stream to EOF']:+.2f}"
                        for n, a in zip(nodes, attach_refs, strict=False)
                    ),
                ]
            ],
            ("attach reference (s)", *(f"run {i + 1}" for i in range(len(attach_refs)))),
        ),
    ]
    if cli is not None:
        out += [
            "",
            f"For reference, `docker logs <id> > /dev/null` (CLI) read the same {size_mib:.0f} MiB in {cli:.2f} s "
            f"(docker-py `logs(stream=True)`: {raws[0].phases['logs read']:.2f} s).",
        ]
    out += ["", *_replay_markdown(replay, size_mib)]
    out += [
        "",
        "**Memory.** Node RSS over each run (max per tenth of the run, MiB): "
        + "; ".join(f"run {i + 1}: {_rss_profile(n.samples)}" for i, n in enumerate(nodes))
        + ". The highest sample of each run fell in: "
        + "; ".join(f"run {i + 1}: {_peak_phase(n)}" for i, n in enumerate(nodes))
        + ".",
    ]
    if imports:
        rows = []
        prev = 0
        for mod, kib in imports:
            rows.append([f"`{mod}`", f"{(kib - prev) / 1024:+.1f}" if prev else f"{kib / 1024:.1f}", _mib(kib)])
            prev = kib
        out += [
            "",
            "What importing the node costs (a fresh interpreter importing, in this order, what `haddock serve` "
            "imports -- each row adds what that import brings in beyond the rows above it; RSS in MiB):",
            "",
            table(rows, ("import", "added MiB", "RSS MiB")),
        ]
    if prof_run is not None:
        out += [
            "",
            f"**Profiled run** (one more node run under two py-spy samplers): {prof_run.wall:.2f} s, node CPU "
            f"{prof_run.node_cpu:.2f} s; phases: "
            + "; ".join(f"{k} {v:.2f} s" for k, v in prof_run.phases.items())
            + ".",
        ]
    if thread_cpu:
        rows = [
            [kind, f"{u:.2f}", f"{s_:.2f}"]
            for kind, (u, s_) in sorted(thread_cpu.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
            if u + s_ > 0
        ]
        out += [
            "",
            "The node's CPU in that run by thread (from `/proc/<pid>/task/*/stat`, threads named by py-spy; "
            "system = kernel time in syscalls: socket reads, file writes and reads, fsync):",
            "",
            table(rows, ("thread", "user s", "system s")),
        ]
    for prof in profs:
        out += ["", *common.profile_markdown(prof)]
    return "\n".join(out)


def _attach_sample(exec_id: str, size: int) -> AttachSample:
    client = common.docker_client()
    try:
        return attach_sample(client, exec_id, size)
    finally:
        client.close()


def _calls_table(rows: list[tuple[str, int, float, float]], names: tuple[str, ...], n: int = 10) -> str:
    picked = [r for r in rows if any(r[0].endswith(":" + name) for name in names)]
    picked.sort(key=lambda r: -r[3])
    return table(
        [[f"`{f}`", f"{c:,}", f"{tt:.2f}", f"{ct:.2f}"] for f, c, tt, ct in picked[:n]],
        ("function", "calls", "own s", "cumulative s"),
    )


def _replay_markdown(r: Replay, size_mib: float) -> list[str]:
    head = "**The node's own work, replayed without the engine** (`bench/output.py:replay_node_work`)"
    if r.error:
        return [f"{head}: not run ({r.error})."]
    per_gib = (1024 / size_mib) if size_mib else 1
    total_frames = r.frames * max(1, round(size_mib * MiB / max(1, r.sample_bytes)))
    out = [
        f"{head}. The engine's attach stream for this job, sampled over {r.sample_bytes / MiB:.0f} MiB: "
        f"{r.recvs:,} reads of at most 256 KiB (mean {r.sample_bytes / max(1, r.recvs) / 1024:.1f} KiB) "
        f"carrying {r.frames:,} frames (mean {r.sample_bytes / max(1, r.frames) / 1024:.1f} KiB), i.e. "
        f"~{total_frames * per_gib:,.0f} frames per GiB. Fed as it arrived (same reads, same frames) to the "
        f"node's capture code for {size_mib:.0f} MiB: `Demuxer.feed` + `LogWriter.write` {r.capture:.2f} s, "
        f"`LogWriter.close` (fsync) {r.close:.2f} s; then `write_job_results` from `LogStore.read` "
        f"{r.results:.2f} s. For comparison, copying the same log file ({r.log_bytes / MiB:.0f} MiB) by hand "
        f"with 1 MiB `pread`s and `write`s and an fsync took {r.plain_copy:.2f} s: moving the output through the "
        "page cache once more costs seconds on this machine whoever does it.",
    ]
    if r.capture_calls:
        out += [
            "",
            "Capture under cProfile:",
            "",
            _calls_table(
                r.capture_calls,
                ("feed", "write", "_append", "_notify", "<built-in method posix.write>", "pack", "join"),
            ),
        ]
    if r.results_calls:
        out += [
            "",
            "`write_job_results` under cProfile (event loop thread only: the worker threads' time shows as the "
            "loop waiting in `epoll.poll`; a coroutine's calls count its resumptions):",
            "",
            _calls_table(
                r.results_calls,
                (
                    "write_job_results",
                    "_consume",
                    "read",
                    "_parse_frame",
                    "to_thread",
                    "<method 'put' of '_queue.SimpleQueue' objects>",
                    "<method 'poll' of 'select.epoll' objects>",
                    "stream",
                ),
            ),
        ]
    return out


def _peak_phase(n: NodeRun) -> str:
    if not n.samples:
        return "-"
    t, kib = max(n.samples, key=lambda s: s[1])
    return f"{_mib(kib)} MiB at {t - n.t0:.1f} s, {n.phase_at(t - n.t0)}"
