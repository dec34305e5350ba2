"""What each NCL data message means to the node. The transport decodes and acknowledges; this module
translates and asks :class:`~haddock.node.service.Node`, which decides (bids, starts, cancels, waits).

- ``AskForBid``: the execution is translated (:mod:`.translate`); what cannot be is a refusal with the
  reason; otherwise the node's bid chains answer (``should_bid``, then ``should_bid_based_on_usage``).
  With desired state *pending* a ``BidResult`` goes out (yes or no, with the reason in its event); with
  desired state *running* a yes starts the execution at once and only a no is answered, as Bacalhau's
  compute node does.
- ``BidAccepted``: the execution starts (it may queue for capacity); ``BidRejected``: it is dropped;
  ``CancelExecution``: it is cancelled and nothing more is reported for it.
- The end of an accepted execution: a ``RunResult`` (it ran: stdout, stderr, exit code, truncation flags,
  where it was published) or a ``ComputeError`` (it could not run, timed out, was killed, or its results
  could not be published).

Every effect is idempotent, so a message handled twice (a replay after a crash between the effect and
the checkpoint) changes nothing: executions are tracked once in the ledger, the node refuses a second
start of one id, and the outbox keeps one bid and one result per execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from haddock.executor.errors import ExecutionAlreadyComplete, ExecutionAlreadyStarted, ExecutionNotFound
from haddock.executor.records import BidResult as Bid
from haddock.executor.request import RunCommandRequest
from haddock.node.cluster import messages as m
from haddock.node.cluster.ledger import Ledger, Tracked
from haddock.node.cluster.translate import (
    Untranslatable,
    publish_result,
    ran_to_completion,
    to_bacalhau_result,
    to_request,
)
from haddock.node.service import Node

log = logging.getLogger(__name__)

ASKED, ACCEPTED, REFUSED, REJECTED, CANCELLED = "asked", "accepted", "refused", "rejected", "cancelled"


class ComputeHandler:
    def __init__(self, node: Node, ledger: Ledger, wake: Callable[[], None]) -> None:
        self.node = node
        self.ledger = ledger
        self._wake = wake
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, message_type: str, payload: object) -> None:
        """Handle one decoded data message (a pydantic ``ValidationError`` for a payload that is not one)."""
        model = m.INBOUND_MODELS[message_type].model_validate(payload)
        if isinstance(model, m.AskForBidRequest):
            await self._ask_for_bid(model.execution)
        elif isinstance(model, m.BidAcceptedRequest):
            await self._bid_accepted(model.execution_id)
        elif isinstance(model, m.BidRejectedRequest):
            await self._bid_rejected(model.execution_id, model.message())
        elif isinstance(model, m.CancelExecutionRequest):
            await self._cancel(model.execution_id, model.message())

    async def resume(self) -> None:
        """After a restart: follow every accepted execution whose result was not written yet."""
        for t in await self.ledger.accepted_unreported():
            log.info("following accepted execution again", extra={"execution_id": t.execution_id})
            self._spawn(self._run(t))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------ messages

    async def _ask_for_bid(self, execution: m.Execution) -> None:
        if await self.ledger.get(execution.id) is not None:
            log.info("AskForBid again for a known execution: ignored", extra={"execution_id": execution.id})
            return
        request: RunCommandRequest | None = None
        try:
            request = to_request(execution)
            bid = await self._bid(request)
        except Untranslatable as exc:
            bid = Bid.no(str(exc))
        run_now = execution.desired_state.state_type == m.DesiredStateType.RUNNING
        state = (ACCEPTED if run_now else ASKED) if bid.should_bid else REFUSED
        job = execution.job
        tracked = Tracked(
            execution_id=execution.id,
            job_id=execution.job_id or (job.id if job else ""),
            job_type=job.type if job else "",
            request_json=request.model_dump_json() if request is not None else None,
            reason=bid.reason,
            bid=bid.should_bid,
            state=state,
        )
        if not await self.ledger.track(tracked):
            return
        log.info(
            "bid",
            extra={"execution_id": execution.id, "bid": bid.should_bid, "reason": bid.reason, "run_now": run_now},
        )
        if not bid.should_bid or not run_now:
            await self._send(tracked, "bid", m.BID_RESULT, m.BidResult(accepted=bid.should_bid, **self._base(tracked)))
        if bid.should_bid and run_now:
            self._spawn(self._run(tracked))

    async def _bid(self, request: RunCommandRequest) -> Bid:
        try:
            bid = await self.node.should_bid(request)
            if bid.should_bid:
                bid = await self.node.should_bid_based_on_usage(request, None)
        except Exception as exc:  # whatever the node cannot judge, it does not bid on
            return Bid.no(f"the node cannot judge this job: {exc}")
        return bid

    async def _bid_accepted(self, execution_id: str) -> None:
        t = await self.ledger.get(execution_id)
        if t is None or t.state != ASKED:
            log.info("BidAccepted for an execution not awaiting it: ignored", extra={"execution_id": execution_id})
            return
        await self.ledger.set_state(execution_id, ACCEPTED)
        self._spawn(self._run(t))

    async def _bid_rejected(self, execution_id: str, reason: str) -> None:
        t = await self.ledger.get(execution_id)
        if t is not None and t.state == ASKED:
            await self.ledger.set_state(execution_id, REJECTED)
            log.info("bid rejected", extra={"execution_id": execution_id, "reason": reason})

    async def _cancel(self, execution_id: str, reason: str) -> None:
        t = await self.ledger.get(execution_id)
        if t is None:
            return
        await self.ledger.set_state(execution_id, CANCELLED)
        if t.state == ACCEPTED:
            log.info("cancel", extra={"execution_id": execution_id, "reason": reason})
            self._spawn(self._cancel_on_node(execution_id))

    async def _cancel_on_node(self, execution_id: str) -> None:
        with contextlib.suppress(ExecutionNotFound, ExecutionAlreadyComplete):
            await self.node.cancel(execution_id)

    # ------------------------------------------------------------ executions

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, t: Tracked) -> None:
        """Start the execution (unless it started already) and report how it ended, once."""
        assert t.request_json is not None
        request = RunCommandRequest.model_validate_json(t.request_json)
        try:
            await self.node.start(request, queue=True)
        except (ExecutionAlreadyStarted, ExecutionAlreadyComplete):
            pass  # a restart or a replay: it is the node's already
        except Exception as exc:
            await self._error(t, f"the node could not start the execution: {exc}")
            return
        try:
            result = await self.node.wait(t.execution_id)
        except Exception as exc:
            await self._error(t, f"the execution's result is lost: {exc}")
            return
        current = await self.ledger.get(t.execution_id)
        if current is not None and current.state == CANCELLED:
            return  # the orchestrator cancelled it: it expects nothing more
        if ran_to_completion(result):
            results_dir = str(self.node.settings.results_dir(t.execution_id))
            run = m.RunResult(
                publish_result=publish_result(result, results_dir),
                run_command_result=to_bacalhau_result(result),
                **self._base(t),
            )
            await self._send(t, "result", m.RUN_RESULT, run)
        else:
            await self._error(t, result.error_message or f"the execution ended: {result.status.value}")

    async def _error(self, t: Tracked, message: str) -> None:
        base = self._base(t, message, m.TOPIC_EXECUTION)
        await self._send(t, "result", m.COMPUTE_ERROR, m.ComputeError(**base))

    def _base(self, t: Tracked, message: str | None = None, topic: str = m.TOPIC_BID) -> dict[str, Any]:
        event = m.Event(message=t.reason if message is None else message, topic=topic)
        return {"execution_id": t.execution_id, "job_id": t.job_id, "job_type": t.job_type, "events": [event]}

    async def _send(self, t: Tracked, kind: str, type_: str, payload: m.BaseResponse) -> None:
        if await self.ledger.enqueue(t.execution_id, kind, type_, m.dump(payload), time.time_ns()):
            self._wake()
