"""py-spy profiles of the node's processes: recording, parsing the collapsed stacks, markdown.

Profiles are written into :func:`profile_dir` for the run (a temp dir; ``python -m bench`` moves
them to ``bench/profiles/`` when it writes RESULTS.md), and the markdown names them by their
final path ``bench/profiles/<file>``.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import PROFILES_DIR, ROOT, VENV_BIN, log, table, top_table

_profile_dir: Path | None = None


def profile_dir() -> Path:
    """Where this run's profiles go until they are kept (moved to PROFILES_DIR): a temp dir, made on first use."""
    global _profile_dir
    if _profile_dir is None:
        _profile_dir = Path(tempfile.mkdtemp(prefix="haddock-bench-profiles-"))
    return _profile_dir


def taken() -> Path | None:
    """The temp dir of this run's profiles, if any was taken."""
    return _profile_dir if _profile_dir is not None and any(_profile_dir.glob("*.txt")) else None


def discard() -> None:
    global _profile_dir
    if _profile_dir is not None:
        shutil.rmtree(_profile_dir, ignore_errors=True)
        _profile_dir = None


# Our code, for attributing profile samples ("file:function" hot spots).
OUR_PACKAGES = ("executor", "node", "storage", "haddock")
# Frames of ours that only hold the event loop (not hot spots): samples under them are asyncio/grpc.
ENTRY_FRAMES = frozenset(
    {"haddock:<module>", "node/cli.py:serve", "node/client/_cli_common.py:run_coro", "node/server.py:serve"}
)


def pyspy_path() -> str | None:
    candidate = VENV_BIN / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


def keep_profiles(prefix: str) -> list[Path]:
    """Replace ``bench/profiles/<prefix>-*`` by this run's profiles of that benchmark."""
    PROFILES_DIR.mkdir(parents=True, exist_ok=True)
    for old in PROFILES_DIR.glob(f"{prefix}-*"):
        old.unlink()
    kept = []
    for new in sorted(profile_dir().glob(f"{prefix}-*.txt")):
        kept.append(Path(shutil.move(new, PROFILES_DIR / new.name)))
    return kept


class PySpy:
    """``py-spy record --format raw`` (collapsed stacks) of a process, stopped with SIGINT.

    ``mode``: ``gil`` samples only the thread holding the GIL (Python CPU; blocking calls that
    release the GIL are not seen), ``idle`` samples every thread whatever it does (wall clock per
    thread: where each thread waits).
    """

    def __init__(self, pid: int, name: str, title: str, *, rate: int = 100, mode: str = "gil") -> None:
        exe = pyspy_path()
        if exe is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        self.out = profile_dir() / name
        self.title = title
        self.mode = mode
        cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "-o", str(self.out), "--rate", str(rate)]
        cmd += ["--nonblocking", "--threads", "--gil" if mode == "gil" else "--idle"]
        self._stderr = self.out.with_suffix(".pyspy.log")
        with self._stderr.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    def started(self) -> bool:
        if self.proc.poll() is not None:
            log(f"py-spy exited at once ({self.title}): {self._why()}")
            return False
        return True

    def _why(self) -> str:
        text = self._stderr.read_text(errors="replace") if self._stderr.exists() else ""
        return " ".join(text.split("Stack backtrace:")[0].split())[:300]

    def stop(self) -> Profile | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.out.exists():
            log(f"py-spy wrote no profile ({self.title}): {self._why()}")
            return None
        self._stderr.unlink(missing_ok=True)
        return Profile.parse(self.out, self.title, self.mode)


def start_spies(targets: list[tuple[int, str, str]], rate_gil: int = 100, rate_idle: int = 50) -> list[PySpy]:
    """One ``--gil`` and one ``--idle`` sampler per (pid, file stem, title); waits for them to attach."""
    spies = []
    for pid, stem, title in targets:
        spies.append(PySpy(pid, f"{stem}-gil.txt", title, rate=rate_gil, mode="gil"))
        spies.append(PySpy(pid, f"{stem}-idle.txt", title, rate=rate_idle, mode="idle"))
    time.sleep(0.5)  # let them attach before the measured work starts
    return [s for s in spies if s.started()]


def stop_spies(spies: list[PySpy]) -> list[Profile]:
    return [p for p in (s.stop() for s in spies) if p is not None]


_FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: str = ""

    @property
    def ours(self) -> bool:
        rel = self.rel
        if self.func == "<module>" or f"{rel}:{self.func}" in ENTRY_FRAMES:
            return False
        return rel.split("/", 1)[0] in OUR_PACKAGES and not rel.startswith("haddock/v1/")

    @property
    def rel(self) -> str:
        """The file as the repository names it (``node/cli.py``), a library's from its package."""
        path = self.file
        root = str(ROOT) + "/"
        if path.startswith(root):
            path = path[len(root) :].removeprefix("proto/")
        elif "/site-packages/" in path:
            path = path.split("/site-packages/", 1)[1]
        elif "/lib/python3" in path:
            return "stdlib/" + path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        if path.startswith(("haddock/executor/", "haddock/node/", "haddock/storage/")):
            path = path.removeprefix("haddock/")
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
        "_run_module_as_main",
        "_run_code",
        "serve",
        "wrapper",
    }
)


def _dispatch(f: Frame) -> bool:
    return (
        f.func in _DISPATCH_FUNCS
        or f.label() in ENTRY_FRAMES
        or f.rel.startswith(("<frozen runpy>", "typer/", "click/", "bench/"))
    )


def thread_kind(thread: str) -> str:
    """Which of a node process's threads (by py-spy's ``thread (tid): name``) a stack belongs to."""
    name = thread.partition(": ")[2]
    if name == "MainThread":
        return "event loop (MainThread)"
    if name.startswith("haddock-docker-stream"):
        return "stream pool (haddock-docker-stream: output capture)"
    if name.startswith("haddock-docker-api"):
        return "engine API pool (haddock-docker-api)"
    if name.startswith("asyncio_"):
        return "asyncio default executor (`asyncio.to_thread`)"
    return f"other ({name or 'unnamed'})"


@dataclass
class Profile:
    """Collapsed stacks (root first) with sample counts, by thread, of one process."""

    path: Path
    title: str
    mode: str = "gil"
    stacks: list[tuple[str, list[Frame], int]] = field(default_factory=list)  # (thread, frames, count)

    @classmethod
    def parse(cls, path: Path, title: str, mode: str = "gil") -> Profile:
        prof = cls(path, title, mode)
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

    def by_thread_kind(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for thread, _, n in self.stacks:
            c[thread_kind(thread)] += n
        return c

    def our_hot_spots(self) -> Counter[str]:
        """Samples attributed to the deepest frame of our code on the stack (its callees included)."""
        c: Counter[str] = Counter()
        for _, frames, n in self.stacks:
            # a frame of ours that runs the event loop (calls asyncio.run) is an entry, not a hot spot
            ours = [
                f
                for f, below in zip(frames, [*frames[1:], None], strict=False)
                if f.ours and not (below is not None and below.rel.endswith("asyncio/runners.py"))
            ]
            c[ours[-1].label() if ours else "(no frame of ours: the event loop, grpc, asyncio, docker-py)"] += n
        return c

    def inclusive(self) -> Counter[str]:
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

    def leaves_by_thread_kind(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for thread, frames, n in self.stacks:
            if frames:
                out.setdefault(thread_kind(thread), Counter())[frames[-1].label(with_line=True)] += n
        return out

    def threads_per_kind(self) -> Counter[str]:
        return Counter(thread_kind(t) for t in {t for t, _, _ in self.stacks})

    def thread_kinds_by_tid(self) -> dict[int, str]:
        """py-spy's ``thread (<tid>): <name>`` labels, as OS thread id -> kind."""
        out: dict[int, str] = {}
        for thread, _, _ in self.stacks:
            m = re.match(r"thread \((\d+)\)", thread)
            if m:
                out[int(m.group(1))] = thread_kind(thread)
        return out


def cpu_by_thread_kind(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], profs: list[Profile]
) -> dict[str, tuple[float, float]]:
    """A process's (user, system) CPU seconds per kind of thread between two ``task_cpu`` readings."""
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


def profile_markdown(prof: Profile, n: int = 12) -> list[str]:
    total = prof.total or 1
    where = f"`bench/profiles/{prof.path.name}`"
    if prof.mode == "gil":
        threads = prof.by_thread_kind()
        return [
            f"**Python CPU profile of the {prof.title}** (`py-spy record --gil`: only the thread holding the GIL "
            f"is sampled, so blocking calls that release it — recv, write, fsync, waits — are not counted; {where}, "
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
            "Functions with the most samples under them (any code, inclusive; entry and dispatch frames left out):",
            "",
            top_table(prof.inclusive(), total, n, "function"),
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
        f"**Wall-clock profile of the {prof.title}** (`py-spy record --idle`: every thread sampled whatever it "
        f"does, waiting included; {where}, {total} samples): where each kind of thread spends its time (top "
        "leaves, share of that kind's samples):",
        "",
        table(rows, ("thread (xcount)", "leaf", "share")),
    ]
