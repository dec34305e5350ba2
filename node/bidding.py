"""Bid strategies: whether this node takes a job, and why (after Bacalhau's bid strategies).

A requester asks a node two questions: will it run this *kind* of job (the semantic chain:
networking, image policy, image platform, input storage, timeout, an operator's external
probe), and does it have room for it now (the resource chain). Each strategy answers with a
:class:`BidResult` whose reason is a sentence a person understands; a :class:`BidChain` runs
its strategies in order and the first "no" wins.

Everything is configured by :class:`BiddingSettings` (the node's ``[bidding]`` TOML table), and
:func:`build_chain` turns it into the two chains.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import http
import http.client
import json
import logging
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from haddock.executor.imageref import DEFAULT_REGISTRY, normalize_name
from haddock.executor.models import (
    BidResult,
    ByteQuantity,
    CpuQuantity,
    DurationSeconds,
    NetworkMode,
    Resources,
    RunCommandRequest,
)
from haddock.executor.quantity import format_bytes, format_cpu, format_duration
from haddock.executor.sources import check_http_url, redact_url

__all__ = [
    "BidChain",
    "BidContext",
    "BidStrategy",
    "BiddingSettings",
    "Chains",
    "EnginePlatform",
    "ExternalProbeSettings",
    "ExternalProbeStrategy",
    "ImagePlatformLookup",
    "ImagePlatformSettings",
    "ImagePlatformStrategy",
    "ImagePolicySettings",
    "ImagePolicyStrategy",
    "NetworkingSettings",
    "NetworkingStrategy",
    "ResourceLimits",
    "ResourceSettings",
    "ResourceStrategy",
    "StorageSettings",
    "StorageStrategy",
    "TimeoutSettings",
    "TimeoutStrategy",
    "build_chain",
    "image_matches",
    "normalize_arch",
    "normalize_pattern",
    "platform_from_engine_info",
    "platform_from_image_inspect",
]

log = logging.getLogger(__name__)

Platform = tuple[str, str]
"""(os, architecture), e.g. ``("linux", "amd64")``; architectures use the OCI/Go names."""

ImagePlatformLookup = Callable[[str], Awaitable[Platform | None]]
"""The (os, arch) an image is built for; None when not known (e.g. the image is not pulled yet)."""

EnginePlatform = Platform | Callable[[], Awaitable[Platform | None]]
"""The engine's (os, arch), or an async function that finds it (None: not known yet)."""

MAX_REASON = 500
"""Reasons that come from outside (a probe's answer) are cut to this many characters."""


# ---------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BidContext:
    """Everything a strategy may look at to decide on one job."""

    request: RunCommandRequest
    usage: Resources
    """What the job will use (its resources, plus its inputs' size on disk)."""
    capacity: Resources
    """The node's total for jobs (after its reserve). Zero cpu/memory/disk means not known (no check)."""
    free: Resources
    """Capacity minus what running and queued executions hold."""
    input_source_types: frozenset[str] = frozenset()
    """Source types of the job's inputs, e.g. ``"url"``, ``"s3"``."""
    inputs_local: bool | None = None
    """Whether all inputs are already on this node; None: not known."""
    at_start: bool = False
    """Asked at Start, not by a bid: what is free is the admission's to decide (run, queue or
    RESOURCE_EXHAUSTED), so strategies check only what does not depend on it."""


@runtime_checkable
class BidStrategy(Protocol):
    """One reason to take or refuse a job."""

    name: str

    async def bid(self, ctx: BidContext) -> BidResult: ...


