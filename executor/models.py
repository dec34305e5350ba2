"""The executor's domain: what a requester asks for and what it gets back.

Every model validates its input and says plainly what is wrong; the gRPC layer
turns a ``pydantic.ValidationError`` into INVALID_ARGUMENT with these messages.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from haddock.executor import imageref
from haddock.executor.errors import shown
from haddock.executor.jobspec import JOB_SOURCE_TARGET, JobSpec
from haddock.executor.paths import check_container_path as _check_container_path
from haddock.executor.publishers import PublisherSpec
from haddock.executor.quantity import GiB, KiB, MiB, TiB, format_bytes, parse_bytes, parse_cpu, parse_duration
from haddock.executor.sources import InputSource
from haddock.executor.stats import StatsSummary

# (`as StreamType`: node/client/cli.py still imports it from here; it lives in executor/streams.py, without pydantic)
from haddock.executor.streams import StreamType as StreamType

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

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# ---------------------------------------------------------------------------
# Quantities as pydantic field types: one parser, used everywhere.
# ---------------------------------------------------------------------------


def _bytes(v: Any) -> Any:
    return parse_bytes(v) if isinstance(v, str | int | float) else v


def _cpu(v: Any) -> Any:
    return parse_cpu(v) if isinstance(v, str | int | float) else v


def _duration(v: Any) -> Any:
    if v is None:
        return None
    return parse_duration(v) if isinstance(v, str | int | float) else v


ByteQuantity = Annotated[int, BeforeValidator(_bytes)]
CpuQuantity = Annotated[float, BeforeValidator(_cpu)]
DurationSeconds = Annotated[float, BeforeValidator(_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


# ---------------------------------------------------------------------------
# Enumerations
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogQuery:
    """What a reader asks of an execution's log: history and/or live output, from where, which streams.

    ``offset`` (a position from an earlier read) beats ``tail_lines``; without either, history starts at
    the beginning, or at the current end when ``with_history`` is false.
    """

    with_history: bool = True
    follow: bool = False
    offset: int | None = None
    tail_lines: int | None = None
    streams: frozenset[StreamType] = frozenset({StreamType.STDOUT, StreamType.STDERR})


class ExecutionState(StrEnum):
    """Where an execution is in its life. The last three are terminal."""

    QUEUED = "queued"
    PREPARING = "preparing"  # inputs and image
    RUNNING = "running"
    FINISHING = "finishing"  # capturing output, writing results, cleaning up
    COMPLETED = "completed"  # ran and exited 0
    FAILED = "failed"  # error, timeout or killed: see the result
    CANCELLED = "cancelled"
    # A service's life between start and end (executor/service.py):
    STARTING = "starting"  # its container runs; not yet ready
    READY = "ready"  # the readiness probe passes: the gateway routes to it
    UNHEALTHY = "unhealthy"  # the readiness probe fails (past its threshold): not routed to
    RESTARTING = "restarting"  # its container ended; a new one starts after a backoff
    STOPPING = "stopping"  # cancelled: no longer routed to, being stopped

    @property
    def terminal(self) -> bool:
        return self in (ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.CANCELLED)


class ResultStatus(StrEnum):
    """How an execution ended (Fn's set)."""

    SUCCESS = "success"
    ERROR = "error"  # non-zero exit, or the node could not run it
    TIMEOUT = "timeout"
    KILLED = "killed"  # out of memory
    CANCELLED = "cancelled"

    @property
    def state(self) -> ExecutionState:
        if self is ResultStatus.SUCCESS:
            return ExecutionState.COMPLETED
        if self is ResultStatus.CANCELLED:
            return ExecutionState.CANCELLED
        return ExecutionState.FAILED


class NetworkMode(StrEnum):
    NONE = "none"
    BRIDGE = "bridge"
    HOST = "host"


class ExecutionKind(StrEnum):
    """A batch run ends with an exit code; a service is meant to keep running (ports, probes, restarts)."""

    BATCH = "batch"
    SERVICE = "service"


class RestartPolicy(StrEnum):
    """What the node does when a service's container ends (the node restarts it, never the engine)."""

    NEVER = "never"
    ON_FAILURE = "on-failure"  # a non-zero exit, an out-of-memory kill or a failing liveness probe
    ALWAYS = "always"


class PullPolicy(StrEnum):
    ALWAYS = "always"
    IF_NOT_PRESENT = "if-not-present"
    NEVER = "never"


# ---------------------------------------------------------------------------
# Request parts
# ---------------------------------------------------------------------------


class Resources(_Model):
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


class NetworkConfig(_Model):
    mode: NetworkMode = NetworkMode.NONE


class InputVolume(_Model):
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


class ResultPath(_Model):
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


class EngineSpec(_Model):
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


class OutputLimits(_Model):
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


_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,127}$")
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_PROBE_SECONDS = 3600.0
MAX_RESTARTS = 1000


