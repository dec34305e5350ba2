"""Capacity accounting and the admission queue: the node never over-commits.

A :class:`CapacityManager` knows the node's capacity for jobs and what every admitted execution
holds of it. An execution asks for its :class:`~haddock.executor.request.Resources` with :meth:`acquire`:

* it is admitted at once when it fits and nobody of equal or higher priority waits ahead of it;
* otherwise, when the request did not ask to queue, it is refused with :class:`CapacityExhausted`
  saying what is short (``insufficient memory: requested 8Gi, free 3.2Gi of 16Gi``);
* when it asked to queue, it waits in a bounded queue (full: refused) until it is admitted;
* a request that can never fit (more than the node's total) is refused at once, queue or not.

What "fits" means, per dimension: ``allocated + requested <= capacity``. A capacity of 0 for cpu,
memory or disk means the node does not know it, and it is not checked; a GPU capacity of 0 means the
node has none, and a GPU request never fits. A request of 0 in a dimension holds nothing in it. On top
of resources, ``max_running`` caps how many executions are admitted at once (``None``: no cap).

Queue order is strict: highest priority first, first come first served within a priority, and the
head of the queue blocks everyone behind it — no backfilling of smaller requests past a larger one.
That is simple to reason about and starvation-free (a big request is never overtaken forever by a
stream of small ones); the price is some idle capacity while the head waits. A newcomer of higher
priority than everyone queued goes to the front, so it is admitted at once when it fits.

Admission is atomic with respect to the event loop: the check and the allocation happen with no
``await`` in between, so concurrent acquirers can never both take the last of something. CPU is
accounted in whole millicores so that releases return the books exactly to zero.

Resources are released exactly once whichever way an execution ends: :meth:`release` is idempotent
(a second call, or one for an unknown id, does nothing), it also withdraws an entry that is still
queued, and cancelling a task waiting in :meth:`acquire` takes its entry out of the queue (or gives
back what was granted in the moment before the task resumed). The books are keyed by execution id:
once released, an id may acquire again.

GPUs are handed out as specific devices (:class:`~haddock.node.gpus.GpuPool`): an admitted execution
holds the device ids :meth:`devices` names, and gives them back with everything else on release; the
node's GPU capacity is its number of devices (ids ``0``..``N-1`` when none are given).

Not thread-safe: use one manager from one event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from haddock.executor.errors import ErrorCode, ExecutorError
from haddock.executor.quantity import format_bytes, format_cpu
from haddock.executor.request import Resources
from haddock.node.client._info import CapacitySnapshot  # a value the requester side shares (NodeInfo)
from haddock.node.gpus import GpuPool, choose_gpus, detect_gpus

if TYPE_CHECKING:
    from haddock.executor.protocol import Executor
    from haddock.node.config import CapacitySettings

__all__ = [
    "CapacityExhausted",
    "CapacityManager",
    "CapacitySnapshot",
    "QueuePosition",
    "detect",
]

log = logging.getLogger(__name__)


class CapacityExhausted(ExecutorError):
    """The node cannot take the execution now (or ever); the message says why."""

    code = ErrorCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class QueuePosition:
    """Where a queued execution stands and why it waits."""

    position: int
    """1 = next to be admitted."""
    reason: str
    """e.g. ``waiting for memory: requested 8Gi, free 3.2Gi of 16Gi``."""


# ---------------------------------------------------------------------------
# Exact amounts
# ---------------------------------------------------------------------------


class _Amount(NamedTuple):
    """Resources in exact integers: CPU in millicores, memory and disk in bytes, whole GPUs."""

    cpu: int = 0
    memory: int = 0
    disk: int = 0
    gpu: int = 0

    @classmethod
    def of(cls, r: Resources) -> _Amount:
        return cls(round(r.cpu * 1000), r.memory, r.disk, r.gpu)

    def plus(self, other: _Amount) -> _Amount:
        return _Amount(self.cpu + other.cpu, self.memory + other.memory, self.disk + other.disk, self.gpu + other.gpu)

    def minus(self, other: _Amount) -> _Amount:
        return _Amount(self.cpu - other.cpu, self.memory - other.memory, self.disk - other.disk, self.gpu - other.gpu)

    def resources(self) -> Resources:
        # Sums may exceed a single job's maxima (e.g. with unknown capacity), so no validation here.
        return Resources.model_construct(
            cpu=self.cpu / 1000, memory=max(0, self.memory), disk=max(0, self.disk), gpu=max(0, self.gpu)
        )


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _fmt_gpu(n: int) -> str:
    return str(n)


def _fmt_cpu(millis: int) -> str:
    return format_cpu(millis / 1000)


_DIMENSIONS = (
    # (attribute, name in messages, formatter)
    ("cpu", "CPU", _fmt_cpu),
    ("memory", "memory", format_bytes),
    ("disk", "disk", format_bytes),
    ("gpu", "GPUs", _fmt_gpu),
)


@dataclass(frozen=True)
class _Shortage:
    """What keeps a request out now: a resource (``what``) or a slot (``what`` is None)."""

    what: str | None
    detail: str

    def refusal(self) -> str:
        if self.what is None:
            return f"no free slot: {self.detail}"
        return f"insufficient {self.what}: {self.detail}"

    def waiting(self) -> str:
        if self.what is None:
            return f"waiting for a slot: {self.detail}"
        return f"waiting for {self.what}: {self.detail}"


@dataclass(eq=False)
class _Entry:
    """One execution's claim: queued while ``fut`` is pending, then held."""

    execution_id: str
    amount: _Amount
    priority: int
    seq: int
    fut: asyncio.Future[str | None] | None = field(default=None, repr=False)
    """Resolved with None when admitted, or with the reason it will not be."""
    prefer_devices: tuple[str, ...] = ()
    """GPU ids to hand out first (those a recovered container already uses)."""

    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)

    @property
    def live(self) -> bool:
        return self.fut is not None and not self.fut.done()