class BidChain:
    """Runs strategies in order; the first "no" wins. A strategy that raises is a "no" naming it."""

    def __init__(self, strategies: Sequence[BidStrategy]) -> None:
        self.strategies: tuple[BidStrategy, ...] = tuple(strategies)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.strategies]

    async def bid(self, ctx: BidContext) -> BidResult:
        reasons: list[str] = []
        for strategy in self.strategies:
            try:
                result = await strategy.bid(ctx)
            except Exception as exc:
                log.warning(
                    "bid strategy %r failed on execution %s", strategy.name, ctx.request.execution_id, exc_info=True
                )
                detail = str(exc) or "no details"
                return BidResult.no(f"the {strategy.name!r} bid check failed: {type(exc).__name__}: {detail}")
            if not result.should_bid:
                log.debug("bid strategy %r refused %s: %s", strategy.name, ctx.request.execution_id, result.reason)
                return result
            reasons.append(result.reason)
        if not reasons:
            return BidResult.yes("no bid check objects to the job")
        return BidResult.yes("; ".join(reasons))


@dataclass(frozen=True)
class Chains:
    """The semantic chain (will this node run this kind of job?) and the resource chain (is there room now?)."""

    semantic: BidChain
    resource: BidChain

    async def bid(self, ctx: BidContext) -> BidResult:
        """Both chains: the semantic one first."""
        semantic = await self.semantic.bid(ctx)
        if not semantic.should_bid:
            return semantic
        resource = await self.resource.bid(ctx)
        if not resource.should_bid:
            return resource
        return BidResult.yes("; ".join(r.reason for r in (semantic, resource)))


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


class NetworkingStrategy:
    name = "networking"

    def __init__(self, *, reject_networked: bool = False, allowed_modes: Iterable[NetworkMode] | None = None) -> None:
        self.reject_networked = reject_networked
        self.allowed_modes = frozenset(allowed_modes) if allowed_modes is not None else None

    async def bid(self, ctx: BidContext) -> BidResult:
        mode = ctx.request.network.mode
        if self.reject_networked and mode is not NetworkMode.NONE:
            return BidResult.no("this node does not accept networked jobs")
        if self.allowed_modes is not None and mode not in self.allowed_modes:
            allowed = ", ".join(sorted(m.value for m in self.allowed_modes))
            return BidResult.no(f"this node does not accept jobs with network mode '{mode}' (allowed: {allowed})")
        return BidResult.yes(f"this node accepts jobs with network mode '{mode}'")


# ---------------------------------------------------------------------------
# 2. Image policy
# ---------------------------------------------------------------------------

_GLOB_CHARS = frozenset("*?[")


