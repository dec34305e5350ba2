"""The node's configuration: a TOML file (``--config``), ``HADDOCK_*`` environment variables, flags.

Precedence, highest first: command-line flags, environment, the TOML file, defaults.
Nested settings use ``__`` in the environment: ``HADDOCK_TELEMETRY__EXPORTER=console``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from haddock.executor.docker.config import DockerConfig
from haddock.executor.fields import ByteQuantity, CpuQuantity, DurationSeconds
from haddock.executor.quantity import format_bytes
from haddock.executor.request import MAX_GPUS
from haddock.node.bidding import BiddingSettings
from haddock.node.client import wire
from haddock.node.cluster.config import ClusterSettings
from haddock.node.jobtypes.config import JobTypesSettings
from haddock.storage.config import StorageSettings

DEFAULT_LISTEN = "127.0.0.1:7420"
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/haddock``, else ``~/.local/share/haddock``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "haddock"


def default_node_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip(".-_") or "node"
    return name[:63]


class OnShutdown(StrEnum):
    LEAVE_RUNNING = "leave-running"
    STOP = "stop"


class Exporter(StrEnum):
    NONE = "none"
    CONSOLE = "console"
    OTLP = "otlp"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class TelemetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exporter: Exporter = Exporter.NONE
    otlp_endpoint: str | None = Field(default=None, description="e.g. http://127.0.0.1:4317 (gRPC)")
    metrics_interval_seconds: float = Field(default=60.0, gt=0)


class StatsSettings(BaseModel):
    """Resource statistics of executions: sampled while the container runs, kept with the execution."""

    model_config = ConfigDict(extra="forbid")

    interval: DurationSeconds = Field(
        default=1.0, ge=0, description="seconds between samples of a running container; 0 turns sampling off"
    )
    max_samples: int = Field(
        default=3600, ge=16, description="samples kept per execution; past it, older ones are merged (averaged)"
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if 0 < v < 1:
            raise ValueError("stats.interval must be at least 1s, the engine's own sampling period (or 0: off)")
        return v


class TlsSettings(BaseModel):
    """Server TLS. With ``client_ca`` set, clients must present a certificate it signed (mTLS)."""

    model_config = ConfigDict(extra="forbid")

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together: set both or neither")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("tls.client_ca (mTLS) needs tls.cert and tls.key")
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name} {str(path)!r} is not a readable file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert is not None


class CapacitySettings(BaseModel):
    """What the node offers to jobs: detected from the machine and the engine unless set here,
    less a reserve for the node itself."""

    model_config = ConfigDict(extra="forbid")

    cpu: CpuQuantity | None = Field(default=None, description="cores for jobs; default: the engine's CPUs")
    memory: ByteQuantity | None = Field(default=None, description="default: the engine's memory")
    disk: ByteQuantity | None = Field(default=None, description="default: free space under the data dir")
    gpu: int | None = Field(
        default=None, ge=0, le=MAX_GPUS, description="GPUs for jobs; default: those detected (nvidia-smi, CDI)"
    )
    gpu_devices: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,127}$")]] | None = (
        Field(
            default=None,
            description="the GPUs' device ids (index, UUID or CDI name) jobs may be given; default: those detected",
        )
    )
    reserve_cpu: CpuQuantity = Field(default=0.0, description="kept back for the node itself")
    reserve_memory: ByteQuantity = Field(default=256 * 1024**2)
    reserve_disk: ByteQuantity = Field(default=1024**3)
    max_running: int | None = Field(default=None, ge=1, description="running executions at most, whatever they use")
    max_queued: int = Field(default=100, ge=0, description="executions that may wait for capacity")

    @model_validator(mode="after")
    def _gpus_agree(self) -> CapacitySettings:
        if self.gpu_devices is not None:
            if len(set(self.gpu_devices)) != len(self.gpu_devices):
                raise ValueError("capacity.gpu_devices must not repeat a device")
            if self.gpu is not None and self.gpu != len(self.gpu_devices):
                raise ValueError(f"capacity.gpu = {self.gpu} but capacity.gpu_devices names {len(self.gpu_devices)}")
        return self


class ServicesSettings(BaseModel):
    """Service executions: where their ports are published, and the node's HTTP gateway to them."""

    model_config = ConfigDict(extra="forbid")

    publish_address: str = Field(default="127.0.0.1", description="the host address services' ports are published on")
    port_range: str = Field(default="30000-30999", description="host ports for services, FIRST-LAST inclusive")
    gateway_listen: str | None = Field(default=None, description="HOST:PORT of the HTTP gateway; unset: no gateway")
    gateway_connect_timeout: DurationSeconds = Field(default=5.0, gt=0, description="connecting to a service")
    gateway_read_timeout: DurationSeconds = Field(
        default=300.0, gt=0, description="a service's silence before the gateway answers 504"
    )
    gateway_drain: DurationSeconds = Field(
        default=5.0, ge=0, description="a cancelled service's requests in flight get this long before it is stopped"
    )

    @field_validator("publish_address")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"services.publish_address {v!r} must be an IP address, e.g. 127.0.0.1") from None
        return v

    @field_validator("port_range", mode="before")
    @classmethod
    def _range_pair(cls, v: object) -> object:
        if isinstance(v, list | tuple) and len(v) == 2:
            return f"{v[0]}-{v[1]}"
        return v

    @field_validator("port_range")
    @classmethod
    def _range(cls, v: str) -> str:
        low, sep, high = v.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise ValueError(f"services.port_range {v!r} must be FIRST-LAST, e.g. 30000-30999")
        if not 1 <= int(low) <= int(high) <= 65535:
            raise ValueError(f"services.port_range {v!r} must be within 1-65535, first <= last")
        return f"{int(low)}-{int(high)}"

    @property
    def ports(self) -> tuple[int, int]:
        """The range as (first, last)."""
        low, _, high = self.port_range.partition("-")
        return int(low), int(high)

    @field_validator("gateway_listen")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"services.gateway_listen {v!r} must be HOST:PORT, e.g. 127.0.0.1:7480")
        return v


