"""Shared pieces of the benchmarks: machine facts, statistics, container clean-up, process
sampling, py-spy profiles, and the RESULTS.md writer."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
PROFILES_DIR = BENCH_DIR / "profiles"
VENV_BIN = Path(sys.executable).parent if (Path(sys.executable).parent / "haddock").exists() else ROOT / ".venv" / "bin"

IMAGE = "haddock-test/busybox:latest"
NODE_ID = "bench"
LABEL_NODE = "haddock.node-id"
LABEL_JOB = "haddock.job-id"
LABEL_EXECUTION = "haddock.execution-id"

# Every execution id (node side) and raw container of one `python -m bench` run starts with this
# token, so that clean-up removes exactly our containers and nothing of a concurrent run or test.
RUN_TOKEN = f"bench{secrets.token_hex(3)}"

# Our code, for attributing profile samples ("file:function" hot spots).
OUR_PACKAGES = ("executor", "node", "storage", "haddock")
# Frames of ours that only hold the event loop (not hot spots): samples under them are asyncio/grpc.
ENTRY_FRAMES = frozenset({"haddock:<module>", "node/cli.py:serve", "node/client/cli.py:_run", "node/server.py:serve"})


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    p50: float
    p95: float
    min: float
    max: float

    @classmethod
    def of(cls, xs: Sequence[float]) -> Stats:
        if not xs:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        return cls(len(xs), statistics.fmean(xs), percentile(xs, 50), percentile(xs, 95), min(xs), max(xs))


def percentile(xs: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def paired_diff(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of a[i] - b[i] and the half-width of its ~95% confidence interval (Student's t)."""
    d = [x - y for x, y in zip(a, b, strict=False)]
    if len(d) < 2:
        return (d[0] if d else float("nan")), float("nan")
    df = len(d) - 1
    t = _T95.get(df, 1.96 + 2.4 / df)
    return statistics.fmean(d), t * statistics.stdev(d) / len(d) ** 0.5


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "n/a"


def verdict(value: float, goal: float) -> str:
    return f"**met** ({value:.3f}x ≤ {goal:.2f}x)" if value <= goal else f"**missed** ({value:.3f}x > {goal:.2f}x)"


# --------------------------------------------------------------------------- machine


def docker_client(**kw: Any) -> docker.APIClient:
    env = docker.utils.kwargs_from_env()
    return docker.APIClient(**{**env, "version": "auto", **kw})


def machine_info() -> dict[str, str]:
    info: dict[str, str] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "uname -a": " ".join(platform.uname()) if not shutil.which("uname") else _run(["uname", "-a"]),
        "nproc": str(len(os.sched_getaffinity(0))),
        "memory": _meminfo(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    try:
        client = docker_client()
        v = client.version()
        i = client.info()
        client.close()
        info["docker engine"] = (
            f"{v.get('Version')} (API {v.get('ApiVersion')}, {i.get('Driver')} storage, "
            f"cgroup v{i.get('CgroupVersion', '?')}, default log driver {i.get('LoggingDriver')})"
        )
    except Exception as exc:  # the benchmarks will fail loudly anyway
        info["docker engine"] = f"unavailable: {exc}"
    import grpc

    info["libraries"] = f"docker-py {docker.__version__}, grpcio {grpc.__version__}"
    info["code"] = code_version()
    return info


def code_version() -> str:
    """The commit measured, and which files of the node's code differ from it (others edit concurrently)."""
    head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    status = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "executor", "node", "storage", "proto"])
    changed = sorted({line.split(maxsplit=1)[1] for line in status.splitlines() if len(line.split()) > 1})
    if not changed:
        return f"commit {head}, no uncommitted changes in executor/ node/ storage/ proto/"
    return f"commit {head} + uncommitted changes in {', '.join(f'`{c}`' for c in changed)}"


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()


def _meminfo() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    return "unknown"


