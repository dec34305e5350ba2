"""What makes an execution a service: its ports, readiness and liveness probes, and restart policy
(:class:`ServiceSpec`, carried by the request; :mod:`haddock.executor.service` runs it)."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from haddock.executor.fields import DomainModel, DurationSeconds

_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_PROBE_SECONDS = 3600.0
MAX_RESTARTS = 1000


class RestartPolicy(StrEnum):
    """What the node does when a service's container ends (the node restarts it, never the engine)."""

    NEVER = "never"
    ON_FAILURE = "on-failure"  # a non-zero exit, an out-of-memory kill or a failing liveness probe
    ALWAYS = "always"


class ServicePort(DomainModel):
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


class HttpProbe(DomainModel):
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


class RestartSpec(DomainModel):
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


class ServiceSpec(DomainModel):
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
