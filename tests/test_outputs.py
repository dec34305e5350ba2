"""The output cap: usage scans, trimming to the cap, and the watcher, on real files."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

import haddock.executor._walk as walk
import haddock.executor.outputs as outputs
from haddock.executor.outputs import OutputWatcher, TrimReport, directory_usage, trim_to_cap

KiB = 1024
MiB = 1024 * KiB


def write(path: Path, size: int, *, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def open_fds(under: Path) -> list[str]:
    """This process's open descriptors that point into ``under`` (other threads' own come and go)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(under)):
            found.append(target)
    return found


def make_deep(root: Path, depth: int, *, file_size: int, branch: bool = False) -> int:
    """A chain of ``depth`` directories with 30-character names (deeper than PATH_MAX), made by fd.

    A file of ``file_size`` bytes at the bottom; with ``branch``, at every level also a file of one
    byte and a sibling directory holding a file of two bytes. Returns the bytes written.
    """
    name = "d" * 30
    total = 0
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            if branch:
                _write_at(fd, "f", 1)
                os.mkdir("s", dir_fd=fd)
                sfd = os.open("s", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                _write_at(sfd, "g", 2)
                os.close(sfd)
                total += 3
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        _write_at(fd, "deep.bin", file_size)
        total += file_size
    finally:
        os.close(fd)
    return total


def _write_at(dir_fd: int, name: str, size: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, b"y" * size)
    finally:
        os.close(fd)


class _Listing:
    """Stands in for os.scandir's iterator: entries listed up front."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self._entries = entries

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        return iter(self._entries)


def scandir_hook(monkeypatch: pytest.MonkeyPatch, after_listing: Callable[[str], None]) -> None:
    """Make os.scandir(fd) list a directory, then call ``after_listing(its path)``, then hand out the entries."""
    real = os.scandir

    def scandir(path: Any = None) -> Any:
        if not isinstance(path, int):
            return real(path)
        with real(path) as it:
            entries = list(it)
        after_listing(os.readlink(f"/proc/self/fd/{path}"))
        return _Listing(entries)

    monkeypatch.setattr(os, "scandir", scandir)


# --- directory_usage --------------------------------------------------------------------------------


def test_usage_counts_regular_files_in_nested_directories(tmp_path: Path) -> None:
    write(tmp_path / "a.bin", 100)
    write(tmp_path / "sub" / "b.bin", 200)
    write(tmp_path / "sub" / "deeper" / "c.bin", 300)
    write(tmp_path / "sub" / "empty.bin", 0)
    (tmp_path / "empty-dir").mkdir()
    assert directory_usage([tmp_path]) == 600


def test_usage_over_several_paths_and_odd_paths(tmp_path: Path) -> None:
    write(tmp_path / "one" / "a", 10)
    write(tmp_path / "two" / "b", 20)
    write(tmp_path / "file", 40)
    (tmp_path / "link-to-one").symlink_to(tmp_path / "one")
    assert directory_usage([tmp_path / "one", tmp_path / "two"]) == 30
    # missing, a regular file, a symbolic link to a directory: not directories to scan
    assert directory_usage([tmp_path / "missing", tmp_path / "file", tmp_path / "link-to-one"]) == 0
    assert directory_usage([]) == 0


def test_usage_counts_hard_links_once(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    original = write(one / "data", 1000)
    (one / "sub").mkdir()
    os.link(original, one / "sub" / "again")
    two.mkdir()
    os.link(original, two / "elsewhere")
    write(two / "other", 5)
    assert directory_usage([one]) == 1000
    assert directory_usage([one, two]) == 1005


def test_usage_does_not_follow_symlinks(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    write(outside / "big", 10_000)
    write(outside / "dir" / "big2", 20_000)
    write(out / "mine", 7)
    (out / "to-file").symlink_to(outside / "big")
    (out / "to-dir").symlink_to(outside / "dir")
    (out / "to-mine").symlink_to("mine")
    (out / "loop").symlink_to("loop")
    (out / "dangling").symlink_to("nowhere")
    assert directory_usage([out]) == 7


def test_usage_counts_apparent_size_of_sparse_files(tmp_path: Path) -> None:
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(64 * MiB)
    assert directory_usage([tmp_path]) == 64 * MiB


def test_usage_skips_files_and_directories_vanishing_while_scanning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "stays", 1)
    write(tmp_path / "gone", 10)
    write(tmp_path / "gone-dir" / "inside", 100)
    write(tmp_path / "sub" / "stays-too", 1000)
    write(tmp_path / "sub" / "gone-too", 10_000)

    def vanish(listed: str) -> None:
        if listed == str(tmp_path):
            (tmp_path / "gone").unlink()
            shutil.rmtree(tmp_path / "gone-dir")
        elif listed == str(tmp_path / "sub"):
            (tmp_path / "sub" / "gone-too").unlink()

    scandir_hook(monkeypatch, vanish)
    assert directory_usage([tmp_path]) == 1001


def test_usage_sees_trees_deeper_than_path_max_without_leaking_descriptors(tmp_path: Path) -> None:
    total = make_deep(tmp_path, 200, file_size=12_345)
    assert directory_usage([tmp_path]) == total == 12_345
    assert open_fds(tmp_path) == []


@pytest.mark.parametrize("held", [1, 2, 64])
def test_usage_of_a_deep_branching_tree_with_few_descriptors_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    monkeypatch.setattr(walk, "_MAX_HELD_FDS", held)
    total = make_deep(tmp_path, 150, file_size=1000, branch=True)
    assert directory_usage([tmp_path]) == total == 150 * 3 + 1000
    assert open_fds(tmp_path) == []


def test_usage_when_a_directory_is_moved_out_from_under_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # root/a/{b/c, x}: while c is listed, b moves up to root/b; going back up from b, ".." is now the
    # root, not a, so the walk finds a again by name and carries on: every file is counted once.
    monkeypatch.setattr(walk, "_MAX_HELD_FDS", 1)
    root = tmp_path / "root"
    write(root / "a" / "f", 1)
    write(root / "a" / "b" / "f", 10)
    write(root / "a" / "b" / "c" / "f", 100)
    write(root / "a" / "x" / "f", 1000)

    def move(listed: str) -> None:
        if listed == str(root / "a" / "b" / "c"):
            (root / "a" / "b").rename(root / "b")

    scandir_hook(monkeypatch, move)
    assert directory_usage([root]) == 1111
    assert open_fds(tmp_path) == []


def test_usage_when_the_walk_loses_its_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As above, and a itself is renamed too: the rest of a is lost to this scan, nothing breaks or leaks.
    monkeypatch.setattr(walk, "_MAX_HELD_FDS", 1)
    root = tmp_path / "root"
    write(root / "a" / "b" / "c" / "f", 100)
    write(root / "a" / "x" / "f", 1000)
    write(root / "z", 5)

    def move(listed: str) -> None:
        if listed == str(root / "a" / "b" / "c"):
            (root / "a" / "b").rename(root / "b")
            (root / "a").rename(root / "q")

    scandir_hook(monkeypatch, move)
    assert directory_usage([root]) in (105, 1105)
    assert open_fds(tmp_path) == []


# --- trim_to_cap -------------------------------------------------------------------------------------

T0 = 1_700_000_000 * 10**9


def test_trim_keeps_the_earliest_truncates_the_crossing_file_and_deletes_the_rest(tmp_path: Path) -> None:
    first = write(tmp_path / "z-first", 300, mtime_ns=T0)
    second = write(tmp_path / "sub" / "a-second", 300, mtime_ns=T0 + 1)
    third = write(tmp_path / "m-third", 300, mtime_ns=T0 + 2)
    fourth = write(tmp_path / "sub" / "deeper" / "fourth", 300, mtime_ns=T0 + 3)
    fifth = write(tmp_path / "fifth", 1, mtime_ns=T0 + 4)

    report = trim_to_cap([tmp_path], 700)

    assert report == TrimReport(kept_bytes=700, truncated=[third], removed=sorted([fifth, fourth]))
    assert first.stat().st_size == 300
    assert second.stat().st_size == 300
    assert third.stat().st_size == 100
    assert not fourth.exists()
    assert not fifth.exists()
    assert (tmp_path / "sub" / "deeper").is_dir()  # directories are left
    assert directory_usage([tmp_path]) == 700


def test_trim_breaks_mtime_ties_by_path(tmp_path: Path) -> None:
    b = write(tmp_path / "b", 10, mtime_ns=T0)
    a = write(tmp_path / "a", 10, mtime_ns=T0)
    c = write(tmp_path / "c", 10, mtime_ns=T0)
    report = trim_to_cap([tmp_path], 15)
    assert report == TrimReport(kept_bytes=15, truncated=[b], removed=[c])
    assert a.stat().st_size == 10
    assert b.stat().st_size == 5


def test_trim_is_exact_and_deterministic_for_many_files(tmp_path: Path) -> None:
    sizes = [(i * 7919) % 5000 for i in range(60)]

    def populate(root: Path) -> None:
        for i, size in enumerate(sizes):
            write(root / f"d{i % 4}" / f"f{i}", size, mtime_ns=T0 + (i * 31) % 17)

    populate(tmp_path / "one")
    populate(tmp_path / "two")
    cap = sum(sizes) // 3
    first = trim_to_cap([tmp_path / "one"], cap)
    second = trim_to_cap([tmp_path / "two"], cap)
    assert first.kept_bytes == second.kept_bytes == cap == directory_usage([tmp_path / "one"])
    assert [p.relative_to(tmp_path / "one") for p in first.removed] == [
        p.relative_to(tmp_path / "two") for p in second.removed
    ]
    assert len(first.truncated) <= 1


def test_trim_under_the_cap_changes_nothing(tmp_path: Path) -> None:
    write(tmp_path / "a", 10)
    write(tmp_path / "b" / "c", 20)
    assert trim_to_cap([tmp_path], 30) == TrimReport(kept_bytes=30, truncated=[], removed=[])
    assert directory_usage([tmp_path]) == 30


def test_trim_to_zero(tmp_path: Path) -> None:
    a = write(tmp_path / "a", 10)
    b = write(tmp_path / "sub" / "b", 20)
    empty = write(tmp_path / "empty", 0)
    report = trim_to_cap([tmp_path], 0)
    assert report == TrimReport(kept_bytes=0, truncated=[], removed=sorted([a, b]))
    assert empty.exists()  # costs nothing
    assert (tmp_path / "sub").is_dir()
    assert directory_usage([tmp_path]) == 0


def test_trim_shares_the_cap_across_paths(tmp_path: Path) -> None:
    a = write(tmp_path / "one" / "a", 100, mtime_ns=T0 + 2)
    b = write(tmp_path / "two" / "b", 100, mtime_ns=T0)
    report = trim_to_cap([tmp_path / "one", tmp_path / "two"], 150)
    assert report == TrimReport(kept_bytes=150, truncated=[a], removed=[])
    assert b.stat().st_size == 100


def test_trim_removes_every_name_of_a_deleted_hard_linked_file(tmp_path: Path) -> None:
    keep = write(tmp_path / "keep", 10, mtime_ns=T0)
    data = write(tmp_path / "data", 10, mtime_ns=T0 + 1)
    os.link(data, tmp_path / "sub-link")
    (tmp_path / "sub").mkdir()
    os.link(data, tmp_path / "sub" / "link")
    report = trim_to_cap([tmp_path], 10)
    assert report == TrimReport(
        kept_bytes=10, truncated=[], removed=sorted([data, tmp_path / "sub-link", tmp_path / "sub" / "link"])
    )
    assert keep.exists()


def test_trim_counts_a_kept_hard_linked_file_once(tmp_path: Path) -> None:
    data = write(tmp_path / "data", 10, mtime_ns=T0)
    os.link(data, tmp_path / "link")
    later = write(tmp_path / "later", 10, mtime_ns=T0 + 1)
    report = trim_to_cap([tmp_path], 15)
    assert report == TrimReport(kept_bytes=15, truncated=[later], removed=[])


def test_trim_removes_symlinks_pointing_outside_and_never_follows_them(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    secret = write(outside / "secret", 100)
    other = write(outside / "dir" / "other", 100)
    data = write(out / "data", 50)
    (out / "z").mkdir()
    links = {
        "absolute": out / "absolute",
        "escape": out / "escape",
        "to-dir": out / "to-dir",
        "chained": out / "deep" / "deeper" / "chained",
    }
    links["absolute"].symlink_to(secret)
    links["escape"].symlink_to("../outside/secret")
    links["to-dir"].symlink_to("../outside/dir")
    (out / "deep" / "deeper").mkdir(parents=True)
    # s stays inside (it is out/z), but s/../../.. climbs through it to above out/
    (out / "deep" / "deeper" / "s").symlink_to("../../z")
    links["chained"].symlink_to("s/../../..")
    kept_links = [out / "inside", out / "deep" / "deeper" / "s", out / "dangling-inside", out / "deep" / "up"]
    (out / "inside").symlink_to("data")
    (out / "dangling-inside").symlink_to("nothing/here")
    (out / "deep" / "up").symlink_to("../data")

    report = trim_to_cap([out], 0)

    assert report == TrimReport(kept_bytes=0, truncated=[], removed=sorted([data, *links.values()]))
    assert secret.read_bytes() == b"x" * 100
    assert other.read_bytes() == b"x" * 100
    for link in kept_links:
        assert link.is_symlink()
    for link in links.values():
        assert not link.is_symlink()


def test_trim_a_tree_deeper_than_path_max(tmp_path: Path) -> None:
    early = write(tmp_path / "early", 100, mtime_ns=T0)
    make_deep(tmp_path, 200, file_size=1000)  # written now: later than early
    report = trim_to_cap([tmp_path], 600)
    assert report.kept_bytes == 600
    assert report.removed == []
    assert len(report.truncated) == 1 and report.truncated[0].name == "deep.bin"
    assert early.stat().st_size == 100
    assert directory_usage([tmp_path]) == 600


def test_trim_cuts_back_what_changed_after_planning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grows = write(tmp_path / "grows", 10, mtime_ns=T0)
    write(tmp_path / "later", 10, mtime_ns=T0 + 1)
    real_plan = outputs._plan

    def plan_then_write(paths: Any, cap: int) -> Any:
        result = real_plan(paths, cap)
        with grows.open("ab") as f:
            f.write(b"more" * 100)
        write(tmp_path / "appeared", 50)
        return result

    monkeypatch.setattr(outputs, "_plan", plan_then_write)
    report = trim_to_cap([tmp_path], 15)
    assert report == TrimReport(
        kept_bytes=15, truncated=sorted([grows, tmp_path / "later"]), removed=[tmp_path / "appeared"]
    )
    assert directory_usage([tmp_path]) == 15


def test_trim_rejects_a_negative_cap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="negative"):
        trim_to_cap([tmp_path], -1)


# --- OutputWatcher -----------------------------------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.usages: list[int] = []
        self.event = asyncio.Event()

    async def __call__(self, usage: int) -> None:
        self.usages.append(usage)
        self.event.set()


def watcher_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("output-watcher")]


async def test_watcher_calls_back_once_shortly_after_the_cap_is_crossed(tmp_path: Path) -> None:
    cap = 1 * MiB
    calls = Calls()
    chunk = b"w" * (64 * KiB)
    target = tmp_path / "out" / "data.bin"
    target.parent.mkdir()
    written_when_called: list[int] = []

    async def writer() -> None:
        with target.open("wb") as f:
            while not calls.event.is_set():
                f.write(chunk)
                f.flush()
                await asyncio.sleep(0.01)
            written_when_called.append(f.tell())
            for _ in range(20):  # the job is slow to stop: it goes on writing for a while
                f.write(chunk)
                f.flush()
                await asyncio.sleep(0.01)

    async with OutputWatcher([target.parent], cap, calls) as watcher:
        await asyncio.wait_for(writer(), timeout=30)

    assert len(calls.usages) == 1
    assert watcher.exceeded
    (usage,) = calls.usages
    assert cap < usage < cap + 4 * MiB
    assert written_when_called[0] < cap + 4 * MiB
    assert watcher.peak >= usage
    assert watcher_tasks() == []
    assert "output cap of 1Mi" in watcher.message()

    report = await asyncio.to_thread(trim_to_cap, [target.parent], cap)
    assert report.kept_bytes == cap
    assert target.stat().st_size == cap


async def test_watcher_does_not_call_back_under_the_cap(tmp_path: Path) -> None:
    calls = Calls()
    async with OutputWatcher([tmp_path], MiB, calls, interval=0.02) as watcher:
        with (tmp_path / "data").open("wb") as f:
            for _ in range(10):
                f.write(b"u" * (64 * KiB))
                f.flush()
                await asyncio.sleep(0.01)
        write(tmp_path / "exactly-to-the-cap", MiB - 10 * 64 * KiB)
        await asyncio.sleep(0.05)
    assert calls.usages == []
    assert not watcher.exceeded
    assert watcher.peak == MiB
    assert watcher_tasks() == []


async def test_watcher_catches_a_burst_written_since_the_last_poll_when_the_watch_ends(tmp_path: Path) -> None:
    calls = Calls()
    async with OutputWatcher([tmp_path], MiB, calls, interval=60, max_interval=60) as watcher:
        await asyncio.sleep(0.05)  # the first poll has run: nothing yet
        assert not watcher.exceeded
        write(tmp_path / "burst", 3 * MiB)
    assert watcher.exceeded
    assert len(calls.usages) == 1 and calls.usages[0] > MiB
    assert watcher_tasks() == []


async def test_watcher_stops_on_cancellation_without_a_final_scan(tmp_path: Path) -> None:
    calls = Calls()
    entered = asyncio.Event()

    async def job() -> None:
        async with OutputWatcher([tmp_path], 0, calls, interval=60, max_interval=60):
            await asyncio.sleep(0.05)
            write(tmp_path / "late", 10)
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(job())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls.usages == []
    assert watcher_tasks() == []


async def test_watcher_logs_a_failing_callback_and_calls_it_only_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    async def fails(usage: int) -> None:
        calls.append(usage)
        raise RuntimeError("cannot stop the container")

    write(tmp_path / "big", 100)
    with caplog.at_level(logging.ERROR, logger="haddock.executor.outputs"):
        async with OutputWatcher([tmp_path], 10, fails, interval=0.01) as watcher:
            await asyncio.sleep(0.1)
            assert await watcher.check() > 10
    assert watcher.exceeded
    assert calls == [100]
    assert "on_exceeded failed" in caplog.text


async def test_watcher_waits_for_a_running_callback_instead_of_cancelling_it(tmp_path: Path) -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow_stop(usage: int) -> None:
        started.set()
        await asyncio.sleep(0.1)
        finished.set()

    write(tmp_path / "big", 100)
    async with OutputWatcher([tmp_path], 10, slow_stop, interval=0.01):
        await started.wait()
    assert finished.is_set()


def test_watcher_backs_off_when_scans_are_slow() -> None:
    async def nothing(usage: int) -> None:
        pass

    watcher = OutputWatcher([], 0, nothing, interval=0.2, max_interval=10)
    assert watcher._next_delay() == 0.2
    watcher._last_scan_seconds = 0.5
    assert watcher._next_delay() == 2.5
    watcher._last_scan_seconds = 60
    assert watcher._next_delay() == 10


def test_watcher_rejects_bad_arguments() -> None:
    async def nothing(usage: int) -> None:
        pass

    with pytest.raises(ValueError):
        OutputWatcher([], -1, nothing)
    with pytest.raises(ValueError):
        OutputWatcher([], 1, nothing, interval=0)
    with pytest.raises(ValueError):
        OutputWatcher([], 1, nothing, interval=1, max_interval=0.5)


def test_watcher_message_names_the_cap_and_never_rounds_the_usage_down_to_it() -> None:
    async def nothing(usage: int) -> None:
        pass

    watcher = OutputWatcher([], 1024**3, nothing)
    watcher._peak = 1288490189  # 1.2Gi
    assert watcher.message() == (
        "the job wrote more than its output cap of 1Gi to its outputs (at least 1.2Gi); "
        "it was stopped, and what it wrote up to the cap is kept"
    )
    watcher._peak = 1024**3 + 1
    assert "(at least 1073741825 bytes)" in watcher.message()