class ServicePort(_Model):
    """A port the service listens on in its container, published by the node on a host port it chooses.

    ``host_port`` and ``host_ip`` are the node's: a requester may ask for a host port (the node refuses
    one outside its range or in use); the node fills both in before the execution starts."""

    name: str = "http"
    container_port: int
    protocol: str = "tcp"
    host_port: int | None = Field(default=None, description="the published port on the node (the node's choice)")
    host_ip: str | None = Field(default=None, description="the address the port is published on (the node's)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _PORT_NAME_RE.match(v):
            raise ValueError(f"port name {v!r} must be 1-15 lower-case letters, digits or '-' (like 'http')")
        return v

    @field_validator("container_port", "host_port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            raise ValueError(f"port {v} must be between 1 and 65535")
        return v

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        if v != "tcp":
            raise ValueError(f"protocol {v!r} is not supported: only tcp")
        return v


class HttpProbe(_Model):
    """An HTTP GET on a named port of the service: 2xx and 3xx pass, anything else (or no answer) fails."""

    port: str | None = Field(default=None, description="a port name of the service; default: its first port")
    path: str = "/"
    interval: DurationSeconds = 10.0
    timeout: DurationSeconds = 1.0
    failure_threshold: int = Field(default=3, description="consecutive failures before it counts as failed")
    start_period: DurationSeconds = Field(
        default=60.0, description="readiness: it must pass within this; liveness: failures do not count before it"
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in "\r\n\x00 "):
            raise ValueError(f"probe path {v!r} must start with '/' and hold no spaces or control characters")
        return v

    @field_validator("interval", "timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not 0 < v <= MAX_PROBE_SECONDS:
            raise ValueError(f"probe interval and timeout must be positive and at most 1h, got {v:g}s")
        return v

    @field_validator("start_period")
    @classmethod
    def _start_period(cls, v: float) -> float:
        if not 0 <= v <= 24 * 3600:
            raise ValueError(f"probe start_period must be between 0 and 24h, got {v:g}s")
        return v

    @field_validator("failure_threshold")
    @classmethod
    def _threshold(cls, v: int) -> int:
        if not 1 <= v <= 1000:
            raise ValueError(f"probe failure_threshold must be between 1 and 1000, got {v}")
        return v


class RestartSpec(_Model):
    """The node's restarts of a service: a new container per attempt, after an exponential backoff."""

    policy: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: int = Field(default=3, description="restarts at most; then the service ends in error")
    backoff_initial: DurationSeconds = 1.0
    backoff_max: DurationSeconds = 30.0

    @field_validator("max_restarts")
    @classmethod
    def _max(cls, v: int) -> int:
        if not 0 <= v <= MAX_RESTARTS:
            raise ValueError(f"max_restarts must be between 0 and {MAX_RESTARTS}, got {v}")
        return v

    @field_validator("backoff_initial", "backoff_max")
    @classmethod
    def _backoff(cls, v: float) -> float:
        if not 0 <= v <= MAX_PROBE_SECONDS:
            raise ValueError(f"restart backoff must be between 0 and 1h, got {v:g}s")
        return v

    def backoff(self, restarts: int) -> float:
        """The wait before restart number ``restarts + 1``: doubling from the initial, capped."""
        return float(min(self.backoff_max, self.backoff_initial * 2.0 ** min(restarts, 32)))


class ServiceSpec(_Model):
    """What makes an execution a service: its ports, probes, restart policy and an optional name."""

    name: str | None = Field(default=None, description="groups executions (versions, replicas) for the gateway")
    ports: list[ServicePort] = Field(default_factory=list)
    readiness: HttpProbe | None = None
    liveness: HttpProbe | None = None
    image_healthcheck: bool = Field(
        default=False, description="use the image's own HEALTHCHECK for readiness and liveness"
    )
    restart: RestartSpec = Field(default_factory=RestartSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not _SERVICE_NAME_RE.match(v):
            raise ValueError(
                f"service name {v!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        names = [p.name for p in self.ports]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"port names must be unique; repeated: {', '.join(dupes)}")
        ports = [p.container_port for p in self.ports]
        dupe_ports = sorted({p for p in ports if ports.count(p) > 1})
        if dupe_ports:
            raise ValueError(f"each container port may be published once; repeated: {dupe_ports}")
        for kind, probe in (("readiness", self.readiness), ("liveness", self.liveness)):
            if probe is None:
                continue
            if self.image_healthcheck:
                raise ValueError(f"{kind}: use HTTP probes or the image's HEALTHCHECK, not both")
            if not self.ports:
                raise ValueError(f"{kind}: an HTTP probe needs a port: declare the service's ports")
            if probe.port is not None and probe.port not in names:
                raise ValueError(f"{kind}: probe port {probe.port!r} is not one of the service's ports ({names})")
        return self

    def port(self, name: str | None) -> ServicePort | None:
        """The port of that name (the first port when None)."""
        if name is None:
            return self.ports[0] if self.ports else None
        return next((p for p in self.ports if p.name == name), None)

    @property
    def published(self) -> bool:
        return all(p.host_port is not None for p in self.ports)


def is_valid_id(v: str) -> bool:
    """Whether ``v`` can be a job or execution id: 1-128 letters, digits, '.', '_' or '-'."""
    return len(v) <= 128 and _ID_RE.match(v) is not None


def _check_id(v: str, what: str) -> str:
    if not _ID_RE.match(v):
        raise ValueError(
            f"{what} {shown(v)} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return v


class RunCommandRequest(_Model):
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
        return _check_id(v, "job_id")

    @field_validator("execution_id")
    @classmethod
    def _execution_id(cls, v: str) -> str:
        return _check_id(v, "execution_id")

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


# ---------------------------------------------------------------------------
# Results, events, bids
# ---------------------------------------------------------------------------


class RunCommandResult(_Model):
    """How an execution ended. Inline text is cut at the return limits; files at the file limits."""

    status: ResultStatus
    exit_code: int | None = Field(default=None, description="the process's exit code; None when none ran")
    stdout: str = ""
    stdout_truncated: bool = False
    stdout_file_truncated: bool = False
    stderr: str = ""
    stderr_truncated: bool = False
    stderr_file_truncated: bool = False
    error_message: str = ""
    published: list[str] = Field(default_factory=list, description="where the results were published")
    publish_errors: list[str] = Field(default_factory=list, description="publishers that failed, and why")
    stats: StatsSummary | None = Field(default=None, description="resource use sampled while the container ran")


class BidResult(_Model):
    should_bid: bool
    reason: str

    @classmethod
    def yes(cls, reason: str = "this node can run the job") -> BidResult:
        return cls(should_bid=True, reason=reason)

    @classmethod
    def no(cls, reason: str) -> BidResult:
        return cls(should_bid=False, reason=reason)


class EventKind(StrEnum):
    QUEUED = "queued"
    ACCEPTED = "accepted"
    PULLING = "pulling"
    PULL_PROGRESS = "pull-progress"
    IMAGE_READY = "image-ready"
    BUILDING = "building"  # a job's image is built (details: step, steps, instruction)
    BUILT = "built"  # a job's image is there (details: image, built: False when nothing was built)
    INPUTS_PREPARED = "inputs-prepared"
    STARTED = "started"
    EXITED = "exited"
    RESULTS_WRITTEN = "results-written"
    PUBLISHED = "published"
    OUTPUT_CAP_EXCEEDED = "output-cap-exceeded"
    CLEANED_UP = "cleaned-up"
    CANCEL_REQUESTED = "cancel-requested"
    RECOVERED = "recovered"
    OUTPUT_RECOVERED = "output-recovered"
    TIMED_OUT = "timed-out"
    FAILED = "failed"
    STATE = "state"
    PROBE_FAILED = "probe-failed"  # a service's probe failed (details: probe, reason, failures)
    RESTARTING = "restarting"  # a service's container ended and will be replaced (details: attempt, reason)
    DEPLOYED = "deployed"  # a job's deployment is ready and took over (details: replaced, the ids it stopped)


def utcnow() -> datetime:
    return datetime.now(UTC)


class ExecutionEvent(_Model):
    """Something that happened to an execution, for operators and requesters to see."""

    execution_id: str
    kind: EventKind
    message: str
    time: datetime = Field(default_factory=utcnow)
    details: dict[str, Any] = Field(default_factory=dict)
    # What persistence needs travels with the event (never serialised): the request on 'accepted',
    # the result on the terminal state.
    request: RunCommandRequest | None = Field(default=None, exclude=True, repr=False)
    result: RunCommandResult | None = Field(default=None, exclude=True, repr=False)


@dataclass
class ExecutionRecord:
    """What the node knows about one execution: its request, where it is, what happened, how it ended."""

    request: RunCommandRequest
    state: ExecutionState = ExecutionState.PREPARING
    events: list[ExecutionEvent] = field(default_factory=list)
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    container_id: str | None = None
    result: RunCommandResult | None = None
    built_image: str | None = None  # a job's: the image its build made (kept; restarts make containers from it)

    @property
    def execution_id(self) -> str:
        return self.request.execution_id
