"""The results writer: files, inline summaries, truncation flags, atomicity and memory bounds."""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haddock.executor.quantity import KiB, MiB
from haddock.executor.request import OutputLimits
from haddock.executor.results import (
    EXIT_CODE_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    JobResults,
    decode_inline,
    write_job_results,
)


def limits(
    out_file: int = MiB, out_return: int = 2 * KiB, err_file: int = MiB, err_return: int = 2 * KiB
) -> OutputLimits:
    return OutputLimits(
        max_stdout_file_length=out_file,
        max_stdout_return_length=out_return,
        max_stderr_file_length=err_file,
        max_stderr_return_length=err_return,
    )


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def split(data: bytes, sizes: Iterable[int]) -> AsyncIterator[bytes]:
    """Yield ``data`` in chunks of the given sizes (the last one takes what is left)."""
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        await asyncio.sleep(0)
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


def tiny_sizes(seed: int) -> Iterable[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(1, 7)


class Tracked:
    """An async iterator over chunks that records how far it was read and whether it was closed."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.yielded = 0
        self.closed = False

    def __aiter__(self) -> Tracked:
        return self

    async def __anext__(self) -> bytes:
        if self.yielded >= len(self.parts):
            raise StopAsyncIteration
        self.yielded += 1
        await asyncio.sleep(0)
        return self.parts[self.yielded - 1]

    async def aclose(self) -> None:
        self.closed = True


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------
# Files and summaries
# ---------------------------------------------------------------------------


async def test_small_streams_exact(tmp_path: Path) -> None:
    results = tmp_path / "a" / "b" / "results"  # created with parents
    res = await write_job_results(results, chunks(b"hello ", b"world\n"), chunks(b"oops\n"), 3, limits())
    assert isinstance(res, JobResults)
    assert (results / STDOUT_FILE).read_bytes() == b"hello world\n"
    assert (results / STDERR_FILE).read_bytes() == b"oops\n"
    assert (results / EXIT_CODE_FILE).read_bytes() == b"3"
    assert listing(results) == sorted([STDOUT_FILE, STDERR_FILE, EXIT_CODE_FILE])
    assert res.exit_code == 3
    assert res.stdout.text == "hello world\n"
    assert res.stdout.truncated is False
    assert res.stdout.file_truncated is False
    assert res.stdout.file_bytes == 12
    assert res.stdout.total_bytes == 12
    assert res.stderr.text == "oops\n"
    assert res.stderr.total_bytes == 5


async def test_negative_and_zero_exit_codes(tmp_path: Path) -> None:
    await write_job_results(tmp_path, chunks(), chunks(), 0, limits())
    assert (tmp_path / EXIT_CODE_FILE).read_bytes() == b"0"
    await write_job_results(tmp_path, chunks(), chunks(), -9, limits())
    assert (tmp_path / EXIT_CODE_FILE).read_bytes() == b"-9"


async def test_no_exit_code_file_when_no_process_ran(tmp_path: Path) -> None:
    res = await write_job_results(tmp_path, chunks(), chunks(b"pull failed"), None, limits())
    assert listing(tmp_path) == [STDERR_FILE, STDOUT_FILE]
    assert (tmp_path / STDOUT_FILE).read_bytes() == b""
    assert (tmp_path / STDERR_FILE).read_bytes() == b"pull failed"
    assert res.exit_code is None
    assert res.stdout == res.stdout.__class__("", False, False, 0, 0)


async def test_overwrites_previous_results(tmp_path: Path) -> None:
    await write_job_results(tmp_path, chunks(b"first run, long"), chunks(b"e1"), 1, limits())
    await write_job_results(tmp_path, chunks(b"second"), chunks(), 0, limits())
    assert (tmp_path / STDOUT_FILE).read_bytes() == b"second"
    assert (tmp_path / STDERR_FILE).read_bytes() == b""
    assert (tmp_path / EXIT_CODE_FILE).read_bytes() == b"0"
    assert listing(tmp_path) == sorted([STDOUT_FILE, STDERR_FILE, EXIT_CODE_FILE])


async def test_files_get_normal_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    await write_job_results(tmp_path, chunks(b"x"), chunks(), 0, limits())
    for name in (STDOUT_FILE, STDERR_FILE, EXIT_CODE_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644 & ~umask


# ---------------------------------------------------------------------------
# Big output: memory is O(limits)
# ---------------------------------------------------------------------------

CHUNK = 64 * KiB
BIG = 50 * MiB


def big_chunk(i: int) -> bytes:
    # Every chunk differs, so that a wrong offset would show in the file.
    return (i.to_bytes(4, "big") + bytes(range(256)) * (CHUNK // 256))[:CHUNK]


async def big_stream(consumed: list[int]) -> AsyncIterator[bytes]:
    for i in range(BIG // CHUNK):
        consumed[0] += CHUNK
        yield big_chunk(i)


def big_prefix(n: int) -> bytes:
    return b"".join(big_chunk(i) for i in range(-(-n // CHUNK)))[:n]


@pytest.mark.parametrize("drain", [False, True])
async def test_50mib_stream_bounded_memory(tmp_path: Path, drain: bool) -> None:
    consumed = [0]
    tracemalloc.start()
    try:
        res = await write_job_results(
            tmp_path,
            big_stream(consumed),
            chunks(b"err"),
            0,
            limits(out_file=MiB, out_return=100),
            drain=drain,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * MiB, f"peak traced memory {peak} bytes"
    data = (tmp_path / STDOUT_FILE).read_bytes()
    assert len(data) == MiB
    assert data == big_prefix(MiB)
    assert res.stdout.truncated is True
    assert res.stdout.file_truncated is True
    assert res.stdout.file_bytes == MiB
    assert len(res.stdout.text.encode()) == 100
    assert res.stdout.text == decode_inline(big_prefix(100), True)
    if drain:
        assert consumed[0] == BIG
        assert res.stdout.total_bytes == BIG
    else:
        # Stopped right after the chunk that went beyond the file limit.
        assert consumed[0] == MiB + CHUNK
        assert res.stdout.total_bytes is None
    assert res.stderr.text == "err"


# ---------------------------------------------------------------------------
# Inline filling, flags, early stop, drain
# ---------------------------------------------------------------------------


async def test_tiny_chunks_still_fill_inline_to_the_limit(tmp_path: Path) -> None:
    data = bytes(random.Random(1).randrange(32, 127) for _ in range(1000))
    res = await write_job_results(
        tmp_path,
        split(data, tiny_sizes(2)),
        split(data, tiny_sizes(3)),
        0,
        limits(out_file=500, out_return=100, err_file=2000, err_return=999),
    )
    assert res.stdout.text == data[:100].decode()
    assert res.stdout.truncated is True
    assert res.stdout.file_truncated is True
    assert (tmp_path / STDOUT_FILE).read_bytes() == data[:500]
    assert res.stderr.text == data[:999].decode()
    assert res.stderr.truncated is True
    assert res.stderr.file_truncated is False
    assert res.stderr.total_bytes == 1000
    assert (tmp_path / STDERR_FILE).read_bytes() == data


@pytest.mark.parametrize("size", [1, 3, 64])
async def test_exactly_at_limit_is_not_truncated(tmp_path: Path, size: int) -> None:
    data = b"z" * 64
    res = await write_job_results(tmp_path, split(data, [size] * 100), chunks(), 0, limits(out_file=64, out_return=64))
    assert res.stdout.truncated is False
    assert res.stdout.file_truncated is False
    assert res.stdout.total_bytes == 64
    assert res.stdout.text == "z" * 64
    assert (tmp_path / STDOUT_FILE).read_bytes() == data


@pytest.mark.parametrize("size", [1, 5, 65])
async def test_one_byte_over_the_limit_is_truncated(tmp_path: Path, size: int) -> None:
    data = b"z" * 65
    res = await write_job_results(tmp_path, split(data, [size] * 100), chunks(), 0, limits(out_file=64, out_return=64))
    assert res.stdout.truncated is True
    assert res.stdout.file_truncated is True
    assert res.stdout.text == "z" * 64
    assert (tmp_path / STDOUT_FILE).read_bytes() == data[:64]


async def test_early_stop_closes_the_source(tmp_path: Path) -> None:
    src = Tracked([b"abcd"] * 100)
    res = await write_job_results(tmp_path, src, chunks(), 0, limits(out_file=8, out_return=4))
    assert src.closed
    assert src.yielded == 3  # 12 bytes seen > max(8, 4)
    assert res.stdout.total_bytes is None
    assert res.stdout.truncated and res.stdout.file_truncated
    assert (tmp_path / STDOUT_FILE).read_bytes() == b"abcdabcd"
    assert res.stdout.text == "abcd"


async def test_early_stop_closes_an_async_generator(tmp_path: Path) -> None:
    state = {"closed": False, "yielded": 0}

    async def gen() -> AsyncIterator[bytes]:
        try:
            while True:
                state["yielded"] += 1
                yield b"x" * 10
        finally:
            state["closed"] = True

    await write_job_results(tmp_path, gen(), chunks(), 0, limits(out_file=15, out_return=25))
    assert state["closed"] is True
    assert state["yielded"] == 3


async def test_drain_reads_everything(tmp_path: Path) -> None:
    src = Tracked([b"abcd"] * 100)
    res = await write_job_results(tmp_path, src, chunks(), 0, limits(out_file=8, out_return=4), drain=True)
    assert src.yielded == 100
    assert not src.closed  # read to EOF, nothing to close
    assert res.stdout.total_bytes == 400
    assert res.stdout.file_bytes == 8
    assert res.stdout.truncated and res.stdout.file_truncated
    assert (tmp_path / STDOUT_FILE).read_bytes() == b"abcdabcd"


async def test_zero_limits_keep_nothing_but_flag_existence(tmp_path: Path) -> None:
    src = Tracked([b"a", b"b", b"c"])
    res = await write_job_results(
        tmp_path, src, chunks(), 0, limits(out_file=0, out_return=0, err_file=0, err_return=0)
    )
    assert (tmp_path / STDOUT_FILE).read_bytes() == b""
    assert res.stdout.text == ""
    assert res.stdout.truncated and res.stdout.file_truncated
    assert src.yielded == 1 and src.closed
    assert res.stderr.text == ""
    assert not res.stderr.truncated and not res.stderr.file_truncated
    assert res.stderr.total_bytes == 0


async def test_empty_chunks_are_ignored(tmp_path: Path) -> None:
    res = await write_job_results(tmp_path, chunks(b"", b"ab", b"", b"c", b""), chunks(b""), 0, limits(out_return=3))
    assert res.stdout.text == "abc"
    assert not res.stdout.truncated
    assert res.stderr.total_bytes == 0


async def test_multibyte_character_cut_at_the_limit(tmp_path: Path) -> None:
    data = "é€😀".encode() * 10  # 2 + 3 + 4 bytes per round
    for limit in range(1, 30):
        res = await write_job_results(tmp_path, chunks(data), chunks(), 0, limits(out_return=limit))
        assert "\ufffd" not in res.stdout.text
        encoded = res.stdout.text.encode()
        assert data.startswith(encoded)
        assert limit - 3 <= len(encoded) <= limit
        assert res.stdout.truncated


async def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    res = await write_job_results(tmp_path, chunks(b"ok\xff\xfe!"), chunks(), 0, limits(out_return=100))
    assert res.stdout.text == "ok\ufffd\ufffd!"
    assert (tmp_path / STDOUT_FILE).read_bytes() == b"ok\xff\xfe!"


# ---------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------


async def test_streams_are_consumed_concurrently(tmp_path: Path) -> None:
    """Like two pipes with small buffers: stdout cannot finish until stderr has been read."""
    stderr_read = asyncio.Event()
    stdout_read = asyncio.Event()

    async def out() -> AsyncIterator[bytes]:
        yield b"out-1 "
        stdout_read.set()
        await stderr_read.wait()
        yield b"out-2"

    async def err() -> AsyncIterator[bytes]:
        await stdout_read.wait()
        yield b"err-1"
        stderr_read.set()

    async with asyncio.timeout(5):
        res = await write_job_results(tmp_path, out(), err(), 0, limits())
    assert res.stdout.text == "out-1 out-2"
    assert res.stderr.text == "err-1"


# ---------------------------------------------------------------------------
# Atomicity
# ---------------------------------------------------------------------------


class SourceFailed(Exception):
    pass


async def failing(after: int, chunk: bytes = b"new" * 100_000) -> AsyncIterator[bytes]:
    for _ in range(after):
        await asyncio.sleep(0)
        yield chunk
    raise SourceFailed("boom")


async def test_source_failure_leaves_previous_files_and_no_debris(tmp_path: Path) -> None:
    (tmp_path / STDOUT_FILE).write_bytes(b"previous stdout")
    (tmp_path / STDERR_FILE).write_bytes(b"previous stderr")
    (tmp_path / EXIT_CODE_FILE).write_bytes(b"7")
    before = listing(tmp_path)

    stderr_state = {"closed": False}

    async def slow_err() -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield b"e"
        finally:
            stderr_state["closed"] = True

    with pytest.raises(SourceFailed):
        await write_job_results(tmp_path, failing(5), slow_err(), 1, limits(out_file=10 * MiB, err_file=10 * MiB))
    assert listing(tmp_path) == before
    assert (tmp_path / STDOUT_FILE).read_bytes() == b"previous stdout"
    assert (tmp_path / STDERR_FILE).read_bytes() == b"previous stderr"
    assert (tmp_path / EXIT_CODE_FILE).read_bytes() == b"7"
    assert stderr_state["closed"]


async def test_source_failure_with_no_previous_files(tmp_path: Path) -> None:
    with pytest.raises(SourceFailed):
        await write_job_results(tmp_path, chunks(b"fine"), failing(3), 0, limits())
    assert listing(tmp_path) == []


async def test_cancellation_leaves_no_debris(tmp_path: Path) -> None:
    (tmp_path / STDOUT_FILE).write_bytes(b"old")
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            started.set()
            await asyncio.sleep(0)
            yield b"y" * 70_000

    task = asyncio.create_task(write_job_results(tmp_path, endless(), endless(), 0, limits(), drain=True))
    await started.wait()
    for _ in range(20):  # let some writes reach the temp files
        await asyncio.sleep(0.001)
    assert any(name.endswith(".tmp") for name in listing(tmp_path))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert listing(tmp_path) == [STDOUT_FILE]
    assert (tmp_path / STDOUT_FILE).read_bytes() == b"old"


async def test_temp_files_are_hidden_beside_the_final_name(tmp_path: Path) -> None:
    seen: set[str] = set()

    async def watching() -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0.01)
            seen.update(listing(tmp_path))
            yield b"data"

    await write_job_results(tmp_path, watching(), chunks(), 0, limits())
    temps = {name for name in seen if name not in (STDOUT_FILE, STDERR_FILE, EXIT_CODE_FILE)}
    assert temps, "the temp files should exist while streams are read"
    assert all(name.startswith(".") and name.endswith(".tmp") for name in temps)
    assert STDOUT_FILE not in seen  # the final file appears only when complete


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

valid_text = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\ufffd"), max_size=200)


@given(text=valid_text, data=st.data())
def test_decode_inline_never_breaks_valid_utf8(text: str, data: st.DataObject) -> None:
    encoded = text.encode()
    cut = data.draw(st.integers(0, len(encoded)))
    head = encoded[:cut]
    out = decode_inline(head, truncated=cut < len(encoded))
    assert "\ufffd" not in out
    out_bytes = out.encode()
    assert encoded.startswith(out_bytes)
    assert cut - 3 <= len(out_bytes) <= cut
    # It is exactly the longest whole-character prefix.
    assert out == head.decode("utf-8", "ignore")
    if cut == len(encoded):
        assert out == text


@given(raw=st.binary(max_size=200), truncated=st.booleans())
def test_decode_inline_on_arbitrary_bytes(raw: bytes, truncated: bool) -> None:
    out = decode_inline(raw, truncated)
    assert len(out) <= len(raw)  # every output character comes from at least one input byte
    if not truncated:
        assert out == raw.decode("utf-8", "replace")
    else:
        # Only an incomplete trailing sequence (at most 3 bytes) is dropped; the rest is decoded as usual.
        assert any(out == raw[: len(raw) - k].decode("utf-8", "replace") for k in range(min(3, len(raw)) + 1))


def _split_points(draw: st.DrawFn, n: int) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=12)))
    sizes = []
    prev = 0
    for c in [*cuts, n]:
        sizes.append(c - prev)
        prev = c
    return sizes


@st.composite
def stream_case(draw: st.DrawFn) -> tuple[bytes, list[int], int, int]:
    payload = draw(st.one_of(st.binary(max_size=300), valid_text.map(str.encode)))
    sizes = _split_points(draw, len(payload))
    file_limit = draw(st.integers(0, len(payload) + 3))
    return_limit = draw(st.integers(0, len(payload) + 3))
    return payload, sizes, file_limit, return_limit


async def _sized(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos = 0
    for size in sizes:
        yield data[pos : pos + size]
        pos += size


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(out=stream_case(), err=stream_case(), drain=st.booleans())
def test_writer_properties(
    out: tuple[bytes, list[int], int, int], err: tuple[bytes, list[int], int, int], drain: bool
) -> None:
    (odata, osizes, ofile, oret), (edata, esizes, efile, eret) = out, err
    lim = limits(out_file=ofile, out_return=oret, err_file=efile, err_return=eret)
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        res = asyncio.run(
            write_job_results(directory, _sized(odata, osizes), _sized(edata, esizes), 0, lim, drain=drain)
        )
        for name, summary, data, file_limit, return_limit in (
            (STDOUT_FILE, res.stdout, odata, ofile, oret),
            (STDERR_FILE, res.stderr, edata, efile, eret),
        ):
            assert (directory / name).read_bytes() == data[:file_limit]
            assert summary.file_bytes == min(len(data), file_limit)
            assert summary.file_truncated == (len(data) > file_limit)
            assert summary.truncated == (len(data) > return_limit)
            assert summary.text == decode_inline(data[:return_limit], len(data) > return_limit)
            assert len(summary.text) <= return_limit
            if _is_utf8(data):
                encoded = summary.text.encode()
                assert data.startswith(encoded)
                assert len(encoded) <= return_limit
                assert "\ufffd" not in summary.text or "\ufffd" in data.decode()
            if drain or len(data) <= max(file_limit, return_limit):
                assert summary.total_bytes == len(data)
        assert listing(directory) == sorted([STDOUT_FILE, STDERR_FILE, EXIT_CODE_FILE])