def machine_markdown(info: dict[str, str]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {k} | `{v}` |" if k == "uname -a" else f"| {k} | {v} |" for k, v in info.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- containers


def bench_containers(client: docker.APIClient) -> list[dict[str, Any]]:
    """Containers of this run: the node's and the raw ones (their execution id starts with RUN_TOKEN)."""
    found = client.containers(all=True, filters={"label": f"{LABEL_NODE}={NODE_ID}"})
    return [c for c in found if (c.get("Labels") or {}).get(LABEL_EXECUTION, "").startswith(RUN_TOKEN)]


def remove_bench_containers() -> int:
    """Remove every container this run created (force); returns how many were left over."""
    try:
        client = docker_client()
    except Exception as exc:
        log(f"clean-up: cannot reach the engine: {exc}")
        return 0
    n = 0
    try:
        for c in bench_containers(client):
            with contextlib.suppress(docker.errors.NotFound):
                client.remove_container(c["Id"], force=True, v=True)
                n += 1
    finally:
        client.close()
    if n:
        log(f"clean-up: removed {n} leftover container(s) of run {RUN_TOKEN}")
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- processes

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def task_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of each thread of a process, by thread id."""
    out: dict[int, tuple[float, float]] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = (int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK)
    return out


def proc_status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_threads(pid: int) -> int:
    return proc_status_kib(pid, "Threads")


def engine_pids() -> dict[str, list[int]]:
    """dockerd and containerd processes (read only: we measure their CPU, never touch them)."""
    found: dict[str, list[int]] = {"dockerd": [], "containerd": []}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            comm = (d / "comm").read_text().strip()
            if comm in found:
                found[comm].append(int(d.name))
    return found


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = user + nice + system + irq + softirq
        total = busy + idle + iowait + steal
        return busy / _CLK_TCK, steal / _CLK_TCK, total / _CLK_TCK
    return 0.0, 0.0, 0.0


class CpuMeter:
    """CPU seconds used by this process, by the engine (dockerd + containerd) and by the whole machine."""

    def __init__(self) -> None:
        self.engine = [p for ps in engine_pids().values() for p in ps]
        self._t0 = self._sample()

    def _sample(self) -> tuple[float, float, float, tuple[float, float, float]]:
        t = os.times()
        engine = sum(proc_cpu_seconds(p) for p in self.engine)
        return time.perf_counter(), t.user + t.system, engine, machine_cpu()

    def stop(self) -> CpuUse:
        w1, s1, e1, m1 = self._sample()
        w0, s0, e0, m0 = self._t0
        total = (m1[2] - m0[2]) or 1.0
        return CpuUse(
            wall=w1 - w0,
            self_cpu=s1 - s0,
            engine_cpu=e1 - e0,
            machine_busy=(m1[0] - m0[0]) / total,
            machine_steal=(m1[1] - m0[1]) / total,
        )


@dataclass(frozen=True)
class CpuUse:
    wall: float
    self_cpu: float
    engine_cpu: float
    machine_busy: float = 0.0  # share of all cores busy (anyone), 0..1
    machine_steal: float = 0.0  # share stolen by the hypervisor


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every ``interval`` seconds; VmHWM (the kernel's peak) at the end."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True, name="bench-rss")
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (perf_counter, VmRSS KiB)
        self.threads_max = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            self.samples.append((time.perf_counter(), rss))
            self.threads_max = max(self.threads_max, proc_threads(self.pid))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    @property
    def max_rss_kib(self) -> int:
        return max((r for _, r in self.samples), default=0)


# --------------------------------------------------------------------------- py-spy


def pyspy_path() -> str | None:
    candidate = VENV_BIN / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


class PySpy:
    """``py-spy record --format raw`` (collapsed stacks) of a process, stopped with SIGINT.

    ``mode``: ``gil`` samples only the thread holding the GIL (Python CPU; blocking calls that
    release the GIL are not seen), ``idle`` samples every thread whatever it does (wall clock per
    thread: where each thread waits).
    """

    def __init__(self, pid: int, out: Path, *, rate: int = 100, mode: str = "gil") -> None:
        exe = pyspy_path()
        if exe is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.mode = mode
        cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "-o", str(out), "--rate", str(rate)]
        cmd += ["--nonblocking", "--threads", "--gil" if mode == "gil" else "--idle"]
        self._stderr = out.with_suffix(".pyspy.log")
        with self._stderr.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        time.sleep(0.5)  # let it attach before the measured work starts
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy exited at once: {self._stderr.read_text()[-500:]}")

    def stop(self) -> Profile:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {self._stderr.read_text()[-500:]}")
        with contextlib.suppress(OSError):
            self._stderr.unlink()
        return Profile.parse(self.out, self.mode)


_FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: str = ""

    @property
    def ours(self) -> bool:
        rel = self.rel
        if f"{rel}:{self.func}" in ENTRY_FRAMES:
            return False
        return rel.split("/", 1)[0] in OUR_PACKAGES and not rel.startswith("haddock/v1/")

    @property
    def rel(self) -> str:
        path = self.file
        root = str(ROOT) + "/"
        if path.startswith(root):
            return path[len(root) :]
        if "/site-packages/" in path:
            return path.split("/site-packages/", 1)[1]
        if "/lib/python3" in path:
            return "stdlib/" + path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return path

    def label(self, with_line: bool = False) -> str:
        line = f" (line {self.line})" if with_line and self.line else ""
        return f"{self.rel}:{self.func}{line}"


def _frame(text: str) -> Frame:
    m = _FRAME_RE.match(text.strip())
    if not m:
        return Frame(text.strip(), "")
    return Frame(m.group("func"), m.group("file"), m.group("line") or "")


# Frames every sample of a thread passes through (thread start, pools, the event loop's dispatch):
# left out of the inclusive table, which would otherwise start with them.
_DISPATCH_FUNCS = frozenset(
    {
        "<module>",
        "Thread._bootstrap",
        "Thread._bootstrap_inner",
        "Thread.run",
        "_worker",
        "_WorkItem.run",
        "run",
        "Runner.run",
        "BaseEventLoop.run_until_complete",
        "BaseEventLoop.run_forever",
        "BaseEventLoop._run_once",
        "Handle._run",
        "main",
        "Typer.__call__",
        "TyperGroup.main",
        "Command.invoke",
        "MultiCommand.invoke",
        "Context.invoke",
        "_main",
        "serve",
        "wrapper",
    }
)


def _dispatch(f: Frame) -> bool:
    rel = f.rel
    return (
        f.func in _DISPATCH_FUNCS
        or f.label() in ENTRY_FRAMES
        or rel.startswith(("<frozen runpy>", "typer/", "click/", "bench/"))
    )


@dataclass
class Profile:
    """Collapsed stacks (root first) with sample counts, grouped by thread."""

    path: Path
    mode: str = "gil"
    stacks: list[tuple[str, list[Frame], int]] = field(default_factory=list)  # (thread, frames, count)

    @classmethod
    def parse(cls, path: Path, mode: str = "gil") -> Profile:
        prof = cls(path, mode)
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            parts = stack.split(";")
            thread = ""
            while parts and parts[0].startswith(("thread ", "process ")):
                if parts[0].startswith("thread "):
                    thread = parts[0]
                parts = parts[1:]
            prof.stacks.append((thread, [_frame(p) for p in parts], int(count)))
        return prof

    @property
    def total(self) -> int:
        return sum(c for _, _, c in self.stacks)

    @staticmethod
    def thread_kind(thread: str) -> str:
        """Which of the node's threads (by py-spy's ``thread (tid): name``) a stack belongs to."""
        name = thread.partition(": ")[2]
        if name == "MainThread":
            return "event loop (MainThread)"
        if name.startswith("haddock-docker-stream"):
            return "stream pool (haddock-docker-stream: output capture)"
        if name.startswith("haddock-docker-api"):
            return "engine API pool (haddock-docker-api)"
        if name.startswith("asyncio_"):
            return "asyncio default executor (`asyncio.to_thread`: log store reads, results writes)"
        return f"other ({name or 'unnamed'})"

    def by_thread_kind(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for thread, _, n in self.stacks:
            c[self.thread_kind(thread)] += n
        return c

    def our_hot_spots(self) -> Counter[str]:
        """Samples attributed to the deepest frame of our code on the stack (its callees included)."""
        c: Counter[str] = Counter()
        for _, frames, n in self.stacks:
            ours = [f for f in frames if f.ours]
            c[ours[-1].label() if ours else "(no frame of ours: grpc, asyncio, docker-py internals)"] += n
        return c

    def inclusive(self, only_ours: bool = True) -> Counter[str]:
        c: Counter[str] = Counter()
        for _, frames, n in self.stacks:
            for label in {f.label() for f in frames if f.ours or not only_ours}:
                c[label] += n
        return c

    def thread_kinds_by_tid(self) -> dict[int, str]:
        """py-spy's ``thread (<tid>): <name>`` labels, as OS thread id -> kind."""
        out: dict[int, str] = {}
        for thread, _, _ in self.stacks:
            m = re.match(r"thread \((\d+)\)", thread)
            if m:
                out[int(m.group(1))] = self.thread_kind(thread)
        return out

    def threads_per_kind(self) -> Counter[str]:
        seen = {t for t, _, _ in self.stacks}
        return Counter(self.thread_kind(t) for t in seen)

    def leaves_by_thread_kind(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for thread, frames, n in self.stacks:
            if frames:
                out.setdefault(self.thread_kind(thread), Counter())[frames[-1].label(with_line=True)] += n
        return out

    def inclusive_any(self) -> Counter[str]:
        """Samples under each function (any code), entry and dispatch frames left out."""
        c: Counter[str] = Counter()
        for _, frames, n in self.stacks:
            for label in {f.label() for f in frames if not _dispatch(f)}:
                c[label] += n
        return c

    def leaves(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for _, frames, n in self.stacks:
            if frames:
                c[frames[-1].label(with_line=True)] += n
        return c


def profile_markdown(prof: Profile, n: int = 12) -> list[str]:
    total = prof.total or 1
    rel = prof.path.relative_to(ROOT)
    if prof.mode == "gil":
        threads = prof.by_thread_kind()
        return [
            f"**Python CPU profile** (`py-spy record --gil`: only the thread holding the GIL is sampled, so "
            f"blocking calls that release it — recv, write, fsync, waits — are not counted; `{rel}`, "
            f"{total} samples):",
            "",
            table(
                [[k, str(v), f"{100 * v / total:.1f}%"] for k, v in threads.most_common()],
                ("thread", "samples", "share"),
            ),
            "",
            "Deepest frame of our code on each sampled stack (its library callees included):",
            "",
            top_table(prof.our_hot_spots(), total, n, "our frame"),
            "",
            "Functions with the most samples under them (any code, inclusive; entry and dispatch frames, and the "
            "benchmark's own thin wrappers, left out):",
            "",
            top_table(prof.inclusive_any(), total, n, "function"),
            "",
            "Leaf frames:",
            "",
            top_table(prof.leaves(), total, n, "leaf"),
        ]
    rows = []
    nthreads = prof.threads_per_kind()
    for kind, leaves in sorted(prof.leaves_by_thread_kind().items(), key=lambda kv: -kv[1].total()):
        kind_total = leaves.total()
        for j, (leaf, c) in enumerate(leaves.most_common(5)):
            head = f"{kind} x{nthreads[kind]}" if j == 0 else ""
            rows.append([head, f"`{leaf}`", f"{100 * c / kind_total:.1f}%"])
    return [
        f"**Wall-clock profile** (`py-spy record --idle`: every thread sampled whatever it does, waiting "
        f"included; `{rel}`, {total} samples): where each kind of thread spends its time (top leaves, share of "
        "that kind's samples):",
        "",
        table(rows, ("thread (xcount)", "leaf", "share")),
    ]


def table(rows: Iterable[Sequence[str]], header: Sequence[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def top_table(counter: Counter[str], total: int, n: int, what: str) -> str:
    rows = [(f"`{k}`", str(v), f"{100 * v / total:.1f}%") for k, v in counter.most_common(n)]
    return table(rows, (what, "samples", "share"))


# --------------------------------------------------------------------------- RESULTS.md

BEGIN = "<!-- BEGIN {} -->"
END = "<!-- END {} -->"

HEADER = """\
# haddock benchmarks

Run with `make bench` (all), or `.venv/bin/python -m bench e2e` / `.venv/bin/python -m bench output`
(one). Options: `python -m bench --help`. Each run replaces the results of the benchmarks it ran
(between the markers below); profiles are kept in `bench/profiles/` (py-spy raw/collapsed stacks,
render with `flamegraph.pl` or https://www.speedscope.app).

These are benchmarks, not tests: nothing fails when a goal is missed; the result says so, and
where the time or memory goes. Profiles need py-spy (`.venv/bin/pip install py-spy`; without it the
benchmarks run and say that no profile was taken); `--profile always|never` overrides "when a goal is
missed". The whole run takes 4-6 minutes on a 2-core machine; every container it creates carries the
node's labels and an execution id starting with the run's token, and is removed at the end (also on
failure or SIGTERM). An "Analysis" section below the results, if any, is written by hand and is kept.

"""


def _block(name: str, body: str) -> str:
    return f"{BEGIN.format(name)}\n{body.rstrip()}\n{END.format(name)}"


def update_results(sections: dict[str, str], machine: str, order: Sequence[str]) -> Path:
    """Write ``sections`` (name -> markdown) into RESULTS.md, replacing those blocks; keep the others."""
    text = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else ""
    if BEGIN.format("results") not in text:
        blocks = "\n\n".join(_block(n, f"_{n}: not run yet_") for n in order)
        results = "## Results\n\n" + _block("machine", "_not run yet_") + "\n\n" + blocks
        text = HEADER + _block("results", results) + "\n" + text
    text = _replace(text, "machine", machine)
    for name, body in sections.items():
        if BEGIN.format(name) not in text:
            text = _replace(text, "results", _inner(text, "results") + "\n\n" + _block(name, body))
        else:
            text = _replace(text, name, body)
    RESULTS_FILE.write_text(text)
    return RESULTS_FILE


def _inner(text: str, name: str) -> str:
    b, e = BEGIN.format(name), END.format(name)
    return text[text.index(b) + len(b) : text.index(e)].strip("\n")


def _replace(text: str, name: str, body: str) -> str:
    b, e = BEGIN.format(name), END.format(name)
    i, j = text.index(b), text.index(e) + len(e)
    return text[:i] + _block(name, body) + text[j:]


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that `finally` blocks (container clean-up) run."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
