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

from executor.docker.executor import DockerExecutor
from executor.errors import ExecutionAlreadyComplete, ExecutionAlreadyStarted, ExecutionNotFound
from executor.logstore import LogEntry
from executor.models import (
    BidResult,
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    Resources,
    RunCommandRequest,
    RunCommandResult,
    StreamType,
    utcnow,
)
from executor.quantity import format_duration
from node.config import OnShutdown, Settings
from node.store import ExecutionStore, store_path

log = logging.getLogger(__name__)

WATCH_QUEUE = 1024
TERMINAL = frozenset(s for s in ExecutionState if s.terminal)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    version: str
    engine_version: str
    capacity: Resources
    allocated: Resources
    queued: Resources
    free: Resources
    running: int
    queued_count: int


def new_execution_id() -> str:
    return f"e-{uuid.uuid4().hex}"


def _sum(resources: list[Resources]) -> Resources:
    return Resources(
        cpu=sum(r.cpu for r in resources),
        memory=sum(r.memory for r in resources),
        disk=sum(r.disk for r in resources),
        gpu=sum(r.gpu for r in resources),
    )


class Node:
    """One compute node: an executor, the durable store, and the node's own bookkeeping."""

    def __init__(self, settings: Settings, executor: DockerExecutor, store: ExecutionStore, *, version: str) -> None:
        self.settings = settings
        self.executor = executor
        self.store = store
        self.version = version
        self._watchers: dict[str, set[asyncio.Queue[ExecutionEvent | None]]] = {}
        self._persist_queue: asyncio.Queue[ExecutionEvent] = asyncio.Queue()
        self._accepted: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
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
        holder: list[Node] = []
        executor = DockerExecutor(settings.executor_config(), event_sink=lambda e: holder[0].on_event(e))
        node = cls(settings, executor, store, version=version)
        holder.append(node)
        return node

    async def begin(self) -> None:
        """Start persisting, take back what a previous life left unfinished, start housekeeping."""
        self._tasks.append(asyncio.create_task(self._persist_loop(), name="haddock-persist"))
        unfinished = await self.store.non_terminal()
        if unfinished:
            log.info("recovering executions", extra={"count": len(unfinished)})
            try:
                await self.executor.recover(unfinished)
            except Exception as exc:  # the engine may be down: the executions stay unfinished until it is back
                log.error("recovery failed: %s; will retry when the node restarts", exc)
        self._tasks.append(asyncio.create_task(self._reap_loop(), name="haddock-reaper"))
        self._tasks.append(asyncio.create_task(self._prune_loop(), name="haddock-pruner"))

    # ------------------------------------------------------------------ events

    def on_event(self, event: ExecutionEvent) -> None:
        """Event sink for the executor: persist in order, fan out to watchers, telemetry at the end."""
        if event.kind is not EventKind.PULL_PROGRESS:
            self._persist_queue.put_nowait(event)
        for queue in list(self._watchers.get(event.execution_id, ())):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)
        if event.kind is EventKind.STATE and ExecutionState(event.details["state"]).terminal:
            self._record_end(event.execution_id)
            for queue in list(self._watchers.get(event.execution_id, ())):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def _persist_loop(self) -> None:
        while True:
            event = await self._persist_queue.get()
            try:
                await self._persist(event)
            except Exception as exc:
                log.exception("persisting %s of %s failed", event.kind.value, event.execution_id)
                fut = self._accepted.pop(event.execution_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            finally:
                self._persist_queue.task_done()

    async def _persist(self, event: ExecutionEvent) -> None:
        exec_id = event.execution_id
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
        """Events of an execution: those so far, then live ones until it ends."""
        try:
            record = self.executor.record(execution_id)
        except ExecutionNotFound:
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
        """Give the request the node's results dir."""
        return request.model_copy(update={"results_dir": self.settings.results_dir(request.execution_id)})

    async def should_bid(self, request: RunCommandRequest) -> BidResult:
        return await self.executor.should_bid(self.prepare(request))

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources | None) -> BidResult:
        return await self.executor.should_bid_based_on_usage(self.prepare(request), usage or request.resources)

    async def start(self, request: RunCommandRequest) -> RunCommandRequest:
        """Accept an execution; returns once it is durably recorded."""
        prepared = self.prepare(request)
        exec_id = prepared.execution_id
        existing = await self.store.get(exec_id)
        if existing is not None:  # ids are unique for the node's whole life, across restarts
            if existing.state.terminal:
                raise ExecutionAlreadyComplete(exec_id, existing.state.value)
            raise ExecutionAlreadyStarted(exec_id)
        accepted = asyncio.get_running_loop().create_future()
        self._accepted[exec_id] = accepted
        try:
            await self.executor.start(prepared)
        except BaseException:
            self._accepted.pop(exec_id, None)
            raise
        await accepted
        log.info(
            "execution accepted",
            extra={"execution_id": exec_id, "job_id": prepared.job_id, "image": prepared.engine.image},
        )
        return prepared

    def _live(self, execution_id: str) -> ExecutionRecord | None:
        try:
            return self.executor.record(execution_id)
        except ExecutionNotFound:
            return None

    async def wait(self, execution_id: str) -> RunCommandResult:
        if self._live(execution_id) is not None:
            return await self.executor.wait(execution_id)
        record = await self.get(execution_id)
        if record.result is None:  # pragma: no cover - unfinished executions are live after recovery
            raise ExecutionNotFound(execution_id)
        return record.result

    async def cancel(self, execution_id: str) -> RunCommandResult:
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
        for r in self.executor.records():  # fresher than what is persisted
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
        ncpu = 0.0
        mem = 0
        try:
            info = await self.executor.engine_info()
            engine_version = str(info.get("ServerVersion", ""))
            ncpu = float(info.get("NCPU") or 0)
            mem = int(info.get("MemTotal") or 0)
        except Exception as exc:  # the engine being down must not break node info
            log.warning("engine info unavailable: %s", exc)
        disk = shutil.disk_usage(self.settings.data_dir).free
        capacity = Resources(cpu=min(ncpu, 1024), memory=mem, disk=disk, gpu=0)
        running = [r for r in self.executor.records() if not r.state.terminal]
        allocated = _sum([r.request.resources for r in running])
        free = Resources(
            cpu=max(0.0, capacity.cpu - allocated.cpu),
            memory=max(0, capacity.memory - allocated.memory),
            disk=max(0, capacity.disk - allocated.disk),
            gpu=max(0, capacity.gpu - allocated.gpu),
        )
        return NodeInfo(
            node_id=self.settings.node_id,
            version=self.version,
            engine_version=engine_version,
            capacity=capacity,
            allocated=allocated,
            queued=Resources(),
            free=free,
            running=len(running),
            queued_count=0,
        )

    # ------------------------------------------------------------------ housekeeping

    async def _reap_loop(self) -> None:
        interval = max(5.0, self.settings.docker.orphan_grace / 2)
        while True:
            try:
                await self.executor.reap_orphans()
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
        for task in self._tasks:
            if task.get_name() != "haddock-persist":
                task.cancel()
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


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
