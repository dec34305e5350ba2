"""A job's redeploy, decided by the node: a new execution of a job's version that runs already takes over
once it is ready.

Racetrack's rule (its #491): deploying NAME@VERSION while that version serves starts the new execution,
waits until it is ready, then drains and stops the older executions of the same job and version (a cancel:
the gateway routes nothing more to them and waits for their requests in flight, ``gateway_drain``). A new
execution that fails, or ends before it is ready, stops nothing: the running ones keep serving. Other
versions are never touched (``/pub/job/NAME/latest`` moves to the newest ready one by itself).

Which executions are older is a strict order: acceptance time (``created_at``), then the execution id, so
of two executions accepted at the same instant exactly one is the older and only the newer replaces it.

Once the new execution has taken over, it gets a ``deployed`` event whose ``replaced`` lists the executions
it stopped (comma-separated, possibly none): what a requester waits for to know the redeploy is through.
An older execution the node could not stop (its cancel failed otherwise than by its having ended) does not
hold the event back: it is logged and listed in the event's ``not_stopped`` (comma-separated) and message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from haddock.executor.errors import ExecutionAlreadyComplete, ExecutionNotFound
from haddock.executor.records import EventKind, ExecutionRecord, ExecutionState
from haddock.executor.request import RunCommandRequest

if TYPE_CHECKING:
    from datetime import datetime

    from haddock.node.service import Node

__all__ = ["Redeploys", "is_job_service"]

log = logging.getLogger(__name__)


def is_job_service(request: RunCommandRequest) -> bool:
    return request.job is not None and not request.job.batch and request.service is not None


def _acceptance(record: ExecutionRecord) -> tuple[datetime, str]:
    """The strict order of acceptance: ``created_at``, then the execution id for executions accepted at once."""
    return (record.created_at, record.execution_id)


def _same_job(record: ExecutionRecord, name: str, version: str) -> bool:
    job = record.request.job
    return job is not None and job.manifest.name == name and job.manifest.version == version


class Redeploys:
    """The node's takeovers under way, one task per job service started (ended with :meth:`close`)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def follow(self, request: RunCommandRequest) -> None:
        """A job's service was accepted: once it is ready, it replaces the older ones of its version."""
        if not is_job_service(request):
            return
        exec_id = request.execution_id
        task = asyncio.create_task(self._take_over(exec_id), name=f"haddock-redeploy-{exec_id}")
        self._tasks[exec_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(exec_id, None))

    def older(self, execution_id: str) -> list[str]:
        """The running executions the new one replaces: the same job and version, accepted before it, not
        ended nor being stopped."""
        new = self.node.live_record(execution_id)
        if new is None or new.request.job is None:
            return []
        manifest = new.request.job.manifest
        accepted = _acceptance(new)
        return sorted(
            r.execution_id
            for r in self.node.executor.records()
            if r.execution_id != execution_id
            and r.result is None
            and not r.state.terminal
            and r.state is not ExecutionState.STOPPING
            and r.request.is_service
            and _acceptance(r) < accepted
            and _same_job(r, manifest.name, manifest.version)
        )

    async def _take_over(self, execution_id: str) -> None:
        try:
            async for event in self.node.watch(execution_id):
                if event.kind is EventKind.STATE and event.details.get("state") == ExecutionState.READY.value:
                    break
            else:
                return  # it ended before it was ready: the running ones keep serving
            await self._replace(execution_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the redeploy of %s failed", execution_id)

    async def _replace(self, execution_id: str) -> None:
        new = self.node.live_record(execution_id)
        if new is None or new.state is not ExecutionState.READY or new.request.job is None:
            return  # it did not stay ready: nothing is replaced
        manifest = new.request.job.manifest
        older = self.older(execution_id)
        why = f"replaced by {execution_id} ({manifest.name} {manifest.version}), which is ready"

        async def stop(old: str) -> str:
            """``stopped``, ``ended`` (it ended meanwhile), or why it could not be stopped."""
            try:
                await self.node.cancel(old, reason=why)
                return "stopped"
            except (ExecutionAlreadyComplete, ExecutionNotFound):
                return "ended"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one that cannot be stopped does not hold the deployment back
                log.exception("job %s %s: %s could not stop %s", manifest.name, manifest.version, execution_id, old)
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

        outcomes = dict(zip(older, await asyncio.gather(*(stop(old) for old in older)), strict=True))
        replaced = [old for old, outcome in outcomes.items() if outcome == "stopped"]
        failed = {old: outcome for old, outcome in outcomes.items() if outcome not in ("stopped", "ended")}
        if replaced:
            log.info("job %s %s: %s replaced %s", manifest.name, manifest.version, execution_id, ", ".join(replaced))
            message = f"deployed: replaced {', '.join(replaced)} (stopped once this execution was ready)"
        else:
            message = f"deployed: ready; no older execution of {manifest.name} {manifest.version} to replace"
        if failed:
            message += "; could not stop " + "; ".join(f"{old} ({why})" for old, why in failed.items())
        with contextlib.suppress(ExecutionNotFound):  # it ended meanwhile
            self.node.executor.note(
                execution_id, EventKind.DEPLOYED, message, replaced=",".join(replaced), not_stopped=",".join(failed)
            )

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
