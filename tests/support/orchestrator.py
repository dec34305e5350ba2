"""A test orchestrator: the orchestrator side of NCL, written from the same specification as the node's
side (Bacalhau v1.9.3: ``pkg/transport/nclprotocol/orchestrator``, ``pkg/lib/ncl``, ``pkg/lib/envelope``),
and deliberately not from the node's modules: its envelope code is its own, so a mistake in the node's
envelope does not cancel out.

It answers control requests (handshake, heartbeat, node-info update, shutdown notice) on
``bacalhau.global.compute.*.out.ctrl``, keeps a node table (info, capacity, connection state, last
heartbeat; a node that misses ``miss_factor`` heartbeats is marked disconnected and must handshake
again), sends sequence-numbered data messages to each node (resent until acknowledged, as Bacalhau's
ordered publisher), and records every message a node sends — including any it receives twice, so
tests can assert exactly-once delivery.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import struct
import time
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ncl"


def encode(message_type: str, payload: Any, extra: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    meta = {
        "Bacalhau-Type": message_type,
        "Type": message_type,
        "Bacalhau-PayloadEncoding": "json",
        "PayloadEncoding": "json",
        "Bacalhau-Source": "test-orchestrator",
        "Bacalhau-EventTime": str(time.time_ns()),
        **(extra or {}),
    }
    body = json.dumps({"metadata": meta, "payload": payload}).encode()
    return struct.pack(">BI", 1, zlib.crc32(body)) + body, meta


def decode(data: bytes) -> tuple[dict[str, str], Any]:
    version, crc = struct.unpack_from(">BI", data)
    body = data[5:]
    assert version == 1, f"schema version {version}"
    assert zlib.crc32(body) == crc, "CRC mismatch"
    doc = json.loads(body)
    return doc["metadata"], doc["payload"]


@dataclass
class NodeState:
    node_id: str
    info: dict[str, Any]
    connected: bool = True
    last_heartbeat: float = field(default_factory=time.monotonic)
    available: dict[str, Any] = field(default_factory=dict)
    queued: dict[str, Any] = field(default_factory=dict)
    last_processed: int = 0  # the node's messages processed here (LastComputeSeqNum)
    node_reported_seq: int = 0  # what the node says it handled of ours
    handshakes: int = 0
    heartbeats: int = 0
    disconnects: list[str] = field(default_factory=list)
    capacity_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Outgoing:
    seq: int
    type: str
    payload: dict[str, Any]
    acked: bool = False


class TestOrchestrator:
    __test__ = False  # not a test class

    def __init__(
        self,
        url: str,
        *,
        heartbeat_interval: float,
        miss_factor: int = 3,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.connect_options = connect_options or {}
        self.heartbeat_interval = heartbeat_interval
        self.miss_factor = miss_factor
        self.nc: NATS | None = None
        self.nodes: dict[str, NodeState] = {}
        self.received: list[tuple[str, int, str, dict[str, Any]]] = []  # node, seq, type, payload
        self.duplicates: list[tuple[str, int, str]] = []
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)  # execution id -> RunResult/ComputeError
        self.bids: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.refuse: dict[str, str] = {}  # execution id -> the error its messages from nodes are refused with
        self.refusals: dict[str, int] = defaultdict(int)
        self.control: list[tuple[str, str, dict[str, Any]]] = []  # node, type, payload of every control request
        # node id -> the sequence number its next handshake is answered with (LastOrchestratorSeqNum): as
        # Bacalhau's orchestrator on a reconnect, which answers the number it stored from the node's last
        # heartbeat and sends again everything after it, handled by the node or not.
        self.replay_from: dict[str, int] = {}
        self.outbox: dict[str, list[Outgoing]] = defaultdict(list)
        self.deliveries: dict[tuple[str, int], int] = defaultdict(int)  # (node, seq) -> times sent
        self._seq: dict[str, int] = defaultdict(int)
        self._subscribed: dict[str, Subscription] = {}  # node id -> the subscription to its data messages
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        options: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2, **self.connect_options}
        self.nc = await nats.connect(self.url, **options)
        await self.nc.subscribe("bacalhau.global.compute.*.out.ctrl", cb=self._control)
        self._tasks = [asyncio.create_task(self._liveness()), asyncio.create_task(self._resend())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None:
            await self.nc.close()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    # ------------------------------------------------------------ control plane

    async def _respond(self, msg: Msg, message_type: str, payload: dict[str, Any]) -> None:
        data, meta = encode(message_type, payload)
        assert self.nc is not None
        await self.nc.publish(msg.reply, data, headers=meta)

    async def _error(self, msg: Msg, code: str, cause: str) -> None:
        err = {"Cause": cause, "Code": code, "HTTPStatusCode": 400, "Component": "test-orchestrator"}
        await self._respond(msg, "BacError", err)

    async def _control(self, msg: Msg) -> None:
        meta, payload = decode(msg.data)
        kind = meta["Bacalhau-Type"]
        node_id = msg.subject.split(".")[3]
        node = self.nodes.get(node_id)
        self.control.append((node_id, kind, payload))
        if kind == "transport.HandshakeRequest":
            info = payload["NodeInfo"]
            if "ncl/v1" not in info.get("SupportedProtocols", []):
                await self._respond(msg, "transport.HandshakeResponse", {"accepted": False, "reason": "no ncl/v1"})
                return
            if node is None:
                node = self.nodes[node_id] = NodeState(node_id=node_id, info=info)
            node.info, node.connected, node.last_heartbeat = info, True, time.monotonic()
            node.handshakes += 1
            node.node_reported_seq = payload["LastOrchestratorSeqNum"]
            node.capacity_history.append(info["ComputeNodeInfo"]["AvailableCapacity"])
            if node_id not in self._subscribed:
                await self.listen(node_id)
            starting = self.replay_from.pop(node_id, node.node_reported_seq)
            for out in self.outbox[node_id]:  # what the node has is not resent; after `starting`, all is
                out.acked = out.seq <= starting
            await self._respond(
                msg,
                "transport.HandshakeResponse",
                {"accepted": True, "LastComputeSeqNum": node.last_processed, "LastOrchestratorSeqNum": starting},
            )
        elif node is None or not node.connected:
            await self._error(msg, "HandshakeRequired", f"node {node_id} must handshake")
            return
        elif kind == "transport.HeartbeatRequest":
            node.last_heartbeat = time.monotonic()
            node.heartbeats += 1
            node.available = payload["AvailableCapacity"]
            node.queued = payload["QueueUsedCapacity"]
            node.node_reported_seq = payload["LastOrchestratorSeqNum"]
            node.capacity_history.append(node.available)
            await self._respond(msg, "transport.HeartbeatResponse", {"LastComputeSeqNum": node.last_processed})
        elif kind == "transport.UpdateNodeInfoRequest":
            node.info = payload["NodeInfo"]
            await self._respond(msg, "transport.UpdateNodeInfoResponse", {"accepted": True})
        elif kind == "transport.ShutdownNoticeRequest":
            node.connected = False
            node.disconnects.append("shutdown notice")
            await self._respond(msg, "transport.ShutdownNoticeResponse", {"LastComputeSeqNum": node.last_processed})
        else:
            await self._error(msg, "NotFound", f"no handler found for message type: {kind}")
        await self._notify()

    async def _liveness(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval / 2)
            limit = self.heartbeat_interval * self.miss_factor
            for node in self.nodes.values():
                if node.connected and time.monotonic() - node.last_heartbeat > limit:
                    node.connected = False
                    node.disconnects.append(f"missed {self.miss_factor} heartbeats")
                    await self._notify()

    # ------------------------------------------------------------ data plane

    async def _data(self, msg: Msg) -> None:
        meta, payload = decode(msg.data)
        node_id = msg.subject.split(".")[3]
        node = self.nodes[node_id]
        seq = int(meta["Bacalhau-SeqNum"])
        kind = meta["Bacalhau-Type"]
        assert meta["Bacalhau-MessageID"] == f"seq-{seq}"
        assert msg.headers is not None and msg.headers.get("Bacalhau-Type") == kind
        refusal = self.refuse.get(payload.get("ExecutionID", ""))
        if refusal is not None:  # an NCL nack, as Bacalhau's subscriber answers a message its handler failed on
            self.refusals[payload["ExecutionID"]] += 1
            await msg.respond(json.dumps({"error": refusal}).encode())
            await self._notify()
            return
        if seq <= node.last_processed:
            self.duplicates.append((node_id, seq, kind))
        else:
            node.last_processed = seq
            self.received.append((node_id, seq, kind, payload))
            if kind == "BidResult":
                self.bids[payload["ExecutionID"]].append({"node": node_id, **payload})
            else:
                self.results[payload["ExecutionID"]].append({"node": node_id, "type": kind, **payload})
        await msg.respond(b"{}")
        await self._notify()

    async def listen(self, node_id: str) -> None:
        """Take the node's data messages (again)."""
        subject = f"bacalhau.global.compute.{node_id}.out.msgs"
        self._subscribed[node_id] = await self.nc.subscribe(subject, cb=self._data)  # type: ignore[union-attr]

    async def mute(self, node_id: str) -> None:
        """Stop taking the node's data messages (its requests get NATS "no responders"); control goes on."""
        await self._subscribed[node_id].unsubscribe()
        await self.nc.flush()  # type: ignore[union-attr]

    async def send(self, node_id: str, message_type: str, payload: dict[str, Any]) -> int:
        self._seq[node_id] += 1
        out = Outgoing(self._seq[node_id], message_type, payload)
        self.outbox[node_id].append(out)
        await self._deliver(node_id, out)
        return out.seq

    async def _deliver(self, node_id: str, out: Outgoing) -> None:
        self.deliveries[(node_id, out.seq)] += 1
        extra = {"Bacalhau-MessageID": f"seq-{out.seq}", "Bacalhau-SeqNum": str(out.seq)}
        data, meta = encode(out.type, out.payload, extra)
        try:
            reply = await self.nc.request(f"bacalhau.global.compute.{node_id}.in.msgs", data, timeout=5, headers=meta)  # type: ignore[union-attr]
        except Exception:
            return  # resent later
        if json.loads(reply.data or b"{}") == {}:
            out.acked = True

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for node_id, outs in list(self.outbox.items()):
                node = self.nodes.get(node_id)
                if node is None or not node.connected:
                    continue
                for out in outs:
                    if not out.acked:
                        await self._deliver(node_id, out)
                        if not out.acked:
                            break  # in order

    async def send_raw(self, node_id: str, data: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
        reply = await self.nc.request(f"bacalhau.global.compute.{node_id}.in.msgs", data, timeout=5, headers=headers)  # type: ignore[union-attr]
        return dict(json.loads(reply.data))

    async def logs(
        self, node_id: str, exec_id: str, *, tail: bool = False, follow: bool = False, asked_node: str | None = None
    ) -> tuple[list[tuple[int, str]], dict[str, Any]]:
        """An ExecutionLogs/v1 stream request as Bacalhau's orchestrator sends it (pkg/nats/proxy, pkg/nats/stream):
        the lines (1 stdout, 2 stderr) and the close frame's error."""
        assert self.nc is not None
        frames: asyncio.Queue[Msg] = asyncio.Queue()
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=frames.put)
        body: dict[str, Any] = {"ExecutionID": exec_id, "NodeID": node_id if asked_node is None else asked_node}
        body |= {"Tail": tail, "Follow": follow}
        request = {
            "consumerId": "test-orchestrator",
            "streamId": uuid.uuid4().hex,
            "heartBeatRequestSub": "",
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
        }
        await self.nc.publish(f"node.compute.{node_id}.ExecutionLogs/v1", json.dumps(request).encode(), reply=inbox)
        lines: list[tuple[int, str]] = []
        try:
            while True:
                doc = json.loads((await asyncio.wait_for(frames.get(), 30)).data)
                if doc["type"] == 2:
                    return lines, dict(doc.get("closeError") or {})
                value = json.loads(base64.b64decode(doc["data"]))["value"]
                lines.append((value["Type"], value["Line"]))
        finally:
            await sub.unsubscribe()

    # ------------------------------------------------------------ jobs

    @staticmethod
    def execution(
        node_id: str, exec_id: str, image: str, command: str, *, desired_running: bool = False
    ) -> dict[str, Any]:
        doc = copy.deepcopy(json.loads((FIXTURES / "ask_for_bid.json").read_text()))
        ex = doc["Execution"]
        ex["ID"], ex["NodeID"], ex["JobID"] = exec_id, node_id, f"j-{exec_id}"
        ex["Job"]["ID"] = f"j-{exec_id}"
        task = ex["Job"]["Tasks"][0]
        task["Engine"]["Params"]["Image"] = image
        task["Engine"]["Params"]["Parameters"] = ["sh", "-c", command]
        if desired_running:
            ex["DesiredState"]["StateType"] = 1
        return dict(doc)

    async def ask(self, node_id: str, exec_id: str, image: str, command: str) -> None:
        await self.send(node_id, "AskForBid", self.execution(node_id, exec_id, image, command))

    async def accept(self, node_id: str, exec_id: str) -> None:
        await self.send(node_id, "BidAccepted", {"ExecutionID": exec_id, "Accepted": True, "Events": []})

    async def reject(self, node_id: str, exec_id: str, reason: str = "the job went elsewhere") -> None:
        await self.send(node_id, "BidRejected", {"ExecutionID": exec_id, "Events": [{"Message": reason}]})

    async def cancel(self, node_id: str, exec_id: str) -> None:
        await self.send(node_id, "CancelExecution", {"ExecutionID": exec_id, "Events": [{"Message": "user asked"}]})

    def controls(self, node_id: str, kind: str) -> list[dict[str, Any]]:
        """The payloads of the control requests of one type the node sent, in order."""
        return [p for n, k, p in self.control if n == node_id and k == kind]
