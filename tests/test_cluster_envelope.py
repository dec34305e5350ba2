"""The NCL envelope: Bacalhau's layout (version byte, big-endian CRC-32 IEEE of the body, JSON)."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haddock.node.cluster import envelope
from haddock.node.cluster import messages as m

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
metadata = st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=12), max_size=4)


@given(st.text(min_size=1, max_size=30), st.dictionaries(st.text(max_size=8), json_values, max_size=5), metadata)
def test_round_trip(message_type: str, payload: dict[str, object], meta: dict[str, str]) -> None:
    data, headers = envelope.encode(message_type, payload, meta, source="n1", event_time_ns=123)
    decoded = envelope.decode(data)
    assert decoded.type == message_type
    assert decoded.payload == payload
    assert decoded.metadata == headers
    assert headers[envelope.KEY_SOURCE] == "n1" and headers[envelope.KEY_EVENT_TIME] == "123"


@given(st.binary(min_size=1, max_size=200))
def test_any_corruption_of_the_body_is_caught(noise: bytes) -> None:
    data, _ = envelope.encode("AskForBid", {"a": 1})
    body = bytearray(data[envelope.HEADER_SIZE :])
    for i, b in enumerate(noise):
        body[i % len(body)] ^= b or 1
    if bytes(body) == data[envelope.HEADER_SIZE :]:
        return  # the flips cancelled out
    with pytest.raises(envelope.EnvelopeError, match="CRC"):
        envelope.decode(data[: envelope.HEADER_SIZE] + bytes(body))


def test_layout_is_bacalhaus() -> None:
    data, meta = envelope.encode(m.HEARTBEAT_REQUEST, {"NodeID": "n1"})
    version, crc = struct.unpack(">BI", data[:5])
    assert version == 1
    assert crc == zlib.crc32(data[5:])
    doc = json.loads(data[5:])
    assert set(doc) == {"metadata", "payload"}
    # Bacalhau writes the type and encoding under both the new and the legacy keys.
    assert doc["metadata"]["Bacalhau-Type"] == doc["metadata"]["Type"] == "transport.HeartbeatRequest"
    assert doc["metadata"]["Bacalhau-PayloadEncoding"] == doc["metadata"]["PayloadEncoding"] == "json"
    assert meta == doc["metadata"]


def test_a_message_written_by_bacalhau_decodes() -> None:
    """A body as Go's encoding/json writes it, with only the legacy type key (older senders)."""
    body = (
        b'{"metadata":{"Type":"BidAccepted","PayloadEncoding":"json"},"payload":{"ExecutionID":"e-1","Accepted":true}}'
    )
    decoded = envelope.decode(envelope.frame(body))
    assert decoded.type == "BidAccepted"
    assert m.BidAcceptedRequest.model_validate(decoded.payload).execution_id == "e-1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x01\x00\x00", "too short"),
        (envelope.frame(b"{}", version=2), "protobuf-v1"),
        (envelope.frame(b"{}", version=9), "0x09"),
        (b"\x01\x00\x00\x00\x00{}", "CRC check failed"),
        (envelope.frame(b"{not json"), "deserialization failed"),
        (envelope.frame(b"[1, 2]"), "not a JSON object"),
        (envelope.frame(b'{"metadata": {"Bacalhau-PayloadEncoding": "json"}, "payload": {}}'), "no message type"),
        (envelope.frame(b'{"metadata": {"Type": "X", "PayloadEncoding": "proto"}, "payload": {}}'), "encoding"),
        (envelope.frame(b'{"metadata": {"Type": 1}, "payload": {}}'), "strings"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(envelope.EnvelopeError, match=message):
        envelope.decode(data)


def test_wire_names() -> None:
    """Bacalhau's spellings: `stderr` in lower case, `accepted`, the handshake's start sequence, `QueueCapacity`."""
    r = m.dump(m.RunCommandResult(stdout="o", stderr="e", exit_code=3))
    assert set(r) == {"Stdout", "StdoutTruncated", "stderr", "StderrTruncated", "ExitCode", "ErrorMsg"}
    h = m.HandshakeResponse.model_validate({"accepted": True, "LastComputeSeqNum": 4, "LastOrchestratorSeqNum": 7})
    assert (h.accepted, h.last_compute_seq_num, h.starting_orchestrator_seq_num) == (True, 4, 7)
    assert "QueueCapacity" in m.dump(m.ComputeNodeInfo())
    assert m.subject_in("n1") == "bacalhau.global.compute.n1.in.msgs"
    assert m.subject_out("n1") == "bacalhau.global.compute.n1.out.msgs"
    assert m.subject_control("n1") == "bacalhau.global.compute.n1.out.ctrl"
