"""The runner: an execution's whole life, whatever the engine (the Executor contract over a Driver).

It owns the records, the state machine and the lifecycle events; it prepares inputs and the image at
once, creates and starts the container through the driver (``launch.py``), enforces the job's timeout (pull time does
not count), cancellation and the output cap, and writes the results from the node's log store in every
terminal case, then publishes them. Recovery after a restart goes through the same path: the driver
hands back a handle of the container it finds, and the runner supervises it like a fresh one (``_recover.py``).

Every event goes to the event sink in order. The ``accepted`` event carries the request and the
terminal state event the result, so that the node can persist an execution from its events alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace

from haddock.executor._execution import Execution
from haddock.executor._recover import recover, resume
from haddock.executor.driver import Driver, ExitStatus
from haddock.executor.errors import (
    ExecutionAlreadyComplete,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ExecutorError,
    ExecutorShuttingDown,
    InvalidSpec,
)
from haddock.executor.hooks import BeforeStopHook, StopHooks
from haddock.executor.launch import prepare_and_run
from haddock.executor.logcap import LogCap
from haddock.executor.logstore import LogEntry, LogStore
from haddock.executor.prepare import prepare_inputs
from haddock.executor.protocol import InputPreparer, JobBuilder, ResultPublisher
from haddock.executor.quantity import GiB
from haddock.executor.records import (
    BidResult,
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    ResultStatus,
    RunCommandResult,
    utcnow,
)
from haddock.executor.request import Resources, RunCommandRequest
from haddock.executor.service import resume_service
from haddock.executor.settle import finish
from haddock.executor.stats import Stat
from haddock.executor.streams import LogQuery

__all__ = ["EventSink", "Runner", "RunnerConfig", "StatsSink"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer("haddock.executor")

_STOPPED_BECAUSE = {
    "cancel": "cancelled",
    "timeout": "over its timeout",
    "output-cap": "over its output cap",
    "batch-done": "the job had answered",
}
"""How an ``exited`` event words the reason the node stopped the container (the handle's stop reason)."""

EventSink = Callable[[ExecutionEvent], None]
StatsSink = Callable[[str, Stat], None]
"""Where resource samples go (execution id, sample), one way: the node keeps them with the execution."""


@dataclass(frozen=True)
class RunnerConfig:
    log_dir: Path
    default_output_cap: int = 10 * GiB  # what a job may write to its outputs when it sets no disk resource
    max_finished_records: int = 10_000  # finished executions kept in memory (the node persists them)
    log_max_per_execution: int | None = None  # one execution's log file (None: its output limits plus framing)
    log_max_live: int | None = None  # the logs being written, together (None: no bound)

    def log_cap(self, request: RunCommandRequest) -> LogCap:
        return LogCap.for_limits(request.output_limits, self.log_max_per_execution)

    stats_interval: float = 1.0  # seconds between resource samples of a running container; 0: none


class Runner:
    """Implements :class:`haddock.executor.protocol.Executor` over ``driver``. Bound to the event loop it
    is first used on."""

    def __init__(
        self,
        driver: Driver,
        config: RunnerConfig,
        *,
        event_sink: EventSink | None = None,
        input_preparer: InputPreparer | None = None,
        result_publisher: ResultPublisher | None = None,
        stats_sink: StatsSink | None = None,
        job_builder: JobBuilder | None = None,
    ) -> None:
        self.driver = driver
        self.config = config
        self.logs = LogStore(config.log_dir, max_live_bytes=config.log_max_live)
        self._event_sink = event_sink
        self._input_preparer = input_preparer
        self._result_publisher = result_publisher
        self._stats_sink = stats_sink
        self.job_builder = job_builder  # builds jobs of job types (request.job); the node sets it
        self.stop_hooks = StopHooks()  # before a cancel stops a service's container (the gateway drains it)
        self._records: dict[str, ExecutionRecord] = {}
        self._running: dict[str, Execution] = {}
        self._starting: dict[str, asyncio.Future[None]] = {}  # starts under way (creating the log)
        self._closing = False
        self._grace_cap: float | None = None

    def add_before_stop(self, hook: BeforeStopHook, *, name: str, timeout: float) -> Callable[[], None]:
        return self.stop_hooks.add(hook, name=name, timeout=timeout)

    # ------------------------------------------------------------------ contract: engine and bidding

    async def is_installed(self) -> bool:
        return await self.driver.is_installed()

    async def engine_info(self) -> dict[str, Any]:
        return await self.driver.engine_info()

    async def inspect_image(self, image: str) -> dict[str, Any] | None:
        return await self.driver.inspect_image(image)

    async def should_bid(self, request: RunCommandRequest) -> BidResult:
        if self._closing:
            return BidResult.no("this node is shutting down")
        return await self.driver.should_bid(request)

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources) -> BidResult:
        return await self.driver.should_bid_based_on_usage(request, usage)

    # ------------------------------------------------------------------ contract: lifecycle

    def check(self, request: RunCommandRequest) -> None:
        """What ``start`` would refuse about the request itself, without starting anything."""
        if self._closing:
            raise ExecutorShuttingDown()
        if request.results_dir is None:
            raise InvalidSpec("results_dir is required: the executor needs to know where to write results")
        if request.input_sources and self._input_preparer is None:
            raise InvalidSpec("this executor was given no way to fetch input sources")
        if request.publishers and self._result_publisher is None:
            raise InvalidSpec("this executor was given no way to publish results")
        if request.job is not None:
            if self.job_builder is None:
                raise InvalidSpec("this node has no job types: it cannot build jobs from source")
            self.job_builder.check(request.job)
        self.driver.check(request)

    async def start(self, request: RunCommandRequest) -> None:
        exec_id = request.execution_id
        existing = self._records.get(exec_id)
        if existing is not None:
            if existing.state.terminal:
                raise ExecutionAlreadyComplete(exec_id, existing.state.value)
            raise ExecutionAlreadyStarted(exec_id)
        self.check(request)
        # Register synchronously (no await between the check and here) so that a concurrent start
        # of the same id sees it; the log exists before start returns, so it can be streamed at once.
        # A wait or cancel arriving meanwhile waits for this start to be through (see _started).
        record = ExecutionRecord(request=request)
        self._records[exec_id] = record
        starting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._starting[exec_id] = starting
        try:
            writer = await asyncio.to_thread(self.logs.create, exec_id, self.config.log_cap(request))
        except FileExistsError:
            self._records.pop(exec_id, None)
            raise ExecutionAlreadyComplete(exec_id, "an execution with this id already ran on this node") from None
        except Exception as exc:
            self._records.pop(exec_id, None)
            raise ExecutorError(f"cannot create the log of execution {exec_id!r}: {exc}") from exc
        except BaseException:
            self._records.pop(exec_id, None)
            raise
        finally:
            self._starting.pop(exec_id, None)
            starting.set_result(None)
        execution = Execution(record=record, done=asyncio.get_running_loop().create_future(), writer=writer)
        self._running[exec_id] = execution
        self._emit(
            record,
            EventKind.ACCEPTED,
            f"accepted execution of {request.engine.image}",
            request=request,
            time=record.created_at,
        )
        execution.task = asyncio.create_task(self._execute(execution), name=f"haddock-exec-{exec_id}")

    async def run(self, request: RunCommandRequest) -> RunCommandResult:
        await self.start(request)
        return await self.wait(request.execution_id)

    async def _started(self, execution_id: str) -> None:
        """Wait until a start of this id under way is through (accepted, or refused and forgotten): a wait
        or cancel arriving while ``start`` creates the log sees the execution, or nothing at all."""
        starting = self._starting.get(execution_id)
        if starting is not None:
            await asyncio.shield(starting)

    async def wait(self, execution_id: str) -> RunCommandResult:
        await self._started(execution_id)
        record = self.record(execution_id)
        if record.result is not None:
            return record.result
        execution = self._running.get(execution_id)
        if execution is None:  # pragma: no cover - a record without result is always running
            raise ExecutionNotFound(execution_id)
        return await asyncio.shield(execution.done)

    async def cancel(self, execution_id: str, *, reason: str = "") -> None:
        await self._started(execution_id)
        record = self.record(execution_id)
        execution = self._running.get(execution_id)
        handle = execution.handle if execution is not None else None
        if execution is None or execution.done.done() or record.state.terminal or (handle and handle.exited):
            raise ExecutionAlreadyComplete(execution_id, record.state.value)
        if not execution.cancel_event.is_set():
            self._emit(record, EventKind.CANCEL_REQUESTED, "cancellation requested" + (f": {reason}" if reason else ""))
            execution.cancel_event.set()
        result = await asyncio.shield(execution.done)
        if result.status is not ResultStatus.CANCELLED:
            # It ended by itself before the cancellation could stop it.
            raise ExecutionAlreadyComplete(execution_id, result.status.value)

    def note(self, execution_id: str, kind: EventKind, message: str, **details: Any) -> None:
        self._emit(self.record(execution_id), kind, message, **details)

    def state(self, execution_id: str) -> ExecutionState:
        return self.record(execution_id).state

    def events(self, execution_id: str) -> list[ExecutionEvent]:
        return list(self.record(execution_id).events)

    def record(self, execution_id: str) -> ExecutionRecord:
        record = self._records.get(execution_id)
        if record is None:
            raise ExecutionNotFound(execution_id)
        return record

    def records(self) -> list[ExecutionRecord]:
        return list(self._records.values())

    async def get_log_stream(self, execution_id: str, query: LogQuery | None = None) -> AsyncIterator[LogEntry]:
        await self._started(execution_id)
        if execution_id not in self._records and not self.logs.exists(execution_id):
            raise ExecutionNotFound(execution_id)
        query = query or LogQuery()
        start = query.offset
        if start is None and not query.with_history and query.tail_lines is None:
            start = self.logs.end_offset(execution_id)
        async for entry in self.logs.read(
            execution_id, offset=start or 0, follow=query.follow, streams=query.streams, tail_lines=query.tail_lines
        ):
            yield entry

    async def shutdown(self, *, stop_running: bool = True, grace: float | None = None) -> None:
        """Refuse new work; stop running executions (or leave their containers running).

        ``grace`` caps each container's stop grace (stop signal to SIGKILL) so that the node can
        promise when it is gone.
        """
        self._closing = True
        if grace is not None:
            self._grace_cap = grace
        running = list(self._running.values())
        if stop_running:
            for r in running:
                if not r.done.done():
                    r.cancel_event.set()
            waits: list[asyncio.Future[Any]] = [asyncio.shield(r.done) for r in running]
        else:
            for r in running:
                r.leave_container = True
                if r.task is not None:
                    r.task.cancel()
            waits = [r.task for r in running if r.task is not None]
        if waits:
            # Bounded: a stop takes at most the grace plus a kill; the engine may be gone.
            _, pending = await asyncio.wait(waits, timeout=self._stop_grace() + 30)
            if pending:
                log.warning("%d executions did not end within the shutdown bound", len(pending))
            for w in waits:
                if w.done() and not w.cancelled():
                    w.exception()
        await self.driver.close()

    def _stop_grace(self) -> float:
        grace = self.driver.stop_grace
        return grace if self._grace_cap is None else min(grace, self._grace_cap)

    # ------------------------------------------------------------------ reconciliation after a restart

    async def containers(self) -> dict[str, dict[str, Any]]:
        return await self.driver.containers()

    async def recover(self, records: list[ExecutionRecord], stats: Mapping[str, Sequence[Stat]] | None = None) -> None:
        """Take back the executions a previous life of this node left unfinished.

        For each: a container that still runs is followed again (output from where the node's log
        ends, the remaining timeout enforced); one that exited meanwhile has its output and exit
        status collected; a missing one ends the execution with a clear message. Results are then
        written as usual. Returns once every execution is registered (``wait`` works on them).
        ``stats``: the samples kept of each from before, so that its result's summary covers its whole run.
        """
        await recover(self, records, stats or {})

    async def reap_orphans(self, *, grace: float | None = None, keep: set[str] | None = None) -> list[str]:
        """Remove containers with this node's label that no execution knows, once older than the grace.

        ``keep``: execution ids whose containers must stay (unfinished in the node's store)."""
        known = {exec_id for exec_id, r in self._records.items() if r.result is None}
        return await self.driver.reap_orphans(keep={*(keep or ()), *self._running, *known}, grace=grace)

    # ------------------------------------------------------------------ the execution itself

    def _emit(self, record: ExecutionRecord, kind: EventKind, message: str, **details: Any) -> ExecutionEvent:
        carried = {k: details.pop(k) for k in ("request", "result", "time") if k in details}
        event = ExecutionEvent(
            execution_id=record.request.execution_id, kind=kind, message=message, details=details, **carried
        )
        if kind is not EventKind.PULL_PROGRESS:
            record.events.append(event)
        if self._event_sink is not None:
            try:
                self._event_sink(event)
            except Exception:
                log.exception("event sink failed")
        return event

    def _emit_stat(self, execution: Execution, stat: Stat) -> None:
        execution.stats.add(stat)
        if self._stats_sink is not None:
            try:
                self._stats_sink(execution.record.execution_id, stat)
            except Exception:
                log.exception("stats sink failed")

    def _set_state(self, record: ExecutionRecord, state: ExecutionState, **carried: Any) -> None:
        if record.state is not state:
            record.state = state
            reason = carried.get("reason")
            message = f"state: {state.value}" + (f" ({reason})" if reason else "")
            self._emit(record, EventKind.STATE, message, state=state.value, **carried)

    async def _execute(self, execution: Execution, *, recovered: bool = False) -> None:
        """The execution's task. Whatever happens, ``done`` is resolved and the container removed
        (unless a shutdown let go of it)."""
        record = execution.record
        request = record.request
        try:
            with tracer.start_as_current_span(
                "execution",
                attributes={
                    "haddock.execution_id": request.execution_id,
                    "haddock.job_id": request.job_id,
                    "haddock.image": request.engine.image,
                    "haddock.recovered": recovered,
                },
            ) as span:
                result = await self._execute_traced(execution, recovered=recovered)
                span.set_attribute("haddock.status", result.status.value)
                if result.exit_code is not None:
                    span.set_attribute("haddock.exit_code", result.exit_code)
                if result.status is not ResultStatus.SUCCESS:
                    span.set_status(trace.StatusCode.ERROR, result.error_message)
        except asyncio.CancelledError:
            if not execution.done.done():
                execution.done.set_exception(ExecutorShuttingDown())
                execution.done.exception()  # retrieved: nobody may be waiting
            raise
        except BaseException as exc:  # pragma: no cover - _execute_traced handles what it can foresee
            log.exception("execution %s failed unexpectedly", request.execution_id)
            if not execution.done.done():
                result = RunCommandResult(status=ResultStatus.ERROR, error_message=f"internal error: {exc!r}")
                record.result = result
                record.finished_at = utcnow()
                self._set_state(record, ExecutionState.FAILED, result=result)
                execution.done.set_result(result)
            if not isinstance(exc, Exception):
                raise
        else:
            execution.done.set_result(result)
        finally:
            self._running.pop(request.execution_id, None)
            self._forget_old_records()

    async def _execute_traced(self, execution: Execution, *, recovered: bool) -> RunCommandResult:
        record = execution.record
        outcome = ExitStatus()
        status: ResultStatus | None = None
        try:
            try:
                resumed: ExitStatus | None = None
                if recovered and record.request.is_service:
                    with tracer.start_as_current_span("resume"):
                        outcome, status = await resume_service(self, execution)
                else:
                    if recovered:
                        with tracer.start_as_current_span("resume"):
                            resumed = await resume(self, execution)
                    if resumed is not None:
                        outcome = resumed
                    else:  # a fresh execution, or one the node went down while preparing: prepared (again)
                        outcome, status = await self._prepare_and_run(execution)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = ExitStatus(error=self.driver.describe_failure(exc))
                if outcome.error.startswith("internal error"):
                    log.exception("execution %s failed", record.execution_id)
            with tracer.start_as_current_span("write-results"):
                return await finish(self, execution, outcome, status)
        except asyncio.CancelledError:
            if execution.writer is not None:
                if execution.leave_container:
                    # The node goes down and leaves the container running: stop capturing and keep
                    # the log open-ended (no END frame) so that a restart can append to it.
                    if execution.handle is not None:
                        execution.handle.release()
                    execution.writer.close(complete=False)
                else:
                    execution.writer.close()
            raise
        finally:
            await self._clean_up(execution, recovered=recovered)

    async def _clean_up(self, execution: Execution, *, recovered: bool) -> None:
        if execution.leave_container:
            return
        record = execution.record
        if execution.handle is not None:
            try:
                if await execution.handle.remove():
                    self._emit(record, EventKind.CLEANED_UP, "container removed")
            except Exception as exc:
                # Left for the reaper: it carries this node's labels.
                log.warning("could not remove container %s: %s", execution.handle.container_id, exc)
        try:
            if execution.prepared_inputs is not None:
                await execution.prepared_inputs.cleanup()
            elif recovered and record.request.input_sources and self._input_preparer is not None:
                await self._input_preparer.discard(record.execution_id)  # prepared by a previous life
        except Exception as exc:
            log.warning("cleaning up the inputs of %s failed: %s", record.execution_id, exc)

    async def _prepare_and_run(self, execution: Execution) -> tuple[ExitStatus, ResultStatus | None]:
        """Image and inputs, container, run (``launch.py``); also what a restarted service needs again."""
        return await prepare_and_run(self, execution)

    def _emit_exit(self, record: ExecutionRecord, outcome: ExitStatus, stop_reason: str | None = None) -> None:
        """The container's exit; ``stop_reason`` when the node stopped it (said in the message and details)."""
        message = f"container exited with code {outcome.exit_code}"
        details: dict[str, Any] = {"exit_code": outcome.exit_code, "oom_killed": outcome.oom_killed}
        for key, at in (("started_at", outcome.started_at), ("finished_at", outcome.finished_at)):
            if at is not None:  # the engine's clock: what the timeout rule (settle.decide_status) compares
                details[key] = at.isoformat()
        if stop_reason:
            message += f" (stopped by the node: {_STOPPED_BECAUSE.get(stop_reason, stop_reason)})"
            details["stop_reason"] = stop_reason
        self._emit(record, EventKind.EXITED, message, **details)

    async def _prepare_inputs(self, execution: Execution, preparer: InputPreparer) -> None:
        execution.prepared_inputs = await prepare_inputs(preparer, execution.record, execution.cancel_event, self._emit)

    def _forget_old_records(self) -> None:
        """Keep a bounded number of finished executions in memory (the node persists them)."""
        excess = len(self._records) - len(self._running) - self.config.max_finished_records
        if excess <= 0:
            return
        finished = sorted(
            (r for r in self._records.values() if r.result is not None),
            key=lambda r: r.finished_at or r.created_at,
        )
        for r in finished[:excess]:
            del self._records[r.execution_id]
