"""NCL over NATS, the compute side: connection, control plane, data plane.

One :class:`ClusterTransport` per node, started by ``haddock serve`` when ``[cluster] orchestrators`` is set.

- **Connection**: ``nats-py`` to the orchestrator's NATS server (token, credentials file, TLS). The first
  connection is retried with exponential backoff (``reconnect_min`` .. ``reconnect_max``); after that
  nats-py reconnects by itself, and every reconnect starts a new session (below).
- **Session** = handshake, then the planes until something says the orchestrator lost us (a NATS
  reconnect, a heartbeat answered ``HandshakeRequired``, ``heartbeat_miss_factor`` heartbeats without
  an answer); then a new handshake. The handshake sends the node info, the start time and the last
  inbound sequence number handled; its answer says the last outbound sequence number the orchestrator
  processed, so messages it has are not sent again.
- **Control plane**: requests on ``bacalhau.global.compute.<id>.out.ctrl`` — heartbeats every
  ``heartbeat_interval`` with the available and queued capacity, node-info updates when what the node
  offers changes, a shutdown notice on a graceful stop.
- **Data plane, inbound** (``...<id>.in.msgs``): a bounded queue (``inbound_queue_size``; full, it holds
  NATS back); messages are handled one at a time in arrival order, each to its end even across a resync,
  and answered only in the session they arrived in (README, "Delivery guarantees");
  each is acknowledged (``{}``) once handled and its sequence number checkpointed in the ledger; a
  message whose number is not above the checkpoint was handled already and is only acknowledged; bytes
  that are not a message (bad CRC, unknown version or type, bad JSON, a payload that does not fit its
  type) are logged and refused with an error, as Bacalhau's subscriber does; the node keeps serving.
- **Data plane, outbound** (``...<id>.out.msgs``): :mod:`.outbound` — the ledger's outbox, in sequence
  order, each message resent until the orchestrator acknowledges it or the node gives it up; the
  checkpoint is durable, so a restart resends exactly what was not done with. Nothing is sent on a
  connection other than the one the session's handshake was made on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from haddock.executor.request import Resources as HaddockResources
from haddock.node.bidding import ResourceLimits
from haddock.node.cluster import envelope
from haddock.node.cluster import messages as m
from haddock.node.cluster.compute import ComputeHandler
from haddock.node.cluster.config import ClusterSettings
from haddock.node.cluster.ledger import INBOUND, Ledger
from haddock.node.cluster.logstream import LogStreamServer
from haddock.node.cluster.outbound import Outbound, SessionOver
from haddock.node.cluster.translate import PUBLISHERS, STORAGE_SOURCES
from haddock.node.service import Node

log = logging.getLogger(__name__)

SESSION_END_SECONDS = 5.0  # how long the end of a session may take before the next one starts anyway
INBOUND_PENDING_BYTES = 64 * 1024 * 1024  # the NATS client's own buffer of inbound data messages


class RequestFailed(Exception):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def _resources(r: HaddockResources) -> m.Resources:
    return m.Resources(cpu=r.cpu, memory=r.memory, disk=r.disk, gpu=r.gpu)


class ClusterTransport:
    def __init__(self, settings: ClusterSettings, node: Node, *, version: str) -> None:
        self.settings = settings
        self.node = node
        self.node_id = node.settings.node_id
        self.version = version
        self.started_at = datetime.now(UTC)
        self.nc: NATS | None = None
        self.ledger: Ledger | None = None
        self.handler: ComputeHandler | None = None
        self.connected = asyncio.Event()  # a session is established (handshake accepted)
        self._resync = asyncio.Event()  # the session must start again with a handshake
        self._wake = asyncio.Event()  # the outbox has something new
        # Inbound data messages with the session they arrived in; bounded: when full, the subscription's
        # callback waits (the NATS client holds further messages back) and nothing is discarded.
        self._inbound: asyncio.Queue[tuple[int, Msg]] = asyncio.Queue(maxsize=settings.inbound_queue_size)
        self._session_no = 0  # which session this is; a message of an earlier one is not answered in this one
        self._handling = asyncio.Lock()  # held while one inbound message is handled (to its end, even at a resync)
        self._handling_task: asyncio.Task[None] | None = None
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self._inbound_seq = 0
        self._failed_seq: int | None = None  # an inbound message the node failed on: none after it goes first
        self.outbound: Outbound | None = None
        self._last_static: dict[str, Any] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.ledger = await Ledger.open(self.node.settings.data_dir)
        self.handler = ComputeHandler(self.node, self.ledger, self._wake.set)
        self._inbound_seq = await self.ledger.checkpoint(INBOUND)
        self.outbound = Outbound(self.settings, self.ledger, self.node_id, self._wake)
        await self.outbound.load()
        await self.handler.resume()
        self._main = asyncio.create_task(self._run(), name="haddock-cluster")

    async def stop(self) -> None:
        """A shutdown notice to the orchestrator (when connected), then close everything."""
        self._stopping = True
        if self.nc is not None and self.connected.is_set():
            try:
                notice = m.ShutdownNoticeRequest(
                    node_id=self.node_id, reason="node shutting down", last_orchestrator_seq_num=self._inbound_seq
                )
                await self._control(m.SHUTDOWN_NOTICE_REQUEST, notice)
            except Exception as exc:
                log.warning("shutdown notice not delivered: %s", exc)
        if self._main is not None:
            self._main.cancel()
            await asyncio.gather(self._main, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SESSION_END_SECONDS), self._handling:
                pass  # a message being handled ends before the ledger closes
        if self.handler is not None:
            await self.handler.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.ledger is not None:
            await self.ledger.close()

    async def _run(self) -> None:
        delay = self.settings.reconnect_min
        while not self._stopping:
            try:
                if self.nc is None or self.nc.is_closed:
                    self.nc = await self._connect()
                    delay = self.settings.reconnect_min
                await self._session(self.nc)
                delay = self.settings.reconnect_min  # a session was established: start backing off afresh
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: %s; retrying in %.1fs", exc, delay, extra={"node_id": self.node_id})
                self.connected.clear()
                with contextlib.suppress(TimeoutError):  # a NATS reconnect meanwhile: handshake at once
                    await asyncio.wait_for(self._resync.wait(), delay)
                # Connected to NATS, the orchestrator not answering yet (it may be reconnecting too): ask again
                # soon; not connected at all: back off up to reconnect_max.
                connected = self.nc is not None and self.nc.is_connected
                cap = min(self.settings.reconnect_max, 5.0) if connected else self.settings.reconnect_max
                delay = min(delay * 2, cap)

    async def _connect(self) -> NATS:
        s = self.settings
        options: dict[str, Any] = {
            "servers": s.orchestrators,
            "name": f"haddock-{self.node_id}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": min(s.reconnect_min, 2.0),
            "connect_timeout": max(1, int(s.request_timeout)),
            # Nothing is held back while disconnected to be replayed by the client after a reconnect: a data
            # message sent then would reach an orchestrator that may have processed it already (a duplicate);
            # what was not sent is sent by the protocol on the next session, after the handshake says what
            # the orchestrator has. A publish while disconnected fails at once instead.
            "pending_size": 0,
            "reconnected_cb": self._on_reconnected,
            "disconnected_cb": self._on_disconnected,
            "error_cb": self._on_error,
        }
        if s.auth_token is not None:
            options["token"] = s.auth_token.get_secret_value()
        if s.creds_file is not None:
            options["user_credentials"] = str(s.creds_file)
        if s.nkey_seed_file is not None:
            options["nkeys_seed"] = str(s.nkey_seed_file)
        if s.tls.enabled:
            ctx = ssl.create_default_context(cafile=str(s.tls.ca_cert) if s.tls.ca_cert else None)
            if s.tls.cert is not None and s.tls.key is not None:
                ctx.load_cert_chain(str(s.tls.cert), str(s.tls.key))
            options["tls"] = ctx
        try:
            nc = await nats.connect(**options)
        except Exception as exc:
            raise ConnectionError(
                f"cannot connect to {', '.join(s.orchestrators)}: {exc or type(exc).__name__}"
            ) from exc
        log.info("cluster: connected to NATS", extra={"node_id": self.node_id, "server": str(nc.connected_url)})
        return nc

    async def _on_reconnected(self) -> None:
        log.info("cluster: NATS reconnected; handshaking again", extra={"node_id": self.node_id})
        self._resync.set()

    async def _on_disconnected(self) -> None:
        if not self._stopping:
            log.warning("cluster: NATS disconnected", extra={"node_id": self.node_id})

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # Past the inbound queue and the client's buffer (inbound_queue_size x 4): the orchestrator sends
            # again what it does not see acknowledged.
            log.warning("cluster: inbound messages beyond the node's buffers: %s", exc, extra={"node_id": self.node_id})
        else:
            log.debug("cluster: NATS error: %s", exc)

    # ------------------------------------------------------------ session

    async def _session(self, nc: NATS) -> None:
        self._resync.clear()
        assert self.ledger is not None and self.outbound is not None
        await self._end_previous_session()
        self._session_no += 1
        session_no = self._session_no

        async def take(msg: Msg) -> None:
            await self._inbound.put((session_no, msg))  # waits while the queue is full

        # As Bacalhau's compute node: subscribed before the handshake, so that nothing the orchestrator sends
        # right after accepting it is missed; handled only after it.
        subs = [
            await nc.subscribe(
                m.subject_in(self.node_id),
                cb=take,
                pending_msgs_limit=4 * self.settings.inbound_queue_size,
                pending_bytes_limit=INBOUND_PENDING_BYTES,
            )
        ]
        logs = LogStreamServer(nc, self.node)
        tasks: list[asyncio.Task[None]] = []
        resync = asyncio.create_task(self._resync.wait())
        try:
            subs.append(await nc.subscribe(m.subject_logs(self.node_id), cb=logs.handle))
            response = await self._handshake()
            # As Bacalhau's compute node: the orchestrator says where its messages to us start.
            self._inbound_seq = response.starting_orchestrator_seq_num or self._inbound_seq
            self._failed_seq = None  # the orchestrator says where its messages start
            await self.outbound.adopt(response.last_compute_seq_num)
            reconnects = nc.stats["reconnects"]

            def session_over() -> bool:
                # A reconnect ends the session at once (nats-py reports it only after a round trip to the
                # server, in which the session's tasks still run): nothing of it goes out on the new connection.
                return self._resync.is_set() or nc.stats["reconnects"] != reconnects

            self.connected.set()
            log.info(
                "cluster: handshake accepted",
                extra={"node_id": self.node_id, "acked": self.outbound.acked, "inbound_seq": self._inbound_seq},
            )
            tasks = [
                asyncio.create_task(self._heartbeats(), name="haddock-cluster-heartbeat"),
                asyncio.create_task(self._node_info_updates(), name="haddock-cluster-nodeinfo"),
                asyncio.create_task(self.outbound.dispatch(nc, session_over), name="haddock-cluster-dispatch"),
                asyncio.create_task(self._process_inbound(session_no), name="haddock-cluster-inbound"),
            ]
            done, _ = await asyncio.wait([*tasks, resync], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = None if t is resync else t.exception()
                if exc is not None and not isinstance(exc, SessionOver):
                    raise exc
        finally:
            self.connected.clear()
            for t in [*tasks, resync]:
                t.cancel()
            # Bounded: a task stuck in a call that ignores cancellation (a request on a connection that is
            # reconnecting) must not keep the node from its next handshake.
            _, stuck = await asyncio.wait([*tasks, resync], timeout=SESSION_END_SECONDS)
            if stuck:
                log.warning("cluster: %d tasks of the old session did not end; going on", len(stuck))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(logs.close(), SESSION_END_SECONDS)
            for sub in subs:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sub.unsubscribe(), SESSION_END_SECONDS)

    async def _end_previous_session(self) -> None:
        """Before a handshake: the message of the last session still being handled ends (so the handshake reports
        it), and the messages it left queued are discarded unanswered. Their requests belonged to the last
        session: Bacalhau's orchestrator sends them again, with new reply subjects, on the new one, starting
        after the sequence number the handshake reports, as Bacalhau's compute node (which drops a closed
        subscription's pending messages) expects. The wait is bounded (``SESSION_END_SECONDS``): a handler that
        hangs must not keep the node from its handshake and heartbeats; that message goes on being handled, its
        answer is dropped, and the orchestrator sends it again (acknowledged without effect once handled)."""
        try:
            async with asyncio.timeout(SESSION_END_SECONDS), self._handling:
                pass
        except TimeoutError:
            log.warning(
                "cluster: a message of the last session is still being handled after %.0f s; handshaking anyway",
                SESSION_END_SECONDS,
                extra={"node_id": self.node_id},
            )
        stale = 0
        while not self._inbound.empty():
            self._inbound.get_nowait()
            stale += 1
        if stale:
            log.info("cluster: %d messages of the last session left unanswered; they come again", stale)

    async def _handshake(self) -> m.HandshakeResponse:
        request = m.HandshakeRequest(
            node_info=self.node_info(),
            start_time=m.go_time(self.started_at),
            last_orchestrator_seq_num=self._inbound_seq,
        )
        payload = await self._control(m.HANDSHAKE_REQUEST, request)
        response = m.HandshakeResponse.model_validate(payload)
        if not response.accepted:
            raise RequestFailed(f"handshake rejected by the orchestrator: {response.reason or 'no reason given'}")
        self._last_static = request.node_info.static_view()
        return response

    async def _control(self, message_type: str, request: m._Wire) -> Any:
        """One control-plane request; its answer's payload, or :class:`RequestFailed`."""
        assert self.nc is not None
        data, meta = envelope.encode(message_type, m.dump(request), source=self.node_id, event_time_ns=time.time_ns())
        try:
            reply = await self.nc.request(
                m.subject_control(self.node_id), data, timeout=self.settings.request_timeout, headers=meta
            )
        except Exception as exc:
            raise RequestFailed(f"{message_type}: no answer ({exc or type(exc).__name__})") from exc
        answer = envelope.decode(reply.data)
        if answer.type == m.BAC_ERROR:
            err = m.BacError.model_validate(answer.payload or {})
            raise RequestFailed(f"{message_type} refused: {err.cause}", code=err.code)
        return answer.payload

    async def _heartbeats(self) -> None:
        misses = 0
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            snap = self.node.capacity.snapshot()
            beat = m.HeartbeatRequest(
                node_id=self.node_id,
                available_capacity=_resources(_free(snap.capacity, snap.allocated, snap.queued)),
                queue_used_capacity=_resources(snap.queued),
                last_orchestrator_seq_num=self._inbound_seq,
            )
            try:
                await self._control(m.HEARTBEAT_REQUEST, beat)
                misses = 0
            except RequestFailed as exc:
                if exc.code == m.HANDSHAKE_REQUIRED:
                    log.info("cluster: the orchestrator asks for a handshake", extra={"node_id": self.node_id})
                    return
                misses += 1
                log.warning("cluster: heartbeat failed (%d in a row): %s", misses, exc)
                if misses >= self.settings.heartbeat_miss_factor:
                    return

    async def _node_info_updates(self) -> None:
        while True:
            await asyncio.sleep(self.settings.node_info_update_interval)
            info = self.node_info()
            if info.static_view() == self._last_static:
                continue
            try:
                await self._control(m.NODE_INFO_UPDATE_REQUEST, m.UpdateNodeInfoRequest(node_info=info))
                self._last_static = info.static_view()
            except RequestFailed as exc:
                if exc.code == m.HANDSHAKE_REQUIRED:
                    return
                log.warning("cluster: node info update failed: %s", exc)

    def node_info(self) -> m.NodeInfo:
        snap = self.node.capacity.snapshot()
        rs = self.node.settings.bidding.resources
        limits = rs.max_per_job if rs is not None else ResourceLimits()
        cap = snap.capacity
        max_job = m.Resources(
            cpu=limits.cpu if limits.cpu is not None else cap.cpu,
            memory=limits.memory if limits.memory is not None else cap.memory,
            disk=limits.disk if limits.disk is not None else cap.disk,
            gpu=limits.gpu if limits.gpu is not None else cap.gpu,
        )
        return m.NodeInfo(
            node_id=self.node_id,
            labels=self.settings.labels,
            compute_node_info=m.ComputeNodeInfo(
                execution_engines=[m.ENGINE_DOCKER],
                publishers=list(PUBLISHERS),
                storage_sources=list(STORAGE_SOURCES),
                max_capacity=_resources(cap),
                queue_used_capacity=_resources(snap.queued),
                available_capacity=_resources(_free(cap, snap.allocated, snap.queued)),
                max_job_requirements=max_job,
                running_executions=snap.running,
                enqueued_executions=snap.queued_count,
            ),
            bacalhau_version=m.BuildVersionInfo(git_version=f"haddock-{self.version}", git_commit=""),
        )

    # ------------------------------------------------------------ data plane

    async def _process_inbound(self, session_no: int) -> None:
        while True:
            arrived_in, msg = await self._inbound.get()
            if arrived_in != session_no:
                continue  # of an earlier session: its orchestrator side is gone, and it comes again
            # Shielded: a resync does not cut a message off half-handled (its effects and its checkpoint go
            # together); the next session waits for it (_end_previous_session).
            self._handling_task = asyncio.ensure_future(self._handle_one(session_no, msg))
            await asyncio.shield(self._handling_task)

    async def _handle_one(self, session_no: int, msg: Msg) -> None:
        assert self.ledger is not None and self.handler is not None
        async with self._handling:
            result = await self._handle(msg)
            if result is None:
                return
            if session_no != self._session_no:
                log.info("cluster: a message of the last session handled; its answer is not sent to that session")
                return
            await self._reply(msg, result)

    async def _handle(self, msg: Msg) -> m.AckResult | None:
        """Handle one inbound message; what to answer."""
        assert self.ledger is not None and self.handler is not None
        try:
            message = envelope.decode(msg.data)
        except envelope.EnvelopeError as exc:
            log.error("cluster: refused a malformed message: %s", exc, extra={"subject": msg.subject})
            return m.AckResult(error=f"failed to deserialize message: {exc}", delay=10**9)
        seq = message.seq_num
        if seq is not None and seq <= self._inbound_seq:
            return m.AckResult()  # handled before (a replay): acknowledged, not repeated
        if seq is not None and self._failed_seq is not None and seq > self._failed_seq:
            # In order: handled first, this one would make the failed one look like a replay when it comes again.
            return m.AckResult(error=f"message {self._failed_seq} is to be handled first", delay=10**9)
        if message.type not in m.INBOUND_MODELS:
            log.error("cluster: refused a message of unsupported type %r", message.type)
            return m.AckResult(error=f"unsupported message type: {message.type}")
        try:
            await self.handler.handle(message.type, message.payload)
        except ValidationError as exc:
            log.error("cluster: refused a %s whose payload does not fit: %s", message.type, exc)
            return m.AckResult(error=f"failed to deserialize {message.type} payload: {exc}")
        except Exception as exc:
            log.exception("cluster: handling %s failed", message.type)
            self._failed_seq = seq
            return m.AckResult(error=f"failed to handle message: {exc}", delay=10**9)
        if seq is not None:
            self._failed_seq = None
            self._inbound_seq = seq
            await self.ledger.set_checkpoint(INBOUND, seq)
        return m.AckResult()

    async def _reply(self, msg: Msg, result: m.AckResult) -> None:
        if not msg.reply or self.nc is None:
            return
        body = {k: v for k, v in result.model_dump().items() if v}  # Go's omitempty: an ack is {}
        with contextlib.suppress(Exception):
            await self.nc.publish(msg.reply, json.dumps(body).encode())


def _free(capacity: HaddockResources, allocated: HaddockResources, queued: HaddockResources) -> HaddockResources:
    return HaddockResources.model_construct(
        cpu=max(0.0, capacity.cpu - allocated.cpu - queued.cpu),
        memory=max(0, capacity.memory - allocated.memory - queued.memory),
        disk=max(0, capacity.disk - allocated.disk - queued.disk),
        gpu=max(0, capacity.gpu - allocated.gpu - queued.gpu),
    )
