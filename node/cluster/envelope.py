"""The NCL envelope, byte for byte as Bacalhau's ``pkg/lib/envelope`` (see :mod:`.messages` for the release).

Layout of one message::

    +---------+----------------------+-----------------------------------------------+
    | version | CRC-32 (IEEE), BE    | body: {"metadata": {...}, "payload": {...}}   |
    | 1 byte  | 4 bytes, of the body | JSON (version 1)                               |
    +---------+----------------------+-----------------------------------------------+

The metadata is a map of strings; the message type is under ``Bacalhau-Type`` (Bacalhau also writes
the legacy key ``Type``, and reads it when the new one is missing), the payload's encoding under
``Bacalhau-PayloadEncoding`` (legacy ``PayloadEncoding``), always ``json``. The same metadata travels
as NATS headers. Pure functions: no I/O, no clock unless asked.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HEADER_SIZE",
    "KEY_EVENT_TIME",
    "KEY_MESSAGE_ID",
    "KEY_PAYLOAD_ENCODING",
    "KEY_SEQ_NUM",
    "KEY_SOURCE",
    "KEY_TYPE",
    "SCHEMA_JSON_V1",
    "EnvelopeError",
    "Message",
    "decode",
    "encode",
]

SCHEMA_JSON_V1 = 1  # envelope.SchemaVersionJSONV1; 2 is protobuf-v1, which haddock does not speak
SCHEMA_PROTOBUF_V1 = 2
VERSION_SIZE = 1
CRC_SIZE = 4
HEADER_SIZE = VERSION_SIZE + CRC_SIZE

KEY_TYPE = "Bacalhau-Type"
KEY_PAYLOAD_ENCODING = "Bacalhau-PayloadEncoding"
LEGACY_TYPE = "Type"
LEGACY_ENCODING = "PayloadEncoding"
KEY_SOURCE = "Bacalhau-Source"
KEY_EVENT_TIME = "Bacalhau-EventTime"  # nanoseconds since the epoch, decimal
KEY_MESSAGE_ID = "Bacalhau-MessageID"
KEY_SEQ_NUM = "Bacalhau-SeqNum"
PAYLOAD_JSON = "json"


class EnvelopeError(ValueError):
    """Bytes that are not a message: too short, unknown version, CRC mismatch, bad JSON, no type."""


@dataclass
class Message:
    """A decoded message: its metadata (strings) and its payload (the JSON object, not yet typed)."""

    metadata: dict[str, str] = field(default_factory=dict)
    payload: Any = None

    @property
    def type(self) -> str:
        return self.metadata.get(KEY_TYPE) or self.metadata.get(LEGACY_TYPE, "")

    def get_int(self, key: str) -> int | None:
        value = self.metadata.get(key)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            return None

    @property
    def seq_num(self) -> int | None:
        return self.get_int(KEY_SEQ_NUM)


def encode(
    message_type: str,
    payload: Any,
    metadata: dict[str, str] | None = None,
    *,
    source: str | None = None,
    event_time_ns: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The wire bytes and the headers of one message (``payload`` is JSON-able, e.g. a model's dump)."""
    meta = dict(metadata or {})
    meta[KEY_TYPE] = meta[LEGACY_TYPE] = message_type
    meta[KEY_PAYLOAD_ENCODING] = meta[LEGACY_ENCODING] = PAYLOAD_JSON
    if source is not None:
        meta[KEY_SOURCE] = source
    if event_time_ns is not None:
        meta[KEY_EVENT_TIME] = str(event_time_ns)
    body = json.dumps({"metadata": meta, "payload": payload}, separators=(",", ":"), ensure_ascii=False).encode()
    return frame(body), meta


def frame(body: bytes, version: int = SCHEMA_JSON_V1) -> bytes:
    """Version byte and CRC in front of ``body``."""
    return struct.pack(">BI", version, zlib.crc32(body) & 0xFFFFFFFF) + body


def decode(data: bytes) -> Message:
    """The message in ``data``; :class:`EnvelopeError` says what is wrong with bytes that are not one."""
    if len(data) < HEADER_SIZE:
        raise EnvelopeError(f"bad message: too short ({len(data)} bytes; the header alone is {HEADER_SIZE})")
    version, expected = struct.unpack_from(">BI", data)
    if version != SCHEMA_JSON_V1:
        name = "protobuf-v1" if version == SCHEMA_PROTOBUF_V1 else f"0x{version:02x}"
        raise EnvelopeError(f"unsupported encoding: schema version {name} (haddock speaks json-v1)")
    body = data[HEADER_SIZE:]
    actual = zlib.crc32(body) & 0xFFFFFFFF
    if actual != expected:
        raise EnvelopeError(f"bad message: CRC check failed (header {expected:#010x}, body {actual:#010x})")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError(f"deserialization failed (json-v1): {exc}") from exc
    if not isinstance(doc, dict):
        raise EnvelopeError("deserialization failed (json-v1): the body is not a JSON object")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise EnvelopeError("deserialization failed (json-v1): metadata must map strings to strings")
    encoding = meta.get(KEY_PAYLOAD_ENCODING) or meta.get(LEGACY_ENCODING, "")
    if encoding != PAYLOAD_JSON:
        raise EnvelopeError(f"unsupported encoding: payload encoding {encoding!r} (haddock reads json)")
    message = Message(metadata=dict(meta), payload=doc.get("payload"))
    if not message.type:
        raise EnvelopeError("bad message: no message type in its metadata (Bacalhau-Type)")
    return message


def headers(metadata: dict[str, str]) -> dict[str, str]:
    """The NATS headers of a message: its metadata."""
    return dict(metadata)
