"""Recovery: the runner takes back the executions a previous life of the node left unfinished.

Part of :class:`~haddock.executor.runner.Runner` (its ``recover``, and the resume step of a recovered
execution); private to the runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from haddock.executor._execution import Execution
from haddock.executor.driver import ExitStatus
from haddock.executor.logstore import LogWriter
from haddock.executor.records import EventKind, ExecutionRecord, ExecutionState, utcnow
from haddock.executor.stats import Stat
from haddock.executor.supervise import supervise

if TYPE_CHECKING:
    from haddock.executor.runner import Runner


async def recover(runner: Runner, records: list[ExecutionRecord], stats: Mapping[str, Sequence[Stat]]) -> None:
    """Take back the executions a previous life of this node left unfinished.

    For each: a container that still runs is followed again (output from where the node's log
    ends, the remaining timeout enforced); one that exited meanwhile has its output and exit
    status collected; a missing one ends the execution with a clear message. Results are then
    written as usual. Returns once every execution is registered (``wait`` works on them). Its resource
    summary starts from ``stats``, the samples kept of it before.
    """
    held = await runner.driver.held_logs()
    for record in records:
        exec_id = record.execution_id
        if exec_id in runner._records:
            continue
        record.result = None
        writer: LogWriter | None
        cap = runner.config.log_cap(record.request)
        if exec_id in held:
            writer = None  # another process of the driver writes it (see Driver.held_logs)
        elif not runner.logs.exists(exec_id):
            writer = await asyncio.to_thread(runner.logs.create, exec_id, cap)
        elif runner.logs.is_complete(exec_id):
            writer = None  # all output was captured before the node went down
        else:
            writer = await asyncio.to_thread(runner.logs.open_append, exec_id, cap)
        execution = Execution(record=record, done=asyncio.get_running_loop().create_future(), writer=writer)
        for stat in stats.get(exec_id, ()):
            execution.stats.add(stat)
        # Registered together, with no await between: a record is never seen without its execution.
        runner._records[exec_id] = record
        runner._running[exec_id] = execution
        runner._emit(record, EventKind.RECOVERED, "the node restarted and took the execution back")
        execution.task = asyncio.create_task(
            runner._execute(execution, recovered=True), name=f"haddock-recover-{exec_id}"
        )


async def resume(runner: Runner, execution: Execution) -> ExitStatus | None:
    """The recovered execution's container: follow it (or read what it left), then its exit status.
    None when the node went down while preparing it: it is to be prepared again (nothing of it ran)."""
    record = execution.record
    resumed = await runner.driver.resume(record, execution.writer)
    if resumed is None:
        if execution.writer is None:  # pragma: no cover - a complete log means a container ran
            return ExitStatus(error="the job's container was not found when the node restarted")
        runner._set_state(record, ExecutionState.PREPARING)
        if record.request.input_sources and runner._input_preparer is not None:
            await runner._input_preparer.discard(record.execution_id)  # what the previous life fetched
        return None
    if isinstance(resumed, ExitStatus):
        return resumed
    execution.handle = resumed
    record.container_id = resumed.container_id
    if not resumed.running:
        outcome = await resumed.finish()
    else:
        runner._set_state(record, ExecutionState.RUNNING)
        remaining = None
        if record.request.timeout is not None:
            started = record.started_at or record.created_at
            remaining = max(0.0, record.request.timeout - (utcnow() - started).total_seconds())
        outcome = await supervise(runner, execution, resumed, remaining, watch_outputs=False)
        return outcome
    runner._emit_exit(record, outcome)
    return outcome
