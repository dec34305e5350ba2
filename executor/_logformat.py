"""The on-disk format of a log file: frames, their constants, and reading them (forward, backward, tail).

Private to :mod:`haddock.executor.logstore`, which is the log store's public face.

File format
===========

The file is a sequence of frames::

    offset  size  field
    0       1     magic, 0xAD
    1       1     stream: 1 = stdout, 2 = stderr, 0xFF = END marker
    2       2     reserved, zero
    4       4     data length N, uint32 big-endian (at most MAX_FRAME_DATA = 64 KiB)
    8       8     timestamp, uint64 big-endian, nanoseconds since the epoch
    16      N     data
    16+N    4     trailer: total frame length 16 + N + 4, uint32 big-endian

A write larger than ``MAX_FRAME_DATA`` is split into several frames (all with the same
timestamp). The trailer lets the file be scanned backwards (for ``tail_lines``).

The END frame (stream 0xFF, no data) marks the log complete: nothing follows it, and a follower
stops when it reaches it.

A frame cut short at the end of the file (the node crashed in the middle of a write) is not part
of the log: readers stop before it, and :meth:`LogStore.open_append` truncates it before
appending. A bad magic, stream, reserved field or length, or a trailer that does not match its
header, anywhere before the end raises :class:`LogCorrupted` with the frame's offset.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from haddock.executor import logcap
from haddock.executor.streams import StreamType

MAGIC = 0xAD
END_STREAM = 0xFF
MAX_FRAME_DATA = logcap.MAX_FRAME_DATA
HEADER = struct.Struct(">BBHIQ")
TRAILER = struct.Struct(">I")
FRAME_OVERHEAD = HEADER.size + TRAILER.size  # 20
assert FRAME_OVERHEAD == logcap.FRAME_OVERHEAD
MAX_FRAME = FRAME_OVERHEAD + MAX_FRAME_DATA
READ_BLOCK = 1024 * 1024
"""Readers read the file in blocks of this size."""

VALID_STREAMS = frozenset({int(StreamType.STDOUT), int(StreamType.STDERR), END_STREAM})


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One frame of output (or, for the first entry of a ``tail_lines`` read, the end of one)."""

    stream: StreamType
    data: bytes
    offset: int
    """Byte position of this frame: resume with ``offset=entry.offset`` to get it again."""
    next_offset: int
    """Position after it: resume with ``offset=entry.next_offset`` for what follows."""
    timestamp_ns: int
    """When the node received the data, in nanoseconds since the epoch."""


class LogCorrupted(Exception):
    """The log file holds something that is not a frame where a frame should start."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"log {path} is corrupted at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


def not_a_record(offset: int, why: str) -> ValueError:
    return ValueError(f"offset {offset} is not the start of a log record: {why}")


def parse_header(buf: bytes, i: int, offset: int, path: Path) -> tuple[int, int, int]:
    """Check the header at ``buf[i:i+16]`` (file position ``offset``); return (stream, length, ts)."""
    magic, stream, reserved, length, ts = HEADER.unpack_from(buf, i)
    if magic != MAGIC:
        raise LogCorrupted(path, offset, f"bad magic byte 0x{magic:02x}")
    if stream not in VALID_STREAMS:
        raise LogCorrupted(path, offset, f"unknown stream {stream}")
    if reserved != 0:
        raise LogCorrupted(path, offset, "reserved header bytes are not zero")
    if length > MAX_FRAME_DATA:
        raise LogCorrupted(path, offset, f"frame length {length} is larger than {MAX_FRAME_DATA}")
    if stream == END_STREAM and length != 0:
        raise LogCorrupted(path, offset, "the END frame carries data")
    return stream, length, ts


def parse_frame(buf: bytes, i: int, base: int, path: Path) -> tuple[int, int, int] | None:
    """Parse the frame at ``buf[i:]`` (``buf[0]`` is at file position ``base``).

    Return (stream, data length, timestamp), or None if the buffer does not hold the whole frame.
    """
    if len(buf) - i < HEADER.size:
        return None
    offset = base + i
    stream, length, ts = parse_header(buf, i, offset, path)
    end = i + HEADER.size + length
    if len(buf) < end + TRAILER.size:
        return None
    (total,) = TRAILER.unpack_from(buf, end)
    if total != length + FRAME_OVERHEAD:
        raise LogCorrupted(path, offset, f"trailer says {total} bytes, header says {length + FRAME_OVERHEAD}")
    return stream, length, ts


@dataclass(slots=True)
class ScanResult:
    end: int  # position after the last whole frame (the END frame included)
    complete: bool  # an END frame was found (end is just after it)
    bytes_written: dict[StreamType, int]


def scan_forward(fd: int, path: Path, size: int) -> ScanResult:
    """Walk every frame from the start; stop at END or at a frame cut short by the end of the file."""
    counts = {StreamType.STDOUT: 0, StreamType.STDERR: 0}
    buf = b""
    base = 0  # file position of buf[0]
    i = 0
    while True:
        frame = parse_frame(buf, i, base, path)
        if frame is None:
            read_at = base + len(buf)
            if read_at >= size:
                return ScanResult(base + i, False, counts)
            chunk = os.pread(fd, min(READ_BLOCK, size - read_at), read_at)
            if not chunk:
                return ScanResult(base + i, False, counts)
            buf = buf[i:] + chunk
            base += i
            i = 0
            continue
        stream, length, _ = frame
        i += length + FRAME_OVERHEAD
        if stream == END_STREAM:
            return ScanResult(base + i, True, counts)
        counts[StreamType(stream)] += length


class BackReader:
    """Random access to the file for backward scans, through a cached block."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._start = 0
        self._data = b""

    def get(self, pos: int, n: int) -> bytes:
        if not (self._start <= pos and pos + n <= self._start + len(self._data)):
            lo = max(0, pos + n - READ_BLOCK)
            self._data = os.pread(self._fd, pos + n - lo, lo)
            self._start = lo
            if len(self._data) < pos + n - lo:
                raise OSError(f"short read at {lo}")
        i = pos - self._start
        return self._data[i : i + n]


