"""Before a container can run: its image made available and its inputs fetched, at once, each giving up
as soon as the execution is cancelled. Part of the runner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from haddock.executor.driver import Driver
from haddock.executor.protocol import InputPreparer, PreparedInputs
from haddock.executor.records import EventKind, ExecutionEvent, ExecutionRecord

__all__ = ["Emit", "prepare_image", "prepare_inputs"]

tracer = trace.get_tracer("haddock.executor")

Emit = Callable[..., ExecutionEvent]  # (record, kind, message, **details)


async def prepare_image(driver: Driver, record: ExecutionRecord, cancelled: asyncio.Event, emit: Emit) -> str:
    """Make the image available; return its stop signal (SIGTERM when cancelled before it was there)."""
    engine = record.request.engine
    with tracer.start_as_current_span("pull"):
        emit(record, EventKind.PULLING, f"making image {engine.image} available ({engine.pull_policy})")

        def progress(rec: dict[str, Any]) -> None:
            if rec.get("note"):  # the driver says why making the image available waits (kept with the events)
                emit(record, EventKind.PULLING, str(rec["note"]))
                return
            detail = rec.get("progressDetail") or {}
            emit(
                record,
                EventKind.PULL_PROGRESS,
                str(rec.get("status", "")),
                layer=rec.get("id"),
                current=detail.get("current"),
                total=detail.get("total"),
            )

        # A cancel stops waiting for the pull; a shared pull goes on for other waiters.
        pull = asyncio.ensure_future(driver.prepare_image(record.request, progress))
        if not await unless_cancelled(pull, cancelled):
            return "SIGTERM"
        ready = pull.result()
        emit(
            record,
            EventKind.IMAGE_READY,
            f"image {engine.image} {'pulled' if ready.pulled else 'present'}",
            image_id=ready.image_id,
            pulled=ready.pulled,
        )
        return ready.stop_signal


async def prepare_inputs(
    preparer: InputPreparer, record: ExecutionRecord, cancelled: asyncio.Event, emit: Emit
) -> PreparedInputs | None:
    """Fetch the input sources (in parallel; a failure names the input and leaves nothing behind).
    None when cancelled first."""
    with tracer.start_as_current_span("inputs"):
        prepare = asyncio.ensure_future(preparer.prepare(record.request))
        if not await unless_cancelled(prepare, cancelled):
            return None
        prepared = prepare.result()
    n = len(prepared.volumes)
    emit(record, EventKind.INPUTS_PREPARED, f"{n} input{'s' if n != 1 else ''} ready")
    return prepared


async def unless_cancelled(work: asyncio.Future[Any], cancelled: asyncio.Event) -> bool:
    """Wait for ``work`` unless ``cancelled`` is set first (then cancel it); True when it finished."""
    cancel_wait = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({work, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancel_wait.cancel()
    if work.done():
        return True
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    return False
