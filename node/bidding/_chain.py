"""The contract of a bid check: what it looks at (:class:`BidContext`), what it is (:class:`BidStrategy`),
and the chains that run them in order (the first "no" wins)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from haddock.executor.records import BidResult
from haddock.executor.request import Resources, RunCommandRequest

log = logging.getLogger("haddock.node.bidding")
"""One logger for every bid check (the name it had when they were one module)."""

Platform = tuple[str, str]
"""(os, architecture), e.g. ``("linux", "amd64")``; architectures use the OCI/Go names."""

ImagePlatformLookup = Callable[[str], Awaitable[Platform | None]]
"""The (os, arch) an image is built for; None when not known (e.g. the image is not pulled yet)."""

EnginePlatform = Platform | Callable[[], Awaitable[Platform | None]]
"""The engine's (os, arch), or an async function that finds it (None: not known yet)."""

MAX_REASON = 500
"""Reasons that come from outside (a probe's answer) are cut to this many characters."""


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
