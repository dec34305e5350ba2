"""Admission: capacity re-checked atomically at Start, the queue of executions waiting for it, and the
hand-over of an admitted execution to the executor.

An execution that fits runs at once; one that does not waits in the capacity manager's bounded priority
queue (durably recorded as ``queued``) or is refused with RESOURCE_EXHAUSTED. When it is admitted it is
handed to the executor; while it waits it can be waited for, watched and cancelled like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from haddock.executor.errors import ExecutionAlreadyStarted, ExecutionNotFound, ExecutorShuttingDown
from haddock.executor.protocol import Executor
from haddock.executor.records import (
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    ResultStatus,
    RunCommandResult,
    utcnow,
)
from haddock.executor.request import Resources, RunCommandRequest
from haddock.executor.results import write_job_results
from haddock.node.capacity import CapacityExhausted, CapacityManager, QueuePosition
from haddock.node.events import EventHub
from haddock.node.store import ExecutionStore

__all__ = ["Admission", "Queued", "queued_priority"]

log = logging.getLogger(__name__)


@dataclass
class Queued:
    """An execution waiting for capacity: the node holds it until it is admitted."""

    request: RunCommandRequest
    record: ExecutionRecord
    admission: asyncio.Task[None]
    # None once admitted (the executor has it from then on), or the result if it ended in the queue
    settled: asyncio.Future[RunCommandResult | None]
    task: asyncio.Task[None] | None = None
    ending: asyncio.Task[RunCommandResult] | None = None  # it ends in the queue (cancelled, refused)


class Admission:
    """Capacity at Start, and the queue."""

    def __init__(self, capacity: CapacityManager, executor: Executor, store: ExecutionStore, events: EventHub) -> None:
        self.capacity = capacity
        self.executor = executor
        self.store = store
        self.events = events
        self._queued: dict[str, Queued] = {}
        self._closing = False

    def get(self, execution_id: str) -> Queued | None:
        return self._queued.get(execution_id)

    def records(self) -> list[ExecutionRecord]:
        return [q.record for q in self._queued.values()]

    def position(self, execution_id: str) -> QueuePosition | None:
        return self.capacity.position(execution_id) if execution_id in self._queued else None

    async def admit(
        self, prepared: RunCommandRequest, *, queue: bool, priority: int, usage: Resources | None = None
    ) -> None:
        """Run it now if it fits, else queue it (``queue``) or refuse it (RESOURCE_EXHAUSTED).
        ``usage``: what it holds (default: its resources; the node counts its inputs in ``disk``).
        Returns once it is durably recorded, running or queued."""
        exec_id = prepared.execution_id
        admission = asyncio.create_task(
            self.capacity.acquire(exec_id, usage or prepared.resources, queue=queue, priority=priority)
        )
        await asyncio.sleep(0)  # admission runs to its end, or to its first wait in the queue
        if admission.done():
            if isinstance(admission.exception(), ValueError):  # the same id started concurrently
                raise ExecutionAlreadyStarted(exec_id)
            admission.result()  # refused: RESOURCE_EXHAUSTED with the reason
            await self.launch(prepared)
            return
        record = ExecutionRecord(request=prepared, state=ExecutionState.QUEUED)
        details: dict[str, Any] = {"priority": priority}
        input_bytes = (usage.disk - prepared.resources.disk) if usage is not None else 0
        if input_bytes > 0:  # its inputs' size, counted in disk: a restart queues it again with the same usage
            details["input_bytes"] = input_bytes
        event = ExecutionEvent(
            execution_id=exec_id, kind=EventKind.QUEUED, message="waiting for capacity", details=details
        )
        record.events.append(event)
        try:
            await self.store.create(record)
        except BaseException:
            self.capacity.release(exec_id)
            admission.cancel()
            raise
        self.enqueue(prepared, record, priority, admission=admission)
        log.info("execution queued", extra={"execution_id": exec_id, "job_id": prepared.job_id})

    def enqueue(
        self,
        request: RunCommandRequest,
        record: ExecutionRecord,
        priority: int,
        *,
        admission: asyncio.Task[None] | None = None,
        usage: Resources | None = None,
    ) -> None:
        """Wait in the queue (also what a restart does with an execution the store has as queued, holding
        ``usage``: see :func:`queued_usage`)."""
        exec_id = request.execution_id
        if admission is None:
            admission = asyncio.create_task(
                self.capacity.acquire(exec_id, usage or request.resources, queue=True, priority=priority)
            )
        settled: asyncio.Future[RunCommandResult | None] = asyncio.get_running_loop().create_future()
        q = Queued(request=request, record=record, admission=admission, settled=settled)
        self._queued[exec_id] = q
        q.task = asyncio.create_task(self._admit_when_ready(q), name=f"haddock-queued-{exec_id}")

    async def _admit_when_ready(self, q: Queued) -> None:
        exec_id = q.request.execution_id
        try:
            await q.admission
        except asyncio.CancelledError:
            return  # withdrawn by cancel(), or the node is shutting down: it stays queued in the store
        except CapacityExhausted as exc:
            if self._queued.get(exec_id) is q and q.ending is None and not self._closing:  # refused meanwhile
                await self.end_in_queue(exec_id, ResultStatus.ERROR, f"the execution could not be admitted: {exc}")
            return
        if self._queued.get(exec_id) is not q or q.ending is not None or self._closing:
            # Cancelled (or the node closing) after admission was granted but before it ran: give it back.
            self.capacity.release(exec_id)
            return
        self._queued.pop(exec_id, None)
        try:
            await self.launch(q.request, queued=q.record)
        except Exception as exc:
            if self._known_to_executor(exec_id):  # it runs, but its acceptance could not be persisted
                log.error("execution %s runs but could not be recorded as admitted: %s", exec_id, exc)
                q.settled.set_result(None)
                return
            # The executor refused it and let go of it at once: it ends as one that never ran, findable all
            # along (no await since the executor forgot it).
            self._queued[exec_id] = q
            await self.end_in_queue(exec_id, ResultStatus.ERROR, f"the execution could not start: {exc}")
            return
        q.settled.set_result(None)

    def _known_to_executor(self, exec_id: str) -> bool:
        try:
            self.executor.record(exec_id)
        except ExecutionNotFound:
            return False
        return True

    async def launch(self, prepared: RunCommandRequest, *, queued: ExecutionRecord | None = None) -> None:
        """Hand an admitted execution to the executor; returns once it is persisted. ``queued``: its record
        while it waited in the queue (its history goes on in the executor's record)."""
        from_queue = queued is not None
        exec_id = prepared.execution_id
        devices = self.capacity.devices(exec_id)
        if devices:  # the GPUs this execution holds, by id: no two executions share one
            prepared = prepared.model_copy(update={"gpu_devices": list(devices)})
        accepted = self.events.expect_accepted(exec_id, from_queue=from_queue)
        try:
            await self.executor.start(prepared)
        except BaseException:
            self.events.forget_accepted(exec_id)
            self.capacity.release(exec_id)
            raise
        if queued is not None:
            # The executor's record starts at admission; what came before (the queue wait) is the store's.
            # Carried over before the execution's task first runs (start returned without a later await),
            # so describe, watchers and the phase metrics at its end see one history, as the store has it.
            record = self.executor.record(exec_id)
            record.events[:0] = [e for e in queued.events if e not in record.events]
            record.created_at = queued.created_at
        await accepted
        log.info(
            "execution accepted",
            extra={"execution_id": exec_id, "job_id": prepared.job_id, "image": prepared.engine.image},
        )

    async def end_in_queue(self, exec_id: str, status: ResultStatus, message: str) -> RunCommandResult:
        """It ends without having run (cancelled, refused while waiting). It stays findable as queued until
        its end is recorded; a second end (a second cancel) gets the first one's result."""
        q = self._queued[exec_id]
        if q.ending is None:
            q.admission.cancel()
            self.capacity.release(exec_id)
            q.ending = asyncio.create_task(self._end(q, status, message), name=f"haddock-end-queued-{exec_id}")
        return await asyncio.shield(q.ending)

    async def _end(self, q: Queued, status: ResultStatus, message: str) -> RunCommandResult:
        exec_id = q.request.execution_id
        try:
            await write_no_output(q.request)
        except Exception as exc:
            log.warning("writing the results of %s failed: %s", exec_id, exc)
            message = f"{message}; writing its results to {q.request.results_dir} failed: {exc}"
        result = RunCommandResult(status=status, error_message=message)
        q.record.result = result
        q.record.state = status.state
        q.record.finished_at = utcnow()
        try:
            await self.store.set_result(exec_id, result, status.state)
        finally:
            if self._queued.get(exec_id) is q:
                del self._queued[exec_id]
            if not q.settled.done():
                q.settled.set_result(result)
            self.events.end_watchers(exec_id)
        return result

    async def close(self) -> None:
        """Stop admitting: queued executions stay queued in the store and queue again after a restart."""
        self._closing = True
        tasks: list[asyncio.Task[Any]] = []
        for q in self._queued.values():
            q.admission.cancel()
            if q.task is not None:
                q.task.cancel()
                tasks.append(q.task)
            if q.ending is not None:  # its end is being recorded: let it be
                tasks.append(q.ending)
            elif not q.settled.done():
                q.settled.set_exception(ExecutorShuttingDown())
                q.settled.exception()
        await asyncio.gather(*tasks, return_exceptions=True)


async def write_no_output(request: RunCommandRequest) -> None:
    """The results dir of an execution in which no process ran: empty ``stdout`` and ``stderr``, no ``exitCode``."""
    if request.results_dir is None:
        return

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield

    await write_job_results(request.results_dir, nothing(), nothing(), None, request.output_limits)


def queued_usage(record: ExecutionRecord) -> Resources:
    """What a queued execution holds, as at its first Start: its resources, with its inputs' size (kept in
    its 'queued' event) counted in ``disk``."""
    resources = record.request.resources
    for event in record.events:
        if event.kind is EventKind.QUEUED:
            try:
                input_bytes = int(event.details.get("input_bytes", 0))
            except (TypeError, ValueError):
                input_bytes = 0
            if input_bytes > 0:
                return resources.model_copy(update={"disk": resources.disk + input_bytes})
            break
    return resources


def queued_priority(record: ExecutionRecord) -> int:
    """The priority an execution was queued with (kept in its 'queued' event)."""
    for event in record.events:
        if event.kind is EventKind.QUEUED:
            try:
                return int(event.details.get("priority", 0))
            except (TypeError, ValueError):
                return 0
    return 0
