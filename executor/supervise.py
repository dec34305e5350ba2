"""A started container until it exits, or the first of cancel / timeout / output cap stops it. Part of
the runner: the same for a fresh container and for one taken back after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from haddock.executor.driver import ContainerHandle, ExitStatus
from haddock.executor.outputs import OutputWatcher, trim_to_cap
from haddock.executor.quantity import format_bytes, format_duration
from haddock.executor.records import EventKind

if TYPE_CHECKING:
    from haddock.executor._execution import Execution
    from haddock.executor.runner import Runner

__all__ = ["supervise"]

log = logging.getLogger(__name__)


async def _sample(runner: Runner, execution: Execution, handle: ContainerHandle, interval: float) -> None:
    """The container's resource samples into the execution's summary and the stats sink, until cancelled
    or the container is no longer running. Never fails the execution."""
    try:
        async for stat in handle.stats(interval):
            runner._emit_stat(execution, stat)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("sampling the resource use of %s stopped: %s", execution.record.execution_id, exc)


async def supervise(
    runner: Runner,
    execution: Execution,
    handle: ContainerHandle,
    time_left: float | None,
    *,
    watch_outputs: bool = True,
) -> ExitStatus:
    """A started container until it exits, or the first of cancel / timeout / output cap stops it."""
    record = execution.record
    request = record.request
    exited = asyncio.create_task(handle.wait())
    cancel_wait = asyncio.create_task(execution.cancel_event.wait())
    cap_hit = asyncio.Event()

    async def on_cap_exceeded(usage: int) -> None:
        cap_hit.set()

    assert request.results_dir is not None
    output_dirs = [request.results_dir / o.name for o in request.outputs] if watch_outputs else []
    cap = request.resources.disk or runner.config.default_output_cap
    watcher = OutputWatcher(output_dirs, cap, on_cap_exceeded) if output_dirs else None
    cap_wait = asyncio.create_task(cap_hit.wait())
    interval = runner.config.stats_interval
    sampler = asyncio.create_task(_sample(runner, execution, handle, interval)) if interval > 0 else None
    try:
        async with watcher if watcher is not None else contextlib.nullcontext():
            done, _ = await asyncio.wait(
                {exited, cancel_wait, cap_wait}, timeout=time_left, return_when=asyncio.FIRST_COMPLETED
            )
            if exited not in done and cap_wait in done:
                # Stop at once: what matters now is the node's disk.
                runner._emit(
                    record,
                    EventKind.OUTPUT_CAP_EXCEEDED,
                    f"the job wrote past its output cap of {format_bytes(cap)}; stopping it",
                )
                await handle.stop("output-cap", grace=0)
            if not exited.done() and not handle.stop_reason:
                if cancel_wait in done:
                    if request.is_service:  # requests in flight to it end before its container is stopped
                        await runner.stop_hooks.run(record.execution_id)
                    await handle.stop("cancel", grace=runner._stop_grace())
                elif time_left is not None and not done:
                    # Decided now, by the node's clock: the deadline passed before the exit was seen. Whatever
                    # the stop finds (the container gone, or ending by itself as the signal crosses its exit),
                    # the status follows settle.decide_status's timeout rule.
                    execution.timed_out = True
                    if request.timeout is not None:
                        runner._emit(
                            record,
                            EventKind.TIMED_OUT,
                            f"the job exceeded its timeout of {format_duration(request.timeout)}; stopping it",
                        )
                    await handle.stop("timeout", grace=runner._stop_grace())
            await exited
    finally:
        cancel_wait.cancel()
        cap_wait.cancel()
        if sampler is not None:  # never waited for: an engine slow to answer stats holds nothing up
            sampler.cancel()
        if not exited.done():
            exited.cancel()
            await handle.abandon()
            await asyncio.gather(exited, return_exceptions=True)
    if watcher is not None and watcher.exceeded:
        execution.output_cap_message = watcher.message()
        await asyncio.to_thread(trim_to_cap, output_dirs, cap)
    outcome = await handle.finish()
    if outcome.output_recovered:
        runner._emit(
            record, EventKind.OUTPUT_RECOVERED, "output recovered from the engine's log after the stream was cut"
        )
    runner._emit_exit(record, outcome, handle.stop_reason)
    return outcome
