"""Translation between the wire contract (``haddock.v1``) and the executor's domain models.

Used by the servicers (proto → domain on the way in, domain → proto on the way out) and by the
client (the other way round): each message has its one pair of functions here. Validation happens in
the domain models: converting a bad proto raises ``pydantic.ValidationError`` with a message that names
the field, and :func:`validation_message` turns that into the one line both sides show.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from haddock.executor.logstore import LogEntry
from haddock.executor.models import (
    EventKind,
    ExecutionEvent,
    ExecutionKind,
    ExecutionState,
    HttpProbe,
    LogQuery,
    NetworkMode,
    OutputLimits,
    PullPolicy,
    Resources,
    RestartPolicy,
    ResultStatus,
    RunCommandRequest,
    RunCommandResult,
    ServicePort,
    ServiceSpec,
    StreamType,
)
from haddock.executor.publishers import LocalPublisherSpec, PublisherSpec
from haddock.executor.sources import InlineSource, InputSource, LocalSource, UrlSource
from haddock.executor.stats import METRICS, Stat, StatsSummary
from haddock.node.client._info import NodeInfo, ServiceInfo
from haddock.v1 import executor_pb2, node_pb2
from haddock.v1 import types_pb2 as pb

_NETWORK_TO_PB = {
    NetworkMode.NONE: pb.NETWORK_MODE_NONE,
    NetworkMode.BRIDGE: pb.NETWORK_MODE_BRIDGE,
    NetworkMode.HOST: pb.NETWORK_MODE_HOST,
}
_NETWORK_FROM_PB = {v: k for k, v in _NETWORK_TO_PB.items()} | {pb.NETWORK_MODE_UNSPECIFIED: NetworkMode.NONE}

_PULL_TO_PB = {
    PullPolicy.ALWAYS: pb.PULL_POLICY_ALWAYS,
    PullPolicy.IF_NOT_PRESENT: pb.PULL_POLICY_IF_NOT_PRESENT,
    PullPolicy.NEVER: pb.PULL_POLICY_NEVER,
}
_PULL_FROM_PB = {v: k for k, v in _PULL_TO_PB.items()} | {pb.PULL_POLICY_UNSPECIFIED: PullPolicy.IF_NOT_PRESENT}

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

_RESTART_TO_PB = {
    RestartPolicy.NEVER: pb.RESTART_POLICY_NEVER,
    RestartPolicy.ON_FAILURE: pb.RESTART_POLICY_ON_FAILURE,
    RestartPolicy.ALWAYS: pb.RESTART_POLICY_ALWAYS,
}
_RESTART_FROM_PB = {v: k for k, v in _RESTART_TO_PB.items()} | {pb.RESTART_POLICY_UNSPECIFIED: RestartPolicy.ON_FAILURE}

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


def _enum(table: dict[Any, Any], value: Any, what: str) -> Any:
    try:
        return table[value]
    except KeyError:
        raise ConversionError(f"{what} {value} is not a known value") from None


# --------------------------------------------------------------------- enums


def state_to_pb(state: ExecutionState) -> pb.ExecutionState.ValueType:
    return _STATE_TO_PB[state]


def state_from_pb(value: int) -> ExecutionState:
    result: ExecutionState = _enum(_STATE_FROM_PB, value, "execution state")
    return result


def kind_to_pb(kind: ExecutionKind) -> pb.ExecutionKind.ValueType:
    return _KIND_TO_PB[kind]


def kind_from_pb(value: int) -> ExecutionKind:
    result: ExecutionKind = _enum(_KIND_FROM_PB, value, "execution kind")
    return result


def stream_to_pb(stream: StreamType) -> pb.StreamType.ValueType:
    return _STREAM_TO_PB[stream]


def stream_from_pb(value: int) -> StreamType:
    result: StreamType = _enum(_STREAM_FROM_PB, value, "stream type")
    return result


def status_from_pb(value: int) -> ResultStatus:
    result: ResultStatus = _enum(_STATUS_FROM_PB, value, "result status")
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


# --------------------------------------------------------------------- resources


def resources_to_pb(r: Resources) -> pb.Resources:
    return pb.Resources(cpu=r.cpu, memory_bytes=r.memory, disk_bytes=r.disk, gpu=r.gpu)


def resources_from_pb(r: pb.Resources) -> Resources:
    return Resources(cpu=r.cpu, memory=r.memory_bytes, disk=r.disk_bytes, gpu=r.gpu)


# --------------------------------------------------------------------- requests


def request_from_pb(p: pb.RunCommandRequest) -> RunCommandRequest:
    """The domain request (results_dir unset: the node chooses it). Raises ValidationError."""
    limits: dict[str, int] = {}
    for name in (
        "max_stdout_file_length",
        "max_stdout_return_length",
        "max_stderr_file_length",
        "max_stderr_return_length",
    ):
        if p.output_limits.HasField(name):
            limits[name] = getattr(p.output_limits, name)
    engine = p.engine
    data: dict[str, Any] = {
        "job_id": p.job_id,
        "execution_id": p.execution_id,
        "engine": {
            "image": engine.image,
            "entrypoint": list(engine.entrypoint) or None,
            "parameters": list(engine.parameters),
            "env": dict(engine.env),
            "working_dir": engine.working_dir or None,
            "pull_policy": _enum(_PULL_FROM_PB, engine.pull_policy, "pull_policy"),
        },
        "resources": {
            "cpu": p.resources.cpu,
            "memory": p.resources.memory_bytes,
            "disk": p.resources.disk_bytes,
            "gpu": p.resources.gpu,
        },
        "network": {"mode": _enum(_NETWORK_FROM_PB, p.network.mode, "network mode")},
        "inputs": [{"source": v.source, "target": v.target, "read_only": v.read_only} for v in p.inputs],
        "input_sources": [source_from_pb(src) for src in p.input_sources],
        "publishers": [publisher_from_pb(pub) for pub in p.publishers],
        "outputs": [{"name": o.name, "path": o.path} for o in p.outputs],
        "output_limits": limits,
        "timeout": p.timeout.ToTimedelta().total_seconds() if p.HasField("timeout") else None,
        "kind": _enum(_KIND_FROM_PB, p.kind, "execution kind"),
    }
    if p.HasField("service"):
        data["service"] = service_from_pb(p.service)
    return RunCommandRequest.model_validate(data)


def request_to_pb(r: RunCommandRequest) -> pb.RunCommandRequest:
    e = r.engine
    msg = pb.RunCommandRequest(
        job_id=r.job_id,
        execution_id=r.execution_id,
        engine=pb.DockerEngineSpec(
            image=e.image,
            entrypoint=e.entrypoint or [],
            parameters=e.parameters,
            env=e.env,
            working_dir=e.working_dir or "",
            pull_policy=_PULL_TO_PB[e.pull_policy],
        ),
        resources=resources_to_pb(r.resources),
        network=pb.NetworkConfig(mode=_NETWORK_TO_PB[r.network.mode]),
        inputs=[pb.InputVolume(source=str(v.source), target=v.target, read_only=v.read_only) for v in r.inputs],
        outputs=[pb.ResultPath(name=o.name, path=o.path) for o in r.outputs],
        output_limits=limits_to_pb(r.output_limits),
        input_sources=[source_to_pb(src) for src in r.input_sources],
        publishers=[publisher_to_pb(pub) for pub in r.publishers],
        kind=_KIND_TO_PB[r.kind],
    )
    if r.timeout is not None:
        msg.timeout.CopyFrom(duration(r.timeout))
    if r.service is not None:
        msg.service.CopyFrom(service_to_pb(r.service))
    return msg


# --------------------------------------------------------------------- services


def _seconds(d: Duration) -> float:
    return d.ToTimedelta().total_seconds()


def port_from_pb(p: pb.ServicePort) -> dict[str, Any]:
    return {
        "name": p.name or "http",
        "container_port": p.container_port,
        "protocol": p.protocol or "tcp",
        "host_port": p.host_port or None,
        "host_ip": p.host_ip or None,
    }


def port_to_pb(port: ServicePort) -> pb.ServicePort:
    return pb.ServicePort(
        name=port.name,
        container_port=port.container_port,
        protocol=port.protocol,
        host_port=port.host_port or 0,
        host_ip=port.host_ip or "",
    )


def _probe_from_pb(p: pb.HttpProbe) -> dict[str, Any]:
    data: dict[str, Any] = {"port": p.port or None, "path": p.path or "/"}
    for name in ("interval", "timeout", "start_period"):
        if p.HasField(name):
            data[name] = _seconds(getattr(p, name))
    if p.HasField("failure_threshold"):
        data["failure_threshold"] = p.failure_threshold
    return data


def _probe_to_pb(probe: HttpProbe) -> pb.HttpProbe:
    return pb.HttpProbe(
        port=probe.port or "",
        path=probe.path,
        interval=duration(probe.interval),
        timeout=duration(probe.timeout),
        failure_threshold=probe.failure_threshold,
        start_period=duration(probe.start_period),
    )


def service_from_pb(p: pb.ServiceSpec) -> dict[str, Any]:
    """A service spec as data for the domain model (validated there)."""
    restart: dict[str, Any] = {"policy": _enum(_RESTART_FROM_PB, p.restart.policy, "restart policy")}
    if p.restart.HasField("max_restarts"):
        restart["max_restarts"] = p.restart.max_restarts
    for name in ("backoff_initial", "backoff_max"):
        if p.restart.HasField(name):
            restart[name] = _seconds(getattr(p.restart, name))
    return {
        "name": p.name or None,
        "ports": [port_from_pb(port) for port in p.ports],
        "readiness": _probe_from_pb(p.readiness) if p.HasField("readiness") else None,
        "liveness": _probe_from_pb(p.liveness) if p.HasField("liveness") else None,
        "image_healthcheck": p.image_healthcheck,
        "restart": restart,
    }


def service_to_pb(spec: ServiceSpec) -> pb.ServiceSpec:
    r = spec.restart
    msg = pb.ServiceSpec(
        name=spec.name or "",
        ports=[port_to_pb(p) for p in spec.ports],
        image_healthcheck=spec.image_healthcheck,
        restart=pb.RestartSpec(
            policy=_RESTART_TO_PB[r.policy],
            max_restarts=r.max_restarts,
            backoff_initial=duration(r.backoff_initial),
            backoff_max=duration(r.backoff_max),
        ),
    )
    if spec.readiness is not None:
        msg.readiness.CopyFrom(_probe_to_pb(spec.readiness))
    if spec.liveness is not None:
        msg.liveness.CopyFrom(_probe_to_pb(spec.liveness))
    return msg


def limits_to_pb(limits: OutputLimits) -> pb.OutputLimits:
    return pb.OutputLimits(
        max_stdout_file_length=limits.max_stdout_file_length,
        max_stdout_return_length=limits.max_stdout_return_length,
        max_stderr_file_length=limits.max_stderr_file_length,
        max_stderr_return_length=limits.max_stderr_return_length,
    )


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


# --------------------------------------------------------------------- results and events


def result_to_pb(r: RunCommandResult, results_dir: str = "") -> pb.RunCommandResult:
    msg = pb.RunCommandResult(
        status=_STATUS_TO_PB[r.status],
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
        stream=_STREAM_TO_PB[entry.stream],
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


# --------------------------------------------------------------------- node info


def info_to_pb(info: NodeInfo) -> node_pb2.GetNodeInfoResponse:
    return node_pb2.GetNodeInfoResponse(
        node_id=info.node_id,
        version=info.version,
        engine_version=info.engine_version,
        capacity=resources_to_pb(info.capacity),
        allocated=resources_to_pb(info.allocated),
        queued=resources_to_pb(info.queued),
        free=resources_to_pb(info.free),
        running_executions=info.running,
        queued_executions=info.queued_count,
        services=[
            node_pb2.ServiceSummary(
                execution_id=svc.execution_id,
                name=svc.name,
                state=state_to_pb(svc.state),
                ports=[port_to_pb(p) for p in svc.ports],
            )
            for svc in info.services
        ],
        port_range_start=info.port_range[0],
        port_range_end=info.port_range[1],
        ports_in_use=info.ports_in_use,
        gateway_address=info.gateway_address,
    )


def info_from_pb(p: node_pb2.GetNodeInfoResponse) -> NodeInfo:
    return NodeInfo(
        node_id=p.node_id,
        version=p.version,
        engine_version=p.engine_version,
        capacity=resources_from_pb(p.capacity),
        allocated=resources_from_pb(p.allocated),
        queued=resources_from_pb(p.queued),
        free=resources_from_pb(p.free),
        running=p.running_executions,
        queued_count=p.queued_executions,
        services=[
            ServiceInfo(
                execution_id=svc.execution_id,
                name=svc.name,
                state=state_from_pb(svc.state),
                ports=[ServicePort.model_validate(port_from_pb(port)) for port in svc.ports],
            )
            for svc in p.services
        ],
        port_range=(p.port_range_start, p.port_range_end),
        ports_in_use=p.ports_in_use,
        gateway_address=p.gateway_address,
    )


# --------------------------------------------------------------------- input sources


def source_from_pb(p: pb.InputSource) -> dict[str, Any]:
    """An input source as data for the domain model (validated there)."""
    kind = p.WhichOneof("source")
    if kind is None:
        raise ConversionError("an input source must set one of inline, local, url or s3")
    body = getattr(p, kind)
    if kind == "inline":
        return {"type": "inline", "data_url": body.data_url, "target": body.target}
    if kind == "local":
        return {"type": "local", "path": body.path, "target": body.target, "read_write": body.read_write}
    if kind == "url":
        return {"type": "url", "url": body.url, "target": body.target, "sha256": body.sha256 or None}
    return {
        "type": "s3",
        "bucket": body.bucket,
        "key": body.key,
        "prefix": body.prefix,
        "filter": body.filter or None,
        "region": body.region or None,
        "endpoint_url": body.endpoint_url or None,
        "version_id": body.version_id or None,
        "sha256": body.sha256 or None,
        "target": body.target,
    }


def source_to_pb(src: InputSource) -> pb.InputSource:
    if isinstance(src, InlineSource):
        return pb.InputSource(inline=pb.InlineSource(data_url=src.data_url, target=src.target))
    if isinstance(src, LocalSource):
        return pb.InputSource(local=pb.LocalSource(path=src.path, target=src.target, read_write=src.read_write))
    if isinstance(src, UrlSource):
        return pb.InputSource(url=pb.UrlSource(url=src.url, target=src.target, sha256=src.sha256 or ""))
    return pb.InputSource(
        s3=pb.S3Source(
            bucket=src.bucket,
            key=src.key,
            prefix=src.prefix,
            filter=src.filter or "",
            region=src.region or "",
            endpoint_url=src.endpoint_url or "",
            version_id=src.version_id or "",
            sha256=src.sha256 or "",
            target=src.target,
        )
    )


# --------------------------------------------------------------------- publishers


def publisher_from_pb(p: pb.Publisher) -> dict[str, Any]:
    kind = p.WhichOneof("publisher")
    if kind is None:
        raise ConversionError("a publisher must set one of local or s3")
    if kind == "local":
        return {"type": "local", "archive": p.local.archive}
    s3 = p.s3
    data: dict[str, Any] = {
        "type": "s3",
        "bucket": s3.bucket,
        "region": s3.region or None,
        "endpoint_url": s3.endpoint_url or None,
        "archive": s3.archive,
    }
    if s3.key:
        data["key"] = s3.key
    return data


def publisher_to_pb(spec: PublisherSpec) -> pb.Publisher:
    if isinstance(spec, LocalPublisherSpec):
        return pb.Publisher(local=pb.LocalPublisher(archive=spec.archive))
    return pb.Publisher(
        s3=pb.S3Publisher(
            bucket=spec.bucket,
            key=spec.key,
            region=spec.region or "",
            endpoint_url=spec.endpoint_url or "",
            archive=spec.archive,
        )
    )
