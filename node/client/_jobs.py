"""The requester's side of job types: a job's manifest read and checked before anything is sent, its source
packed (a local directory → a gzip tarball → an inline source), the request for a batch run or a deploy,
and a deploy that waits until the node has let the new execution take over (the node decides what it replaces).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

from haddock.executor.jobspec import (
    JOB_PORT,
    JOB_SOURCE_TARGET,
    JobManifest,
    ManifestError,
    not_applied_message,
    parse_manifest,
)
from haddock.executor.quantity import MiB, format_bytes
from haddock.executor.records import EventKind
from haddock.executor.request import RunCommandRequest
from haddock.executor.sources import InlineSource, InputSource, source_from_uri
from haddock.node.client._client import NodeClient
from haddock.node.client._services import until_ready

__all__ = [
    "DEFAULT_INLINE_MAX",
    "DEPLOYED_WAIT",
    "deploy_job",
    "job_source",
    "load_manifest",
    "pack_source",
    "say_not_applied",
    "service_for_job",
]

DEPLOYED_WAIT = 300.0  # seconds after ready for the node's `deployed` event (stopping the older ones drains them)
DEFAULT_INLINE_MAX = 1 * MiB  # the node's default [storage.inline] max_bytes
_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}


def load_manifest(directory: Path | None, manifest: Path | None) -> JobManifest:
    """``job.yaml`` at the source's root unless given; refused here (naming the field) before any build."""
    path = manifest or (directory / "job.yaml" if directory is not None else None)
    if path is None:
        raise ManifestError("give the job's directory, or --manifest with a source given by --job-source")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return parse_manifest(text, where=str(path))


def say_not_applied(manifest: JobManifest) -> None:
    """One note on stderr when the manifest has fields of Racetrack's cluster (``git``, ``replicas``…)."""
    if manifest.not_applied:
        sys.stderr.write(f"note: {not_applied_message(manifest.not_applied)}\n")


def pack_source(directory: Path, *, max_bytes: int = DEFAULT_INLINE_MAX) -> InlineSource:
    """A local directory as an inline gzip tarball (``.git``, ``__pycache__``, ``.venv`` left out)."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            for name in sorted([*dirs, *files]):
                path = Path(root) / name
                info = tar.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                elif info.isdir() or info.issym():
                    tar.addfile(info)
    data = buf.getvalue()
    if len(data) > max_bytes:
        raise ValueError(
            f"the job's source packs to {format_bytes(len(data))}, more than an inline source may carry "
            f"({format_bytes(max_bytes)}); give it as a tarball with --job-source (http(s)://, s3://, or a path "
            "under the node's local roots)"
        )
    return InlineSource(
        data_url="data:application/gzip;base64," + base64.b64encode(data).decode(), target=JOB_SOURCE_TARGET
    )


def job_source(directory: Path | None, uri: str | None) -> InputSource:
    """The job's source: ``--job-source`` (any input source: file://, http(s)://, s3://, data:), else the
    local directory packed inline."""
    if uri:
        return source_from_uri(uri, JOB_SOURCE_TARGET)
    if directory is None:
        raise ValueError("give the job's directory or --job-source")
    return pack_source(directory)


def service_for_job(manifest: JobManifest) -> dict[str, Any]:
    """A job's service spec: port 7000, liveness /live, readiness /ready, the job's name."""
    probe = {"port": "http", "interval": 1.0, "timeout": 2.0, "failure_threshold": 3, "start_period": 120.0}
    return {
        "name": manifest.name,
        "ports": [{"name": "http", "container_port": JOB_PORT}],
        "readiness": {**probe, "path": "/ready"},
        "liveness": {**probe, "path": "/live"},
        "restart": {"policy": "on-failure", "max_restarts": 3},
    }


async def deploy_job(client: NodeClient, request: RunCommandRequest, *, deployed_timeout: float | None = None) -> int:
    """Start the job as a service and wait until it is ready and has taken over: the node itself stops the
    running executions of the same job and version once this one is ready (a failed deploy stops none);
    what it replaced is printed on stderr. The wait for the node's ``deployed`` event after ready is bounded
    (``deployed_timeout``, default :data:`DEPLOYED_WAIT`): past it, exit 1 saying what is known."""
    assert request.job is not None
    manifest = request.job.manifest
    started = await client.start(request)
    exec_id = started.execution_id
    code = await until_ready(client, exec_id, print_id=True)
    if code != 0:
        return code
    bound = DEPLOYED_WAIT if deployed_timeout is None else deployed_timeout
    try:
        async with asyncio.timeout(bound):
            async for event in client.watch(exec_id):
                if event.kind is EventKind.DEPLOYED:
                    for old in filter(None, str(event.details.get("replaced") or "").split(",")):
                        sys.stderr.write(f"replacing {old} ({manifest.name} {manifest.version}): the node stopped it\n")
                    for old in filter(None, str(event.details.get("not_stopped") or "").split(",")):
                        sys.stderr.write(
                            f"not replaced: {old} ({manifest.name} {manifest.version}) could not be stopped "
                            f"(see `haddock describe {exec_id}`); it may still be serving\n"
                        )
                    return 0
    except TimeoutError:
        sys.stderr.write(
            f"{exec_id} is ready, but the node recorded no `deployed` event within {bound:g}s: the older executions "
            f"of {manifest.name} {manifest.version} may still be running (see `haddock describe {exec_id}`)\n"
        )
        return 1
    sys.stderr.write(f"{exec_id} ended before it took over from the running executions\n")
    return 1