class LimitsSettings(BaseModel):
    """The most a requester may ask of the node's memory, store and disk for one execution's output."""

    model_config = ConfigDict(extra="forbid")

    max_return_length: ByteQuantity = Field(
        default=1024**2, ge=0, description="max_stdout_return_length / max_stderr_return_length at most"
    )
    max_file_length: ByteQuantity = Field(
        default=1024**3, ge=0, description="max_stdout_file_length / max_stderr_file_length at most"
    )
    log_max_bytes_per_execution: ByteQuantity | None = Field(
        default=None, gt=0, description="one execution's log file; default: its two output limits plus framing"
    )

    @field_validator("max_return_length")
    @classmethod
    def _fits_a_message(cls, v: int) -> int:
        if v > wire.MAX_INLINE_RETURN:
            raise ValueError(
                f"max_return_length {format_bytes(v)} is more than a result can carry "
                f"(at most {format_bytes(wire.MAX_INLINE_RETURN)})"
            )
        return v


class Settings(BaseSettings):
    """Everything an operator can set."""

    model_config = SettingsConfigDict(
        env_prefix="HADDOCK_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # Set by the CLI before construction; read by settings_customise_sources.
    config_file: ClassVar[Path | None] = None

    node_id: str = Field(default_factory=default_node_id)
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Field(default_factory=default_data_dir)
    auth_token: SecretStr | None = Field(default=None, description="bearer token clients must send")
    auth_token_file: Path | None = Field(default=None, description="file holding the bearer token")
    tls: TlsSettings = Field(default_factory=TlsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    shutdown_grace: DurationSeconds = Field(default=10.0, description="how long in-flight calls get on SIGTERM")
    on_shutdown: OnShutdown = OnShutdown.LEAVE_RUNNING
    log_retention: DurationSeconds = Field(default=24 * 3600.0, description="logs are kept this long after the end")
    log_max_bytes: ByteQuantity = Field(default=10 * 1024**3, description="total size of kept logs, oldest pruned")
    record_retention: DurationSeconds = Field(
        default=7 * 24 * 3600.0, description="finished executions (and their results dirs) are kept this long"
    )
    prune_interval: DurationSeconds = Field(default=600.0, description="how often old logs and records are pruned")
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "INFO"
    docker: DockerConfig = Field(default_factory=DockerConfig)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings, description="inputs and publishers")
    bidding: BiddingSettings = Field(default_factory=BiddingSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    jobtypes: JobTypesSettings = Field(
        default_factory=JobTypesSettings, description="job-type plugins (golang, python3) and how jobs are built"
    )
    metrics_listen: str | None = Field(
        default=None, description="HOST:PORT of an HTTP listener serving /metrics for Prometheus; default off"
    )
    cluster: ClusterSettings = Field(default_factory=ClusterSettings, description="join a Bacalhau network")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file))
        return tuple(sources)

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        # It names and labels the node's containers: the engine's rules for names apply.
        if not _NODE_ID.match(v):
            raise ValueError(
                f"node_id {v!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen address {v!r} must be HOST:PORT, e.g. {DEFAULT_LISTEN}")
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"metrics_listen {v!r} must be HOST:PORT, e.g. 127.0.0.1:9464")
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        level = v.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level {v!r} must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _token(self) -> Settings:
        if self.auth_token_file is not None:
            if self.auth_token is not None:
                raise ValueError("set auth_token or auth_token_file, not both")
            try:
                token = self.auth_token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"auth_token_file {str(self.auth_token_file)!r} cannot be read: {exc}") from exc
            if not token:
                raise ValueError(f"auth_token_file {str(self.auth_token_file)!r} is empty")
            self.auth_token = SecretStr(token)
        if self.auth_token is not None and not self.auth_token.get_secret_value():
            raise ValueError("auth_token must not be empty")
        return self

    @property
    def token(self) -> str | None:
        return self.auth_token.get_secret_value() if self.auth_token is not None else None

    @property
    def executions_dir(self) -> Path:
        return self.data_dir / "executions"

    def results_dir(self, execution_id: str) -> Path:
        return self.executions_dir / execution_id / "results"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the TOML file, the environment and ``overrides`` (flags; None values are ignored)."""
    if config_file is not None and not config_file.is_file():
        raise ValueError(f"config file {str(config_file)!r} does not exist")
    Settings.config_file = config_file
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        Settings.config_file = None
