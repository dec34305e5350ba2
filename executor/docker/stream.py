"""Docker's multiplexed attach/log stream, read by hand.

``logs(stream=True)`` in docker-py drops which stream a chunk came from; the raw stream
keeps it. Each frame: an 8-byte header (stream type, 3 zero bytes, big-endian uint32
length) and that many bytes of payload. Stream 0 is stdin (never sent to us),
1 stdout, 2 stderr.
"""

from __future__ import annotations

import struct

from haddock.executor.streams import StreamType

HEADER = struct.Struct(">BxxxL")


class StreamProtocolError(Exception):
    """The engine sent something that is not a multiplexed stream."""


class Demuxer:
    """Incremental parser: feed it bytes as they arrive, get (stream, payload) pieces back.

    A frame's payload may be returned in several pieces as it arrives, so memory stays
    bounded by what was fed, not by the engine's frame size.
    """

    __slots__ = ("_buf", "_remaining", "_stream")

    def __init__(self) -> None:
        self._buf = b""
        self._stream: StreamType | None = None
        self._remaining = 0

    def feed(self, data: bytes) -> list[tuple[StreamType, bytes]]:
        out: list[tuple[StreamType, bytes]] = []
        buf = self._buf + data if self._buf else data
        pos = 0
        end = len(buf)
        while pos < end:
            if self._remaining:
                assert self._stream is not None
                take = min(self._remaining, end - pos)
                out.append((self._stream, buf[pos : pos + take]))
                pos += take
                self._remaining -= take
                continue
            if end - pos < HEADER.size:
                break
            kind, length = HEADER.unpack_from(buf, pos)
            if kind not in (1, 2) or buf[pos + 1 : pos + 4] != b"\x00\x00\x00":
                raise StreamProtocolError(f"unexpected stream header {buf[pos : pos + 8].hex()}")
            self._stream = StreamType(kind)
            self._remaining = length
            pos += HEADER.size
        self._buf = buf[pos:]
        return out

    @property
    def pending(self) -> bool:
        """True when the input ended in the middle of a frame."""
        return bool(self._buf) or self._remaining > 0


def coalesce(pieces: list[tuple[StreamType, bytes]]) -> list[tuple[StreamType, bytes]]:
    """Join consecutive pieces of one stream: one log write per read per stream, not per engine frame."""
    runs: list[tuple[StreamType, list[bytes]]] = []
    for kind, data in pieces:
        if runs and runs[-1][0] is kind:
            runs[-1][1].append(data)
        else:
            runs.append((kind, [data]))
    return [(kind, parts[0] if len(parts) == 1 else b"".join(parts)) for kind, parts in runs]