def frame_ending_at(fd: int, path: Path, end: int) -> tuple[int, int, int, int] | None:
    """If a whole, consistent frame ends exactly at ``end``, return (start, stream, length, ts)."""
    if end < FRAME_OVERHEAD:
        return None
    (total,) = TRAILER.unpack(os.pread(fd, TRAILER.size, end - TRAILER.size))
    if not FRAME_OVERHEAD <= total <= MAX_FRAME or total > end:
        return None
    start = end - total
    head = os.pread(fd, HEADER.size, start)
    if len(head) < HEADER.size:
        return None
    try:
        stream, length, ts = parse_header(head, 0, start, path)
    except LogCorrupted:
        return None
    if length + FRAME_OVERHEAD != total:
        return None
    return start, stream, length, ts


def valid_tail_end(fd: int, path: Path, size: int) -> int:
    """The end of the last whole frame: the file size if the file ends with a frame, else a scan.

    The fast path trusts the last trailer when it points back at a consistent header; only a file
    with a cut-short last frame (after a crash) is scanned from the start.
    """
    if size == 0 or frame_ending_at(fd, path, size) is not None:
        return size
    return scan_forward(fd, path, size).end


def check_offset(fd: int, path: Path, offset: int, end: int) -> None:
    """Cheaply check that ``offset`` is a frame boundary at or before ``end``."""
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")
    if offset == 0:
        return
    if offset > end:
        raise not_a_record(offset, f"the log ends at {end}")
    if frame_ending_at(fd, path, offset) is None:
        raise not_a_record(offset, "no frame ends there")
    if offset < end:
        head = os.pread(fd, 1, offset)
        if not head or head[0] != MAGIC:
            raise not_a_record(offset, "no frame starts there")


def tail_start(
    fd: int, path: Path, floor: int, end: int, lines: int, streams: frozenset[StreamType]
) -> tuple[int, LogEntry | None]:
    """Where the last ``lines`` lines of ``streams`` begin, between ``floor`` and ``end``.

    Returns the frame boundary to read from, and, if the first line begins inside a frame, a
    partial entry holding the rest of that frame (to be yielded before reading on from its
    ``next_offset``). A newline at the very end does not count as a line.
    """
    if lines == 0:
        return end, None
    wanted = {int(s) for s in streams}
    reader = BackReader(fd)
    remaining = lines
    seen_last = False
    pos = end
    while pos > floor:
        (total,) = TRAILER.unpack(reader.get(pos - TRAILER.size, TRAILER.size))
        if not FRAME_OVERHEAD <= total <= MAX_FRAME or pos - total < floor:
            raise LogCorrupted(path, pos - TRAILER.size, f"trailer {total} does not point at a frame")
        start = pos - total
        stream, length, ts = parse_header(reader.get(start, HEADER.size), 0, start, path)
        if length + FRAME_OVERHEAD != total:
            raise LogCorrupted(path, start, f"trailer says {total} bytes, header says {length + FRAME_OVERHEAD}")
        if stream in wanted and length:
            data = reader.get(start + HEADER.size, length)
            hi = length
            if not seen_last:
                seen_last = True
                if data.endswith(b"\n"):
                    hi -= 1
            while True:
                k = data.rfind(b"\n", 0, hi)
                if k < 0:
                    break
                remaining -= 1
                if remaining == 0:
                    if k + 1 == length:
                        return pos, None
                    return pos, LogEntry(StreamType(stream), data[k + 1 :], start, pos, ts)
                hi = k
        pos = start
    return floor, None


def end_frame(ts: int) -> bytes:
    """The END frame, written at ``ts`` (nanoseconds since the epoch)."""
    return HEADER.pack(MAGIC, END_STREAM, 0, 0, ts) + TRAILER.pack(FRAME_OVERHEAD)
