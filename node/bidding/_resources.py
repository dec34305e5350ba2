"""The resource check (Bacalhau's ShouldBidBasedOnUsage): per-job maxima, then the node's capacity and
what is free of it."""

from __future__ import annotations

from haddock.executor.quantity import format_bytes, format_cpu
from haddock.executor.records import BidResult
from haddock.executor.request import Resources
from haddock.node.bidding._chain import BidContext
from haddock.node.bidding._settings import ResourceLimits


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
