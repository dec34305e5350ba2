"""Proto ⇄ domain conversion of what comes back from an execution: its result, resource statistics, lifecycle
events and log stream. Private: import from :mod:`haddock.node.client.convert`.
"""

from __future__ import annotations

from haddock.executor.logstore import LogEntry
from haddock.executor.records import EventKind, ExecutionEvent, RunCommandResult
from haddock.executor.stats import METRICS, Stat, StatsSummary
from haddock.executor.streams import LogQuery, StreamType
from haddock.node.client._conv_core import (
    from_timestamp,
    status_from_pb,
    status_to_pb,
    stream_from_pb,
    stream_to_pb,
    timestamp,
)
from haddock.v1 import executor_pb2
from haddock.v1 import types_pb2 as pb

# --------------------------------------------------------------------- results and events


def result_to_pb(r: RunCommandResult, results_dir: str = "") -> pb.RunCommandResult:
    msg = pb.RunCommandResult(
        status=status_to_pb(r.status),
        stdout=r.stdout,
        stdout_truncated=r.stdout_truncated,
        stdout_file_truncated=r.stdout_file_truncated,
        stderr=r.stderr,
        stderr_truncated=r.stderr_truncated,
        stderr_file_truncated=r.stderr_file_truncated,
        error_message=r.error_message,
        results_dir=results_dir,
        published=r.published,
        publish_errors=r.publish_errors,
    )
    if r.exit_code is not None:
        msg.exit_code = r.exit_code
    if r.stats is not None:
        msg.stats.CopyFrom(summary_to_pb(r.stats))
    return msg


def result_from_pb(p: pb.RunCommandResult) -> RunCommandResult:
    return RunCommandResult(
        status=status_from_pb(p.status),
        exit_code=p.exit_code if p.HasField("exit_code") else None,
        stdout=p.stdout,
        stdout_truncated=p.stdout_truncated,
        stdout_file_truncated=p.stdout_file_truncated,
        stderr=p.stderr,
        stderr_truncated=p.stderr_truncated,
        stderr_file_truncated=p.stderr_file_truncated,
        error_message=p.error_message,
        published=list(p.published),
        publish_errors=list(p.publish_errors),
        stats=summary_from_pb(p.stats) if p.HasField("stats") else None,
    )


# --------------------------------------------------------------------- resource statistics


def summary_to_pb(s: StatsSummary) -> pb.StatsSummary:
    return pb.StatsSummary(**s.model_dump())


def summary_from_pb(p: pb.StatsSummary) -> StatsSummary:
    return StatsSummary(**{name: getattr(p, name) for name in StatsSummary.model_fields})


def stat_to_pb(s: Stat) -> pb.StatSample:
    msg = pb.StatSample(samples=s.samples)
    for name in METRICS:
        setattr(msg, name, float(getattr(s, name)))
    ts = timestamp(s.time)
    assert ts is not None
    msg.time.CopyFrom(ts)
    return msg


def stat_from_pb(p: pb.StatSample) -> Stat:
    return Stat(time=from_timestamp(p.time), samples=max(1, p.samples), **{name: getattr(p, name) for name in METRICS})


def event_from_pb(e: pb.ExecutionEvent, execution_id: str) -> ExecutionEvent:
    return ExecutionEvent(
        execution_id=execution_id,
        kind=EventKind(e.kind),
        message=e.message,
        time=from_timestamp(e.time),
        details=dict(e.details),
    )


def event_to_pb(e: ExecutionEvent) -> pb.ExecutionEvent:
    msg = pb.ExecutionEvent(
        kind=e.kind.value,
        message=e.message,
        details={k: str(v) for k, v in e.details.items() if v is not None},
    )
    ts = timestamp(e.time)
    assert ts is not None
    msg.time.CopyFrom(ts)
    return msg


# --------------------------------------------------------------------- logs


def log_query_to_pb(execution_id: str, query: LogQuery) -> executor_pb2.GetLogStreamRequest:
    """The request for ``query``; every stream is asked for by naming none (the node's default)."""
    msg = executor_pb2.GetLogStreamRequest(
        execution_id=execution_id,
        with_history=query.with_history,
        follow=query.follow,
        streams=[] if query.streams == frozenset(StreamType) else [stream_to_pb(s) for s in sorted(query.streams)],
    )
    if query.offset is not None:
        msg.offset = query.offset
    if query.tail_lines is not None:
        msg.tail_lines = query.tail_lines
    return msg


def log_query_from_pb(p: executor_pb2.GetLogStreamRequest) -> LogQuery:
    """What a GetLogStream request asks; no stream named means both."""
    return LogQuery(
        with_history=p.with_history,
        follow=p.follow,
        offset=p.offset if p.HasField("offset") else None,
        tail_lines=p.tail_lines if p.HasField("tail_lines") else None,
        streams=frozenset(stream_from_pb(s) for s in p.streams) or frozenset(StreamType),
    )


def log_entry_to_pb(entry: LogEntry) -> executor_pb2.GetLogStreamResponse:
    return executor_pb2.GetLogStreamResponse(
        stream=stream_to_pb(entry.stream),
        data=entry.data,
        offset=entry.offset,
        next_offset=entry.next_offset,
        timestamp_unix_nano=entry.timestamp_ns,
    )


def log_entry_from_pb(p: executor_pb2.GetLogStreamResponse) -> LogEntry:
    return LogEntry(
        stream=stream_from_pb(p.stream),
        data=p.data,
        offset=p.offset,
        next_offset=p.next_offset,
        timestamp_ns=p.timestamp_unix_nano,
    )
