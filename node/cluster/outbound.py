"""The outbound data plane: the ledger's outbox sent to the orchestrator in sequence order.

Each message is sent as a request on ``bacalhau.global.compute.<id>.out.msgs`` and sent again until the
orchestrator acknowledges it (``{}``) — or until the node gives it up: after ``max_send_attempts`` counted
failures, or ``send_give_up_after`` of session time since the first one. A failure counts when the
orchestrator refuses the message (an NCL nack, ``{"error": ...}``, whose ``delay`` is honoured up to
``reconnect_max``) or leaves it unanswered while the connection is up. A connection that is down or
reconnecting, or an orchestrator not listening to this node ("no responders"), counts nothing: as Bacalhau's
dispatcher does with a failed publish, the message is sent again with backoff (0.2 s up to
``reconnect_max``) in the same session, and only the control plane ends a session (missed heartbeats,
``HandshakeRequired``, a reconnect); then the message waits for the next one. Time between sessions does
not count toward ``send_give_up_after`` either: only time with a session up does. A message given up is
recorded in the ledger with its reason (``abandoned``) and logged as an error, and the next one goes out.
The done checkpoint (acknowledged or given up) is durable and only moves forward; numbers are never reused,
so the orchestrator sees a gap where a message was given up, as it does for every event Bacalhau's own
compute node does not turn into a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS

from haddock.node.cluster import envelope
from haddock.node.cluster import messages as m
from haddock.node.cluster.config import ClusterSettings
from haddock.node.cluster.ledger import OUTBOUND_ACKED, Ledger, Outgoing

log = logging.getLogger(__name__)


class SessionOver(Exception):
    """The session ended (a reconnect, a resync): its dispatcher stops; the next session sends what is left."""


@dataclass
class _Failures:
    """A message's counted failures, and the session time they took (time without a session counts nothing)."""

    since: float  # time.monotonic() from which this session's time counts: its first failure, or the handshake
    earlier: float = 0.0  # seconds counted in earlier sessions (first failure .. last failure in each)
    count: int = 0
    elapsed: float = 0.0  # seconds counted so far, as of the last failure

    def failed(self) -> None:
        self.count += 1
        self.elapsed = self.earlier + time.monotonic() - self.since

    def new_session(self) -> None:
        self.earlier, self.since = self.elapsed, time.monotonic()


class Outbound:
    def __init__(self, settings: ClusterSettings, ledger: Ledger, node_id: str, wake: asyncio.Event) -> None:
        self.settings = settings
        self.ledger = ledger
        self.node_id = node_id
        self.wake = wake  # set when the outbox has something new
        self.acked = 0  # the last sequence number done with (acknowledged or given up)
        self._failures: dict[int, _Failures] = {}  # seq -> its counted failures (kept across sessions)

    async def load(self) -> None:
        self.acked = await self.ledger.checkpoint(OUTBOUND_ACKED)

    async def adopt(self, last_compute_seq_num: int) -> None:
        """The handshake's answer: what the orchestrator processed is not sent again, acknowledged or not."""
        self.acked = max(self.acked, min(last_compute_seq_num, await self.ledger.last_seq()))
        await self.ledger.set_checkpoint(OUTBOUND_ACKED, self.acked)
        for seq in [seq for seq in self._failures if seq <= self.acked]:
            del self._failures[seq]  # the orchestrator has it: never sent again
        for failures in self._failures.values():
            failures.new_session()  # the time without a session does not count

    async def dispatch(self, nc: NATS, session_over: Callable[[], bool]) -> None:
        """Send the outbox in order; each message until it is acknowledged or given up."""
        while True:
            batch = await self.ledger.pending(self.acked)
            if not batch:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                continue
            for out in batch:
                reason = await self._deliver(nc, out, session_over)
                if reason is None:
                    await self.ledger.set_checkpoint(OUTBOUND_ACKED, out.seq)
                else:
                    attempts = self._failures[out.seq].count
                    await self.ledger.give_up(out, attempts, reason, time.time_ns())
                    log.error(
                        "cluster: gave up on %s seq %d of execution %s: %s",
                        out.type,
                        out.seq,
                        out.execution_id,
                        reason,
                        extra={"node_id": self.node_id, "execution_id": out.execution_id, "seq": out.seq},
                    )
                self._failures.pop(out.seq, None)
                self.acked = out.seq

    async def _deliver(self, nc: NATS, out: Outgoing, session_over: Callable[[], bool]) -> str | None:
        """Send one message until the orchestrator acknowledges it (None) or the node gives it up (why)."""
        s = self.settings
        meta = {envelope.KEY_MESSAGE_ID: f"seq-{out.seq}", envelope.KEY_SEQ_NUM: str(out.seq)}
        data, headers = envelope.encode(
            out.type, out.payload, meta, source=self.node_id, event_time_ns=out.event_time_ns
        )
        delay = 0.2
        while True:
            if session_over():
                raise SessionOver(f"{out.type} seq {out.seq} waits for the next session")
            was_connected = nc.is_connected
            try:
                reply = await nc.request(m.subject_out(self.node_id), data, timeout=s.request_timeout, headers=headers)
                result = m.AckResult.model_validate(json.loads(reply.data or b"{}"))
                if not result.error:
                    return None
                problem, counted = f"refused by the orchestrator: {result.error}", True
                wait = result.delay / 1e9 if result.delay else delay
            except Exception as exc:
                problem = f"not acknowledged ({exc or type(exc).__name__})"
                counted = (
                    was_connected
                    and nc.is_connected
                    and not session_over()
                    and not isinstance(exc, nats.errors.NoRespondersError)
                )
                wait = delay
            log.warning("cluster: %s seq %d %s; sending again", out.type, out.seq, problem)
            if counted:
                failures = self._failures.setdefault(out.seq, _Failures(since=time.monotonic()))
                failures.failed()
                if failures.count >= s.max_send_attempts or failures.elapsed >= s.send_give_up_after:
                    return f"{problem} ({failures.count} attempts in {failures.elapsed:.1f} s)"
            await asyncio.sleep(min(wait, s.reconnect_max))
            delay = min(delay * 2, s.reconnect_max)
