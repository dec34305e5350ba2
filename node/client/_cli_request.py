"""The request of ``haddock run`` (and bid, submit, deploy) from the command line's options."""

from __future__ import annotations

import os
import uuid
from typing import Any

from haddock.executor.publishers import PublisherSpec, parse_publisher
from haddock.executor.quantity import parse_bytes, parse_duration
from haddock.executor.request import RunCommandRequest
from haddock.executor.sources import InputSource, parse_input


def job_args(args: list[str] | None) -> list[str]:
    """The job's arguments: in `IMAGE -- ARGS` options end at IMAGE, so the separator arrives as an argument."""
    argv = list(args or [])
    return argv[1:] if argv[:1] == ["--"] else argv


def _parse_env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            value = os.environ.get(name, "")
        env[name] = value
    return env


def build_request(
    image: str,
    args: list[str],
    *,
    execution_id: str | None,
    job_id: str | None,
    cpu: str | None,
    memory: str | None,
    disk: str | None,
    gpu: int,
    network: str,
    env: list[str],
    workdir: str | None,
    entrypoint: str | None,
    timeout: str | None,
    pull: str,
    limits: dict[str, str | None],
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    publishers: list[str] | None = None,
    env_extra: dict[str, str] | None = None,
    sources_extra: list[InputSource] | None = None,
    outputs_extra: list[dict[str, str]] | None = None,
    publishers_extra: list[PublisherSpec] | None = None,
    service: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
) -> RunCommandRequest:
    exec_id = execution_id or f"e-{uuid.uuid4().hex[:16]}"
    sources = [parse_input(spec) for spec in inputs or []] + list(sources_extra or [])
    results = []
    for spec in outputs or []:
        name, sep, path = spec.partition(":")
        if not sep or not name or not path:
            raise ValueError(f"output {spec!r} must be NAME:PATH, e.g. results:/outputs")
        results.append({"name": name, "path": path})
    return RunCommandRequest.model_validate(
        {
            "job_id": job_id or exec_id,
            "execution_id": exec_id,
            "engine": {
                "image": image,
                "parameters": args,
                "entrypoint": [entrypoint] if entrypoint else None,
                "env": {**_parse_env(env), **(env_extra or {})},
                "working_dir": workdir,
                "pull_policy": pull,
            },
            "resources": {"cpu": cpu or 0, "memory": memory or 0, "disk": disk or 0, "gpu": gpu},
            "network": {"mode": network},
            "output_limits": {k: parse_bytes(v) for k, v in limits.items() if v is not None},
            "timeout": parse_duration(timeout) if timeout else None,
            "input_sources": sources,
            "outputs": results + list(outputs_extra or []),
            "publishers": [parse_publisher(p) for p in publishers or []] + list(publishers_extra or []),
            **({"kind": "service", "service": service} if service is not None else {}),
            **({"job": job} if job is not None else {}),
        }
    )
