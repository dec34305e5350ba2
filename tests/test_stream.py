"""Docker's multiplexed stream, parsed incrementally."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haddock.executor.docker.stream import Demuxer, StreamProtocolError
from haddock.executor.streams import StreamType


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


frames = st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=30)


@given(frames, st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_any_split_reassembles_per_stream(parts: list[tuple[int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(frame(k, p) for k, p in parts)
    demux = Demuxer()
    got: dict[StreamType, bytes] = {StreamType.STDOUT: b"", StreamType.STDERR: b""}
    order: list[StreamType] = []
    pos = 0
    i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        for kind, data in demux.feed(wire[pos : pos + step]):
            got[kind] += data
            if data and (not order or order[-1] is not kind):
                order.append(kind)
        pos += step
        i += 1
    assert not demux.pending
    for kind in (StreamType.STDOUT, StreamType.STDERR):
        assert got[kind] == b"".join(p for k, p in parts if k == kind)
    expected_order: list[StreamType] = []
    for k, p in parts:
        if p and (not expected_order or expected_order[-1] is not StreamType(k)):
            expected_order.append(StreamType(k))
    assert order == expected_order


def test_pending_when_cut_inside_frame() -> None:
    demux = Demuxer()
    assert demux.feed(frame(1, b"hello")[:7]) == []
    assert demux.pending


def test_bad_header_raises() -> None:
    with pytest.raises(StreamProtocolError):
        Demuxer().feed(b"\x07\x00\x00\x00\x00\x00\x00\x01x")
