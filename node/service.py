"""The node's domain: what the gRPC servicers call. It decides; the servicers only translate.

It places each execution's results under the data dir, gives executions an id when the
requester did not, keeps every execution in the durable store (so that it answers after a
restart), takes back unfinished executions when it starts, removes containers nobody knows,
prunes old logs, fans execution events out to watchers, reports capacity, and records telemetry.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from haddock.executor.docker import DockerExecutor
from haddock.executor.errors import (
    ExecutionAlreadyComplete,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    InvalidSpec,
)
from haddock.executor.logstore import LogEntry
from haddock.executor.protocol import Executor
from haddock.executor.records import (
    BidResult,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    ResultStatus,
    RunCommandResult,
)
from haddock.executor.request import Resources, RunCommandRequest
from haddock.executor.stats import Stat
from haddock.executor.streams import LogQuery
from haddock.node import _reads
from haddock.node._reads import known_id
from haddock.node.admission import Admission, queued_priority, queued_usage
from haddock.node.bidding import (
    build_chain,
    platform_from_engine_info,
    platform_from_image_inspect,
)
from haddock.node.capacity import CapacityExhausted, CapacityManager, QueuePosition, detect
from haddock.node.client import NodeInfo
from haddock.node.client._info import ServiceInfo
from haddock.node.config import OnShutdown, Settings
from haddock.node.events import EventHub
from haddock.node.housekeeping import Housekeeping
from haddock.node.metrics import MetricsListener, NodeGauges, NodeMetrics
from haddock.node.policy import Policy, check_output_limits
from haddock.node.ports import PortAllocator
from haddock.node.redeploy import Redeploys
from haddock.node.stats import StatsHub, StatsUpdate, execution_stats
from haddock.node.store import ExecutionStore, store_path
from haddock.node.telemetry import metric_readers, telemetry_resource
from haddock.storage import StorageRegistry, build_registry
from haddock.storage.hooks import RegistryPreparer, RegistryPublisher
from haddock.storage.netpolicy import AddressPolicy, check_request

if TYPE_CHECKING:  # the job-type builder is loaded when a node is opened, not by importing the daemon
    from haddock.node.jobtypes.plugins import JobTypePlugin

log = logging.getLogger(__name__)


def new_execution_id() -> str:
    return f"e-{uuid.uuid4().hex}"


class Node:
    """One compute node: an executor, the durable store, admission and the node's own bookkeeping.

    Its parts, each in its own module: admission and the queue (``admission.py``), events into the store
    and to watchers (``events.py``), the reaper and the pruner (``housekeeping.py``), bidding
    (``bidding.py``), capacity (``capacity.py``), the read side: watch, listings, log streams, node info
    (``_reads.py``). Shutdown runs in named phases (:meth:`shutdown`).
    """

    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        store: ExecutionStore,
        events: EventHub,
        *,
        version: str,
        storage: StorageRegistry | None = None,
        storage_types: frozenset[str] = frozenset(),
        publisher: RegistryPublisher | None = None,
        address_policy: AddressPolicy | None = None,
        stats: StatsHub | None = None,
    ) -> None:
        self.settings = settings
        self.address_policy = address_policy or AddressPolicy.of(settings.storage)
        self.executor = executor
        self.store = store
        self.events = events
        self.version = version
        self.storage = storage
        self.publisher = publisher
        self._closing = False
        self._starting: dict[str, asyncio.Future[None]] = {}  # Starts under way
        self._arrivals: dict[str, set[asyncio.Future[None]]] = {}  # wait_known's waiters, woken by a Start's end
        self._recovery: asyncio.Task[None] | None = None
        self._recovered = asyncio.Event()  # set once unfinished executions are back with the executor
        self.gpu_devices: builtins.list[str] = []  # the GPUs jobs are given, detected in begin()
        cap = settings.capacity
        self.capacity = CapacityManager(Resources(), max_running=cap.max_running, max_queued=cap.max_queued)
        services = settings.services
        self.ports = PortAllocator(*services.ports, services.publish_address)
        self.capacity.on_release(self.ports.release)  # a service's ports go when its resources do
        self.gateway_address = ""  # set by the server when it runs the gateway
        self.admission = Admission(self.capacity, executor, store, events)
        self.housekeeping = Housekeeping(settings, executor, store, live=self._unfinished_in_memory)
        self.policy = Policy(self)
        self.redeploys = Redeploys(self)  # a job's new deployment replaces the running one of its version
        self.chains = build_chain(
            settings.bidding,
            image_platform_lookup=self._image_platform,
            storage_types_installed=storage_types,
            engine_platform=self._engine_platform,
        )
        self.stats = stats or StatsHub(store, max_samples=settings.stats.max_samples)
        self.metrics_listener = (
            MetricsListener(
                settings.metrics_listen, readers=metric_readers(settings), resource=telemetry_resource(settings)
            )
            if settings.metrics_listen
            else None
        )
        self.metrics = NodeMetrics(self.metrics_listener.meter() if self.metrics_listener else None)
        self._gauges: asyncio.Task[None] | None = None
        events.on_terminal(self._on_end)

    @classmethod
    async def open(cls, settings: Settings, *, version: str, address_policy: AddressPolicy | None = None) -> Node:
        """The node with its executor and store (not yet recovering: see :meth:`begin`).
        ``address_policy``: where requesters may make the node connect (default: from ``settings.storage``)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = await ExecutionStore.open(store_path(settings.data_dir))
        events = EventHub(store)
        policy = address_policy or AddressPolicy.of(settings.storage)
        registry = build_registry(settings.storage, cache_dir=settings.data_dir / "cache", policy=policy)
        preparer = RegistryPreparer(registry, lambda exec_id: settings.executions_dir / exec_id / "inputs")
        publisher = RegistryPublisher(settings.node_id, settings.storage.s3, policy=policy)
        stats = StatsHub(store, max_samples=settings.stats.max_samples)
        executor = DockerExecutor(
            settings.docker,
            node_id=settings.node_id,
            log_dir=settings.log_dir,
            log_max_per_execution=settings.limits.log_max_bytes_per_execution,
            log_max_live=settings.log_max_bytes,
            event_sink=events,
            input_preparer=preparer,
            result_publisher=publisher,
            stats_sink=stats,
            stats_interval=settings.stats.interval,
        )
        from haddock.node.jobtypes.builder import JobTypeBuilder

        executor.job_builder = JobTypeBuilder(
            settings.jobtypes, executor.driver.engine, version=version, work_dir=settings.data_dir / "builds"
        )
        return cls(
            settings,
            executor,
            store,
            events,
            version=version,
            storage=registry,
            storage_types=frozenset(await registry.installed_types()),
            publisher=publisher,
            address_policy=policy,
            stats=stats,
        )

    async def begin(self) -> None:
        """Learn the capacity, start persisting, take back what a previous life left unfinished
        (queued executions queue again), start housekeeping."""
        self.capacity.set_capacity(await self.detect_capacity(), self.gpu_devices)
        if self.metrics_listener is not None:
            self.metrics_listener.start()
        self._gauges = asyncio.create_task(self.metrics.keep_fresh(self._gauge_snapshot), name="haddock-gauges")
        self.events.start()
        self.stats.start()
        unfinished = await self.store.non_terminal()
        # Queued ones queue again; an execution is never queued twice once the executor had it (its log
        # exists: the node went down between handing it over and recording that): it is taken back.
        for r in unfinished:
            self.ports.restore(r.request)  # a service keeps its ports across a restart of the node
        logs = self.executor.logs
        queued = [r for r in unfinished if r.state is ExecutionState.QUEUED and not logs.exists(r.execution_id)]
        others = [r for r in unfinished if r not in queued]
        for r in others:
            # What it held is held again before it can end (and release it). Its container may run
            # already: it runs whatever the capacity now says.
            try:
                await self.capacity.acquire(
                    r.execution_id, queued_usage(r), queue=False, prefer_devices=r.request.gpu_devices
                )
            except (CapacityExhausted, ValueError) as exc:
                log.warning("recovered execution %s runs beyond capacity: %s", r.execution_id, exc)
        if others:
            log.info("recovering executions", extra={"count": len(others)})
            self._recovery = asyncio.create_task(self._recover(others), name="haddock-recover")
        else:
            self._recovered.set()
        for r in sorted(queued, key=lambda r: r.created_at):
            self.admission.enqueue(r.request, r, priority=queued_priority(r), usage=queued_usage(r))
        self.housekeeping.start()

    async def _recover(self, records: builtins.list[ExecutionRecord]) -> None:
        """Hand unfinished executions back to the executor; while the engine is away, keep trying."""
        delay = 1.0
        # The samples kept of each: its result's summary covers the whole run, not only what comes now.
        stats: dict[str, builtins.list[Stat]] = {}
        try:
            for r in records:
                stats[r.execution_id] = await self.stats.series(r.execution_id)
        except Exception as exc:  # a summary of the samples from now on is worth more than no recovery
            log.warning("reading the resource samples of recovered executions failed: %s", exc)
        while True:
            try:
                await self.executor.recover(records, stats)
                self._recovered.set()
                return
            except Exception as exc:
                log.error("recovering %d executions failed (%s); retrying in %.0fs", len(records), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def detect_capacity(self) -> Resources:
        """The node's capacity for jobs (see :func:`haddock.node.capacity.detect`); the GPUs' ids go to
        :attr:`gpu_devices`."""
        capacity, self.gpu_devices = await detect(self.settings.capacity, self.settings.data_dir, self.executor)
        return capacity

    async def _image_platform(self, image: str) -> tuple[str, str] | None:
        info = await self.executor.inspect_image(image)
        return None if info is None else platform_from_image_inspect(info)

    async def _engine_platform(self) -> tuple[str, str] | None:
        return platform_from_engine_info(await self.executor.engine_info())

    # ------------------------------------------------------------------ events

    def _on_end(self, event: ExecutionEvent) -> None:
        """An execution ended: what it held is free again (exactly once: release is idempotent); its stats
        followers end; telemetry."""
        self.capacity.release(event.execution_id)
        self.stats.end(event.execution_id)
        result = event.result
        if result is None:
            return
        status = result.status.value
        live = self._live(event.execution_id)
        self.metrics.ended(
            result,
            live.events if live is not None else [],
            (event.time - live.created_at).total_seconds() if live is not None else None,
        )
        log.info(
            "execution ended",
            extra={"execution_id": event.execution_id, "status": status, "exit_code": result.exit_code},
        )

    async def _gauge_snapshot(self) -> NodeGauges:
        snap = self.capacity.snapshot()
        return NodeGauges(
            capacity=snap.capacity,
            allocated=snap.allocated,
            running=snap.running,
            queued=snap.queued_count,
            engine_up=await self.executor.is_installed(),
        )

    def stats_of(self, execution_id: str, *, max_points: int = 0, follow: bool = False) -> AsyncIterator[StatsUpdate]:
        """The execution's resource samples (decimated to ``max_points``, 0: all) and summary; with
        ``follow``, then new samples until it ends (``stats.py``)."""
        return execution_stats(self, execution_id, max_points=max_points, follow=follow)

    def watch(self, execution_id: str) -> AsyncIterator[ExecutionEvent]:
        """Events of an execution: those so far, then live ones until it ends (queued ones too)."""
        return _reads.watch(self, execution_id)

    # ------------------------------------------------------------------ executions

    def prepare(self, request: RunCommandRequest) -> RunCommandRequest:
        """Give the request the node's results dir. Host paths are the node's to choose, never a requester's."""
        if request.inputs:
            raise InvalidSpec(
                "inputs: requesters may not bind host paths; use input_sources (a local source is limited "
                "to the directories the operator allows)"
            )
        check_output_limits(request.output_limits, self.settings.limits)
        # results dir and GPUs are the node's to choose (GPUs at admission), never a requester's
        return request.model_copy(
            update={"results_dir": self.settings.results_dir(request.execution_id), "gpu_devices": []}
        )

    async def check_addresses(self, request: RunCommandRequest) -> None:
        """What the requester names must be allowed: S3 buckets and endpoints the operator lists, URLs and
        S3 endpoints on public addresses unless the operator allows more (StorageRefused; nothing is sent)."""
        await check_request(request, self.settings.storage, self.address_policy)

    async def input_size(self, request: RunCommandRequest) -> int:
        """Bytes the inputs will take on disk, where the sources say (0 for unknown)."""
        if not request.input_sources or self.storage is None:
            return 0
        sizes = await self.storage.get_volume_sizes(request.input_sources)
        return sum(size or 0 for size in sizes)

    async def should_bid(self, request: RunCommandRequest) -> BidResult:
        """Semantic: the engine can run this kind of job, and the node's policy accepts it."""
        return await self.policy.should_bid(self.prepare(request))

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources | None) -> BidResult:
        """Resources: within per-job limits and what the node has free (running and queued count)."""
        return await self.policy.should_bid_based_on_usage(self.prepare(request), usage)

    async def start(self, request: RunCommandRequest, *, queue: bool = False, priority: int = 0) -> RunCommandRequest:
        """Accept an execution; returns once it is durably recorded, running or queued.

        The operator's policy is enforced first, through the same chains as the bids (:mod:`node.policy`):
        a refusal is FAILED_PRECONDITION with the bid's reason. Capacity is re-checked atomically: one that
        does not fit now waits in the queue (``queue``) or is refused with RESOURCE_EXHAUSTED.
        """
        prepared = self.prepare(request)
        exec_id = prepared.execution_id
        if self.admission.get(exec_id) is not None or exec_id in self._starting:
            raise ExecutionAlreadyStarted(exec_id)
        # Atomic with respect to wait, cancel, logs and watch: they wait for this start to be through.
        starting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._starting[exec_id] = starting
        try:
            existing = await self.store.get(exec_id)
            if existing is not None:  # ids are unique for the node's whole life, across restarts
                if existing.state.terminal:
                    raise ExecutionAlreadyComplete(exec_id, existing.state.value)
                raise ExecutionAlreadyStarted(exec_id)
            if self._live(exec_id) is not None or self.capacity.holds(exec_id) or self.capacity.position(exec_id):
                raise ExecutionAlreadyStarted(exec_id)
            self.executor.check(prepared)  # what the executor would refuse is refused now, not after queueing
            usage = await self.policy.enforce(prepared)  # what a bid would refuse, refused with its reason
            prepared = self.ports.allocate(prepared)  # a service's host ports: the node's choice, recorded in it
            try:
                await self.admission.admit(prepared, queue=queue, priority=priority, usage=usage)
            except BaseException:
                self.ports.release(exec_id)
                raise
        finally:
            del self._starting[exec_id]
            starting.set_result(None)
            _reads.arrived(self, exec_id)
        self.redeploys.follow(prepared)
        return prepared

    async def _started(self, execution_id: str) -> None:
        """Wait until a Start of this id under way is through: recorded (running or queued), or refused."""
        starting = self._starting.get(execution_id)
        if starting is not None:
            await asyncio.shield(starting)

    async def wait_known(self, execution_id: str, within: float) -> ExecutionRecord:
        """Its record; one not known yet is waited for (woken by a Start of it) up to ``within`` seconds."""
        return await _reads.wait_known(self, execution_id, within)

    def queue_position(self, execution_id: str) -> QueuePosition | None:
        return self.admission.position(execution_id)

    def _live(self, execution_id: str) -> ExecutionRecord | None:
        """What the executor knows, else a queued execution's record, else None."""
        try:
            return self.executor.record(execution_id)
        except ExecutionNotFound:
            q = self.admission.get(execution_id)
            return q.record if q is not None else None

    def live_record(self, execution_id: str) -> ExecutionRecord | None:
        """The record of an execution the node runs or queues now (None: finished, or unknown)."""
        return self._live(execution_id)

    def _unfinished_in_memory(self, execution_id: str) -> bool:
        live = self._live(execution_id)
        return live is not None and live.result is None

    async def wait(self, execution_id: str) -> RunCommandResult:
        known_id(execution_id)
        await self._started(execution_id)
        q = self.admission.get(execution_id)
        if q is not None:
            ended = await asyncio.shield(q.settled)
            if ended is not None:
                return ended
        if self._live(execution_id) is None and not (await self.get(execution_id)).state.terminal:
            await self._recovered.wait()  # unfinished and not back yet: recovery is under way
        if self._live(execution_id) is not None:
            return await self.executor.wait(execution_id)
        record = await self.get(execution_id)
        if record.result is None:
            raise ExecutionNotFound(execution_id, f"execution {execution_id!r} has no result on this node")
        return record.result

    async def cancel(self, execution_id: str, *, reason: str = "") -> RunCommandResult:
        """Stop the execution; ``reason`` goes into its cancel-requested event (the requester's cancel: none)."""
        known_id(execution_id)
        await self._started(execution_id)
        q = self.admission.get(execution_id)
        if q is not None:
            return await self.admission.end_in_queue(
                execution_id, ResultStatus.CANCELLED, "the execution was cancelled while queued"
            )
        if self._live(execution_id) is None and not (await self.get(execution_id)).state.terminal:
            await self._recovered.wait()
        if self._live(execution_id) is None:
            record = await self.get(execution_id)
            raise ExecutionAlreadyComplete(execution_id, record.state.value)
        await self.executor.cancel(execution_id, reason=reason)
        return await self.executor.wait(execution_id)

    async def get(self, execution_id: str) -> ExecutionRecord:
        known_id(execution_id)
        live = self._live(execution_id)
        if live is not None:
            return live
        stored = await self.store.get(execution_id)
        if stored is None:
            raise ExecutionNotFound(execution_id)
        return stored

    async def list(self, states: set[ExecutionState] | None = None, limit: int = 100) -> list[ExecutionRecord]:
        """Executions, newest first (at most ``MAX_LIST``): the store's, with the fresher live ones."""
        return await _reads.list_executions(self, states, limit)

    def get_log_stream(self, execution_id: str, query: LogQuery | None = None) -> AsyncIterator[LogEntry]:
        """The execution's output. One that has not run yet (queued) has an empty history, and a follower
        waits for its first byte; one that ended without running has none."""
        return _reads.log_stream(self, execution_id, query)

    def job_types(self) -> builtins.list[tuple[JobTypePlugin, str]]:
        """The job types this node builds jobs with, and the image each one's base builds FROM."""
        from haddock.node.jobtypes.builder import JobTypeBuilder

        builder = getattr(self.executor, "job_builder", None)
        if not isinstance(builder, JobTypeBuilder):
            return []
        return [(p, builder.settings.base_image(p.name)) for p in builder.jobtypes.plugins]

    async def info(self) -> NodeInfo:
        return await _reads.node_info(self)

    def services(self) -> builtins.list[ServiceInfo]:
        """Service executions holding ports, and their states (live, else queued)."""
        return _reads.services(self)

    # ------------------------------------------------------------------ housekeeping and shutdown

    async def prune(self) -> builtins.list[str]:
        """Remove logs past their retention or over the size cap (oldest first), and old records."""
        return await self.housekeeping.prune()

    async def shutdown(self, grace: float | None = None) -> None:
        """In named phases, as a server drains (the gRPC server drains in-flight calls alongside):

        1. stop accepting: no admission from the queue, no recovery, no housekeeping;
        2. executions: stopped (each within ``grace``) or left running, as ``on_shutdown`` says;
        3. events: watchers get their end of stream, what happened is persisted;
        4. close: the store, the storage providers and publishers.
        """
        self._closing = True
        log.info("shutdown: stop accepting")
        await self.admission.close()
        await self.housekeeping.stop()
        await self.redeploys.close()
        if self._gauges is not None:
            self._gauges.cancel()
            await asyncio.gather(self._gauges, return_exceptions=True)
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        stop = self.settings.on_shutdown is OnShutdown.STOP
        log.info("shutdown: %s executions", "stop" if stop else "leave running")
        await self.executor.shutdown(stop_running=stop, grace=grace)
        log.info("shutdown: persist events")
        self.events.end_watchers()
        await self.events.drain()
        await self.stats.drain()
        log.info("shutdown: close")
        if self.metrics_listener is not None:
            self.metrics_listener.stop()
        await self.store.close()
        if self.storage is not None:
            await self.storage.aclose()
        if self.publisher is not None:
            await self.publisher.aclose()
