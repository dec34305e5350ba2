"""Job types (after Racetrack): a user's ``perform`` function plus a ``job.yaml`` manifest, which the node turns
into an image (a job-type plugin's wrapper around the source) and runs as an HTTP job on port 7000.

Here is the domain side, pure pydantic and the standard library (and PyYAML to read the manifest):
:class:`JobManifest` (``job.yaml``: Racetrack's fields, ``jobtype`` or the older ``lang``; fields that only
make sense on Racetrack's cluster are accepted and reported as not applied; anything else unknown, or a bad
value, is refused naming the field), :func:`parse_manifest`, and :class:`JobSpec`, the job as another kind
of engine spec: the manifest, where its source is (one of the execution's input sources, mounted at
:data:`JOB_SOURCE_TARGET`), and for a batch run the payload posted once to ``/api/v1/perform``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from haddock.executor.errors import shown
from haddock.executor.quantity import parse_bytes, parse_cpu

__all__ = [
    "CLUSTER_ONLY_FIELDS",
    "JOB_PORT",
    "JOB_SOURCE_TARGET",
    "GolangExtra",
    "JobManifest",
    "JobResources",
    "JobSpec",
    "ManifestError",
    "PythonExtra",
    "job_engine_image",
    "not_applied_message",
    "parse_manifest",
]

JOB_PORT = 7000
"""Where every job-type wrapper listens (0.0.0.0:7000)."""

JOB_SOURCE_TARGET = "/haddock/job/source"
"""The job's source is an input source of its execution, mounted (read-only) here; the build reads it."""

MAX_MANIFEST_BYTES = 256 * 1024
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

