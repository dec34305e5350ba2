"""From Bacalhau's job and execution model to haddock's request, and from haddock's result back.

:func:`to_request` turns an ``AskForBid``'s execution into a :class:`RunCommandRequest`. What cannot be
translated raises :class:`Untranslatable` with a reason a person understands; the node answers it as a
bid refusal (never a crash). :func:`to_bacalhau_result` and :func:`publish_result` go the other way.

Where Bacalhau and haddock read a quantity differently, this module says so, and converts:

- memory and disk: Bacalhau lower-cases the string and reads it with go-humanize, where ``k m g t p e``
  and ``kb mb gb ...`` are **decimal** (``1gb`` = 10^9 bytes, ``500m`` = 500 MB) and ``ki mi gi ...``,
  ``kib mib gib ...`` binary. haddock reads ``m``/``g`` Docker's way (binary). Each Bacalhau unit is
  rewritten to the haddock unit of the same value (``g`` -> ``G``, ``gi`` -> ``Gi``) and parsed by
  :func:`haddock.executor.quantity.parse_bytes`, the one parser of sizes; commas are dropped, as
  go-humanize does; a fractional byte rounds up (go-humanize truncates);
- CPU: Kubernetes quantities (``500m``, ``0.5``, ``2``), which haddock reads the same way;
- timeouts: Bacalhau's are whole seconds (``ExecutionTimeout``, else ``TotalTimeout``); 0 means none;
- network ``Default``: Bacalhau's Docker executor takes ``bridge``; haddock takes its own default, ``none``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from haddock.executor.quantity import QuantityError, parse_bytes, parse_cpu
from haddock.executor.records import ResultStatus
from haddock.executor.records import RunCommandResult as HaddockResult
from haddock.executor.request import MAX_TIMEOUT_SECONDS, RunCommandRequest
from haddock.node.cluster import messages as m

__all__ = ["Untranslatable", "parse_bacalhau_bytes", "publish_result", "to_bacalhau_result", "to_request"]

SUPPORTED_JOB_TYPES = ("batch", "ops")
STORAGE_SOURCES = ("urlDownload", "s3", "inline", "local")  # what the node info advertises
PUBLISHERS = ("local", "s3")
NO_TIMEOUT_SECONDS = (2**63 - 1) // 10**9  # models.NoTimeout: math.MaxInt64 nanoseconds, in seconds


class Untranslatable(ValueError):
    """A Bacalhau execution that haddock cannot run as asked; the message is the bid refusal's reason."""


# go-humanize's units (lower case, as Bacalhau normalises) -> the haddock unit of the same value.
_HUMANIZE_UNITS = {
    "": "",
    "b": "",
    "k": "K",
    "kb": "K",
    "ki": "Ki",
    "kib": "Ki",
    "m": "M",
    "mb": "M",
    "mi": "Mi",
    "mib": "Mi",
    "g": "G",
    "gb": "G",
    "gi": "Gi",
    "gib": "Gi",
    "t": "T",
    "tb": "T",
    "ti": "Ti",
    "tib": "Ti",
    "p": "P",
    "pb": "P",
    "pi": "Pi",
    "pib": "Pi",
    "e": "E",
    "eb": "E",
    "ei": "Ei",
    "eib": "Ei",
}
_HUMANIZE = re.compile(r"^([0-9]*\.?[0-9]+)([a-z]*)$")


def parse_bacalhau_bytes(text: str, what: str = "memory") -> int:
    """Bytes, as Bacalhau reads a memory or disk string (go-humanize after lower-casing)."""
    norm = text.lower().replace(" ", "").replace("\n", "").replace(",", "")
    match = _HUMANIZE.match(norm)
    if not match or match.group(2) not in _HUMANIZE_UNITS:
        raise Untranslatable(f"{what} {text!r} is not a size Bacalhau reads (e.g. 512mb, 1gb, 2gib)")
    try:
        return parse_bytes(match.group(1) + _HUMANIZE_UNITS[match.group(2)])
    except QuantityError as exc:  # pragma: no cover - the pattern only lets numbers through
        raise Untranslatable(f"{what} {text!r}: {exc}") from None


