"""The node-owned log store: framing, resume, follow, tail, crash tolerance."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haddock.executor.logstore import (
    FRAME_OVERHEAD,
    MAX_FRAME_DATA,
    LogCorrupted,
    LogEntry,
    LogNotFound,
    LogStore,
    LogWriter,
)
from haddock.executor.streams import StreamType

OUT = StreamType.STDOUT
ERR = StreamType.STDERR
MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs")


async def collect(store: LogStore, execution_id: str, **kwargs: Any) -> list[LogEntry]:
    return [e async for e in store.read(execution_id, **kwargs)]


def joined(entries: Iterable[LogEntry], stream: StreamType | None = None) -> bytes:
    return b"".join(e.data for e in entries if stream is None or e.stream == stream)


def assert_chained(entries: list[LogEntry], start: int = 0) -> None:
    pos = start
    for e in entries:
        assert e.offset == pos
        assert e.next_offset == e.offset + FRAME_OVERHEAD + len(e.data)
        pos = e.next_offset


def random_writes(seed: int, total: int, max_chunk: int = 100_000) -> list[tuple[StreamType, bytes]]:
    rng = random.Random(seed)
    out: list[tuple[StreamType, bytes]] = []
    left = total
    while left:
        n = min(left, rng.randint(1, max_chunk))
        out.append((rng.choice((OUT, ERR)), rng.randbytes(n)))
        left -= n
    return out


def write_all(writer: LogWriter, writes: list[tuple[StreamType, bytes]], close: bool = True) -> None:
    for stream, data in writes:
        writer.write(stream, data)
    if close:
        writer.close()


def expected(writes: list[tuple[StreamType, bytes]], stream: StreamType) -> bytes:
    return b"".join(d for s, d in writes if s == stream)


# ---------------------------------------------------------------------------
# Round trip, framing, resume
# ---------------------------------------------------------------------------


async def test_round_trip_mixed_streams(store: LogStore) -> None:
    big = os.urandom(MiB)
    writes = [(OUT, b"hello\n"), (ERR, b"oops\n"), (OUT, b""), (OUT, big), (ERR, b"bye")]
    with store.create("ex-1") as w:
        before = time.time_ns()
        write_all(w, writes, close=False)
        assert w.bytes_written == {OUT: 6 + MiB, ERR: 8}
        assert w.stdout_bytes == 6 + MiB and w.stderr_bytes == 8
    assert w.closed and w.complete
    assert store.is_complete("ex-1")

    entries = await collect(store, "ex-1")
    assert_chained(entries)
    assert [(e.stream, e.data) for e in entries[:2]] == [(OUT, b"hello\n"), (ERR, b"oops\n")]
    big_frames = entries[2:-1]
    assert len(big_frames) == MiB // MAX_FRAME_DATA
    assert all(e.stream == OUT and len(e.data) == MAX_FRAME_DATA for e in big_frames)
    assert joined(big_frames) == big
    assert (entries[-1].stream, entries[-1].data) == (ERR, b"bye")
    assert all(before <= e.timestamp_ns <= time.time_ns() for e in entries)
    # The END frame follows the last entry.
    assert store.end_offset("ex-1") == entries[-1].next_offset + FRAME_OVERHEAD
    assert store.path("ex-1").stat().st_size == store.end_offset("ex-1")

    only_err = await collect(store, "ex-1", streams=frozenset({ERR}))
    assert [e.data for e in only_err] == [b"oops\n", b"bye"]


async def test_resume_from_every_offset(store: LogStore) -> None:
    writes = random_writes(1, 300_000, max_chunk=30_000)
    write_all(store.create("ex"), writes)
    entries = await collect(store, "ex")
    assert joined(entries, OUT) == expected(writes, OUT)
    for i, e in enumerate(entries):
        assert await collect(store, "ex", offset=e.next_offset) == entries[i + 1 :]
        assert await collect(store, "ex", offset=e.offset) == entries[i:]
    # Resuming at the very end (just before or after END) yields nothing.
    assert await collect(store, "ex", offset=store.end_offset("ex")) == []


async def test_offset_inside_a_frame_is_rejected(store: LogStore) -> None:
    with store.create("ex") as w:
        w.write(OUT, b"a" * 100)
        w.write(ERR, b"b" * 100)
    entries = await collect(store, "ex")
    end = store.end_offset("ex")
    for bad in (1, 15, 16, 50, entries[0].next_offset - 1, entries[1].offset + 3, end + 1, end + 1000):
        with pytest.raises(ValueError, match=rf"offset {bad} is not the start of a log record"):
            await collect(store, "ex", offset=bad)
    with pytest.raises(ValueError, match="negative"):
        await collect(store, "ex", offset=-1)


async def test_errors(store: LogStore, tmp_path: Path) -> None:
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    assert not store.exists("nope")
    with pytest.raises(LogNotFound):
        await collect(store, "nope")
    with pytest.raises(LogNotFound):
        store.open_append("nope")
    with pytest.raises(LogNotFound):
        store.end_offset("nope")
    with pytest.raises(ValueError, match="execution id"):
        store.create("../escape")

    w = store.create("ex")
    assert store.exists("ex")
    with pytest.raises(FileExistsError):
        store.create("ex")
    with pytest.raises(ValueError, match="already has a writer"):
        store.open_append("ex")
    with pytest.raises(ValueError, match="still being written"):
        store.delete("ex")
    w.write(OUT, b"x")
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(OUT, b"y")
    with pytest.raises(ValueError, match="complete"):
        store.open_append("ex")
    store.delete("ex")
    store.delete("ex")  # a missing log is not an error
    assert not store.exists("ex")


async def test_reader_never_reads_past_committed(store: LogStore) -> None:
    w = store.create("ex")
    w.write(OUT, b"visible")
    # Bytes in the file beyond what the writer committed (as if a write were in progress).
    fd = os.open(store.path("ex"), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"\xad\x01\x00\x00\x00\x00")
    os.close(fd)
    entries = await collect(store, "ex")
    assert [e.data for e in entries] == [b"visible"]
    assert store.end_offset("ex") == w.committed == entries[0].next_offset
    w.close(complete=False)


# ---------------------------------------------------------------------------
# Follow
# ---------------------------------------------------------------------------


async def test_follower_gets_writes_from_another_thread(store: LogStore) -> None:
    w = store.create("ex")
    follower = asyncio.create_task(collect(store, "ex", follow=True))
    await asyncio.sleep(0.02)
    assert not follower.done()  # waiting for data: the log has no END yet

    writes = random_writes(2, 10 * MiB)
    thread = threading.Thread(target=write_all, args=(w, writes))
    thread.start()
    entries = await asyncio.wait_for(follower, 10)
    thread.join()
    assert_chained(entries)
    assert joined(entries, OUT) == expected(writes, OUT)
    assert joined(entries, ERR) == expected(writes, ERR)


async def test_fifty_followers_get_every_byte(store: LogStore) -> None:
    w = store.create("ex")

    async def follow(streams: frozenset[StreamType]) -> tuple[str, str]:
        h = {OUT: hashlib.sha256(), ERR: hashlib.sha256()}
        pos = 0
        async for e in store.read("ex", follow=True, streams=streams):
            assert e.offset >= pos
            pos = e.next_offset
            h[e.stream].update(e.data)
        return h[OUT].hexdigest(), h[ERR].hexdigest()

    followers = [asyncio.create_task(follow(frozenset(StreamType))) for _ in range(50)]
    await asyncio.sleep(0.01)
    writes = random_writes(3, 4 * MiB, max_chunk=20_000)
    thread = threading.Thread(target=write_all, args=(w, writes))
    thread.start()
    results = await asyncio.wait_for(asyncio.gather(*followers), 15)
    thread.join()
    want = (
        hashlib.sha256(expected(writes, OUT)).hexdigest(),
        hashlib.sha256(expected(writes, ERR)).hexdigest(),
    )
    assert all(r == want for r in results)


async def test_parked_follower_does_not_slow_the_writer(store: LogStore) -> None:
    w = store.create("ex")
    w.write(OUT, b"first")
    parked = store.read("ex", follow=True)
    first = await anext(parked)  # then never iterated while the writer works
    assert first.data == b"first"

    writes = random_writes(4, 20 * MiB, max_chunk=MiB)
    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.to_thread(write_all, w, writes), 10)
    assert w.closed and time.monotonic() - t0 < 10

    # The parked follower still gets everything, from the file.
    rest = [e async for e in parked]
    assert joined([first, *rest], OUT) == b"first" + expected(writes, OUT)
    assert joined(rest, ERR) == expected(writes, ERR)


async def test_wakeups_are_coalesced(store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    scheduled = 0
    real = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal scheduled
        if getattr(args[0], "__name__", "") == "_wake":  # (worker threads also use it)
            scheduled += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    w = store.create("ex")
    follower = asyncio.create_task(collect(store, "ex", follow=True))
    await asyncio.sleep(0.01)
    for i in range(1000):  # the loop does not run in between: one wake-up is pending
        w.write(OUT, b"%d\n" % i)
    assert scheduled == 1
    w.close()
    entries = await asyncio.wait_for(follower, 5)
    assert joined(entries) == b"".join(b"%d\n" % i for i in range(1000))
    assert scheduled <= 2


async def test_follow_without_writer_and_without_end_stops_at_eof(store: LogStore) -> None:
    w = store.create("ex")
    w.write(OUT, b"a")
    w.write(ERR, b"b")
    # Another store on the same directory (the node after a restart) sees no live writer.
    other = LogStore(store.root)
    entries = await asyncio.wait_for(collect(other, "ex", follow=True), 5)
    assert [e.data for e in entries] == [b"a", b"b"]
    assert not other.is_complete("ex")

    # Closed without END (node going down, container left running): followers stop too.
    follower = asyncio.create_task(collect(store, "ex", follow=True))
    await asyncio.sleep(0.01)
    w.close(complete=False)
    assert [e.data for e in await asyncio.wait_for(follower, 5)] == [b"a", b"b"]
    assert not store.is_complete("ex")
    entries = await asyncio.wait_for(collect(store, "ex", follow=True), 5)
    assert [e.data for e in entries] == [b"a", b"b"]


async def test_follow_complete_log_stops_at_end(store: LogStore) -> None:
    with store.create("ex") as w:
        w.write(OUT, b"done")
    entries = await asyncio.wait_for(collect(store, "ex", follow=True), 5)
    assert [e.data for e in entries] == [b"done"]
    other = LogStore(store.root)
    assert other.is_complete("ex")
    assert [e.data for e in await asyncio.wait_for(collect(other, "ex", follow=True), 5)] == [b"done"]


async def test_follow_from_offset_and_from_end(store: LogStore) -> None:
    w = store.create("ex")
    w.write(OUT, b"old")
    end = store.end_offset("ex")
    follower = asyncio.create_task(collect(store, "ex", follow=True, offset=end))
    await asyncio.sleep(0.01)
    w.write(ERR, b"new")
    w.close()
    assert [(e.stream, e.data) for e in await asyncio.wait_for(follower, 5)] == [(ERR, b"new")]


# ---------------------------------------------------------------------------
# Crash tolerance and corruption
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 5, 16, 20, 23])
async def test_partial_tail_frame_is_ignored_then_truncated(store: LogStore, cut: int) -> None:
    w = store.create("ex")
    w.write(OUT, b"one")
    w.write(ERR, b"two")
    w.write(OUT, b"three")  # 20 + 5 = 25 bytes: cut to `cut` bytes below
    w.close(complete=False)
    path = store.path("ex")
    size = path.stat().st_size
    good = size - 25
    os.truncate(path, good + cut)

    entries = await collect(store, "ex")
    assert [e.data for e in entries] == [b"one", b"two"]
    assert await asyncio.wait_for(collect(store, "ex", follow=True), 5) == entries
    assert store.end_offset("ex") == good
    assert not store.is_complete("ex")
    assert [e.data for e in await collect(store, "ex", tail_lines=5)] == [b"one", b"two"]

    w2 = store.open_append("ex")
    assert path.stat().st_size == good == w2.committed
    assert w2.bytes_written == {OUT: 3, ERR: 3}
    w2.write(OUT, b"four")
    w2.close()
    entries = await collect(store, "ex")
    assert_chained(entries)
    assert [e.data for e in entries] == [b"one", b"two", b"four"]
    assert store.is_complete("ex")


async def test_corrupted_middle_raises(store: LogStore) -> None:
    with store.create("ex") as w:
        for i in range(5):
            w.write(OUT, b"frame %d" % i)
    entries = await collect(store, "ex")
    path = store.path("ex")
    raw = bytearray(path.read_bytes())

    bad_magic = bytearray(raw)
    bad_magic[entries[2].offset] = 0x00
    path.write_bytes(bad_magic)
    with pytest.raises(LogCorrupted) as info:
        await collect(store, "ex")
    assert info.value.offset == entries[2].offset
    assert f"offset {entries[2].offset}" in str(info.value)
    # What came before the damage was yielded.
    got: list[bytes] = []
    with pytest.raises(LogCorrupted):
        async for e in store.read("ex"):
            got.append(e.data)
    assert got == [b"frame 0", b"frame 1"]

    bad_trailer = bytearray(raw)
    struct.pack_into(">I", bad_trailer, entries[1].next_offset - 4, 999)
    path.write_bytes(bad_trailer)
    with pytest.raises(LogCorrupted) as info:
        await collect(store, "ex")
    assert info.value.offset == entries[1].offset
    with pytest.raises(LogCorrupted):
        store.open_append("ex")
    with pytest.raises(LogCorrupted):
        await collect(store, "ex", tail_lines=10)


# ---------------------------------------------------------------------------
# Tail
# ---------------------------------------------------------------------------


def write_in_random_frames(w: LogWriter, text: bytes, seed: int, stream: StreamType = OUT) -> None:
    rng = random.Random(seed)
    pos = 0
    while pos < len(text):
        n = rng.choice((1, 3, 7, 40, 200, 5000))
        w.write(stream, text[pos : pos + n])
        pos += n


async def test_tail_lines(store: LogStore) -> None:
    lines = [b"line %d\n" % i for i in range(1000)]
    text = b"".join(lines)
    with store.create("ex") as w:
        write_in_random_frames(w, text, 5)
    for n in (1, 2, 10, 999):
        entries = await collect(store, "ex", tail_lines=n)
        assert joined(entries) == b"".join(lines[-n:]), n
        assert_chained(entries[1:], entries[0].next_offset)
    assert joined(await collect(store, "ex", tail_lines=1000)) == text
    assert joined(await collect(store, "ex", tail_lines=5000)) == text
    assert await collect(store, "ex", tail_lines=0) == []
    with pytest.raises(ValueError, match="tail_lines"):
        await collect(store, "ex", tail_lines=-1)


async def test_tail_lines_without_trailing_newline_and_per_stream(store: LogStore) -> None:
    w = store.create("ex")
    write_in_random_frames(w, b"".join(b"out %d\n" % i for i in range(100)) + b"partial", 6, OUT)
    write_in_random_frames(w, b"".join(b"err %d\n" % i for i in range(100)), 7, ERR)
    # Live writer: the tail is taken at what is committed.
    entries = await collect(store, "ex", tail_lines=3, streams=frozenset({OUT}))
    assert joined(entries) == b"out 98\nout 99\npartial"
    entries = await collect(store, "ex", tail_lines=2, streams=frozenset({ERR}))
    assert joined(entries) == b"err 98\nerr 99\n"
    # Both streams: the last lines of what was written, in order.
    entries = await collect(store, "ex", tail_lines=2)
    assert joined(entries) == b"err 98\nerr 99\n"
    # Lines are counted in the joined data of the selected streams: "partial" + "err 0\n" is one.
    entries = await collect(store, "ex", tail_lines=102)
    assert joined(entries) == b"out 98\nout 99\npartial" + b"".join(b"err %d\n" % i for i in range(100))

    # tail + follow: the tail, then what comes later.
    follower = asyncio.create_task(collect(store, "ex", tail_lines=1, follow=True, streams=frozenset({ERR})))
    await asyncio.sleep(0.01)
    w.write(ERR, b"later\n")
    w.close()
    assert joined(await asyncio.wait_for(follower, 5)) == b"err 99\nlater\n"


async def test_tail_partial_first_entry_offsets(store: LogStore) -> None:
    with store.create("ex") as w:
        w.write(OUT, b"a\nb\nc\n")
        w.write(OUT, b"d\n")
    entries = await collect(store, "ex", tail_lines=2)
    assert [e.data for e in entries] == [b"c\n", b"d\n"]
    full = await collect(store, "ex")
    # The cut entry carries its frame's offsets: resuming at its offset repeats the whole frame.
    assert (entries[0].offset, entries[0].next_offset) == (full[0].offset, full[0].next_offset)
    assert entries[1] == full[1]
    # A tail never reaches before the offset it is given.
    assert joined(await collect(store, "ex", tail_lines=3, offset=full[1].offset)) == b"d\n"


# ---------------------------------------------------------------------------
# Property: any writes read back identically, offsets chain
# ---------------------------------------------------------------------------

write_strategy = st.lists(
    st.tuples(st.sampled_from([OUT, ERR]), st.binary(max_size=64), st.integers(1, 2500)),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=write_strategy)
async def test_property_round_trip(ops: list[tuple[StreamType, bytes, int]]) -> None:
    writes = [(s, d * k) for s, d, k in ops]
    with tempfile.TemporaryDirectory() as tmp:
        store = LogStore(Path(tmp))
        with store.create("p") as w:
            write_all(w, writes, close=False)
        entries = await collect(store, "p")
        assert_chained(entries)
        assert all(0 < len(e.data) <= MAX_FRAME_DATA for e in entries)
        for stream in StreamType:
            assert joined(entries, stream) == expected(writes, stream)
            assert w.bytes_written[stream] == len(expected(writes, stream))
        assert store.end_offset("p") == (entries[-1].next_offset if entries else 0) + FRAME_OVERHEAD
        for e in entries[:: max(1, len(entries) // 5)]:
            assert await collect(store, "p", offset=e.next_offset) == entries[entries.index(e) + 1 :]


def test_sync_is_safe_from_another_thread_and_after_close(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs")
    writer = store.create("sync-1")
    writer.write(StreamType.STDOUT, b"durable\n")
    t = threading.Thread(target=writer.sync)
    t.start()
    t.join()
    writer.close()
    writer.sync()  # a no-op once closed
    assert store.is_complete("sync-1")
