"""Proto ⇄ domain conversion of what a requester asks for: the request, with its service spec, output limits,
input sources and publishers. Private: import from :mod:`haddock.node.client.convert`.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration

from haddock.executor.jobspec import JOB_SOURCE_TARGET
from haddock.executor.publishers import LocalPublisherSpec, PublisherSpec
from haddock.executor.request import NetworkMode, OutputLimits, PullPolicy, RunCommandRequest
from haddock.executor.servicespec import HttpProbe, RestartPolicy, ServicePort, ServiceSpec
from haddock.executor.sources import InlineSource, InputSource, LocalSource, UrlSource
from haddock.node.client._conv_core import (
    ConversionError,
    duration,
    enum_value,
    kind_from_pb,
    kind_to_pb,
    resources_to_pb,
)
from haddock.node.client.convert_job import job_into_request_data, job_to_pb
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

_RESTART_TO_PB = {
    RestartPolicy.NEVER: pb.RESTART_POLICY_NEVER,
    RestartPolicy.ON_FAILURE: pb.RESTART_POLICY_ON_FAILURE,
    RestartPolicy.ALWAYS: pb.RESTART_POLICY_ALWAYS,
}
_RESTART_FROM_PB = {v: k for k, v in _RESTART_TO_PB.items()} | {pb.RESTART_POLICY_UNSPECIFIED: RestartPolicy.ON_FAILURE}


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
            "pull_policy": enum_value(_PULL_FROM_PB, engine.pull_policy, "pull_policy"),
        },
        "resources": {
            "cpu": p.resources.cpu,
            "memory": p.resources.memory_bytes,
            "disk": p.resources.disk_bytes,
            "gpu": p.resources.gpu,
        },
        "network": {"mode": enum_value(_NETWORK_FROM_PB, p.network.mode, "network mode")},
        "inputs": [{"source": v.source, "target": v.target, "read_only": v.read_only} for v in p.inputs],
        "input_sources": [source_from_pb(src) for src in p.input_sources],
        "publishers": [publisher_from_pb(pub) for pub in p.publishers],
        "outputs": [{"name": o.name, "path": o.path} for o in p.outputs],
        "output_limits": limits,
        "timeout": p.timeout.ToTimedelta().total_seconds() if p.HasField("timeout") else None,
        "kind": kind_from_pb(p.kind),
    }
    if p.HasField("service"):
        data["service"] = service_from_pb(p.service)
    if p.HasField("job"):
        source = source_from_pb(p.job.source) if p.job.HasField("source") else None
        job_into_request_data(p.job, data, source)
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
        kind=kind_to_pb(r.kind),
    )
    if r.timeout is not None:
        msg.timeout.CopyFrom(duration(r.timeout))
    if r.service is not None:
        msg.service.CopyFrom(service_to_pb(r.service))
    if r.job is not None:
        msg.job.CopyFrom(job_to_pb(r.job, r, source_to_pb))
        kept = [s for s in msg.input_sources if _target(s) != JOB_SOURCE_TARGET]
        del msg.input_sources[:]
        msg.input_sources.extend(kept)
    return msg


def _target(src: pb.InputSource) -> str:
    kind = src.WhichOneof("source")
    return str(getattr(src, kind).target) if kind else ""


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
    restart: dict[str, Any] = {"policy": enum_value(_RESTART_FROM_PB, p.restart.policy, "restart policy")}
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