def _param(params: dict[str, Any] | None, name: str) -> Any:
    """A spec parameter, its name matched without regard to case (as Bacalhau's mapstructure does)."""
    for key, value in (params or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Untranslatable(f"{what} must be a list of strings")
    return list(value)


def _resources(cfg: m.ResourcesConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    out: dict[str, Any] = {}
    if cfg.cpu.strip():
        try:
            out["cpu"] = parse_cpu(cfg.cpu.strip().lower())
        except QuantityError:
            raise Untranslatable(f"CPU {cfg.cpu!r} is not a CPU quantity (e.g. 500m, 0.5, 2)") from None
    if cfg.memory.strip():
        out["memory"] = parse_bacalhau_bytes(cfg.memory, "memory")
    if cfg.disk.strip():
        out["disk"] = parse_bacalhau_bytes(cfg.disk, "disk")
    if cfg.gpu.strip():
        if not cfg.gpu.strip().isdigit():
            raise Untranslatable(f"GPU {cfg.gpu!r} must be a whole number")
        out["gpu"] = int(cfg.gpu.strip())
    return out


_NETWORKS = {"default": "none", "none": "none", "host": "host", "full": "host", "bridge": "bridge"}
_NETWORK_NUMBERS = ("default", "none", "host", "full", "http", "bridge")  # models.Network's order


def _network(cfg: m.NetworkConfig | None) -> str:
    if cfg is None:
        return "none"
    kind = cfg.type
    if isinstance(kind, int):
        kind = _NETWORK_NUMBERS[kind] if 0 <= kind < len(_NETWORK_NUMBERS) else str(kind)
    name = kind.strip().lower()
    if name == "http":
        domains = ", ".join(cfg.domains or []) or "no domains"
        raise Untranslatable(
            f"network type HTTP ({domains}) is not supported by this node: haddock cannot limit a job's "
            "traffic to domains; ask for None, Bridge or Host networking"
        )
    if name not in _NETWORKS:
        raise Untranslatable(f"network type {kind!r} is unknown (Default, None, Host, Full, Bridge, HTTP)")
    if cfg.ports:
        raise Untranslatable("port mappings are not supported by this node")
    return _NETWORKS[name]


def _input(src: m.InputSource) -> dict[str, Any]:
    spec = src.source
    if spec is None or not spec.type:
        raise Untranslatable(f"input {src.alias or src.target!r} has no source type")
    kind, p = spec.type, spec.params
    target = src.target
    if kind.lower() == "urldownload":
        return {"type": "url", "url": _param(p, "URL"), "target": target}
    if kind.lower() == "inline":
        return {"type": "inline", "data_url": _param(p, "URL"), "target": target}
    if kind.lower() == "local":
        return {
            "type": "local",
            "path": _param(p, "SourcePath"),
            "read_write": _strict_bool(_param(p, "ReadWrite"), "ReadWrite"),
            "target": target,
        }
    if kind.lower() == "s3":
        key = str(_param(p, "Key") or "")
        out: dict[str, Any] = {"type": "s3", "bucket": _param(p, "Bucket"), "target": target}
        if key.endswith("*"):
            out["prefix"] = key[:-1]
        elif key.endswith("/") or not key:
            if not key:
                raise Untranslatable(f"S3 input in bucket {_param(p, 'Bucket')!r} names no key or prefix")
            out["prefix"] = key
        else:
            out["key"] = key
        for ours, theirs in (("filter", "Filter"), ("region", "Region"), ("endpoint_url", "Endpoint")):
            if _param(p, theirs):
                out[ours] = _param(p, theirs)
        if _param(p, "VersionID"):
            out["version_id"] = _param(p, "VersionID")
        if _param(p, "ChecksumSHA256"):
            raise Untranslatable("S3 inputs with ChecksumSHA256 (base64 of the object's checksum) are not supported")
        return out
    raise Untranslatable(
        f"input source type {kind!r} is not supported by this node (it reads {', '.join(STORAGE_SOURCES)})"
    )


def _publisher(spec: m.SpecConfig | None) -> list[dict[str, Any]]:
    if spec is None or not spec.type or spec.type.lower() == "noop":
        return []
    kind, p = spec.type.lower(), spec.params
    if kind == "local":
        return [{"type": "local"}]
    if kind == "s3":
        key = str(_param(p, "Key") or "")
        if "{time}" in key:
            raise Untranslatable("the S3 publisher's key placeholder {time} is not supported by this node")
        for theirs, ours in (("{jobID}", "{job_id}"), ("{executionID}", "{execution_id}"), ("{nodeID}", "{node_id}")):
            key = key.replace(theirs, ours)
        out: dict[str, Any] = {"type": "s3", "bucket": _param(p, "Bucket"), "key": key or "{job_id}/{execution_id}/"}
        if _param(p, "Region"):
            out["region"] = _param(p, "Region")
        if _param(p, "Endpoint"):
            out["endpoint_url"] = _param(p, "Endpoint")
        out["archive"] = str(_param(p, "Encoding") or "gzip").lower() == "gzip"
        return [out]
    raise Untranslatable(f"publisher {spec.type!r} is not supported by this node (it publishes to local and s3)")


def _timeout(cfg: m.TimeoutConfig | None) -> float | None:
    if cfg is None:
        return None
    seconds = cfg.execution_timeout or cfg.total_timeout
    if seconds <= 0 or seconds >= NO_TIMEOUT_SECONDS:
        return None
    if seconds > MAX_TIMEOUT_SECONDS:
        raise Untranslatable(f"execution timeout {seconds}s is over this node's limit of 30 days")
    return float(seconds)


def _env(execution: m.Execution, task: m.Task, docker_env: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in docker_env:
        name, sep, value = item.partition("=")
        if not sep:
            raise Untranslatable(f"docker environment variable {item!r} must be NAME=VALUE")
        env[name] = value
    env.update(task.env or {})
    job = execution.job
    assert job is not None
    env.update(  # what Bacalhau's compute node gives every job (pkg/compute/envvars.go)
        {
            "BACALHAU_EXECUTION_ID": execution.id,
            "BACALHAU_JOB_ID": execution.job_id or job.id,
            "BACALHAU_JOB_TYPE": job.type,
            "BACALHAU_PARTITION_INDEX": str((execution.model_extra or {}).get("PartitionIndex", 0)),
            "BACALHAU_PARTITION_COUNT": str(job.count),
        }
    )
    return env


def to_request(execution: m.Execution) -> RunCommandRequest:
    """The haddock request for a Bacalhau execution; :class:`Untranslatable` with the reason otherwise."""
    job = execution.job
    if job is None:
        raise Untranslatable("the execution carries no job")
    if job.type.lower() not in SUPPORTED_JOB_TYPES:
        raise Untranslatable(f"job type {job.type!r} is not supported by this node (it runs batch and ops jobs)")
    if len(job.tasks) != 1:
        raise Untranslatable(f"a job must have exactly one task; this one has {len(job.tasks)}")
    task = job.tasks[0]
    engine = task.engine
    if engine is None or engine.type.lower() != m.ENGINE_DOCKER:
        kind = engine.type if engine is not None else "none"
        raise Untranslatable(f"engine {kind!r} is not supported by this node (it runs docker)")
    p = engine.params
    image = _param(p, "Image")
    if not isinstance(image, str) or not image.strip():
        raise Untranslatable("the docker engine spec names no image")
    entrypoint = _str_list(_param(p, "Entrypoint"), "Entrypoint")
    doc: dict[str, Any] = {
        "job_id": execution.job_id or job.id,
        "execution_id": execution.id,
        "engine": {
            "image": image,
            "entrypoint": entrypoint or None,
            "parameters": _str_list(_param(p, "Parameters"), "Parameters"),
            "env": _env(execution, task, _str_list(_param(p, "EnvironmentVariables"), "EnvironmentVariables")),
            "working_dir": _param(p, "WorkingDirectory") or None,
        },
        "resources": _resources(task.resources_config),
        "network": {"mode": _network(task.network)},
        "input_sources": [_input(s) for s in task.input_sources or []],
        "outputs": [{"name": r.name, "path": r.path} for r in task.result_paths or []],
        "publishers": _publisher(task.publisher),
        "timeout": _timeout(task.timeouts),
    }
    try:
        return RunCommandRequest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise Untranslatable(
            f"invalid job for this node: {where}: {first['msg'].removeprefix('Value error, ')}"
        ) from None


def to_bacalhau_result(result: HaddockResult) -> m.RunCommandResult:
    """haddock's result with Bacalhau's field names (inline text and its truncation flags, exit code)."""
    exit_code = result.exit_code if result.exit_code is not None else -1
    return m.RunCommandResult(
        stdout=result.stdout,
        stdout_truncated=result.stdout_truncated,
        stderr=result.stderr,
        stderr_truncated=result.stderr_truncated,
        exit_code=exit_code,
        error_msg="" if ran_to_completion(result) else result.error_message,
    )


def ran_to_completion(result: HaddockResult) -> bool:
    """A RunResult (the process ran and exited, whatever its code), not a ComputeError.

    As Bacalhau's compute node: a non-zero exit is a completed execution with that exit code; a timeout,
    an out-of-memory kill or a failure to run at all is an error.
    """
    if result.publish_errors:
        return False
    return result.status is ResultStatus.SUCCESS or (
        result.status is ResultStatus.ERROR and result.exit_code is not None
    )


def publish_result(result: HaddockResult, results_dir: str) -> m.SpecConfig:
    """Where the results are: the first publisher's location, else the node's results dir."""
    if result.published:
        first = result.published[0]
        kind = "s3" if first.startswith("s3://") else "local"
        return m.SpecConfig(type=kind, params={"URL": first})
    return m.SpecConfig(type="local", params={"URL": f"file://{results_dir}"})


def _strict_bool(value: Any, name: str) -> bool:
    """A JSON boolean, or the strings "true"/"false": anything else is refused, never read as truthy."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise Untranslatable(f"input source parameter {name} must be true or false, not {str(value)[:40]!r}")
