"""The semantic checks: will this node run this *kind* of job (networking, image policy, image platform,
input storage, timeout)."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from haddock.executor.imageref import DEFAULT_REGISTRY, normalize_name
from haddock.executor.quantity import format_duration
from haddock.executor.records import BidResult
from haddock.executor.request import NetworkMode
from haddock.node.bidding._chain import BidContext, EnginePlatform, ImagePlatformLookup, Platform, log
from haddock.node.bidding._settings import GLOB_CHARS, as_platform, check_pattern, parse_platform

# ---------------------------------------------------------------------------
# 1. Networking
# ---------------------------------------------------------------------------


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


def image_matches(name: str, pattern: str) -> bool:
    """Whether a normalized image name matches a glob (``*`` also crosses ``/``); case does not matter."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def normalize_pattern(pattern: str) -> str:
    """A pattern read the way image names are (:func:`haddock.executor.imageref.normalize_name`), so that it
    matches what it says: ``haddock-test/*`` -> ``docker.io/haddock-test/*``, ``docker.io/busybox`` ->
    ``docker.io/library/busybox``. A first component that is a registry (``.``, ``:``, ``localhost``) or a
    glob (any registry) is kept; a one-component glob (``*``, ``*busybox``) matches the full name as is."""
    first, sep, rest = pattern.partition("/")
    if not sep:
        return pattern.lower()
    if GLOB_CHARS & set(first) or any(c in first for c in ".:") or first == "localhost" or first != first.lower():
        registry, repository = first.lower(), rest.lower()
    else:
        registry, repository = DEFAULT_REGISTRY, pattern.lower()
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository and not GLOB_CHARS & set(repository):
        repository = "library/" + repository
    return f"{registry}/{repository}"


def _listing(items: Sequence[str], most: int = 5) -> str:
    if len(items) <= most:
        return ", ".join(items)
    return ", ".join(items[:most]) + f" and {len(items) - most} more"


class ImagePolicyStrategy:
    name = "image-policy"

    def __init__(self, *, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        self.allow = [normalize_pattern(check_pattern(p)) for p in allow]
        self.deny = [normalize_pattern(check_pattern(p)) for p in deny]

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


def platform_from_engine_info(info: Mapping[str, Any]) -> Platform | None:
    """The engine's (os, arch) from ``docker info`` (``OSType``, ``Architecture`` such as ``x86_64``)."""
    os_name, arch = info.get("OSType"), info.get("Architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    return as_platform(os_name, arch)


def platform_from_image_inspect(info: Mapping[str, Any]) -> Platform | None:
    """An image's (os, arch) from ``docker image inspect`` (``Os``, ``Architecture``)."""
    os_name, arch = info.get("Os"), info.get("Architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    return as_platform(os_name, arch)


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
            self._engine = as_platform(*engine_platform)
        else:
            self._engine_lookup = engine_platform
        self.unknown = unknown
        self.cache_ttl = cache_ttl
        self.also_accept = frozenset(parse_platform(p) for p in also_accept)
        self._clock = clock
        self._cache: dict[str, tuple[float, Platform]] = {}
        self._inflight: dict[str, asyncio.Task[Platform | None]] = {}
        self.lookups = 0
        """Calls of the image lookup (cache misses): for tests and metrics."""

    async def _engine_platform(self) -> Platform | None:
        if self._engine is None and self._engine_lookup is not None:
            found = await self._engine_lookup()
            if found is not None:
                self._engine = as_platform(*found)
        return self._engine

    async def _do_lookup(self, image: str) -> Platform | None:
        self.lookups += 1
        found = await self._lookup(image)
        if found is None:
            return None
        platform = as_platform(*found)
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
