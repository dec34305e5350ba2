"""What a requester asks for: :class:`RunCommandRequest`, everything the executor needs to run one execution of
a job, and its parts (engine, resources, network, inputs, outputs, output limits). Input sources and publishers
are in :mod:`~haddock.executor.sources` and :mod:`~haddock.executor.publishers`, the service spec in
:mod:`~haddock.executor.servicespec`, a job type's job in :mod:`~haddock.executor.jobspec`."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from haddock.executor import imageref
from haddock.executor.errors import shown
from haddock.executor.fields import ByteQuantity, CpuQuantity, DomainModel, DurationSeconds, check_id
from haddock.executor.jobspec import JOB_SOURCE_TARGET, JobSpec
from haddock.executor.paths import check_container_path as _check_container_path
from haddock.executor.publishers import PublisherSpec
from haddock.executor.quantity import GiB, KiB, MiB, TiB, format_bytes
from haddock.executor.servicespec import ServiceSpec
from haddock.executor.sources import InputSource
from haddock.executor.streams import StreamType

RESERVED_ENV_PREFIX = "HADDOCK_"
"""Environment names with this prefix are set by the node; a request may not set them."""

MAX_CPU_CORES = 1024.0
MAX_ENV_NAME = 256
MIN_CPU_CORES = 0.01  # the engine refuses a smaller CPU limit
MAX_MEMORY = 64 * TiB
MIN_MEMORY = 6 * MiB  # Docker refuses smaller limits
MAX_DISK = 1024 * TiB
MAX_GPUS = 64
MAX_TIMEOUT_SECONDS = 30 * 24 * 3600.0

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,127}$")


class NetworkMode(StrEnum):
    NONE = "none"
    BRIDGE = "bridge"
    HOST = "host"


class ExecutionKind(StrEnum):
    """A batch run ends with an exit code; a service is meant to keep running (ports, probes, restarts)."""

    BATCH = "batch"
    SERVICE = "service"


class PullPolicy(StrEnum):
    ALWAYS = "always"
    IF_NOT_PRESENT = "if-not-present"
    NEVER = "never"


class Resources(DomainModel):
    """What a job may use. Zero means "no limit" for cpu/memory/disk and "none" for gpu."""

    cpu: CpuQuantity = Field(default=0.0, description="CPU cores (0.5 == 500m)")
    memory: ByteQuantity = Field(default=0, description="memory limit in bytes (swap is off)")
    disk: ByteQuantity = Field(default=0, description="disk the job may use in bytes")
    gpu: int = Field(default=0, description="number of GPUs")

    @field_validator("cpu")
    @classmethod
    def _cpu_bounds(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"cpu must be a number of cores, got {v}")
        if v < 0:
            raise ValueError(f"cpu must not be negative, got {v}")
        if 0 < v < MIN_CPU_CORES:
            raise ValueError(
                f"cpu of {v:g} cores is below the engine's minimum of {MIN_CPU_CORES:g} (10m); use 0 for no limit"
            )
        if v > MAX_CPU_CORES:
            raise ValueError(f"cpu of {v:g} cores is more than any node has (at most {MAX_CPU_CORES:g})")
        return v

    @field_validator("memory")
    @classmethod
    def _memory_bounds(cls, v: int) -> int:
        if v < 0:
            raise ValueError("memory must not be negative")
        if 0 < v < MIN_MEMORY:
            raise ValueError(
                f"memory limit {format_bytes(v)} is below the engine's minimum of {format_bytes(MIN_MEMORY)}"
            )
        if v > MAX_MEMORY:
            raise ValueError(f"memory {format_bytes(v)} is more than any node has (at most 64Ti)")
        return v

    @field_validator("disk")
    @classmethod
    def _disk_bounds(cls, v: int) -> int:
        if v < 0:
            raise ValueError("disk must not be negative")
        if v > MAX_DISK:
            raise ValueError(f"disk {format_bytes(v)} is more than any node has (at most 1024Ti)")
        return v

    @field_validator("gpu")
    @classmethod
    def _gpu_bounds(cls, v: int) -> int:
        if v < 0:
            raise ValueError("gpu count must not be negative")
        if v > MAX_GPUS:
            raise ValueError(f"gpu count {v} is more than any node has (at most {MAX_GPUS})")
        return v


class NetworkConfig(DomainModel):
    mode: NetworkMode = NetworkMode.NONE


class InputVolume(DomainModel):
    """Prepared storage: a host path bound into the container."""

    source: Path = Field(description="absolute path on the node")
    target: str = Field(description="absolute path in the container")
    read_only: bool = True

    @field_validator("source")
    @classmethod
    def _source_absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError(f"input source {shown(str(v))} must be an absolute path on the node")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return _check_container_path(v, "input target")


class ResultPath(DomainModel):
    """A named output: a directory the job writes to, collected under the results dir."""

    name: str
    path: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v in (".", "..") or not _OUTPUT_NAME_RE.match(v):
            raise ValueError(
                f"output name {shown(v)} must be a single path segment of letters, digits, '.', '_' or '-' "
                "(not starting with '.' or '-', at most 128 characters)"
            )
        if v in ("stdout", "stderr", "exitCode"):
            raise ValueError(f"output name {shown(v)} is reserved for the job's own result files")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _check_container_path(v, "output path")


class EngineSpec(DomainModel):
    """What to run: the Docker engine's parameters."""

    image: str
    entrypoint: list[str] | None = None
    parameters: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("image must not be empty")
        if v != v.strip():
            raise ValueError(f"image {shown(v)} must not have leading or trailing spaces")
        if not imageref.is_valid(v):
            raise ValueError(
                f"image {shown(v)} is not a valid image reference (expected [registry/]name[:tag][@digest], "
                "name in lower case)"
            )
        return v

    @field_validator("entrypoint", "parameters")
    @classmethod
    def _no_nul(cls, v: list[str] | None) -> list[str] | None:
        for arg in v or []:
            if "\x00" in arg:
                raise ValueError("arguments must not contain NUL bytes")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if len(name) > MAX_ENV_NAME:
                raise ValueError(f"environment variable name {shown(name)} is longer than {MAX_ENV_NAME} characters")
            if not _ENV_NAME_RE.match(name):
                raise ValueError(
                    f"environment variable name {shown(name)} is not valid: use letters, digits and '_', "
                    "not starting with a digit"
                )
            if name.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(
                    f"environment variable {shown(name)} uses the prefix {shown(RESERVED_ENV_PREFIX)}, "
                    "which is reserved for variables the node sets"
                )
            if "\x00" in value:
                raise ValueError(f"environment variable {shown(name)} must not contain NUL bytes")
        return v

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if "\x00" in v:
            raise ValueError("working_dir must not contain NUL bytes")
        if not v.startswith("/"):
            raise ValueError(f"working_dir {shown(v)} must be an absolute path inside the container")
        return v if v == "/" else _check_container_path(v, "working_dir")


