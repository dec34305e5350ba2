"""How an execution ends: its status and message decided from what happened, its results written from the
node's log store (never from the engine), then published; the record settled. Part of the runner."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

from opentelemetry import trace

from haddock.executor.driver import ExitStatus
from haddock.executor.quantity import format_bytes, format_duration
from haddock.executor.records import EventKind, ExecutionRecord, ExecutionState, ResultStatus, RunCommandResult, utcnow
from haddock.executor.request import RunCommandRequest
from haddock.executor.results import remove_capture_files, write_job_results
from haddock.executor.stats import StatsSummary
from haddock.executor.streams import StreamType

if TYPE_CHECKING:
    from haddock.executor._execution import Execution
    from haddock.executor.runner import Runner

__all__ = ["decide_status", "describe_outcome", "finish"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer("haddock.executor")


def decide_status(
    stop_reason: str | None,
    output_cap_message: str,
    outcome: ExitStatus,
    *,
    timed_out: bool = False,
    timeout: float | None = None,
) -> ResultStatus:
    """The result's status. Cancelled only when the node's stop reached a running container.

    The timeout rule, decided by WHEN the container ended, on the engine's own clock: a job whose stop was
    sent for its deadline (``timed_out``: the node's deadline passed before it saw the container exit, or
    ``stop_reason`` "timeout") is a TIMEOUT when the engine says it finished at or after its start plus
    ``timeout`` (``outcome.started_at + timeout <= outcome.finished_at``, both from the engine's inspect),
    whatever its exit code: a job that answers the stop signal by exiting 0 (a shell's ``trap 'exit 0'
    TERM``, a server's graceful shutdown) was cut off, not completed. One that finished before that instant
    exited by itself (its exit crossed the stop signal) and is judged by its exit code like any other: a
    success with 0. When the engine cannot say (the container is gone, or no ``timeout`` is given), the
    node's flag decides: TIMEOUT. The node's deadline is measured from after the engine started the
    container, so its stop is never sent before ``started_at + timeout``: the job's answer to it always ends
    at/after that instant. (A service never completes: ``service.py`` ends a timed-out service as a timeout
    whatever its code.)
    """
    if stop_reason == "cancel":
        return ResultStatus.CANCELLED
    if (timed_out or stop_reason == "timeout") and _ended_at_deadline(outcome, timeout):
        return ResultStatus.TIMEOUT
    if output_cap_message:
        return ResultStatus.ERROR
    if outcome.oom_killed:
        return ResultStatus.KILLED
    if outcome.error or outcome.capture_error or outcome.exit_code != 0:
        return ResultStatus.ERROR
    return ResultStatus.SUCCESS


def _ended_at_deadline(outcome: ExitStatus, timeout: float | None) -> bool:
    """Whether the container ended at or after ``started + timeout`` by the engine's clock; True when the
    engine's times (or the timeout) are unknown: the node saw the deadline pass first."""
    if timeout is None or outcome.started_at is None or outcome.finished_at is None:
        return True
    return outcome.finished_at >= outcome.started_at + timedelta(seconds=timeout)


def describe_outcome(
    request: RunCommandRequest, status: ResultStatus, outcome: ExitStatus, stats: StatsSummary | None = None
) -> str:
    """The result's message for people."""
    if outcome.error:
        return outcome.error
    if status is ResultStatus.KILLED:
        limit = format_bytes(request.resources.memory) if request.resources.memory else "the node's memory"
        message = f"the job ran out of memory: it was killed for exceeding its memory limit of {limit}"
        if stats is not None and stats.peak_memory_bytes:
            message += f"; peak observed {format_bytes(stats.peak_memory_bytes)}"
        return message
    if status is ResultStatus.TIMEOUT:
        assert request.timeout is not None
        return f"the job exceeded its timeout of {format_duration(request.timeout)} and was stopped"
    if status is ResultStatus.CANCELLED:
        return "the execution was cancelled"
    if status is ResultStatus.ERROR and outcome.exit_code not in (0, None):
        return f"the job exited with code {outcome.exit_code}"
    return ""


async def _stderr_head(runner: Runner, exec_id: str, most: int = 1024) -> bytes:
    """The first bytes the job wrote to stderr (from the node's log)."""
    head = b""
    async for entry in runner.logs.read(exec_id, streams=frozenset({StreamType.STDERR})):
        head += entry.data
        if len(head) >= most:
            break
    return head[:most]


async def finish(
    runner: Runner, execution: Execution, outcome: ExitStatus, status: ResultStatus | None
) -> RunCommandResult:
    """Write the results and settle the record. Never raises."""
    record = execution.record
    request = record.request
    if status is None:
        handle = execution.handle
        status = decide_status(
            handle.stop_reason if handle else None,
            execution.output_cap_message,
            outcome,
            timed_out=execution.timed_out,
            timeout=request.timeout,
        )
    runner._set_state(record, ExecutionState.FINISHING)
    exec_id = request.execution_id
    not_executed = False
    if status is ResultStatus.ERROR and outcome.exit_code in (126, 127) and not outcome.error:
        explained = runner.driver.explain_exit(outcome.exit_code, await _stderr_head(runner, exec_id))
        if explained:
            outcome = dataclasses.replace(outcome, error=f"{explained} (the job exited with code {outcome.exit_code})")
            not_executed = True
    stats = execution.stats.summary()
    writer = execution.writer
    lost = outcome.lost_bytes + (writer.lost_bytes if writer is not None else 0)
    log_full = (
        f"the node's log space was full (log_max_bytes): {format_bytes(lost)} of the job's output "
        "is missing from its log"
        if lost
        else ""
    )
    message = "; ".join(
        m
        for m in (
            execution.output_cap_message or describe_outcome(request, status, outcome, stats),
            outcome.capture_error,
            log_full,
        )
        if m
    )

    async def stream(kind: StreamType) -> AsyncIterator[bytes]:
        async for entry in runner.logs.read(exec_id, streams=frozenset({kind})):
            yield entry.data

    body = execution.stdout_body
    if body is not None:
        # A batch job: its answer is the stdout; all it printed (after its build) the stderr.
        outcome = dataclasses.replace(outcome, captured=None)

        async def stream(kind: StreamType) -> AsyncIterator[bytes]:
            if kind is StreamType.STDOUT:
                yield body
                return
            async for entry in runner.logs.read(exec_id, offset=execution.output_offset):
                yield entry.data

    assert request.results_dir is not None
    try:
        if writer is not None:
            await asyncio.to_thread(writer.close)
        written = None
        if outcome.captured is not None:
            try:
                # The capture filled the results files as output arrived: rename them, read the inline heads.
                written = await write_job_results(
                    request.results_dir,
                    stream(StreamType.STDOUT),
                    stream(StreamType.STDERR),
                    outcome.exit_code,
                    request.output_limits,
                    captured=outcome.captured,
                )
            except OSError as exc:
                log.warning("the captured results of %s are not usable (%s); copying from the log", exec_id, exc)
        if written is None:
            await asyncio.to_thread(remove_capture_files, request.results_dir)
            written = await write_job_results(
                request.results_dir,
                stream(StreamType.STDOUT),
                stream(StreamType.STDERR),
                outcome.exit_code,
                request.output_limits,
            )
        out_bytes, err_bytes = outcome.stdout_bytes, outcome.stderr_bytes
        if out_bytes is None or err_bytes is None:
            out_bytes = writer.stdout_bytes if writer else (written.stdout.total_bytes or 0)
            err_bytes = writer.stderr_bytes if writer else (written.stderr.total_bytes or 0)
        runner._emit(
            record,
            EventKind.RESULTS_WRITTEN,
            f"results written to {request.results_dir}",
            stdout_bytes=out_bytes,
            stderr_bytes=err_bytes,
        )
        lost = bool(outcome.capture_error or log_full)
        published, publish_errors = await _publish(runner, record)
        result = RunCommandResult(
            status=status,
            exit_code=outcome.exit_code,
            stdout=written.stdout.text,
            stdout_truncated=written.stdout.truncated or lost,
            stdout_file_truncated=written.stdout.file_truncated or lost,
            stderr=written.stderr.text,
            stderr_truncated=written.stderr.truncated or lost,
            stderr_file_truncated=written.stderr.file_truncated or lost,
            error_message=message,
            not_executed=not_executed,
            published=published,
            publish_errors=publish_errors,
            stats=stats,
        )
    except Exception as exc:
        log.exception("writing results of %s failed", exec_id)
        result = RunCommandResult(
            status=ResultStatus.ERROR if status is ResultStatus.SUCCESS else status,
            exit_code=outcome.exit_code,
            error_message=f"{message + '; ' if message else ''}writing results to "
            f"{request.results_dir} failed: {runner.driver.describe_failure(exc)}",
            not_executed=not_executed,
            stats=stats,
        )
    record.result = result
    record.finished_at = utcnow()
    if result.status is not ResultStatus.SUCCESS:
        runner._emit(record, EventKind.FAILED, result.error_message, status=result.status.value)
    runner._set_state(record, result.status.state, result=result)
    return result


async def _publish(runner: Runner, record: ExecutionRecord) -> tuple[list[str], list[str]]:
    """Publish the results dir as the request asks; failures are reported in the result, not raised."""
    request = record.request
    publisher = runner._result_publisher
    if not request.publishers or publisher is None:
        return [], []
    with tracer.start_as_current_span("publish"):
        try:
            published, errors = await publisher.publish(request)
        except Exception as exc:  # a publisher's bug must not lose the result
            log.exception("publishing the results of %s failed", record.execution_id)
            published, errors = [], [f"publishing failed: {exc}"]
    runner._emit(
        record,
        EventKind.PUBLISHED,
        f"results published to {', '.join(published)}" if published else "publishing failed",
        published=", ".join(published),
        errors="; ".join(errors),
    )
    return published, errors
