"""The node keeps its word: what it answers to ShouldBid / ShouldBidBasedOnUsage is what it enforces at Start.

One code path for both: :meth:`Policy.semantic` runs the operator's semantic chain (networking, timeout,
image policy, storage, image platform, the external probe) and :meth:`Policy.resources` the per-job
limits of the resource chain, over the job's usage (its resources, with its inputs' size counted in
``disk``). A bid adds the engine's own answer and what is free now; Start (:meth:`Policy.enforce`) runs
the same chains before anything is created and refuses with the bid's reason (FAILED_PRECONDITION),
leaving what is free to the admission (run now, queue, or RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from haddock.executor import imageref
from haddock.executor.errors import ExecutionRefused, ExecutorError, InvalidSpec
from haddock.executor.quantity import format_bytes
from haddock.executor.records import BidResult
from haddock.executor.request import OutputLimits, PullPolicy, Resources, RunCommandRequest
from haddock.node.bidding import BidContext
from haddock.node.capacity import CapacitySnapshot
from haddock.storage.netpolicy import AddressPolicy, AddressRefused

if TYPE_CHECKING:
    from haddock.node.config import LimitsSettings
    from haddock.node.service import Node

__all__ = ["Policy", "check_output_limits", "free_of"]


def check_output_limits(limits: OutputLimits, operator: LimitsSettings) -> None:
    """Each of the four output limits within the operator's maximum ([limits]); InvalidSpec naming it."""
    for name, most, key in (
        ("max_stdout_return_length", operator.max_return_length, "max_return_length"),
        ("max_stderr_return_length", operator.max_return_length, "max_return_length"),
        ("max_stdout_file_length", operator.max_file_length, "max_file_length"),
        ("max_stderr_file_length", operator.max_file_length, "max_file_length"),
    ):
        asked = getattr(limits, name)
        if asked > most:
            raise InvalidSpec(
                f"invalid request: output_limits.{name}: {format_bytes(asked)} is more than this node allows "
                f"(at most {format_bytes(most)}, its limits.{key})"
            )


def free_of(snap: CapacitySnapshot) -> Resources:
    """What is neither running nor queued, per dimension (0 where the capacity is unknown)."""
    capacity, allocated, queued = snap.capacity, snap.allocated, snap.queued
    return Resources.model_construct(
        cpu=max(0.0, capacity.cpu - allocated.cpu - queued.cpu),
        memory=max(0, capacity.memory - allocated.memory - queued.memory),
        disk=max(0, capacity.disk - allocated.disk - queued.disk),
        gpu=max(0, capacity.gpu - allocated.gpu - queued.gpu),
    )


def _host_port(registry: str) -> tuple[str, int]:
    """``host[:port]`` of a registry (``[v6]:port`` too) as (host without brackets, port; 443 when none)."""
    host, sep, port = registry.rpartition(":")
    if not sep or not port.isdigit() or not host or (host.startswith("[") and not host.endswith("]")):
        host, port = registry, ""
    return host.strip("[]"), int(port) if port else 443