class OutputLimits(DomainModel):
    """How much of stdout/stderr is kept in the results dir and returned inline (Bacalhau's defaults)."""

    max_stdout_file_length: ByteQuantity = 1 * GiB
    max_stdout_return_length: ByteQuantity = 2 * KiB
    max_stderr_file_length: ByteQuantity = 1 * GiB
    max_stderr_return_length: ByteQuantity = 2 * KiB

    @field_validator("*")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("output limits must not be negative")
        if v > MAX_DISK:
            raise ValueError(f"output limit {format_bytes(v)} is absurd")
        return v

    def file_limit(self, stream: StreamType) -> int:
        return self.max_stdout_file_length if stream is StreamType.STDOUT else self.max_stderr_file_length

    def return_limit(self, stream: StreamType) -> int:
        return self.max_stdout_return_length if stream is StreamType.STDOUT else self.max_stderr_return_length


class RunCommandRequest(DomainModel):
    """Everything the executor needs to run one execution of a job."""

    job_id: str
    execution_id: str
    engine: EngineSpec
    results_dir: Path | None = Field(
        default=None, description="where results go on the node; the node sets it when a requester does not"
    )
    resources: Resources = Field(default_factory=Resources)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    inputs: list[InputVolume] = Field(
        default_factory=list, description="prepared storage: host paths the node itself chose (not from requesters)"
    )
    input_sources: list[InputSource] = Field(
        default_factory=list, description="inputs the node fetches and mounts before the job starts"
    )
    outputs: list[ResultPath] = Field(default_factory=list)
    publishers: list[PublisherSpec] = Field(
        default_factory=list, description="where the results dir goes after the run (it stays on the node too)"
    )
    output_limits: OutputLimits = Field(default_factory=OutputLimits)
    timeout: DurationSeconds | None = Field(default=None, description="seconds the job may run; None = no limit")
    gpu_devices: list[str] = Field(
        default_factory=list,
        description="the GPUs (device ids) the node allocated to this execution, one per requested GPU; chosen by "
        "the node at admission, never by requesters (empty: the engine picks `resources.gpu` devices)",
    )
    kind: ExecutionKind = ExecutionKind.BATCH
    service: ServiceSpec | None = Field(default=None, description="ports, probes, restarts: a service's only")
    job: JobSpec | None = Field(
        default=None,
        description="a job to build with a job-type plugin (its source is the input source at JOB_SOURCE_TARGET); "
        "the engine's image is then the built one",
    )

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: str) -> str:
        return check_id(v, "job_id")

    @field_validator("execution_id")
    @classmethod
    def _execution_id(cls, v: str) -> str:
        return check_id(v, "execution_id")

    @field_validator("results_dir")
    @classmethod
    def _results_dir(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"results_dir {shown(str(v))} must be an absolute path on the node")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is None:
            return None
        if v <= 0:
            raise ValueError("timeout must be positive (omit it for no timeout)")
        if v > MAX_TIMEOUT_SECONDS:
            raise ValueError("timeout must be at most 30 days")
        return v

    @field_validator("gpu_devices")
    @classmethod
    def _gpu_devices(cls, v: list[str]) -> list[str]:
        for device in v:
            if not _DEVICE_RE.match(device):
                raise ValueError(f"gpu device id {device[:140]!r} is not a device id (index, UUID or CDI name)")
        if len(set(v)) != len(v):
            raise ValueError("gpu device ids must not repeat")
        return v

    @model_validator(mode="after")
    def _unique_paths(self) -> RunCommandRequest:
        if self.gpu_devices and len(self.gpu_devices) != self.resources.gpu:
            raise ValueError(
                f"gpu_devices names {len(self.gpu_devices)} devices for a request of {self.resources.gpu} GPUs"
            )
        names = [o.name for o in self.outputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"output names must be unique; repeated: {', '.join(dupes)}")
        targets = (
            [i.target for i in self.inputs] + [i.target for i in self.input_sources] + [o.path for o in self.outputs]
        )
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            raise ValueError(f"each container path may be mounted once; repeated: {', '.join(dupes)}")
        if self.job is not None:
            if not any(s.target == JOB_SOURCE_TARGET for s in self.input_sources):
                raise ValueError(f"job: its source must be one of the input sources, with target {JOB_SOURCE_TARGET}")
            limits = self.job.manifest.resources
            if not (self.resources.cpu or self.resources.memory) and (limits.cpu_cores or limits.memory_bytes):
                # The manifest's resources become the execution's (and go through bidding like any request's).
                resources = Resources(cpu=limits.cpu_cores, memory=limits.memory_bytes, disk=self.resources.disk)
                object.__setattr__(self, "resources", resources)
        if self.kind is ExecutionKind.BATCH and self.service is not None:
            raise ValueError("service: only a service execution (kind 'service') has a service spec")
        if self.kind is ExecutionKind.SERVICE and self.service is None:
            object.__setattr__(self, "service", ServiceSpec())
        return self

    @property
    def is_service(self) -> bool:
        return self.kind is ExecutionKind.SERVICE
