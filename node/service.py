"""The node's domain: what the gRPC servicers call. It decides; the servicers only translate.

It places each execution's results under the data dir, gives executions an id when the
requester did not, fans execution events out to watchers (pull progress for the CLI),
reports the node's capacity, and records telemetry for every execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from opentelemetry import metrics

from executor.errors import ExecutionNotFound
from executor.models import (
    BidResult,
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    Resources,
    RunCommandRequest,
    RunCommandResult,
)
from executor.protocol import Executor
from node.config import OnShutdown, Settings

log = logging.getLogger(__name__)

WATCH_QUEUE = 1024


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
    """One compute node: an executor plus the node's own bookkeeping."""

    def __init__(self, settings: Settings, executor: Executor, *, version: str) -> None:
        self.settings = settings
        self.executor = executor
        self.version = version
        self._watchers: dict[str, set[asyncio.Queue[ExecutionEvent | None]]] = {}
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

    # ------------------------------------------------------------------ events

    def on_event(self, event: ExecutionEvent) -> None:
        """Event sink for the executor: fan out to watchers; record telemetry at the end."""
        for queue in list(self._watchers.get(event.execution_id, ())):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)
        if event.kind is EventKind.STATE and ExecutionState(event.details["state"]).terminal:
            self._record_end(event.execution_id)
            for queue in list(self._watchers.get(event.execution_id, ())):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

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
        record = self.executor.record(execution_id)
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
        prepared = self.prepare(request)
        await self.executor.start(prepared)
        log.info(
            "execution accepted",
            extra={"execution_id": prepared.execution_id, "job_id": prepared.job_id, "image": prepared.engine.image},
        )
        return prepared

    async def wait(self, execution_id: str) -> RunCommandResult:
        return await self.executor.wait(execution_id)

    async def cancel(self, execution_id: str) -> RunCommandResult:
        await self.executor.cancel(execution_id)
        return await self.executor.wait(execution_id)

    def get(self, execution_id: str) -> ExecutionRecord:
        return self.executor.record(execution_id)

    def list(self, states: set[ExecutionState] | None = None, limit: int = 100) -> list[ExecutionRecord]:
        records = [r for r in self.executor.records() if not states or r.state in states]
        records.sort(key=lambda r: r.created_at, reverse=True)
        return records[:limit]

    async def info(self) -> NodeInfo:
        engine_version = ""
        ncpu = 0.0
        mem = 0
        engine_info = getattr(self.executor, "engine_info", None)
        if engine_info is not None:
            try:
                info = await engine_info()
                engine_version = str(info.get("ServerVersion", ""))
                ncpu = float(info.get("NCPU") or 0)
                mem = int(info.get("MemTotal") or 0)
            except Exception as exc:  # the engine being down must not break node info
                log.warning("engine info unavailable: %s", exc)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
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

    async def shutdown(self, grace: float | None = None) -> None:
        await self.executor.shutdown(stop_running=self.settings.on_shutdown is OnShutdown.STOP, grace=grace)
        for queues in self._watchers.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