def image_matches(name: str, pattern: str) -> bool:
    """Whether a normalized image name matches a glob (``*`` also crosses ``/``); case does not matter."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def _check_pattern(pattern: str) -> str:
    if not pattern or pattern != pattern.strip():
        raise ValueError(f"image pattern {pattern!r} must not be empty or have surrounding spaces")
    if "@" in pattern or ":" in pattern.rpartition("/")[2]:
        raise ValueError(
            f"image pattern {pattern!r} has a tag or digest; patterns match registry/repository only, "
            "e.g. 'docker.io/library/*'"
        )
    if "/" not in pattern and not _GLOB_CHARS & set(pattern):
        raise ValueError(
            f"image pattern {pattern!r} can never match: patterns match the full name, e.g. {normalize_name(pattern)!r}"
        )
    return pattern


def normalize_pattern(pattern: str) -> str:
    """A pattern read the way image names are (:func:`haddock.executor.imageref.normalize_name`), so that it
    matches what it says: ``haddock-test/*`` -> ``docker.io/haddock-test/*``, ``docker.io/busybox`` ->
    ``docker.io/library/busybox``. A first component that is a registry (``.``, ``:``, ``localhost``) or a
    glob (any registry) is kept; a one-component glob (``*``, ``*busybox``) matches the full name as is."""
    first, sep, rest = pattern.partition("/")
    if not sep:
        return pattern.lower()
    if _GLOB_CHARS & set(first) or any(c in first for c in ".:") or first == "localhost" or first != first.lower():
        registry, repository = first.lower(), rest.lower()
    else:
        registry, repository = DEFAULT_REGISTRY, pattern.lower()
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository and not _GLOB_CHARS & set(repository):
        repository = "library/" + repository
    return f"{registry}/{repository}"


def _listing(items: Sequence[str], most: int = 5) -> str:
    if len(items) <= most:
        return ", ".join(items)
    return ", ".join(items[:most]) + f" and {len(items) - most} more"


class ImagePolicySettings(_Settings):
    allow: list[str] = Field(
        default_factory=list, description="globs over registry/repository; when set, only these images run"
    )
    deny: list[str] = Field(default_factory=list, description="globs over registry/repository; deny wins over allow")

    @field_validator("allow", "deny")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return [_check_pattern(p) for p in v]


class ImagePolicyStrategy:
    name = "image-policy"

    def __init__(self, *, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        self.allow = [normalize_pattern(_check_pattern(p)) for p in allow]
        self.deny = [normalize_pattern(_check_pattern(p)) for p in deny]

    async def bid(self, ctx: BidContext) -> BidResult:
        image = ctx.request.engine.image
        name = normalize_name(image)
        shown = f"'{image}'" if name == image else f"'{image}' ({name})"
        for pattern in self.deny:
            if image_matches(name, pattern):
                return BidResult.no(f"image {shown} is denied on this node (matches '{pattern}')")
        if self.allow and not any(image_matches(name, p) for p in self.allow):
            return BidResult.no(f"image {shown} is not allowed on this node (allowed: {_listing(self.allow)})")
        return BidResult.yes(f"image {shown} is allowed on this node")


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


def _platform(os_name: str, arch: str) -> Platform:
    return os_name.strip().lower(), normalize_arch(arch)


def platform_from_engine_info(info: Mapping[str, Any]) -> Platform | None:
    """The engine's (os, arch) from ``docker info`` (``OSType``, ``Architecture`` such as ``x86_64``)."""
    os_name, arch = info.get("OSType"), info.get("Architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    return _platform(os_name, arch)


def platform_from_image_inspect(info: Mapping[str, Any]) -> Platform | None:
    """An image's (os, arch) from ``docker image inspect`` (``Os``, ``Architecture``)."""
    os_name, arch = info.get("Os"), info.get("Architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    return _platform(os_name, arch)


def _parse_platform(v: str) -> str:
    os_name, sep, arch = v.partition("/")
    if not sep or not os_name or not arch or "/" in arch:
        raise ValueError(f"platform {v!r} must be OS/ARCH, e.g. 'linux/arm64'")
    return "/".join(_platform(os_name, arch))


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
        return [_parse_platform(p) for p in v]


class ImagePlatformStrategy:
    """The image's os/arch must be the engine's (or one the operator added). Known platforms are cached."""

    name = "image-platform"
    MAX_CACHED = 1024

    def __init__(
        self,
        *,
        lookup: ImagePlatformLookup,
        engine_platform: EnginePlatform,
        unknown: Literal["bid", "refuse"] = "bid",
        cache_ttl: float = 300.0,
        also_accept: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._engine: Platform | None = None
        self._engine_lookup: Callable[[], Awaitable[Platform | None]] | None = None
        if isinstance(engine_platform, tuple):
            self._engine = _platform(*engine_platform)
        else:
            self._engine_lookup = engine_platform
        self.unknown = unknown
        self.cache_ttl = cache_ttl
        self.also_accept = frozenset(_parse_platform(p) for p in also_accept)
        self._clock = clock
        self._cache: dict[str, tuple[float, Platform]] = {}
        self._inflight: dict[str, asyncio.Task[Platform | None]] = {}
        self.lookups = 0
        """Calls of the image lookup (cache misses): for tests and metrics."""

    async def _engine_platform(self) -> Platform | None:
        if self._engine is None and self._engine_lookup is not None:
            found = await self._engine_lookup()
            if found is not None:
                self._engine = _platform(*found)
        return self._engine

    async def _do_lookup(self, image: str) -> Platform | None:
        self.lookups += 1
        found = await self._lookup(image)
        if found is None:
            return None
        platform = _platform(*found)
        now = self._clock()
        if len(self._cache) >= self.MAX_CACHED:
            for key in [k for k, (expiry, _) in self._cache.items() if expiry <= now] or [next(iter(self._cache))]:
                del self._cache[key]
        self._cache[image] = (now + self.cache_ttl, platform)
        return platform

    async def image_platform(self, image: str) -> Platform | None:
        """The image's platform: cached for ``cache_ttl`` once known; concurrent lookups of one image share one."""
        cached = self._cache.get(image)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        task = self._inflight.get(image)
        if task is None:
            task = asyncio.create_task(self._do_lookup(image))
            self._inflight[image] = task

            def _done(t: asyncio.Task[Platform | None]) -> None:
                self._inflight.pop(image, None)
                if not t.cancelled():
                    t.exception()  # retrieved here, so that a lookup nobody waits for any more is not reported

            task.add_done_callback(_done)
        return await asyncio.shield(task)

    def _unknown(self, why: str) -> BidResult:
        if self.unknown == "bid":
            return BidResult.yes(why)
        return BidResult.no(f"{why}, and this node only bids on images whose platform it knows")

    async def bid(self, ctx: BidContext) -> BidResult:
        image = ctx.request.engine.image
        try:
            engine = await self._engine_platform()
            platform = None if engine is None else await self.image_platform(image)
        except Exception as exc:  # the engine away (e.g. restarting): not a reason to refuse the job itself
            log.warning("image platform of %s unknown: %s", image, exc)
            return self._unknown(f"image '{image}': platform unknown (the engine did not answer)")
        if engine is None:
            return self._unknown("this node's platform is not known yet")
        if platform is None:
            return self._unknown(f"image '{image}': platform unknown until pulled")
        built_for = "/".join(platform)
        runs = "/".join(engine)
        if platform == engine or built_for in self.also_accept:
            return BidResult.yes(f"image '{image}' is built for {built_for}, which this node runs")
        also = f" (and {', '.join(sorted(self.also_accept))})" if self.also_accept else ""
        return BidResult.no(f"image '{image}' is built for {built_for}, this node runs {runs}{also}")


# ---------------------------------------------------------------------------
# 4. Storage
# ---------------------------------------------------------------------------


class StorageSettings(_Settings):
    require_local: bool = Field(default=False, description="only bid when the job's inputs are already on this node")


class StorageStrategy:
    name = "storage"

    def __init__(self, *, installed: Iterable[str], require_local: bool = False) -> None:
        self.installed = frozenset(installed)
        self._installed_folded = frozenset(t.casefold() for t in self.installed)
        self.require_local = require_local

    async def bid(self, ctx: BidContext) -> BidResult:
        missing = sorted(t for t in ctx.input_source_types if t.casefold() not in self._installed_folded)
        if len(missing) == 1:
            return BidResult.no(f"this node cannot read inputs of type '{missing[0]}'")
        if missing:
            return BidResult.no(f"this node cannot read inputs of types {', '.join(repr(t) for t in missing)}")
        has_inputs = bool(ctx.input_source_types or ctx.request.inputs)
        if self.require_local and has_inputs and ctx.inputs_local is not True:
            if ctx.inputs_local is None:
                return BidResult.no(
                    "this node only runs jobs whose inputs are already on it, and cannot tell whether this job's are"
                )
            return BidResult.no("this node only runs jobs whose inputs are already on it")
        if not has_inputs:
            return BidResult.yes("the job has no inputs")
        if ctx.inputs_local is True:
            return BidResult.yes("the job's inputs are already on this node")
        return BidResult.yes("this node can read all of the job's inputs")


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


class TimeoutStrategy:
    name = "timeout"

    def __init__(self, *, min_timeout: float | None = None, max_timeout: float | None = None) -> None:
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout

    async def bid(self, ctx: BidContext) -> BidResult:
        timeout = ctx.request.timeout
        if timeout is None:
            if self.max_timeout is not None:
                return BidResult.no(f"this node requires a timeout of at most {format_duration(self.max_timeout)}")
            return BidResult.yes("the job has no timeout, which this node allows")
        if self.max_timeout is not None and timeout > self.max_timeout:
            return BidResult.no(
                f"this node allows a timeout of at most {format_duration(self.max_timeout)}, "
                f"the job asks for {format_duration(timeout)}"
            )
        if self.min_timeout is not None and timeout < self.min_timeout:
            return BidResult.no(
                f"this node requires a timeout of at least {format_duration(self.min_timeout)}, "
                f"the job asks for {format_duration(timeout)}"
            )
        return BidResult.yes(f"the job's timeout of {format_duration(timeout)} is within this node's limits")


# ---------------------------------------------------------------------------
# 6. Resources (ShouldBidBasedOnUsage)
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


def _millis(cores: float) -> int:
    return round(cores * 1000)


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


class ResourceStrategy:
    """Per-job maxima, then the node's capacity and what is free of it.

    Zero cpu/memory/disk in a job's usage means "no limit": with a per-job maximum set, such a job
    is refused; against capacity it counts as nothing. Zero cpu/memory/disk capacity means the node
    does not know it, and is not checked; zero GPU capacity means no GPUs.
    """

    name = "resources"

    def __init__(self, *, max_per_job: ResourceLimits | None = None) -> None:
        self.max_per_job = max_per_job or ResourceLimits()

    def _per_job(self, usage: Resources) -> BidResult | None:
        m = self.max_per_job
        if m.cpu is not None:
            if usage.cpu == 0:
                return BidResult.no(f"this node requires jobs to set a CPU limit of at most {format_cpu(m.cpu)} CPUs")
            if _millis(usage.cpu) > _millis(m.cpu):
                return BidResult.no(
                    f"this node allows at most {format_cpu(m.cpu)} CPUs per job, requested {format_cpu(usage.cpu)}"
                )
        for what, limit, used in (("memory", m.memory, usage.memory), ("disk", m.disk, usage.disk)):
            if limit is None:
                continue
            if used == 0:
                return BidResult.no(f"this node requires jobs to set a {what} limit of at most {format_bytes(limit)}")
            if used > limit:
                return BidResult.no(
                    f"this node allows at most {format_bytes(limit)} of {what} per job, requested {format_bytes(used)}"
                )
        if m.gpu is not None and usage.gpu > m.gpu:
            if m.gpu == 0:
                return BidResult.no(f"this node does not run GPU jobs, requested {_gpus(usage.gpu)}")
            return BidResult.no(f"this node allows at most {_gpus(m.gpu)} per job, requested {usage.gpu}")
        return None

    @staticmethod
    def _capacity(ctx: BidContext) -> BidResult | None:
        usage, cap, free = ctx.usage, ctx.capacity, ctx.free
        if usage.cpu and cap.cpu:
            if _millis(usage.cpu) > _millis(cap.cpu):
                return BidResult.no(
                    f"insufficient CPU: requested {format_cpu(usage.cpu)}, this node has {format_cpu(cap.cpu)} for jobs"
                )
            if _millis(usage.cpu) > _millis(free.cpu):
                return BidResult.no(
                    f"insufficient CPU: requested {format_cpu(usage.cpu)}, "
                    f"free {format_cpu(free.cpu)} of {format_cpu(cap.cpu)}"
                )
        for what, used, total, left in (
            ("memory", usage.memory, cap.memory, free.memory),
            ("disk", usage.disk, cap.disk, free.disk),
        ):
            if not used or not total:
                continue
            if used > total:
                return BidResult.no(
                    f"insufficient {what}: requested {format_bytes(used)}, this node has {format_bytes(total)} for jobs"
                )
            if used > left:
                return BidResult.no(
                    f"insufficient {what}: requested {format_bytes(used)}, "
                    f"free {format_bytes(left)} of {format_bytes(total)}"
                )
        if usage.gpu:
            if not cap.gpu:
                return BidResult.no(f"insufficient GPUs: requested {usage.gpu}, this node has none")
            if usage.gpu > cap.gpu:
                return BidResult.no(f"insufficient GPUs: requested {usage.gpu}, this node has {cap.gpu} for jobs")
            if usage.gpu > free.gpu:
                return BidResult.no(f"insufficient GPUs: requested {usage.gpu}, free {free.gpu} of {cap.gpu}")
        return None

    async def bid(self, ctx: BidContext) -> BidResult:
        refusal = self._per_job(ctx.usage) or (None if ctx.at_start else self._capacity(ctx))
        if refusal is not None:
            return refusal
        return BidResult.yes("this node has the resources the job asks for")


# ---------------------------------------------------------------------------
# 7. External probe: a command or an HTTP endpoint
# ---------------------------------------------------------------------------

MAX_PROBE_REPLY = 64 * 1024


def _clip(text: str, most: int = MAX_REASON) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _probe_payload(ctx: BidContext) -> bytes:
    return (
        json.dumps(
            {
                "request": ctx.request.model_dump(mode="json"),
                "usage": ctx.usage.model_dump(mode="json"),
                "input_source_types": sorted(ctx.input_source_types),
                "inputs_local": ctx.inputs_local,
            }
        ).encode()
        + b"\n"
    )  # one line, so that a shell probe can `read` it


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


class ExternalProbeStrategy:
    """The operator's own bid check. Any failure of the probe is a "no" with a reason, never an exception."""

    name = "external-probe"

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        if (command is None) == (url is None):
            raise ValueError("an external bid probe needs exactly one of command or url")
        if command is not None and not command:
            raise ValueError("the bid probe command must not be empty")
        self.command = list(command) if command is not None else None
        self.url = url
        self.headers = dict(headers or {})
        self.timeout = timeout
        # Environment proxies are not used: a probe is the operator's own, usually local, service.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def described(self) -> str:
        if self.command is not None:
            return f"the bid probe command '{os.path.basename(self.command[0])}'"
        assert self.url is not None
        return f"the bid probe at {redact_url(self.url)}"

    async def bid(self, ctx: BidContext) -> BidResult:
        payload = _probe_payload(ctx)
        if self.command is not None:
            return await self._run_command(self.command, payload)
        return await self._post(payload)

    # -- command

    async def _run_command(self, argv: list[str], payload: bytes) -> BidResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, so that a timeout kills its children too
            )
        except OSError as exc:
            return BidResult.no(f"{self.described} could not be started: {exc.strerror or exc}")
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except TimeoutError:
            await _kill(proc)
            return BidResult.no(f"{self.described} did not answer within {format_duration(self.timeout)}")
        except BaseException:
            await _kill(proc)
            raise
        if stderr.strip():
            log.info("%s wrote to stderr: %s", self.described, _clip(stderr.decode("utf-8", "replace").strip()))
        lines = stdout.decode("utf-8", "replace").strip().splitlines()
        reason = _clip(lines[0].strip()) if lines else ""
        code = proc.returncode
        if code == 0:
            return BidResult.yes(reason or f"{self.described} accepted the job")
        if reason:
            return BidResult.no(reason)
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return BidResult.no(f"{self.described} refused the job ({how})")

    # -- HTTP

    def _post_blocking(self, payload: bytes) -> tuple[int, bytes]:
        assert self.url is not None
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "haddock-bid-probe",
            **self.headers,
        }
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return int(resp.status), resp.read(MAX_PROBE_REPLY + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, b""

    async def _post(self, payload: bytes) -> BidResult:
        try:
            status, body = await asyncio.wait_for(asyncio.to_thread(self._post_blocking, payload), self.timeout)
        except TimeoutError:
            return BidResult.no(f"{self.described} did not answer within {format_duration(self.timeout)}")
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return BidResult.no(f"{self.described} did not answer within {format_duration(self.timeout)}")
            return BidResult.no(f"{self.described} could not be reached: {exc.reason}")
        except (OSError, http.client.HTTPException) as exc:
            return BidResult.no(f"{self.described} failed: {type(exc).__name__}: {exc}")
        if status >= 400:
            try:
                phrase = f" {http.HTTPStatus(status).phrase}"
            except ValueError:
                phrase = ""
            return BidResult.no(f"{self.described} answered HTTP {status}{phrase}")
        return self._parse_reply(body)

    def _not_a_bid(self, detail: str) -> BidResult:
        return BidResult.no(f"{self.described} answered something that is not a bid: {detail}")

    def _parse_reply(self, body: bytes) -> BidResult:
        if len(body) > MAX_PROBE_REPLY:
            return self._not_a_bid(f"a reply larger than {format_bytes(MAX_PROBE_REPLY)}")
        try:
            data = json.loads(body)
        except ValueError:
            snippet = body[:100].decode("utf-8", "replace")
            return self._not_a_bid(f"not JSON: {snippet!r}" if snippet.strip() else "an empty reply")
        if not isinstance(data, dict):
            return self._not_a_bid(f"expected a JSON object, got {_clip(json.dumps(data), 100)}")
        if "should_bid" not in data:
            return self._not_a_bid("'should_bid' is missing")
        should_bid = data["should_bid"]
        if not isinstance(should_bid, bool):
            return self._not_a_bid(f"'should_bid' must be true or false, got {_clip(json.dumps(should_bid), 100)}")
        if "reason" not in data:
            return self._not_a_bid("'reason' is missing")
        reason = data["reason"]
        if not isinstance(reason, str):
            return self._not_a_bid(f"'reason' must be a string, got {_clip(json.dumps(reason), 100)}")
        reason = _clip(reason.strip())
        if should_bid:
            return BidResult.yes(reason or f"{self.described} accepted the job")
        return BidResult.no(reason or f"{self.described} refused the job")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 5.0)


# ---------------------------------------------------------------------------
# Configuration and assembly
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


def build_chain(
    settings: BiddingSettings,
    *,
    image_platform_lookup: ImagePlatformLookup | None,
    storage_types_installed: Iterable[str],
    engine_platform: EnginePlatform | None = None,
) -> Chains:
    """The semantic chain (cheap checks first, the external probe last) and the resource chain.

    ``image_platform_lookup`` and ``engine_platform`` are needed when ``image_platform`` is on.
    """
    semantic: list[BidStrategy] = []
    if settings.networking is not None and settings.networking.enabled:
        n = settings.networking
        semantic.append(NetworkingStrategy(reject_networked=n.reject_networked, allowed_modes=n.allowed_modes))
    if settings.timeout is not None and settings.timeout.enabled:
        t = settings.timeout
        semantic.append(TimeoutStrategy(min_timeout=t.min_timeout, max_timeout=t.max_timeout))
    if settings.image_policy is not None and settings.image_policy.enabled:
        semantic.append(ImagePolicyStrategy(allow=settings.image_policy.allow, deny=settings.image_policy.deny))
    if settings.storage is not None and settings.storage.enabled:
        semantic.append(
            StorageStrategy(installed=storage_types_installed, require_local=settings.storage.require_local)
        )
    if settings.image_platform is not None and settings.image_platform.enabled:
        p = settings.image_platform
        if image_platform_lookup is None or engine_platform is None:
            raise ValueError(
                "bidding.image_platform is on but the node gave no way to find image and engine platforms; "
                "set bidding.image_platform.enabled = false or pass image_platform_lookup and engine_platform"
            )
        semantic.append(
            ImagePlatformStrategy(
                lookup=image_platform_lookup,
                engine_platform=engine_platform,
                unknown=p.unknown,
                cache_ttl=p.cache_ttl,
                also_accept=p.also_accept,
            )
        )
    if settings.external_probe is not None and settings.external_probe.enabled:
        e = settings.external_probe
        semantic.append(ExternalProbeStrategy(command=e.command, url=e.url, headers=e.headers, timeout=e.timeout))
    resource: list[BidStrategy] = []
    if settings.resources is not None and settings.resources.enabled:
        resource.append(ResourceStrategy(max_per_job=settings.resources.max_per_job))
    return Chains(semantic=BidChain(semantic), resource=BidChain(resource))