CLUSTER_ONLY_FIELDS = (
    "git",
    "infrastructure_target",
    "public_endpoints",
    "replicas",
    "secret_runtime_env_file",
    "secret_build_env_file",
    "secrets",
)
"""Racetrack manifest fields that only make sense on its cluster: accepted, reported as not applied."""

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# SemVer 2.0.0 (https://semver.org), the official regular expression.
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_JOBTYPE_RE = re.compile(r"^([a-z0-9][a-z0-9._-]{0,63})(?::([A-Za-z0-9][A-Za-z0-9._x*-]{0,63}))?$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+:=~_-]{0,127}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What could end or break out of a quoted Dockerfile value (the templates put these fields in COPY/RUN/ENV
# lines): control characters (newlines start a new instruction), quotes, backslashes and variables.
_UNSAFE_IN_DOCKERFILE = re.compile(r'[\x00-\x1f\x7f"\\$`]')


def _relative_path(v: str, what: str) -> str:
    if not v or v.startswith("/") or "\x00" in v or any(p == ".." for p in v.split("/")):
        raise ValueError(f"{what} {shown(v)} must be a relative path inside the job's source, without '..'")
    if _UNSAFE_IN_DOCKERFILE.search(v):
        raise ValueError(f"{what} {shown(v)} may not contain control characters, quotes, '\\', '$' or '`'")
    return v


class PythonExtra(_Strict):
    """``jobtype_extra`` of the python3 job type."""

    entrypoint_path: str = Field(description="the .py file with the entrypoint class, relative to the source")
    entrypoint_class: str | None = Field(default=None, description="the class with perform(); default: the only one")
    requirements_path: str | None = Field(default=None, description="a pip requirements file in the source")

    @field_validator("entrypoint_path", "requirements_path")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return None if v is None else _relative_path(v, "path")

    @field_validator("entrypoint_class")
    @classmethod
    def _class(cls, v: str | None) -> str | None:
        if v is not None and not v.isidentifier():
            raise ValueError(f"entrypoint_class {shown(v)} must be a Python class name")
        return v


class GolangExtra(_Strict):
    """``jobtype_extra`` (or the older top-level ``golang``) of the golang job type."""

    gomod: str | None = Field(default="go.mod", description="the job's go.mod, relative to the source")

    @field_validator("gomod")
    @classmethod
    def _gomod(cls, v: str | None) -> str | None:
        return None if v is None else _relative_path(v, "gomod")


class JobResources(_Strict):
    """The manifest's ``resources``: the maxima become the execution's limits (and go through bidding)."""

    memory_min: str | None = None
    memory_max: str | None = None
    cpu_min: str | float | None = None
    cpu_max: str | float | None = None

    @field_validator("memory_min", "memory_max", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v is None:
            return None
        parse_bytes(v)  # refuses what is not a size
        return str(v)

    @field_validator("cpu_min", "cpu_max", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> Any:
        if v is None:
            return None
        parse_cpu(v)
        return v

    @property
    def memory_bytes(self) -> int:
        return parse_bytes(self.memory_max) if self.memory_max is not None else 0

    @property
    def cpu_cores(self) -> float:
        return parse_cpu(self.cpu_max) if self.cpu_max is not None else 0.0


class JobManifest(_Strict):
    """``job.yaml``. ``jobtype`` (or ``lang``) is ``name`` or ``name:version``, e.g. ``golang:latest``."""

    name: str
    version: str = "0.0.1"
    jobtype: str
    owner_email: str | None = None
    jobtype_extra: dict[str, Any] = Field(default_factory=dict)
    runtime_env: dict[str, str] = Field(default_factory=dict)
    build_env: dict[str, str] = Field(default_factory=dict)
    system_dependencies: list[str] = Field(default_factory=list)
    resources: JobResources = Field(default_factory=JobResources)
    labels: dict[str, str] = Field(default_factory=dict)
    not_applied: list[str] = Field(
        default_factory=list, description="fields of Racetrack's cluster that this node accepted and does not apply"
    )

    @model_validator(mode="before")
    @classmethod
    def _older_forms(cls, data: Any) -> Any:
        """``lang`` is the older name of ``jobtype``; ``golang:``/``python:`` the older ``jobtype_extra``;
        cluster-only fields are set aside."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "lang" in data:
            if "jobtype" in data and data["jobtype"] != data["lang"]:
                raise ValueError("lang: 'lang' is the older name of 'jobtype'; give one of them")
            data["jobtype"] = data.pop("lang")
        for older in ("golang", "python"):
            if older in data:
                if data.get("jobtype_extra"):
                    raise ValueError(f"{older}: give the job type's settings in 'jobtype_extra' only")
                data["jobtype_extra"] = data.pop(older)
        reported = set(data.get("not_applied") or [])  # carried over the API, where those fields are not
        unknown = sorted(str(f) for f in reported if f not in CLUSTER_ONLY_FIELDS)
        if unknown:
            raise ValueError(f"not_applied: {', '.join(map(shown, unknown))} are not Racetrack's cluster-only fields")
        reported |= {f for f in CLUSTER_ONLY_FIELDS if data.pop(f, None) is not None}
        data["not_applied"] = sorted(reported)
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if "_" in v:
            raise ValueError(f"name {shown(v)} must not contain '_' (use '-')")
        if not _NAME_RE.match(v):
            raise ValueError(
                f"name {shown(v)} must be 1-63 lower-case letters, digits and '-', starting and ending with a "
                "letter or digit"
            )
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: Any) -> str:
        if not _SEMVER_RE.match(str(v)):
            raise ValueError(f"version {shown(str(v))} is not a SemVer version (like 1.2.3 or 0.1.0-beta.1)")
        return str(v)

    @field_validator("jobtype")
    @classmethod
    def _jobtype(cls, v: str) -> str:
        if not _JOBTYPE_RE.match(v):
            raise ValueError(f"jobtype {shown(v)} must be NAME or NAME:VERSION, like 'golang:latest' or 'python3:2.x'")
        return v

    @field_validator("owner_email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is not None and (v.count("@") != 1 or any(c.isspace() for c in v)):
            raise ValueError(f"owner_email {shown(v)} is not an e-mail address")
        return v

    @field_validator("runtime_env", "build_env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _ENV_RE.match(name):
                raise ValueError(f"environment variable name {shown(name)} is not valid")
            if name.upper().startswith("HADDOCK_"):
                raise ValueError(f"environment variable {shown(name)}: the prefix HADDOCK_ is the node's")
            if "\x00" in value or "\n" in value:
                raise ValueError(f"environment variable {shown(name)} must not contain NUL or newlines")
        return v

    @field_validator("system_dependencies")
    @classmethod
    def _packages(cls, v: list[str]) -> list[str]:
        for p in v:
            if not _PACKAGE_RE.match(p):
                raise ValueError(f"system dependency {shown(p)} is not a package name")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, value in v.items():
            if not _LABEL_RE.match(k) or len(value) > 256 or _UNSAFE_IN_DOCKERFILE.search(value):
                raise ValueError(
                    f"label {shown(k)}: keys are letters, digits, '.', '_', '/', '-'; values at most 256 characters, "
                    "without control characters, quotes, '\\', '$' or '`'"
                )
        return v

    @model_validator(mode="after")
    def _extra(self) -> JobManifest:
        kind = self.jobtype_name
        if kind == "python3":
            PythonExtra.model_validate(self.jobtype_extra)
        elif kind == "golang":
            GolangExtra.model_validate(self.jobtype_extra)
        return self

    @property
    def jobtype_name(self) -> str:
        return self.jobtype.split(":", 1)[0]

    @property
    def jobtype_version(self) -> str:
        _, _, version = self.jobtype.partition(":")
        return version or "latest"

    def python(self) -> PythonExtra:
        return PythonExtra.model_validate(self.jobtype_extra)

    def golang(self) -> GolangExtra:
        return GolangExtra.model_validate(self.jobtype_extra)

    def template_view(self) -> dict[str, Any]:
        """What a job template sees as ``manifest`` (Racetrack's shape: ``manifest.golang.gomod`` too)."""
        view = self.model_dump(exclude={"not_applied"})
        view["lang"] = self.jobtype
        view["golang"] = self.jobtype_extra if self.jobtype_name == "golang" else {}
        view["python"] = self.jobtype_extra if self.jobtype_name == "python3" else {}
        return view


def not_applied_message(fields: list[str]) -> str:
    """What a requester and the execution's events say of the manifest's cluster-only fields."""
    names = ", ".join(fields)
    verb = "is" if len(fields) == 1 else "are"
    return (
        f"job.yaml's {names} {verb} accepted but not applied: Racetrack's cluster-only fields do not apply on a "
        "single node"
    )


def _field_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "manifest"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not in Racetrack's manifest schema)"
        elif err["type"] == "missing":
            msg = "required"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_manifest(text: str | bytes | dict[str, Any], *, where: str = "job.yaml") -> JobManifest:
    """Read a manifest (YAML text, or its already parsed mapping); ManifestError names every bad field."""
    if isinstance(text, bytes | str):
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{where}: larger than {MAX_MANIFEST_BYTES // 1024} KiB")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ManifestError(f"{where}: not valid YAML: {exc}") from None
    else:
        data = text
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: must be a mapping of fields (name, version, jobtype, ...)")
    try:
        return JobManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{where}: {_field_errors(exc)}") from None


def semver_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """Orders SemVer versions (a pre-release before its release); what is not SemVer sorts first."""
    m = _SEMVER_RE.match(version)
    if not m:
        return (-1, 0, 0, 0, ())
    pre = m.group(4)
    parts = tuple((1, int(p)) if p.isdigit() else (2, p) for p in pre.split(".")) if pre else ()
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, parts)


def job_engine_image(name: str) -> str:
    """The image a job request names before its build (the build gives it its content-hash tag)."""
    return f"haddock-job/{name if _NAME_RE.match(name) else 'unnamed'}:unbuilt"


class JobSpec(_Strict):
    """A job to build from source with a job-type plugin and run: another kind of engine spec."""

    manifest: JobManifest
    payload: str | None = Field(
        default=None, description="batch: the JSON body posted once to /api/v1/perform; None: a service (deploy)"
    )

    @field_validator("payload")
    @classmethod
    def _payload(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if len(v.encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload is larger than {MAX_PAYLOAD_BYTES // (1024 * 1024)} MiB")
        import json

        try:
            json.loads(v)
        except ValueError as exc:
            raise ValueError(f"payload is not JSON: {exc}") from None
        return v

    @property
    def batch(self) -> bool:
        return self.payload is not None