# ---------------------------------------------------------------------------
# The manager
# ---------------------------------------------------------------------------


class CapacityManager:
    """The node's capacity books and its admission queue (see the module docstring)."""

    def __init__(
        self,
        capacity: Resources,
        *,
        max_running: int | None = None,
        max_queued: int = 100,
        gpu_devices: Sequence[str] | None = None,
    ) -> None:
        if max_running is not None and max_running < 1:
            raise ValueError(f"max_running must be at least 1 (or None for no cap), got {max_running}")
        if max_queued < 0:
            raise ValueError(f"max_queued must not be negative, got {max_queued}")
        self._capacity = capacity
        self._cap = _Amount.of(capacity)
        self._max_running = max_running
        self._max_queued = max_queued
        self._allocated = _Amount()
        self._holders: dict[str, _Entry] = {}
        self._waiting: dict[str, _Entry] = {}
        self._queue: list[_Entry] = []  # sorted by _Entry.order
        self._seq = itertools.count()
        self._gpus = GpuPool(_gpu_ids(capacity, gpu_devices))
        self._release_hooks: list[Callable[[str], None]] = []

    def on_release(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(execution_id)`` on every :meth:`release` (however the execution ended or left the
        queue): what the node holds for an execution besides resources (a service's ports) goes with it."""
        self._release_hooks.append(hook)

    # -- configuration -------------------------------------------------------

    @property
    def capacity(self) -> Resources:
        return self._capacity

    @property
    def max_running(self) -> int | None:
        return self._max_running

    @property
    def max_queued(self) -> int:
        return self._max_queued

    def set_capacity(self, capacity: Resources, gpu_devices: Sequence[str] | None = None) -> None:
        """Change the node's capacity (e.g. once the engine is known) and re-evaluate the queue.
        ``gpu_devices``: the GPUs' ids, one per GPU of ``capacity`` (default ``0``..``N-1``).

        Queued requests that can no longer ever fit are refused. Shrinking below what is allocated
        evicts nobody: nothing more is admitted until enough is released.
        """
        self._gpus.set_devices(_gpu_ids(capacity, gpu_devices))
        self._capacity = capacity
        self._cap = _Amount.of(capacity)
        for entry in list(self._queue):
            if not entry.live:
                continue
            never = self._never_fits(entry.amount)
            if never is not None:
                self._dequeue(entry)
                assert entry.fut is not None
                entry.fut.set_result(never)
        self._pump()

    # -- questions -----------------------------------------------------------

    def fits_ever(self, resources: Resources) -> str | None:
        """None when the request could fit on an idle node, else why it never can."""
        return self._never_fits(_Amount.of(resources))

    def devices(self, execution_id: str) -> tuple[str, ...]:
        """The GPU device ids an admitted execution holds (empty when it holds none)."""
        return self._gpus.held(execution_id)

    def holds(self, execution_id: str) -> bool:
        """Whether the execution is admitted and not yet released."""
        return execution_id in self._holders

    def position(self, execution_id: str) -> QueuePosition | None:
        """Where a queued execution stands (1 = next) and why it waits; None when it is not queued."""
        entry = self._waiting.get(execution_id)
        if entry is None or not entry.live:
            return None
        ahead = sum(1 for e in self._queue if e.live and e.order() < entry.order())
        shortage = self._shortage(entry.amount)
        if shortage is not None:
            reason = shortage.waiting()
        else:
            reason = f"waiting for its turn: {_plural(ahead, 'execution')} queued ahead"
        return QueuePosition(position=ahead + 1, reason=reason)

    def snapshot(self) -> CapacitySnapshot:
        queued = _Amount()
        count = 0
        for entry in self._queue:
            if entry.live:
                queued = queued.plus(entry.amount)
                count += 1
        cap, alloc = self._cap, self._allocated
        free = _Amount(
            *(max(0, c - a) if c else 0 for c, a in zip(cap, alloc, strict=True)),
        )
        return CapacitySnapshot(
            capacity=self._capacity,
            allocated=alloc.resources(),
            queued=queued.resources(),
            free=free.resources(),
            running=len(self._holders),
            queued_count=count,
        )

    # -- acquire and release -------------------------------------------------

    async def acquire(
        self,
        execution_id: str,
        resources: Resources,
        *,
        queue: bool,
        priority: int = 0,
        prefer_devices: Sequence[str] = (),
    ) -> None:
        """Admit the execution, waiting in the queue when ``queue`` is true.

        Returns once the execution holds its resources; the caller must then :meth:`release` them.
        Raises :class:`CapacityExhausted` when it does not fit now and may not queue, when the queue
        is full, when it can never fit, or when it is released (withdrawn) while still waiting.
        Raises ValueError when the id already holds or waits. Cancelling the waiting task takes it
        out of the queue.
        """
        queued = self._waiting.get(execution_id)
        if execution_id in self._holders or (queued is not None and queued.live):
            raise ValueError(f"execution {execution_id!r} already holds or is waiting for capacity")
        amount = _Amount.of(resources)
        never = self._never_fits(amount)
        if never is not None:
            raise CapacityExhausted(never)
        self._pump()  # drop cancelled waiters first, so nobody is held up by a ghost
        entry = _Entry(execution_id, amount, priority, next(self._seq), prefer_devices=tuple(prefer_devices))
        ahead = sum(1 for e in self._queue if e.live and e.priority >= priority)
        shortage = self._shortage(amount)
        if shortage is None and ahead == 0:
            self._grant(entry)
            return
        if not queue:
            if shortage is not None:
                raise CapacityExhausted(shortage.refusal())
            raise CapacityExhausted(
                f"{_plural(ahead, 'execution')} of equal or higher priority already waiting for capacity"
            )
        waiting = sum(1 for e in self._queue if e.live)
        if waiting >= self._max_queued:
            raise CapacityExhausted(f"queue full: {_plural(waiting, 'execution')} waiting (max {self._max_queued})")
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        entry.fut = fut
        bisect.insort(self._queue, entry, key=_Entry.order)
        self._waiting[execution_id] = entry
        log.debug("capacity: %s queued at priority %d", execution_id, priority)
        try:
            refusal = await fut
        except asyncio.CancelledError:
            self._withdraw(entry)
            raise
        if refusal is not None:
            raise CapacityExhausted(refusal)
        if self._holders.get(execution_id) is not entry:
            # Admitted, then released before this task resumed: it holds nothing.
            raise CapacityExhausted(f"execution {execution_id!r} was released while waiting for capacity")

    def release(self, execution_id: str) -> None:
        """Give back what the execution holds, or withdraw it from the queue; then re-evaluate the queue.

        Idempotent: releasing twice, or an id that never acquired, does nothing.
        """
        for hook in self._release_hooks:
            try:
                hook(execution_id)
            except Exception:
                log.exception("a release hook failed for %s", execution_id)
        entry = self._holders.pop(execution_id, None)
        if entry is not None:
            self._allocated = self._allocated.minus(entry.amount)
            self._gpus.give(execution_id)
            log.debug("capacity: %s released", execution_id)
            self._pump()
            return
        entry = self._waiting.get(execution_id)
        if entry is not None:
            self._dequeue(entry)
            if entry.fut is not None and not entry.fut.done():
                entry.fut.set_result(f"execution {execution_id!r} was released while waiting for capacity")
            log.debug("capacity: %s withdrawn from the queue", execution_id)
            self._pump()

    @asynccontextmanager
    async def hold(
        self, execution_id: str, resources: Resources, *, queue: bool, priority: int = 0
    ) -> AsyncIterator[None]:
        """``async with manager.hold(...):`` acquires, and releases however the block ends."""
        await self.acquire(execution_id, resources, queue=queue, priority=priority)
        try:
            yield
        finally:
            self.release(execution_id)

    # -- internals -----------------------------------------------------------

    def _never_fits(self, amount: _Amount) -> str | None:
        cap = self._cap
        for (attr, what, fmt), requested, total in zip(_DIMENSIONS, amount, cap, strict=True):
            if not requested:
                continue
            if attr == "gpu" and not total:
                return f"insufficient GPUs: requested {requested}, this node has none"
            if total and requested > total:
                return (
                    f"insufficient {what}: requested {fmt(requested)}, more than this node's capacity of {fmt(total)}"
                )
        return None

    def _shortage(self, amount: _Amount) -> _Shortage | None:
        """What keeps this request out right now, resources first, then the running cap; None if it fits."""
        dims = zip(_DIMENSIONS, amount, self._cap, self._allocated, strict=True)
        for (attr, what, fmt), requested, total, used in dims:
            if not requested or (not total and attr != "gpu"):
                continue  # holds nothing here, or the capacity is unknown (GPUs: none, refused as never fitting)
            if used + requested > total:
                free = max(0, total - used)
                return _Shortage(what, f"requested {fmt(requested)}, free {fmt(free)} of {fmt(total)}")
        free_gpus = len(self._gpus.free())
        if amount.gpu > free_gpus:  # the devices themselves (the books above count them)
            total = len(self._gpus.devices)
            return _Shortage("GPUs", f"requested {amount.gpu}, free {free_gpus} of {total}")
        if self._max_running is not None and len(self._holders) >= self._max_running:
            running = len(self._holders)
            return _Shortage(None, f"{_plural(running, 'execution')} running (max {self._max_running})")
        return None

    def _grant(self, entry: _Entry) -> None:
        self._gpus.take(entry.execution_id, entry.amount.gpu, entry.prefer_devices)
        self._allocated = self._allocated.plus(entry.amount)
        self._holders[entry.execution_id] = entry
        log.debug("capacity: %s admitted", entry.execution_id)

    def _dequeue(self, entry: _Entry) -> None:
        if self._waiting.get(entry.execution_id) is entry:
            del self._waiting[entry.execution_id]
        with suppress(ValueError):
            self._queue.remove(entry)

    def _withdraw(self, entry: _Entry) -> None:
        """The waiting task was cancelled: undo whatever it had, queued or just granted."""
        if self._holders.get(entry.execution_id) is entry:
            self.release(entry.execution_id)
        elif self._waiting.get(entry.execution_id) is entry:
            self._dequeue(entry)
            self._pump()

    def _pump(self) -> None:
        """Admit from the head of the queue while the head fits; strict order, no backfilling."""
        while self._queue:
            head = self._queue[0]
            if not head.live:  # its task was cancelled and has not run its handler yet
                self._dequeue(head)
                continue
            if self._shortage(head.amount) is not None:
                return
            self._dequeue(head)
            self._grant(head)
            assert head.fut is not None
            head.fut.set_result(None)


def _gpu_ids(capacity: Resources, devices: Sequence[str] | None) -> list[str]:
    if devices is None:
        return [str(i) for i in range(capacity.gpu)]
    if len(devices) != capacity.gpu:
        raise ValueError(f"{len(devices)} GPU device ids for a GPU capacity of {capacity.gpu}")
    return list(devices)


async def detect(settings: CapacitySettings, data_dir: Path, executor: Executor) -> tuple[Resources, list[str]]:
    """The node's capacity for jobs: the machine and engine (CPUs, memory, the data dir's free disk, GPUs),
    each overridden by ``[capacity]``, less the node's reserve; and the ids of the GPUs jobs are given (see
    :mod:`haddock.node.gpus`)."""
    ncpu, mem = 0.0, 0
    info: dict[str, Any] = {}
    try:
        info = await executor.engine_info()
        ncpu = float(info.get("NCPU") or 0)
        mem = int(info.get("MemTotal") or 0)
    except Exception as exc:
        log.warning("cannot ask the engine for its CPUs and memory (%s); set [capacity] in the config", exc)
    gpu_devices = choose_gpus(settings.gpu, settings.gpu_devices, await detect_gpus(info))
    disk = shutil.disk_usage(data_dir).free
    cpu = settings.cpu if settings.cpu is not None else ncpu
    memory = settings.memory if settings.memory is not None else mem
    disk_total = settings.disk if settings.disk is not None else disk
    capacity = Resources.model_construct(
        cpu=max(0.0, cpu - settings.reserve_cpu) if cpu else 0.0,
        memory=max(0, memory - settings.reserve_memory) if memory else 0,
        disk=max(0, disk_total - settings.reserve_disk) if disk_total else 0,
        gpu=len(gpu_devices),
    )
    return capacity, gpu_devices
