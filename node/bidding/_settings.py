"""The ``[bidding]`` TOML table: one settings model per check, and :class:`BiddingSettings` holding them.

The checks of configured values (image patterns, platforms) live here too: the strategies use them on
the values they are given directly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from haddock.executor.fields import ByteQuantity, CpuQuantity, DurationSeconds
from haddock.executor.imageref import normalize_name
from haddock.executor.quantity import format_duration
from haddock.executor.request import NetworkMode
from haddock.executor.sources import check_http_url
from haddock.node.bidding._chain import Platform


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="set to false to switch this check off")


# ---------------------------------------------------------------------------
# 1. Networking
# ---------------------------------------------------------------------------


class NetworkingSettings(_Settings):
    reject_networked: bool = Field(default=False, description="refuse every job that asks for a network")
    allowed_modes: frozenset[NetworkMode] | None = Field(
        default=None, min_length=1, description="the network modes jobs may use; default: all"
    )

    @model_validator(mode="after")
    def _one_way(self) -> NetworkingSettings:
        if self.reject_networked and self.allowed_modes is not None and self.allowed_modes != {NetworkMode.NONE}:
            raise ValueError("set reject_networked or allowed_modes, not both")
        return self


# ---------------------------------------------------------------------------
# 2. Image policy
# ---------------------------------------------------------------------------

GLOB_CHARS = frozenset("*?[")


def check_pattern(pattern: str) -> str:
    if not pattern or pattern != pattern.strip():
        raise ValueError(f"image pattern {pattern!r} must not be empty or have surrounding spaces")
    if "@" in pattern or ":" in pattern.rpartition("/")[2]:
        raise ValueError(
            f"image pattern {pattern!r} has a tag or digest; patterns match registry/repository only, "
            "e.g. 'docker.io/library/*'"
        )
    repository = normalize_name(pattern).partition("/")[2]
    if repository != repository.lower():
        raise ValueError(
            f"image pattern {pattern!r} can never match: repository names are lower case "
            f"(e.g. {normalize_name(pattern.lower())!r})"
        )
    if "/" not in pattern and not GLOB_CHARS & set(pattern):
        raise ValueError(
            f"image pattern {pattern!r} can never match: patterns match the full name, e.g. {normalize_name(pattern)!r}"
        )
    return pattern


class ImagePolicySettings(_Settings):
    allow: list[str] = Field(
        default_factory=list, description="globs over registry/repository; when set, only these images run"
    )
    deny: list[str] = Field(default_factory=list, description="globs over registry/repository; deny wins over allow")

    @field_validator("allow", "deny")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return [check_pattern(p) for p in v]


# ---------------------------------------------------------------------------
# 3. Image platform
# ---------------------------------------------------------------------------

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "armv8": "arm64",
    "armv8l": "arm",
    "armv7l": "arm",
    "armv7": "arm",
    "armv6l": "arm",
    "armhf": "arm",
    "armel": "arm",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "ppc64el": "ppc64le",
}


def normalize_arch(arch: str) -> str:
    """An architecture in the OCI/Go spelling: ``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``."""
    a = arch.strip().lower()
    return _ARCH_ALIASES.get(a, a)


def as_platform(os_name: str, arch: str) -> Platform:
    return os_name.strip().lower(), normalize_arch(arch)


def parse_platform(v: str) -> str:
    os_name, sep, arch = v.partition("/")
    if not sep or not os_name or not arch or "/" in arch:
        raise ValueError(f"platform {v!r} must be OS/ARCH, e.g. 'linux/arm64'")
    return "/".join(as_platform(os_name, arch))


class ImagePlatformSettings(_Settings):
    unknown: Literal["bid", "refuse"] = Field(
        default="bid", description="what to answer when the image's platform is not known (e.g. not pulled yet)"
    )
    cache_ttl: DurationSeconds = Field(default=300.0, ge=0, description="how long an image's platform is remembered")
    also_accept: list[str] = Field(
        default_factory=list, description="more platforms this node runs, e.g. 'linux/arm64' under emulation"
    )

    @field_validator("also_accept")
    @classmethod
    def _platforms(cls, v: list[str]) -> list[str]:
        return [parse_platform(p) for p in v]


# ---------------------------------------------------------------------------
# 4. Storage
# ---------------------------------------------------------------------------


class StorageSettings(_Settings):
    require_local: bool = Field(default=False, description="only bid when the job's inputs are already on this node")


# ---------------------------------------------------------------------------
# 5. Timeout
# ---------------------------------------------------------------------------


class TimeoutSettings(_Settings):
    min_timeout: DurationSeconds | None = Field(default=None, gt=0, description="shortest timeout a job may have")
    max_timeout: DurationSeconds | None = Field(
        default=None, gt=0, description="longest timeout a job may have; jobs without one are refused"
    )

    @model_validator(mode="after")
    def _order(self) -> TimeoutSettings:
        if self.min_timeout is not None and self.max_timeout is not None and self.min_timeout > self.max_timeout:
            raise ValueError(
                f"min_timeout {format_duration(self.min_timeout)} is longer than "
                f"max_timeout {format_duration(self.max_timeout)}"
            )
        return self


# ---------------------------------------------------------------------------
# 6. Resources
# ---------------------------------------------------------------------------


class ResourceLimits(BaseModel):
    """Most one job may ask for; None = no limit."""

    model_config = ConfigDict(extra="forbid")

    cpu: CpuQuantity | None = Field(default=None, gt=0)
    memory: ByteQuantity | None = Field(default=None, gt=0)
    disk: ByteQuantity | None = Field(default=None, gt=0)
    gpu: int | None = Field(default=None, ge=0)


class ResourceSettings(_Settings):
    max_per_job: ResourceLimits = Field(default_factory=ResourceLimits)


# ---------------------------------------------------------------------------
# 7. External probe
# ---------------------------------------------------------------------------


class ExternalProbeSettings(_Settings):
    """Ask the operator's own program: a command (job JSON on stdin) or an HTTP endpoint (job JSON POSTed)."""

    command: list[str] | None = Field(default=None, min_length=1, description="argv; exit 0 = bid")
    url: str | None = Field(default=None, description='http(s) URL answering {"should_bid": bool, "reason": str}')
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers, e.g. Authorization")
    timeout: DurationSeconds = Field(default=5.0, gt=0, description="no answer in time = no bid")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return check_http_url(v, "the URL")  # the one check of http(s) URLs: scheme, host, port, length
        except ValueError as exc:
            raise ValueError(f"bid probe url must be an http:// or https:// URL with a host ({exc})") from None

    @model_validator(mode="after")
    def _one(self) -> ExternalProbeSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("an external bid probe needs exactly one of command or url")
        if self.headers and self.url is None:
            raise ValueError("headers only apply to an HTTP bid probe (url)")
        return self


# ---------------------------------------------------------------------------
# All of them
# ---------------------------------------------------------------------------


class BiddingSettings(BaseModel):
    """The node's ``[bidding]`` table. A check is on when its table is present (``enabled = false`` turns it off).

    On by default: ``storage``, ``image_platform`` and ``resources`` (they only refuse jobs that cannot
    work here); the others are the operator's policy and off until configured.
    """

    model_config = ConfigDict(extra="forbid")

    networking: NetworkingSettings | None = None
    image_policy: ImagePolicySettings | None = None
    image_platform: ImagePlatformSettings | None = Field(default_factory=ImagePlatformSettings)
    storage: StorageSettings | None = Field(default_factory=StorageSettings)
    timeout: TimeoutSettings | None = None
    resources: ResourceSettings | None = Field(default_factory=ResourceSettings)
    external_probe: ExternalProbeSettings | None = None
