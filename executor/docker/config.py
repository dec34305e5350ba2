"""How the Docker driver runs jobs: the operator's ``[docker]`` section, declared once.

The node nests this model into its settings as it is (TOML ``[docker]``, ``HADDOCK_DOCKER__*``); the
driver takes it as it is. Every field has a safe default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from haddock.executor.fields import ByteQuantity, DurationSeconds
from haddock.executor.quantity import GiB
from haddock.executor.request import NetworkMode

__all__ = ["DockerConfig"]


class DockerConfig(BaseModel):
    """The Docker engine the node uses and how containers are made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str | None = Field(default=None, description="engine address; default from DOCKER_HOST")
    stop_grace: DurationSeconds = Field(default=10.0, ge=0, description="stop signal to SIGKILL on timeout/cancel")
    pids_limit: int | None = Field(default=4096, description="max processes per container; None = no limit")
    no_new_privileges: bool = True
    cap_drop: tuple[str, ...] = ("NET_RAW",)
    allowed_networks: frozenset[NetworkMode] = frozenset({NetworkMode.NONE, NetworkMode.BRIDGE})
    allow_private_registries: bool = Field(
        default=False,
        description="let requesters' images be pulled from registries on loopback, private or link-local addresses "
        "(enforced by the node's policy at bid and Start)",
    )
    log_driver: str = Field(
        default="none",
        description="the engine's own log driver for containers; the node's capture process keeps the output, "
        "so the engine need not (set e.g. 'local' to also recover output cut by an engine outage)",
    )
    log_driver_options: dict[str, str] = Field(
        default_factory=dict, description="options of the log driver (e.g. max-size), ignored for 'none'"
    )
    capture_idle: DurationSeconds = Field(
        default=10.0, gt=0, description="the capture process exits after this long with no daemon and no stream"
    )
    orphan_grace: DurationSeconds = Field(
        default=60.0,
        ge=0,
        description="a container with this node's label that no execution knows is removed after this",
    )
    api_workers: int = Field(default=32, ge=1, description="threads for short engine calls")
    pull_workers: int = Field(default=8, ge=1, description="threads for image pulls (each holds one)")
    pull_attempts: int = Field(default=4, ge=1)
    api_timeout: DurationSeconds = Field(default=120.0, gt=0, description="one engine API call at most")
    engine_retry: DurationSeconds = Field(
        default=60.0, ge=0, description="how long calls ride out an engine outage (restart) before failing"
    )
    init: bool = Field(default=True, description="run an init process in each container (docker --init)")
    output_cap: ByteQuantity = Field(
        default=10 * GiB, ge=0, description="what a job may write to its outputs when it sets no disk resource"
    )

    @field_validator("cap_drop", mode="before")
    @classmethod
    def _cap_drop(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, v: object) -> object:
        return frozenset(v) if isinstance(v, list | tuple | set) else v
