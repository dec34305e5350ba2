"""The node's domain: what the gRPC servicers call. It decides; the servicers only translate.

It places each execution's results under the data dir, gives executions an id when the
requester did not, keeps every execution in the durable store (so that it answers after a
restart), takes back unfinished executions when it starts, removes containers nobody knows,
prunes old logs, fans execution events out to watchers, reports capacity, and records telemetry.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from opentelemetry import metrics

from haddock.executor.docker.executor import DockerExecutor
from haddock.executor.errors import (
    ExecutionAlreadyComplete,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ExecutorShuttingDown,
    InvalidSpec,
)
from haddock.executor.logstore import LogEntry
from haddock.executor.models import (
    BidResult,
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    Resources,
    ResultStatus,
    RunCommandRequest,
    RunCommandResult,
    StreamType,
    utcnow,
)
from haddock.executor.quantity import format_duration
from haddock.node.bidding import (
    BidContext,
    build_chain,
    platform_from_engine_info,
    platform_from_image_inspect,
)
from haddock.node.capacity import CapacityExhausted, CapacityManager, CapacitySnapshot, QueuePosition
from haddock.node.client import NodeInfo
from haddock.node.config import OnShutdown, Settings
from haddock.node.store import ExecutionStore, store_path
from haddock.storage import LocalRoot, StorageRegistry, build_registry
from haddock.storage.hooks import RegistryPreparer, RegistryPublisher
from haddock.storage.models import S3Source, UrlSource
from haddock.storage.netpolicy import AddressRefused, check_public
from haddock.storage.publish import S3PublisherSpec

log = logging.getLogger(__name__)

WATCH_QUEUE = 1024
TERMINAL = frozenset(s for s in ExecutionState if s.terminal)


@dataclass
class _Queued:
    """An execution waiting for capacity: the node holds it until it is admitted."""

    request: RunCommandRequest
    record: ExecutionRecord
    admission: asyncio.Task[None]
    # None once admitted (the executor has it from then on), or the result if it ended in the queue
    settled: asyncio.Future[RunCommandResult | None]


def new_execution_id() -> str:
    return f"e-{uuid.uuid4().hex}"


class Node:
    """One compute node: an executor, the durable store, and the node's own bookkeeping."""

    def __init__(
        self,
        settings: Settings,
        executor: DockerExecutor,
        store: ExecutionStore,
        *,
        version: str,
        storage: StorageRegistry | None = None,
        storage_types: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.executor = executor
        self.store = store
        self.version = version
        self.storage = storage
        self.publisher: RegistryPublisher | None = None
        self._watchers: dict[str, set[asyncio.Queue[ExecutionEvent | None]]] = {}
        self._persist_queue: asyncio.Queue[ExecutionEvent] = asyncio.Queue()
        self._accepted: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._queued: dict[str, _Queued] = {}
        self._closing = False
        self._recovered = asyncio.Event()  # set once unfinished executions are back with the executor
        self._was_queued: set[str] = set()
        cap = settings.capacity
        self.capacity = CapacityManager(Resources(), max_running=cap.max_running, max_queued=cap.max_queued)
        self.chains = build_chain(
            settings.bidding,
            image_platform_lookup=self._image_platform,
            storage_types_installed=storage_types,
            engine_platform=self._engine_platform,
        )
        meter = metrics.get_meter("haddock.node")
        self._m_executions = meter.create_counter(
            "haddock.executions", unit="{execution}", description="executions ended, by status"
        )
        self._m_duration = meter.create_histogram(
            "haddock.execution.duration", unit="s", description="time from acceptance to the end"
        )
        self._m_output = meter.create_counter(
            "haddock.execution.output", unit="By", description="bytes the jobs wrote to stdout and stderr"
        )

    @classmethod
    async def open(cls, settings: Settings, *, version: str) -> Node:
        """The node with its executor and store (not yet recovering: see :meth:`begin`)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = await ExecutionStore.open(store_path(settings.data_dir))
        st = settings.storage
        registry = build_registry(
            cache_dir=settings.data_dir / "cache",
            cache_max_bytes=st.cache_max_bytes,
            local_roots=[LocalRoot(r.path, read_write=r.read_write) for r in st.local_roots],
            inline_max_bytes=st.inline_max_bytes,
        )
        preparer = RegistryPreparer(registry, lambda exec_id: settings.executions_dir / exec_id / "inputs")
        publisher = RegistryPublisher(settings.node_id)
        holder: list[Node] = []
        executor = DockerExecutor(
            settings.executor_config(),
            event_sink=lambda e: holder[0].on_event(e),
            input_preparer=preparer,
            result_publisher=publisher,
        )
        node = cls(
            settings,
            executor,
            store,
            version=version,
            storage=registry,
            storage_types=frozenset(await registry.installed_types()),
        )
        node.publisher = publisher
        holder.append(node)
        return node

    async def begin(self) -> None:
        """Learn the capacity, start persisting, take back what a previous life left unfinished
        (queued executions queue again), start housekeeping."""
        self.capacity.set_capacity(await self.detect_capacity())
        self._tasks.append(asyncio.create_task(self._persist_loop(), name="haddock-persist"))
        unfinished = await self.store.non_terminal()
        queued = [r for r in unfinished if r.state is ExecutionState.QUEUED]
        others = [r for r in unfinished if r.state is not ExecutionState.QUEUED]
        for r in others:
            # What it held is held again before it can end (and release it). Its container may run
            # already: it runs whatever the capacity now says.
            try:
                await self.capacity.acquire(r.execution_id, r.request.resources, queue=False)
            except (CapacityExhausted, ValueError) as exc:
                log.warning("recovered execution %s runs beyond capacity: %s", r.execution_id, exc)
        if others:
            log.info("recovering executions", extra={"count": len(others)})
            self._tasks.append(asyncio.create_task(self._recover(others), name="haddock-recover"))
        else:
            self._recovered.set()
        for r in sorted(queued, key=lambda r: r.created_at):
            self._enqueue(r.request, r, priority=_queued_priority(r))
        self._tasks.append(asyncio.create_task(self._reap_loop(), name="haddock-reaper"))
        self._tasks.append(asyncio.create_task(self._prune_loop(), name="haddock-pruner"))

    async def _recover(self, records: builtins.list[ExecutionRecord]) -> None:
        """Hand unfinished executions back to the executor; while the engine is away, keep trying."""
        delay = 1.0
        while True:
            try:
                await self.executor.recover(records)
                self._recovered.set()
                return
            except Exception as exc:
                log.error("recovering %d executions failed (%s); retrying in %.0fs", len(records), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def detect_capacity(self) -> Resources:
        """The machine and engine, overridden by config, less the node's reserve."""
        c = self.settings.capacity
        ncpu, mem = 0.0, 0
        try:
            info = await self.executor.engine_info()
            ncpu = float(info.get("NCPU") or 0)
            mem = int(info.get("MemTotal") or 0)
        except Exception as exc:
            log.warning("cannot ask the engine for its CPUs and memory (%s); set [capacity] in the config", exc)
        disk = shutil.disk_usage(self.settings.data_dir).free
        cpu = c.cpu if c.cpu is not None else ncpu
        memory = c.memory if c.memory is not None else mem
        disk_total = c.disk if c.disk is not None else disk
        return Resources.model_construct(
            cpu=max(0.0, cpu - c.reserve_cpu) if cpu else 0.0,
            memory=max(0, memory - c.reserve_memory) if memory else 0,
            disk=max(0, disk_total - c.reserve_disk) if disk_total else 0,
            gpu=c.gpu or 0,
        )

    async def _image_platform(self, image: str) -> tuple[str, str] | None:
        info = await self.executor.inspect_image(image)
        return None if info is None else platform_from_image_inspect(info)

    async def _engine_platform(self) -> tuple[str, str] | None:
        return platform_from_engine_info(await self.executor.engine_info())

    # ------------------------------------------------------------------ events

    def on_event(self, event: ExecutionEvent) -> None:
        """Event sink for the executor: persist in order, fan out to watchers, telemetry at the end."""
        if event.kind is not EventKind.PULL_PROGRESS:
            self._persist_queue.put_nowait(event)
        for queue in list(self._watchers.get(event.execution_id, ())):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)
        if event.kind is EventKind.STATE and ExecutionState(event.details["state"]).terminal:
            self.capacity.release(event.execution_id)  # exactly once: release is idempotent
            self._record_end(event.execution_id)
            for queue in list(self._watchers.get(event.execution_id, ())):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def _persist_loop(self) -> None:
        while True:
            event = await self._persist_queue.get()
            try:
                await self._persist_with_retries(event)
            except Exception as exc:
                log.exception("persisting %s of %s failed for good", event.kind.value, event.execution_id)
                fut = self._accepted.pop(event.execution_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            finally:
                self._persist_queue.task_done()

    async def _persist_with_retries(self, event: ExecutionEvent, attempts: int = 5) -> None:
        """A store write that fails (disk full, I/O error) is tried again before it is given up: a lost
        result would make a restart report the execution wrongly."""
        for attempt in range(1, attempts + 1):
            try:
                await self._persist(event)
                return
            except (ExecutionAlreadyStarted, ExecutionAlreadyComplete, ExecutionNotFound):
                raise  # not transient
            except Exception as exc:
                if attempt == attempts:
                    raise
                log.warning("persisting %s of %s failed (%s); trying again", event.kind.value, event.execution_id, exc)
                await asyncio.sleep(0.2 * 2**attempt)

    async def _persist(self, event: ExecutionEvent) -> None:
        exec_id = event.execution_id
        if event.kind is EventKind.ACCEPTED and exec_id in self._was_queued:
            self._was_queued.discard(exec_id)
            await self.store.add_event(event)
            fut = self._accepted.pop(exec_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if event.kind is EventKind.ACCEPTED:
            record = self.executor.record(exec_id)
            await self.store.create(
                ExecutionRecord(
                    request=record.request, state=record.state, events=[event], created_at=record.created_at
                )
            )
            fut = self._accepted.pop(exec_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if event.kind is EventKind.STATE:
            state = ExecutionState(event.details["state"])
            if state.terminal:
                result = self.executor.record(exec_id).result
                if result is not None:
                    await self.store.set_result(exec_id, result, state, at=event.time)
                    return
            await self.store.set_state(exec_id, state, at=event.time)
            return
        await self.store.add_event(event)
        if event.kind is EventKind.STARTED and event.details.get("container_id"):
            await self.store.set_container(exec_id, str(event.details["container_id"]))

    def _record_end(self, execution_id: str) -> None:
        try:
            record = self.executor.record(execution_id)
        except ExecutionNotFound:
            return
        if record.result is None:
            return
        status = record.result.status.value
        self._m_executions.add(1, {"status": status})
        if record.finished_at is not None:
            self._m_duration.record((record.finished_at - record.created_at).total_seconds(), {"status": status})
        for event in record.events:
            if event.kind is EventKind.RESULTS_WRITTEN:
                for stream in ("stdout", "stderr"):
                    self._m_output.add(int(event.details.get(f"{stream}_bytes", 0)), {"stream": stream})
        log.info(
            "execution ended",
            extra={"execution_id": execution_id, "status": status, "exit_code": record.result.exit_code},
        )

    async def watch(self, execution_id: str) -> AsyncIterator[ExecutionEvent]:
        """Events of an execution: those so far, then live ones until it ends (queued ones too)."""
        record = self._live(execution_id)
        if record is None:
            record = await self.get(execution_id)  # finished long ago: its history only
            for event in record.events:
                yield event
            return
        queue: asyncio.Queue[ExecutionEvent | None] = asyncio.Queue(WATCH_QUEUE)
        watchers = self._watchers.setdefault(execution_id, set())
        watchers.add(queue)
        try:
            seen = list(record.events)
            for event in seen:
                yield event
            if record.state.terminal:
                return
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item in seen:  # already sent from history
                    continue
                yield item
        finally:
            watchers.discard(queue)
            if not watchers:
                self._watchers.pop(execution_id, None)

    # ------------------------------------------------------------------ executions

    def prepare(self, request: RunCommandRequest) -> RunCommandRequest:
        """Give the request the node's results dir. Host paths are the node's to choose, never a requester's."""
        if request.inputs:
            raise InvalidSpec(
                "inputs: requesters may not bind host paths; use input_sources (a local source is limited "
                "to the directories the operator allows)"
            )
        return request.model_copy(update={"results_dir": self.settings.results_dir(request.execution_id)})

    async def _bid_context(self, request: RunCommandRequest, usage: Resources) -> BidContext:
        snap = self.capacity.snapshot()
        sources = request.input_sources
        local: bool | None = None
        if sources and self.storage is not None:
            try:
                local = all([await self.storage.has_storage_locally(s) for s in sources])
            except Exception:
                local = None
        return BidContext(
            request=request,
            usage=usage,
            capacity=snap.capacity,
            free=_free(snap.capacity, snap),
            input_source_types=frozenset(s.type for s in sources),
            inputs_local=local,
        )

    async def check_addresses(self, request: RunCommandRequest) -> None:
        """URLs and S3 endpoints the requester names must be public addresses, unless the operator allows more."""
        if self.settings.storage.allow_private_networks:
            return
        for src in request.input_sources:
            if isinstance(src, UrlSource):
                await check_public(src.url, "input URL")
            elif isinstance(src, S3Source) and src.endpoint_url:
                await check_public(src.endpoint_url, "S3 endpoint")
        for pub in request.publishers:
            if isinstance(pub, S3PublisherSpec) and pub.endpoint_url:
                await check_public(pub.endpoint_url, "S3 publisher endpoint")

    async def input_size(self, request: RunCommandRequest) -> int:
        """Bytes the inputs will take on disk, where the sources say (0 for unknown)."""
        if not request.input_sources or self.storage is None:
            return 0
        sizes = await self.storage.get_volume_sizes(request.input_sources)
        return sum(size or 0 for size in sizes)

    async def should_bid(self, request: RunCommandRequest) -> BidResult:
        """Semantic: the engine can run this kind of job, and the node's policy accepts it."""
        prepared = self.prepare(request)
        bid = await self.executor.should_bid(prepared)
        if not bid.should_bid:
            return bid
        try:
            await self.check_addresses(prepared)
        except AddressRefused as exc:
            return BidResult.no(str(exc))
        return await self.chains.semantic.bid(await self._bid_context(prepared, request.resources))

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources | None) -> BidResult:
        """Resources: within per-job limits and what the node has free (running and queued count)."""
        prepared = self.prepare(request)
        usage = usage or request.resources
        try:
            input_bytes = await self.input_size(prepared)
        except Exception as exc:  # an input that cannot be had: no bid, and why
            return BidResult.no(str(exc))
        if input_bytes:  # inputs count toward disk
            usage = usage.model_copy(update={"disk": usage.disk + input_bytes})
        bid = await self.executor.should_bid_based_on_usage(prepared, usage)
        if not bid.should_bid:
            return bid
        return await self.chains.resource.bid(await self._bid_context(prepared, usage))

    async def start(self, request: RunCommandRequest, *, queue: bool = False, priority: int = 0) -> RunCommandRequest:
        """Accept an execution; returns once it is durably recorded, running or queued.

        Capacity is re-checked atomically: one that does not fit now waits in the queue
        (``queue``) or is refused with RESOURCE_EXHAUSTED.
        """
        prepared = self.prepare(request)
        exec_id = prepared.execution_id
        if exec_id in self._queued:
            raise ExecutionAlreadyStarted(exec_id)
        existing = await self.store.get(exec_id)
        if existing is not None:  # ids are unique for the node's whole life, across restarts
            if existing.state.terminal:
                raise ExecutionAlreadyComplete(exec_id, existing.state.value)
            raise ExecutionAlreadyStarted(exec_id)
        if self._live(exec_id) is not None or self.capacity.holds(exec_id) or self.capacity.position(exec_id):
            raise ExecutionAlreadyStarted(exec_id)
        self.executor.check(prepared)  # what the executor would refuse is refused now, not after queueing
        await self.check_addresses(prepared)
        admission = asyncio.create_task(
            self.capacity.acquire(exec_id, prepared.resources, queue=queue, priority=priority)
        )
        await asyncio.sleep(0)  # admission runs to its end, or to its first wait in the queue
        if admission.done():
            if isinstance(admission.exception(), ValueError):  # the same id started concurrently
                raise ExecutionAlreadyStarted(exec_id)
            admission.result()  # refused: RESOURCE_EXHAUSTED with the reason
            await self._launch(prepared)
            return prepared
        record = ExecutionRecord(request=prepared, state=ExecutionState.QUEUED)
        event = ExecutionEvent(
            execution_id=exec_id, kind=EventKind.QUEUED, message="waiting for capacity", details={"priority": priority}
        )
        record.events.append(event)
        try:
            await self.store.create(record)
        except BaseException:
            self.capacity.release(exec_id)
            admission.cancel()
            raise
        self._enqueue(prepared, record, priority, admission)
        log.info("execution queued", extra={"execution_id": exec_id, "job_id": prepared.job_id})
        return prepared

    def _enqueue(
        self,
        request: RunCommandRequest,
        record: ExecutionRecord,
        priority: int,
        admission: asyncio.Task[None] | None = None,
    ) -> None:
        exec_id = request.execution_id
        if admission is None:
            admission = asyncio.create_task(
                self.capacity.acquire(exec_id, request.resources, queue=True, priority=priority)
            )
        settled: asyncio.Future[RunCommandResult | None] = asyncio.get_running_loop().create_future()
        self._queued[exec_id] = _Queued(request=request, record=record, admission=admission, settled=settled)
        task = asyncio.create_task(self._admit_when_ready(exec_id), name=f"haddock-queued-{exec_id}")
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _admit_when_ready(self, exec_id: str) -> None:
        q = self._queued[exec_id]
        try:
            await q.admission
        except asyncio.CancelledError:
            return  # withdrawn by cancel(), or the node is shutting down: it stays queued in the store
        except CapacityExhausted as exc:
            if self._queued.get(exec_id) is q and not self._closing:  # refused while waiting
                await self._end_in_queue(exec_id, ResultStatus.ERROR, f"the execution could not be admitted: {exc}")
            return
        if self._queued.get(exec_id) is not q or self._closing:
            # Cancelled (or the node closing) after admission was granted but before it ran: give it back.
            self.capacity.release(exec_id)
            return
        self._queued.pop(exec_id, None)
        try:
            await self._launch(q.request, from_queue=True)
        except Exception as exc:
            q.settled.set_result(None)
            result = RunCommandResult(status=ResultStatus.ERROR, error_message=f"the execution could not start: {exc}")
            await self.store.set_result(exec_id, result, ExecutionState.FAILED)
            return
        q.settled.set_result(None)

    async def _launch(self, prepared: RunCommandRequest, *, from_queue: bool = False) -> None:
        """Hand an admitted execution to the executor; returns once it is persisted."""
        exec_id = prepared.execution_id
        accepted = asyncio.get_running_loop().create_future()
        self._accepted[exec_id] = accepted
        if from_queue:
            self._was_queued.add(exec_id)
        try:
            await self.executor.start(prepared)
        except BaseException:
            self._accepted.pop(exec_id, None)
            self._was_queued.discard(exec_id)
            self.capacity.release(exec_id)
            raise
        await accepted
        log.info(
            "execution accepted",
            extra={"execution_id": exec_id, "job_id": prepared.job_id, "image": prepared.engine.image},
        )

    async def _end_in_queue(self, exec_id: str, status: ResultStatus, message: str) -> RunCommandResult:
        q = self._queued.pop(exec_id)
        self.capacity.release(exec_id)
        result = RunCommandResult(status=status, error_message=message)
        q.record.result = result
        q.record.state = status.state
        q.record.finished_at = utcnow()
        await self.store.set_result(exec_id, result, status.state)
        if not q.settled.done():
            q.settled.set_result(result)
        for queue in list(self._watchers.get(exec_id, ())):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        return result

    def queue_position(self, execution_id: str) -> QueuePosition | None:
        return self.capacity.position(execution_id) if execution_id in self._queued else None

    def _live(self, execution_id: str) -> ExecutionRecord | None:
        """What the executor knows, else a queued execution's record, else None."""
        try:
            return self.executor.record(execution_id)
        except ExecutionNotFound:
            q = self._queued.get(execution_id)
            return q.record if q is not None else None

    async def wait(self, execution_id: str) -> RunCommandResult:
        q = self._queued.get(execution_id)
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

    async def cancel(self, execution_id: str) -> RunCommandResult:
        q = self._queued.get(execution_id)
        if q is not None:
            q.admission.cancel()
            return await self._end_in_queue(
                execution_id, ResultStatus.CANCELLED, "the execution was cancelled while queued"
            )
        if self._live(execution_id) is None and not (await self.get(execution_id)).state.terminal:
            await self._recovered.wait()
        if self._live(execution_id) is None:
            record = await self.get(execution_id)
            raise ExecutionAlreadyComplete(execution_id, record.state.value)
        await self.executor.cancel(execution_id)
        return await self.executor.wait(execution_id)

    async def get(self, execution_id: str) -> ExecutionRecord:
        live = self._live(execution_id)
        if live is not None:
            return live
        stored = await self.store.get(execution_id)
        if stored is None:
            raise ExecutionNotFound(execution_id)
        return stored

    async def list(self, states: set[ExecutionState] | None = None, limit: int = 100) -> list[ExecutionRecord]:
        merged = {r.execution_id: r for r in await self.store.list(states or None, limit=limit)}
        for r in [*self.executor.records(), *(q.record for q in self._queued.values())]:  # fresher than persisted
            if not states or r.state in states:
                merged[r.execution_id] = r
            else:
                merged.pop(r.execution_id, None)
        records = sorted(merged.values(), key=lambda r: r.created_at, reverse=True)
        return records[:limit]

    async def get_log_stream(
        self,
        execution_id: str,
        *,
        with_history: bool = True,
        follow: bool = False,
        offset: int | None = None,
        tail_lines: int | None = None,
        streams: frozenset[StreamType] = frozenset(StreamType),
    ) -> AsyncIterator[LogEntry]:
        if not self.executor.logs.exists(execution_id):
            if self._live(execution_id) is not None or await self.store.get(execution_id) is not None:
                raise ExecutionNotFound(
                    execution_id,
                    f"the logs of execution {execution_id!r} were removed: logs are kept for "
                    f"{format_duration(self.settings.log_retention)} after an execution ends",
                )
            raise ExecutionNotFound(execution_id)
        async for entry in self.executor.get_log_stream(
            execution_id,
            with_history=with_history,
            follow=follow,
            offset=offset,
            tail_lines=tail_lines,
            streams=streams,
        ):
            yield entry

    async def info(self) -> NodeInfo:
        engine_version = ""
        try:
            engine_version = str((await self.executor.engine_info()).get("ServerVersion", ""))
        except Exception as exc:  # the engine being down must not break node info
            log.warning("engine info unavailable: %s", exc)
        snap = self.capacity.snapshot()
        return NodeInfo(
            node_id=self.settings.node_id,
            version=self.version,
            engine_version=engine_version,
            capacity=snap.capacity,
            allocated=snap.allocated,
            queued=snap.queued,
            free=_free(snap.capacity, snap),
            running=snap.running,
            queued_count=snap.queued_count,
        )

    # ------------------------------------------------------------------ housekeeping

    async def _reap_loop(self) -> None:
        interval = max(5.0, self.settings.docker.orphan_grace / 2)
        while True:
            try:
                # Containers of executions the store has not finished are not orphans (recovery may
                # still be waiting for the engine).
                keep = {r.execution_id for r in await self.store.non_terminal()}
                await self.executor.reap_orphans(keep=keep)
            except Exception as exc:
                log.warning("looking for orphaned containers failed: %s", exc)
            await asyncio.sleep(interval)

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("pruning failed")
            await asyncio.sleep(self.settings.prune_interval)

    async def prune(self) -> builtins.list[str]:
        """Remove logs past their retention or over the size cap (oldest first), and old records."""
        now = utcnow()
        removed: builtins.list[str] = []
        finished = [
            r
            for r in await self.store.list(set(TERMINAL), limit=1_000_000)
            if r.finished_at is not None and getattr(self._live(r.execution_id), "result", True) is not None
        ]
        finished.sort(key=lambda r: r.finished_at or r.created_at)
        logs = self.executor.logs
        cutoff = now - timedelta(seconds=self.settings.log_retention)
        sizes = {r.execution_id: _size(logs.path(r.execution_id)) for r in finished}
        total = sum(_size(p) or 0 for p in logs.root.glob("*.log"))
        for r in finished:
            exec_id = r.execution_id
            if sizes[exec_id] is None:
                continue
            assert r.finished_at is not None
            if r.finished_at < cutoff or total > self.settings.log_max_bytes:
                await asyncio.to_thread(logs.delete, exec_id)
                total -= sizes[exec_id] or 0
                removed.append(exec_id)
        if removed:
            log.info("pruned logs", extra={"count": len(removed)})
        for exec_id in await self.store.prune(now - timedelta(seconds=self.settings.record_retention)):
            await asyncio.to_thread(shutil.rmtree, self.settings.executions_dir / exec_id, True)
            if logs.exists(exec_id):
                await asyncio.to_thread(logs.delete, exec_id)
        return removed

    async def shutdown(self, grace: float | None = None) -> None:
        self._closing = True
        for task in self._tasks:
            if task.get_name() != "haddock-persist":
                task.cancel()
        for q in self._queued.values():  # they stay queued in the store and queue again after a restart
            q.admission.cancel()
            if not q.settled.done():
                q.settled.set_exception(ExecutorShuttingDown())
                q.settled.exception()
        await self.executor.shutdown(stop_running=self.settings.on_shutdown is OnShutdown.STOP, grace=grace)
        for queues in self._watchers.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._persist_queue.join(), 30)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
        if self.storage is not None:
            await self.storage.aclose()
        if self.publisher is not None:
            await self.publisher.aclose()


def _queued_priority(record: ExecutionRecord) -> int:
    """The priority an execution was queued with (kept in its 'queued' event)."""
    for event in record.events:
        if event.kind is EventKind.QUEUED:
            try:
                return int(event.details.get("priority", 0))
            except (TypeError, ValueError):
                return 0
    return 0


def _free(capacity: Resources, snap: CapacitySnapshot) -> Resources:
    """What is neither running nor queued, per dimension (0 where the capacity is unknown)."""
    allocated, queued = snap.allocated, snap.queued
    return Resources.model_construct(
        cpu=max(0.0, capacity.cpu - allocated.cpu - queued.cpu),
        memory=max(0, capacity.memory - allocated.memory - queued.memory),
        disk=max(0, capacity.disk - allocated.disk - queued.disk),
        gpu=max(0, capacity.gpu - allocated.gpu - queued.gpu),
    )


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