class Policy:
    """The node's bid answers and their enforcement at Start. ``prepared`` requests carry the node's results dir."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def context(self, prepared: RunCommandRequest, usage: Resources, *, at_start: bool = False) -> BidContext:
        snap = self.node.capacity.snapshot()
        sources = prepared.input_sources
        storage = self.node.storage
        local: bool | None = None
        if sources and storage is not None:
            try:
                local = all([await storage.has_storage_locally(s) for s in sources])
            except Exception:
                local = None
        return BidContext(
            request=prepared,
            usage=usage,
            capacity=snap.capacity,
            free=free_of(snap),
            input_source_types=frozenset(s.type for s in sources),
            inputs_local=local,
            at_start=at_start,
        )

    async def semantic(self, prepared: RunCommandRequest, *, at_start: bool = False) -> BidResult:
        """A service's ports in range, the addresses the job names, then the operator's semantic chain (the
        external probe is asked once)."""
        refused = self.ports(prepared, free=False)
        if refused is not None:
            return refused
        try:
            await self.node.check_addresses(prepared)
        except ExecutorError as exc:
            return BidResult.no(exc.message)
        why = await self.registry_refusal(prepared)
        if why is not None:
            return BidResult.no(why)
        ctx = await self.context(prepared, prepared.resources, at_start=at_start)
        return await self.node.chains.semantic.bid(ctx)

    async def registry_refusal(self, prepared: RunCommandRequest) -> str | None:
        """Why the image may not be pulled from the registry it names, or None.

        Only when a pull would happen (pull policy ``always``, or ``if-not-present`` and the engine does not
        have the image) and the registry is not Docker Hub: its host's addresses (a literal address as it
        is, a name resolved) must all be public, as for URL inputs, unless the operator sets
        ``docker.allow_private_registries``. The engine resolves the name again when it pulls."""
        engine = prepared.engine
        if prepared.job is not None or engine.pull_policy is PullPolicy.NEVER:
            return None  # a job's image is built on the node; never: nothing is pulled
        if self.node.settings.docker.allow_private_registries:
            return None
        try:
            ref = imageref.parse(engine.image)
        except ValueError:
            return None  # the request's own validation says what is wrong with it
        if ref.registry == imageref.DEFAULT_REGISTRY:
            return None
        if engine.pull_policy is PullPolicy.IF_NOT_PRESENT:
            with contextlib.suppress(Exception):  # an engine that does not answer: a pull may follow
                if await self.node.executor.inspect_image(engine.image) is not None:
                    return None
        host, number = _host_port(ref.registry)
        policy = AddressPolicy(resolver=self.node.address_policy.resolver)  # storage's private switch aside
        try:
            await policy.aresolve(
                host,
                number,
                ref.registry,
                f"image {engine.image!r}: its registry",
                serves="pulls from registries on",
                setting="docker.allow_private_registries",
            )
        except AddressRefused as exc:
            return exc.message
        return None

    async def usage(self, prepared: RunCommandRequest, usage: Resources | None = None) -> Resources | BidResult:
        """What the job will use: its resources with its inputs' size on disk counted in ``disk``; or a "no"
        when an input certainly cannot be had."""
        usage = usage or prepared.resources
        try:
            input_bytes = await self.node.input_size(prepared)
        except Exception as exc:  # an input that cannot be had: no bid, and why
            return BidResult.no(str(exc) or type(exc).__name__)
        if input_bytes:
            usage = usage.model_copy(update={"disk": usage.disk + input_bytes})
        return usage

    async def resources(self, prepared: RunCommandRequest, usage: Resources, *, at_start: bool = False) -> BidResult:
        """The resource chain: per-job limits, and (for a bid) what is free."""
        return await self.node.chains.resource.bid(await self.context(prepared, usage, at_start=at_start))

    # ------------------------------------------------------------------ the three questions

    async def should_bid(self, prepared: RunCommandRequest) -> BidResult:
        bid = await self.node.executor.should_bid(prepared)
        if not bid.should_bid:
            return bid
        return await self.semantic(prepared)

    def ports(self, prepared: RunCommandRequest, *, free: bool) -> BidResult | None:
        """A service's ports: within the node's range (and, ``free``, enough of them free now)."""
        refusal = self.node.ports.refusal(prepared, usage=free)
        return None if refusal is None else BidResult.no(refusal)

    async def should_bid_based_on_usage(self, prepared: RunCommandRequest, usage: Resources | None) -> BidResult:
        total = await self.usage(prepared, usage)
        if isinstance(total, BidResult):
            return total
        bid = await self.node.executor.should_bid_based_on_usage(prepared, total)
        if not bid.should_bid:
            return bid
        refused = self.ports(prepared, free=True)
        if refused is not None:
            return refused
        return await self.resources(prepared, total)

    async def enforce(self, prepared: RunCommandRequest) -> Resources:
        """At Start, before anything is created: the semantic chain and the per-job limits, as a bid would
        answer them. Returns what the admission is to hold (inputs of known size counted in ``disk``); raises
        :class:`ExecutionRefused` with the bid's reason."""
        bid = await self.semantic(prepared, at_start=True)
        if not bid.should_bid:
            raise ExecutionRefused(bid.reason)
        total = await self.usage(prepared)
        if isinstance(total, BidResult):
            # An input that cannot be had: the execution is accepted and fails before any container, with a
            # message naming the input (as README promises), rather than being refused here.
            total = prepared.resources
        bid = await self.resources(prepared, total, at_start=True)
        if not bid.should_bid:
            raise ExecutionRefused(bid.reason)
        return total
