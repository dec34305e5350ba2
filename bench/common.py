"""Shared pieces of the benchmarks: machine facts, statistics, container clean-up, process
sampling, py-spy profiles, and the RESULTS.md writer."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
LABEL_NODE = "haddock.node-id"
LABEL_JOB = "haddock.job-id"
LABEL_EXECUTION = "haddock.execution-id"

# Every execution id (node side) and raw container of one `python -m bench` run starts with this
# token, so that clean-up removes exactly our containers and nothing of a concurrent run or test.
RUN_TOKEN = f"bench{secrets.token_hex(3)}"
# The benchmark's nodes take the run's token as their id: a node reaps the containers labelled with its
# id that it does not know, so two runs (or a run and a test) sharing an id would remove each other's.
NODE_ID = RUN_TOKEN


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
    """The commit measured, and the tracked files that differ from it (the benchmark's own outputs aside).

    A dirty tree is reported with the words "uncommitted changes"; a clean one never uses them."""
    head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    diff = _run(["git", "-C", str(ROOT), "diff", "HEAD", "--name-only"])
    outputs = ("bench/RESULTS.md", "bench/profiles/")
    changed = sorted(p for p in diff.splitlines() if p and not p.startswith(outputs))
    if not changed:
        return f"commit {head}, working tree clean"
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


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/<pid>/status (kB values in KiB); empty when the process is gone."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            first = rest.split()[:1]
            if first and first[0].isdigit():
                out[key] = int(first[0])
    return out


def proc_status_kib(pid: int, key: str) -> int:
    return proc_status(pid).get(key, 0)


def proc_pss(pid: int) -> int:
    """Proportional set size (KiB) from /proc/<pid>/smaps_rollup; 0 when unreadable or gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def proc_threads(pid: int) -> int:
    return proc_status_kib(pid, "Threads")


def proc_text(pid: int, name: str) -> str:
    """/proc/<pid>/cmdline or environ with NULs as spaces ('' when unreadable or gone)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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
(one). Options: `python -m bench --help` (`--no-write` prints the results and leaves this file and
`bench/profiles/` alone). Each run replaces the results of the benchmarks it ran (between the markers
below) and this preamble; profiles are kept in `bench/profiles/` (py-spy raw/collapsed stacks, render
with `flamegraph.pl` or https://www.speedscope.app).

What is measured are the figures of issue 9's "Done means", each with its goal and verdict (summary
below, details in each section):

- **output**: 512 MiB of short lines (`yes 0123456789abcdef | head -c 536870912`) through the node
  (`haddock serve`, default settings) against the floor measured in the same run: the same container
  run by the docker CLI, attached, with `--log-driver none`, output to /dev/null (goal ≤ 1.5x the
  floor); the node's peak RSS (VmHWM of the daemon and of each other process of the node, summed;
  goal ≤ 64 MiB); the same bytes as a few large lines through the node, no slower than the short lines.
- **e2e**: a no-op Run through the node against raw docker-py making the same engine calls (goals
  ≤ 1.03x sequentially, ≤ 1.05x at 20-way concurrency).

These are benchmarks, not tests: nothing fails when a goal is missed; the result says so, and where
the time or memory goes, from py-spy profiles of the node's processes (taken when a goal is missed;
`--profile always|never` overrides; `make bench` installs py-spy, the `bench` extra; without it the
benchmarks run and say that no profile was taken). The whole run takes about 10 minutes on a
2-core machine; its nodes take the run's token as their node id, every container it creates carries
that id and an execution id starting with it, and is removed at the end (also on failure or
SIGTERM). The `code` row names the commit measured, and every file in which the measured tree differed from it.
An "Analysis" section below the results, if any, is written by hand and is kept.

"""


def _block(name: str, body: str) -> str:
    return f"{BEGIN.format(name)}\n{body.rstrip()}\n{END.format(name)}"


GOALS_HEADER = ("benchmark", "figure", "goal", "measured", "verdict")


def goals_block(name: str, rows: Sequence[Sequence[str]]) -> str:
    """A benchmark's goals table, marked so that the summary at the top can collect its rows."""
    return _block(f"goals-{name}", table([[name, *r] for r in rows], GOALS_HEADER))


def goals_summary(text: str, order: Sequence[str]) -> str:
    """The goals tables of the sections in ``text``, as one table."""
    rows: list[str] = []
    for name in order:
        if BEGIN.format(f"goals-{name}") in text:
            rows += [line for line in _inner(text, f"goals-{name}").splitlines()[2:] if line.startswith("|")]
    head = table([], GOALS_HEADER)
    return "### Goals\n\n" + ("\n".join([head, *rows]) if rows else "_no benchmark run yet_")


def update_results(sections: dict[str, str], machine: str, order: Sequence[str], path: Path = RESULTS_FILE) -> Path:
    """Write ``sections`` (name -> markdown) into RESULTS.md, replacing those blocks and the preamble, keeping
    the other blocks and what follows the results (a hand-written analysis); the goals summary is rebuilt
    from the goals tables of every section in the file."""
    text = path.read_text() if path.exists() else ""
    if BEGIN.format("results") not in text:
        blocks = "\n\n".join(_block(n, f"_{n}: not run yet_") for n in order)
        results = "## Results\n\n" + _block("machine", "_not run yet_") + "\n\n" + blocks
        text = _block("results", results) + "\n" + text
    text = HEADER + text[text.index(BEGIN.format("results")) :]
    text = _replace(text, "machine", machine)
    if BEGIN.format("summary") not in text:
        i = text.index(END.format("machine")) + len(END.format("machine"))
        text = text[:i] + "\n\n" + _block("summary", "") + text[i:]
    for name, body in sections.items():
        if BEGIN.format(name) not in text:
            text = _replace(text, "results", _inner(text, "results") + "\n\n" + _block(name, body))
        else:
            text = _replace(text, name, body)
    text = _replace(text, "summary", goals_summary(text, order))
    path.write_text(text)
    return path


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
