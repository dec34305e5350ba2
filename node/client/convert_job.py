"""proto ⇄ domain for jobs of job types (``JobSpec``): the manifest, the source, the payload.

On the way in the job's source becomes one of the request's input sources, mounted at
:data:`~haddock.executor.jobspec.JOB_SOURCE_TARGET` (whatever target the requester gave), and an empty
engine image becomes the job's placeholder; on the way out the source travels in the job again.
"""

from __future__ import annotations

from typing import Any

from haddock.executor.jobspec import JOB_SOURCE_TARGET, JobManifest, JobSpec, job_engine_image
from haddock.executor.request import RunCommandRequest
from haddock.executor.sources import InputSource
from haddock.v1 import types_pb2 as pb

__all__ = ["job_into_request_data", "job_to_pb", "manifest_from_pb", "manifest_to_pb"]


def manifest_from_pb(m: pb.JobManifest) -> dict[str, Any]:
    data: dict[str, Any] = {"name": m.name, "jobtype": m.jobtype}
    if m.version:
        data["version"] = m.version
    if m.owner_email:
        data["owner_email"] = m.owner_email
    for name in ("jobtype_extra", "runtime_env", "build_env", "labels"):
        data[name] = dict(getattr(m, name))
    data["system_dependencies"] = list(m.system_dependencies)
    data["resources"] = {k: getattr(m.resources, k) or None for k in ("memory_min", "memory_max", "cpu_min", "cpu_max")}
    data["not_applied"] = list(m.not_applied)
    return data


def manifest_to_pb(m: JobManifest) -> pb.JobManifest:
    r = m.resources
    return pb.JobManifest(
        name=m.name,
        version=m.version,
        jobtype=m.jobtype,
        owner_email=m.owner_email or "",
        jobtype_extra={k: str(v) for k, v in m.jobtype_extra.items() if v is not None},
        runtime_env=m.runtime_env,
        build_env=m.build_env,
        system_dependencies=m.system_dependencies,
        resources=pb.JobResources(
            memory_min=r.memory_min or "",
            memory_max=r.memory_max or "",
            cpu_min=str(r.cpu_min or ""),
            cpu_max=str(r.cpu_max or ""),
        ),
        labels=m.labels,
        not_applied=m.not_applied,
    )


def job_into_request_data(p: pb.JobSpec, data: dict[str, Any], source: dict[str, Any] | None) -> None:
    """Fill the request's data (for the domain model) with the job: its spec, its source as an input."""
    data["job"] = {
        "manifest": manifest_from_pb(p.manifest),
        "payload": p.payload if p.HasField("payload") else None,
    }
    if source is not None:
        source = {**source, "target": JOB_SOURCE_TARGET}
        if source not in data["input_sources"]:
            data["input_sources"] = [s for s in data["input_sources"] if s.get("target") != JOB_SOURCE_TARGET]
            data["input_sources"].append(source)
    if not data["engine"]["image"]:
        data["engine"]["image"] = job_engine_image(p.manifest.name)  # a bad name: the manifest says so


def job_to_pb(job: JobSpec, request: RunCommandRequest, source_to_pb: Any) -> pb.JobSpec:
    msg = pb.JobSpec(manifest=manifest_to_pb(job.manifest))
    if job.payload is not None:
        msg.payload = job.payload
    source: InputSource | None = next((s for s in request.input_sources if s.target == JOB_SOURCE_TARGET), None)
    if source is not None:
        msg.source.CopyFrom(source_to_pb(source))
    return msg
