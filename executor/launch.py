"""From an accepted execution to its started container: the image and the inputs at once (or, for a job of a job
type, its inputs then its image built), the container created and started, then handed to what follows a
container of its kind (a batch job, a service, a plain run). Part of the runner."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from haddock.executor.driver import ExitStatus
from haddock.executor.jobrun import build_job, note_not_applied, run_batch
from haddock.executor.prepare import prepare_image, unless_cancelled
from haddock.executor.records import EventKind, ExecutionState, ResultStatus, utcnow
from haddock.executor.request import RunCommandRequest
from haddock.executor.service import run_service
from haddock.executor.supervise import supervise

if TYPE_CHECKING:
    from haddock.executor._execution import Execution
    from haddock.executor.runner import Runner

__all__ = ["prepare_and_run"]

tracer = trace.get_tracer("haddock.executor")


async def prepare_and_run(runner: Runner, execution: Execution) -> tuple[ExitStatus, ResultStatus | None]:
    """Image and inputs (at once), container, run. Returns the outcome, and a status when it is
    decided before running."""
    record = execution.record
    if record.request.job is not None:
        return await _build_and_run(runner, execution)
    image = asyncio.create_task(prepare_image(runner.driver, record, execution.cancel_event, runner._emit))
    steps: list[asyncio.Task[Any]] = [image]
    if record.request.input_sources:
        assert runner._input_preparer is not None
        steps.append(
            asyncio.create_task(runner._prepare_inputs(execution, runner._input_preparer)),
        )
    try:
        await asyncio.gather(*steps)
    except BaseException:
        for step in steps:
            step.cancel()
        await asyncio.gather(*steps, return_exceptions=True)
        raise
    return await _run(runner, execution, record.request, image.result())


async def _build_and_run(runner: Runner, execution: Execution) -> tuple[ExitStatus, ResultStatus | None]:
    """A job of a job type: its inputs (its source among them), then its image built, then the run."""
    assert runner._input_preparer is not None  # check() refuses input sources without a preparer
    note_not_applied(runner, execution)
    await runner._prepare_inputs(execution, runner._input_preparer)
    if execution.cancel_event.is_set():
        return ExitStatus(), ResultStatus.CANCELLED
    with tracer.start_as_current_span("build"):
        build = asyncio.ensure_future(build_job(runner, execution, runner.job_builder))
        if not await unless_cancelled(build, execution.cancel_event):
            return ExitStatus(), ResultStatus.CANCELLED
        run_request, stop_signal = build.result()
    return await _run(runner, execution, run_request, stop_signal)


async def _run(
    runner: Runner, execution: Execution, run_request: RunCommandRequest, stop_signal: str
) -> tuple[ExitStatus, ResultStatus | None]:
    record = execution.record
    if execution.cancel_event.is_set():
        return ExitStatus(), ResultStatus.CANCELLED
    with tracer.start_as_current_span("run"):
        assert execution.writer is not None
        execution.output_offset = execution.writer.committed
        execution.run_request = run_request
        volumes = execution.prepared_inputs.volumes if execution.prepared_inputs is not None else []
        handle = await runner.driver.create(run_request, volumes, execution.writer, stop_signal=stop_signal)
        execution.handle = handle
        record.container_id = handle.container_id
        if execution.cancel_event.is_set():  # cancelled while creating: never start it
            return ExitStatus(), ResultStatus.CANCELLED
        await handle.start()
        record.started_at = utcnow()
        service = record.request.is_service
        runner._set_state(record, ExecutionState.STARTING if service else ExecutionState.RUNNING)
        runner._emit(record, EventKind.STARTED, "container started", container_id=handle.container_id)
        if record.request.job is not None and record.request.job.batch:
            return await run_batch(runner, execution, handle)
        if service:
            return await run_service(runner, execution, handle, volumes=volumes, stop_signal=stop_signal)
        return await supervise(runner, execution, handle, record.request.timeout), None
