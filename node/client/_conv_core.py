"""Proto ⇄ domain conversion, the basics the other parts share: enums, time, durations, resources, and how a
conversion fails (:class:`ConversionError`, :func:`validation_message`). Private: import from
:mod:`haddock.node.client.convert`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from haddock.executor.records import ExecutionState, ResultStatus
from haddock.executor.request import ExecutionKind, Resources
from haddock.executor.streams import StreamType
from haddock.v1 import types_pb2 as pb

_STATUS_TO_PB = {
    ResultStatus.SUCCESS: pb.RESULT_STATUS_SUCCESS,
    ResultStatus.ERROR: pb.RESULT_STATUS_ERROR,
    ResultStatus.TIMEOUT: pb.RESULT_STATUS_TIMEOUT,
    ResultStatus.KILLED: pb.RESULT_STATUS_KILLED,
    ResultStatus.CANCELLED: pb.RESULT_STATUS_CANCELLED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}

_STATE_TO_PB = {
    ExecutionState.QUEUED: pb.EXECUTION_STATE_QUEUED,
    ExecutionState.PREPARING: pb.EXECUTION_STATE_PREPARING,
    ExecutionState.RUNNING: pb.EXECUTION_STATE_RUNNING,
    ExecutionState.FINISHING: pb.EXECUTION_STATE_FINISHING,
    ExecutionState.COMPLETED: pb.EXECUTION_STATE_COMPLETED,
    ExecutionState.FAILED: pb.EXECUTION_STATE_FAILED,
    ExecutionState.CANCELLED: pb.EXECUTION_STATE_CANCELLED,
    ExecutionState.STARTING: pb.EXECUTION_STATE_STARTING,
    ExecutionState.READY: pb.EXECUTION_STATE_READY,
    ExecutionState.UNHEALTHY: pb.EXECUTION_STATE_UNHEALTHY,
    ExecutionState.RESTARTING: pb.EXECUTION_STATE_RESTARTING,
    ExecutionState.STOPPING: pb.EXECUTION_STATE_STOPPING,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}

_KIND_TO_PB = {ExecutionKind.BATCH: pb.EXECUTION_KIND_BATCH, ExecutionKind.SERVICE: pb.EXECUTION_KIND_SERVICE}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()} | {pb.EXECUTION_KIND_UNSPECIFIED: ExecutionKind.BATCH}

_STREAM_TO_PB = {StreamType.STDOUT: pb.STREAM_TYPE_STDOUT, StreamType.STDERR: pb.STREAM_TYPE_STDERR}
_STREAM_FROM_PB = {v: k for k, v in _STREAM_TO_PB.items()}


class ConversionError(ValueError):
    """A proto value has no domain meaning (e.g. an unknown enum number)."""


def validation_message(exc: ValidationError) -> str:
    """One line per problem: ``field.path: what is wrong``."""
    parts = []
    errors = exc.errors()
    for err in errors[:5]:
        loc = ".".join(str(p)[:100] for p in err["loc"] if p != "__root__")
        msg = str(err["msg"]).removeprefix("Value error, ")
        msg = msg if len(msg) <= 300 else msg[:300] + "…"
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "invalid request: " + "; ".join(parts)


def enum_value(table: dict[Any, Any], value: Any, what: str) -> Any:
    try:
        return table[value]
    except KeyError:
        raise ConversionError(f"{what} {value} is not a known value") from None


# --------------------------------------------------------------------- enums


def state_to_pb(state: ExecutionState) -> pb.ExecutionState.ValueType:
    return _STATE_TO_PB[state]


def state_from_pb(value: int) -> ExecutionState:
    result: ExecutionState = enum_value(_STATE_FROM_PB, value, "execution state")
    return result


def kind_to_pb(kind: ExecutionKind) -> pb.ExecutionKind.ValueType:
    return _KIND_TO_PB[kind]


def kind_from_pb(value: int) -> ExecutionKind:
    result: ExecutionKind = enum_value(_KIND_FROM_PB, value, "execution kind")
    return result


def stream_to_pb(stream: StreamType) -> pb.StreamType.ValueType:
    return _STREAM_TO_PB[stream]


def stream_from_pb(value: int) -> StreamType:
    result: StreamType = enum_value(_STREAM_FROM_PB, value, "stream type")
    return result


def status_from_pb(value: int) -> ResultStatus:
    result: ResultStatus = enum_value(_STATUS_FROM_PB, value, "result status")
    return result


def status_to_pb(status: ResultStatus) -> pb.ResultStatus.ValueType:
    return _STATUS_TO_PB[status]


# --------------------------------------------------------------------- time


def timestamp(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


# --------------------------------------------------------------------- resources


def resources_to_pb(r: Resources) -> pb.Resources:
    return pb.Resources(cpu=r.cpu, memory_bytes=r.memory, disk_bytes=r.disk, gpu=r.gpu)


def resources_from_pb(r: pb.Resources) -> Resources:
    return Resources(cpu=r.cpu, memory=r.memory_bytes, disk=r.disk_bytes, gpu=r.gpu)
