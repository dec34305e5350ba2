"""The node as the operator runs it: ``haddock serve`` in its own process, and the processes it starts.

:class:`NodeProcess` starts the daemon with default settings (plus a temp data dir, a free port and
``on_shutdown=stop``). The node may run processes of its own besides the daemon (e.g. a capture
process holding the containers' output streams, started in a session of its own so that it outlives
the daemon): :func:`node_processes` finds them as the processes whose command line or environment
names the node's data dir, or that descend from the daemon. :class:`ProcWatch` samples the memory
of all of them and reads each one's VmHWM (the kernel's high-water mark of its RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import common
from bench.common import NODE_ID, log, proc_pss, proc_status, proc_text
from haddock.node.client import NodeClient, NodeError


class NodeProcess:
    """``haddock serve`` in its own session; stopped with SIGTERM (then SIGKILL) by its pid only."""

    def __init__(self, data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.address = f"127.0.0.1:{common.free_port()}"
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
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(common.VENV_BIN / "haddock"), "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    async def ready(self, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        async with NodeClient(self.address, timeout=2) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haddock serve exited ({self.proc.returncode}): {self.tail()}")
                with contextlib.suppress(NodeError):
                    if await client.is_installed():
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"haddock serve did not answer within {limit} s: {self.tail()}")
                await asyncio.sleep(0.2)

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def others(self) -> list[int]:
        return node_processes(self.data_dir, self.pid)

    def stop(self) -> None:
        """SIGTERM the daemon; then wait for the node's other processes to leave by themselves."""
        others = self.others()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                log(f"haddock serve (pid {self.pid}) ignored SIGTERM for 30 s; killing it")
                self.proc.kill()
                self.proc.wait(10)
        stop_leftovers(others, self.data_dir)


def stop_leftovers(pids: list[int], data_dir: Path, wait: float = 20) -> None:
    """Wait for the node's processes (started by a node this benchmark started) to exit by themselves;
    SIGTERM, then SIGKILL, those still there after ``wait`` seconds, by pid, after checking that the pid
    still names the node's data dir."""
    deadline = time.monotonic() + wait
    alive = [p for p in pids if _names(p, str(data_dir))]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _names(p, str(data_dir))]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            log(f"node process {pid} still running {wait:.0f} s after the daemon stopped; sending {sig.name}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(1)
        alive = [p for p in alive if _names(p, str(data_dir))]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _names(pid: int, data_dir: str) -> bool:
    """Whether process ``pid`` is alive and names the node's data dir."""
    if not _alive(pid):
        return False
    return data_dir in proc_text(pid, "cmdline") or f"HADDOCK_DATA_DIR={data_dir}" in proc_text(pid, "environ")


def node_processes(data_dir: Path, daemon_pid: int) -> list[int]:
    """The node's live processes besides the daemon: those naming its data dir (command line or
    ``HADDOCK_DATA_DIR``) and the daemon's descendants. This process (the benchmark) is never one."""
    me = os.getpid()
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found = set()
    for pid in parents:
        if pid in (me, daemon_pid) or not _alive(pid):
            continue
        p, seen = parents.get(pid), 0
        while p and p != daemon_pid and seen < 64:
            p, seen = parents.get(p), seen + 1
        if p == daemon_pid or _names(pid, str(data_dir)):
            found.add(pid)
    return sorted(found)


def describe(pid: int) -> str:
    """A short name for a node process: its Python module (``-m x``) or program."""
    argv = proc_text(pid, "cmdline").split()
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
    return Path(argv[0]).name if argv else f"pid{pid}"


@dataclass
class Mem:
    """One process's memory as watched: sampled VmRSS maximum and the last VmHWM/RssAnon/RssFile read."""

    name: str
    max_rss: int = 0  # KiB
    rss: int = 0  # the latest VmRSS
    hwm: int = 0
    anon: int = 0
    file: int = 0
    pss: int = 0  # proportional set size: shared pages divided among the processes sharing them
    alive: bool = True
    samples: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, VmRSS KiB)


class ProcWatch(threading.Thread):
    """Samples the memory of the daemon and of the node's other processes every ``interval`` seconds
    (looking for new ones every ``rescan``), for as long as it runs; ``window()`` marks a run."""

    def __init__(self, node: NodeProcess, interval: float = 0.02, rescan: float = 0.25) -> None:
        super().__init__(daemon=True, name="bench-procwatch")
        self.node = node
        self.interval = interval
        self.rescan = rescan
        self.mem: dict[int, Mem] = {node.pid: Mem("daemon")}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        last_scan = 0.0
        while not self._halt.is_set():
            now = time.perf_counter()
            if now - last_scan > self.rescan:
                last_scan = now
                self.scan()
            self.sample()
            self._halt.wait(self.interval)

    def scan(self) -> None:
        for pid in self.node.others():
            with self._lock:
                if pid not in self.mem:
                    self.mem[pid] = Mem(describe(pid))

    def sample(self) -> None:
        now = time.perf_counter()
        with self._lock:
            for pid, m in self.mem.items():
                st = proc_status(pid)
                if "VmRSS" not in st or not _alive(pid):
                    m.alive = False
                    continue
                m.samples.append((now, st["VmRSS"]))
                m.rss = st["VmRSS"]
                m.max_rss = max(m.max_rss, m.rss)
                m.hwm = max(m.hwm, st.get("VmHWM", 0))
                m.anon, m.file = st.get("RssAnon", 0), st.get("RssFile", 0)

    def stop(self) -> None:
        self.scan()
        self.sample()
        self._halt.set()
        self.join(5)

    def snapshot(self) -> dict[int, Mem]:
        """Each process's memory so far (copies, without samples; PSS read now), those that were seen
        with memory; the daemon first."""
        self.scan()
        self.sample()
        with self._lock:
            return {
                pid: Mem(m.name, m.max_rss, m.rss, m.hwm, m.anon, m.file, proc_pss(pid), m.alive)
                for pid, m in self.mem.items()
                if m.hwm or m.max_rss
            }

    def between(self, t0: float, t1: float) -> dict[int, list[tuple[float, int]]]:
        with self._lock:
            return {pid: [s for s in m.samples if t0 <= s[0] <= t1] for pid, m in self.mem.items()}

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far of each watched process."""
        with self._lock:
            pids = list(self.mem)
        return {pid: common.proc_cpu_seconds(pid) for pid in pids}
