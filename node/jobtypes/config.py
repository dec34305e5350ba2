"""The ``[jobtypes]`` section: which job-type plugins the node has, their base images, how jobs are built."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from haddock.executor.fields import DurationSeconds

__all__ = ["DEFAULT_BASE_IMAGES", "SHIPPED_PLUGINS_DIR", "JobTypesSettings"]

SHIPPED_PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
"""The plugins haddock ships (golang, python3), installed as package data."""

DEFAULT_BASE_IMAGES = {"golang": "golang:1.22-bookworm", "python3": "python:3.11-slim"}
"""Production defaults; tests and nodes without a registry set local images in [jobtypes.base_images]."""


class JobTypesSettings(BaseModel):
    """Job types (after Racetrack): plugins that turn a user's ``perform`` function and manifest into an image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugins: list[Path] = Field(
        default_factory=lambda: [SHIPPED_PLUGINS_DIR / "golang", SHIPPED_PLUGINS_DIR / "python3"],
        description="plugin directories (plugin-manifest.yaml, wrapper, base.Dockerfile, job-template.Dockerfile)",
    )
    base_images: dict[str, str] = Field(
        default_factory=dict,
        description="the toolchain image each job type's base.Dockerfile builds FROM, by job type name "
        "(HADDOCK_JOBTYPES__BASE_IMAGES as JSON); unset names take the production defaults",
    )
    build_timeout: DurationSeconds = Field(
        default=900.0, gt=0, description="a job's build at most (base image and job image); not the job's timeout"
    )
    build_network: str = Field(
        default="none",
        description="the network of build steps: 'none' (builds need no network), or e.g. 'bridge' to reach a "
        "module proxy",
    )
    go_proxy: str | None = Field(
        default=None, description="GOPROXY for golang builds (with build_network reaching it); default off"
    )
    pip_download: bool = Field(
        default=True,
        description="python3 jobs with a requirements file: the node downloads the wheels on the host (pip) into "
        "the build context; the build installs them with no index",
    )

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: list[Path]) -> list[Path]:
        for p in v:
            if not p.is_absolute():
                raise ValueError(f"plugin directory {str(p)!r} must be an absolute path")
        return v

    @field_validator("build_network")
    @classmethod
    def _network(cls, v: str) -> str:
        if v not in ("none", "bridge", "host", "default"):
            raise ValueError(f"build_network {v!r} must be none, bridge, host or default")
        return v

    def base_image(self, jobtype: str) -> str:
        return self.base_images.get(jobtype) or DEFAULT_BASE_IMAGES.get(jobtype, "debian:bookworm-slim")
