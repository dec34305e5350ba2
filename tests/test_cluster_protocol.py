"""NCL corner cases, one in-process node against a real nats-server on 127.0.0.1 and the test orchestrator:
messages the orchestrator refuses, the bounded inbound queue, a resync while a message is handled, log
requests (Tail, Follow, NodeID), NKey authentication."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest

from haddock.node.cluster import logstream
from haddock.node.cluster import transport as transport_module
from haddock.node.cluster.ledger import OUTBOUND_ACKED
from haddock.node.cluster.transport import ClusterTransport
from tests.support.natsserver import NatsServer
from tests.support.nclnode import HEARTBEAT, IMAGE, NodeFactory, containers_running, joined, transport
from tests.support.orchestrator import TestOrchestrator

pytestmark = pytest.mark.engine


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(log_path=tmp_path / "nats.log")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def orch(nats_server: NatsServer) -> AsyncIterator[TestOrchestrator]:
    o = TestOrchestrator(nats_server.url, heartbeat_interval=HEARTBEAT)
    await o.start()
    yield o
    await o.stop()


def hold(
    t: ClusterTransport, monkeypatch: pytest.MonkeyPatch, only: str | None = None
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the node's handling of inbound messages (of one execution, or all) until the returned gate opens."""
    assert t.handler is not None
    real = t.handler.handle
    entered, gate = asyncio.Event(), asyncio.Event()

    async def held(message_type: str, payload: Any) -> None:
        execution = payload.get("Execution", {}) if isinstance(payload, dict) else {}
        if only is None or execution.get("ID") == only:
            entered.set()
            await gate.wait()
        await real(message_type, payload)

    monkeypatch.setattr(t.handler, "handle", held)
    return entered, gate


# ---------------------------------------------------------------- messages the orchestrator refuses


@pytest.mark.parametrize(
    "limits", [{"max_send_attempts": 3}, {"max_send_attempts": 1000, "send_give_up_after": "1s"}], ids=["count", "time"]
)
async def test_a_refused_message_is_given_up_recorded_and_the_next_goes_out(
    orch: TestOrchestrator,
    start_node: NodeFactory,
    node_id: str,
    limits: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="haddock.node.cluster")
    t = transport(await start_node(orch.url, **limits))
    await joined(orch, node_id)
    orch.refuse["e-refused"] = "execution e-refused is unknown here"
    await orch.ask(node_id, "e-refused", IMAGE, "true")
    await orch.ask(node_id, "e-next", IMAGE, "true")
    await orch.wait_for(lambda: "e-next" in orch.bids, 30, "the message after the refused one")
    assert "e-refused" not in orch.bids
    if "send_give_up_after" not in limits:
        assert orch.refusals["e-refused"] == 3
    assert t.ledger is not None
    (gone,) = await t.ledger.abandoned()
    assert (gone.execution_id, gone.type) == ("e-refused", "BidResult")
    assert "refused by the orchestrator: execution e-refused is unknown here" in gone.reason
    assert gone.attempts == orch.refusals["e-refused"]
    # The checkpoint moved past it (durably) and the next message kept its own number: a gap, as Bacalhau's
    # sequences have; the orchestrator's node table holds the next one as the last processed.
    for _ in range(50):  # the orchestrator records a message before it acknowledges it
        if await t.ledger.checkpoint(OUTBOUND_ACKED) == gone.seq + 1:
            break
        await asyncio.sleep(0.1)
    assert await t.ledger.checkpoint(OUTBOUND_ACKED) == gone.seq + 1
    assert orch.nodes[node_id].last_processed == gone.seq + 1
    assert any("gave up on BidResult seq" in r.getMessage() for r in caplog.records)


async def test_no_responders_is_retried_in_the_same_session_and_never_counted(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str
) -> None:
    """As Bacalhau's dispatcher: a publish failure is retried with backoff; only the control plane (heartbeats)
    ends a session. An orchestrator that stops taking the node's data messages costs no attempts."""
    t = transport(await start_node(orch.url, max_send_attempts=2, send_give_up_after="1s"))
    await joined(orch, node_id)
    handshakes = orch.nodes[node_id].handshakes
    await orch.mute(node_id)
    await orch.ask(node_id, "e-unheard", IMAGE, "true")
    await asyncio.sleep(3)  # several attempts, past max_send_attempts and send_give_up_after
    assert "e-unheard" not in orch.bids
    await orch.listen(node_id)
    await orch.wait_for(lambda: "e-unheard" in orch.bids, 20, "the bid once the orchestrator listens")
    assert t.ledger is not None and await t.ledger.abandoned() == []
    assert orch.nodes[node_id].handshakes == handshakes  # the same session all along
    assert len(orch.bids["e-unheard"]) == 1


# ---------------------------------------------------------------- inbound queue and resyncs


async def test_the_inbound_queue_is_bounded_and_holds_back_without_losing(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport(await start_node(orch.url, inbound_queue_size=2))
    await joined(orch, node_id)
    entered, gate = hold(t, monkeypatch)
    ids = [f"e-q{k}" for k in range(8)]
    sends = [asyncio.create_task(orch.ask(node_id, e, IMAGE, "true")) for e in ids]
    await asyncio.wait_for(entered.wait(), 10)
    await asyncio.sleep(0.5)  # all eight have arrived at the node by now
    assert (t._inbound.qsize(), t._inbound.maxsize) == (2, 2)  # full, and held there: the rest wait in NATS
    gate.set()
    await orch.wait_for(lambda: all(e in orch.bids for e in ids), 30, "eight bids")
    assert all(len(orch.bids[e]) == 1 for e in ids)
    assert not orch.duplicates
    await asyncio.gather(*sends)


async def test_a_resync_while_a_message_is_handled_loses_nothing(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport(await start_node(orch.url))
    await joined(orch, node_id)
    handshakes = orch.nodes[node_id].handshakes
    entered, gate = hold(t, monkeypatch, only="e-first")
    first = asyncio.create_task(orch.ask(node_id, "e-first", IMAGE, "true"))
    await asyncio.wait_for(entered.wait(), 10)
    second = asyncio.create_task(orch.ask(node_id, "e-second", IMAGE, "true"))  # queued behind the first
    await asyncio.sleep(0.3)
    orch.nodes[node_id].connected = False  # the orchestrator lost the node: its next heartbeat must handshake
    await orch.wait_for(lambda: not t.connected.is_set(), 10, "the session to end")
    await asyncio.sleep(0.5)
    gate.set()  # the first message's handling ends after its session did
    await orch.wait_for(
        lambda: orch.nodes[node_id].handshakes > handshakes and orch.nodes[node_id].connected, 20, "a new handshake"
    )
    await orch.wait_for(lambda: "e-first" in orch.bids and "e-second" in orch.bids, 20, "both bids")
    assert len(orch.bids["e-first"]) == 1 and len(orch.bids["e-second"]) == 1
    # The handshake reported the first as handled: the orchestrator did not need to send it again.
    assert orch.nodes[node_id].node_reported_seq >= 1
    await asyncio.gather(first, second)


async def test_a_hung_message_does_not_keep_the_node_from_its_next_handshake(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next handshake waits for a message being handled at most SESSION_END_SECONDS; its answer is then
    dropped, and the orchestrator's resend of it is only acknowledged once it is handled."""
    monkeypatch.setattr(transport_module, "SESSION_END_SECONDS", 1.0)
    t = transport(await start_node(orch.url))
    await joined(orch, node_id)
    handshakes = orch.nodes[node_id].handshakes
    entered, gate = hold(t, monkeypatch, only="e-hung")
    asked = asyncio.create_task(orch.ask(node_id, "e-hung", IMAGE, "true"))
    try:
        await asyncio.wait_for(entered.wait(), 10)
        orch.nodes[node_id].connected = False  # the orchestrator lost the node: its next heartbeat must handshake
        await orch.wait_for(
            lambda: orch.nodes[node_id].handshakes > handshakes and orch.nodes[node_id].connected,
            10,
            "a new handshake while a message hangs",
        )
        beats = orch.nodes[node_id].heartbeats
        await orch.wait_for(lambda: orch.nodes[node_id].heartbeats >= beats + 2, 10, "heartbeats in the new session")
    finally:
        gate.set()
    await orch.wait_for(lambda: "e-hung" in orch.bids, 20, "its bid once it is handled")
    assert len(orch.bids["e-hung"]) == 1
    await asked


async def test_a_message_the_node_failed_on_is_not_skipped_by_the_ones_behind_it(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node fails on one message (nack) while the orchestrator has already sent the next: the next must
    not be handled first, or the failed one, sent again with a lower number, would be taken for a replay."""
    t = transport(await start_node(orch.url))
    await joined(orch, node_id)
    assert t.handler is not None
    real = t.handler.handle
    failed: list[str] = []

    async def flaky(message_type: str, payload: Any) -> None:
        if payload.get("Execution", {}).get("ID") == "e-flaky" and not failed:
            failed.append("once")
            raise RuntimeError("the store is busy")
        await real(message_type, payload)

    monkeypatch.setattr(t.handler, "handle", flaky)
    sends = [asyncio.create_task(orch.ask(node_id, e, IMAGE, "true")) for e in ("e-flaky", "e-behind")]
    await orch.wait_for(lambda: "e-flaky" in orch.bids and "e-behind" in orch.bids, 30, "both bids")
    assert failed and len(orch.bids["e-flaky"]) == 1 and len(orch.bids["e-behind"]) == 1
    assert [r[3]["ExecutionID"] for r in orch.received] == ["e-flaky", "e-behind"]  # in the orchestrator's order
    await asyncio.gather(*sends)


async def test_results_sent_during_a_nats_outage_arrive_once(
    tmp_path: Path, start_node: NodeFactory, node_id: str
) -> None:
    """While NATS is away the node keeps trying to send a result; none of those attempts may be held back and
    replayed by the client after the reconnect (the orchestrator, back first here, would get the result twice)."""
    server = NatsServer(log_path=tmp_path / "nats-outage.log")
    await server.start()
    orch = TestOrchestrator(server.url, heartbeat_interval=HEARTBEAT, connect_options={"reconnect_time_wait": 0.05})
    await orch.start()
    try:
        # The session outlives the outage (10 missed heartbeats); the node reconnects after the orchestrator.
        await start_node(server.url, request_timeout=1, heartbeat_miss_factor=20, reconnect_min=1)
        await joined(orch, node_id)
        await orch.ask(node_id, "e-outage", IMAGE, "sleep 1; echo through")
        await orch.wait_for(lambda: "e-outage" in orch.bids, 20, "bid")
        await orch.accept(node_id, "e-outage")
        await containers_running(node_id)
        await server.stop()
        await asyncio.sleep(4)  # the job ends; the node tries to send its result, again and again
        await server.start()
        await orch.wait_for(lambda: "e-outage" in orch.results, 30, "the result")
        await asyncio.sleep(2)  # anything held back arrives by now
        assert len(orch.results["e-outage"]) == 1
        assert not orch.duplicates, orch.duplicates
    finally:
        await orch.stop()
        await server.stop()


# ---------------------------------------------------------------- log requests


async def test_log_requests_honour_tail_follow_and_node_id(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logstream, "EXECUTION_WAIT_SECONDS", 1.0)
    await start_node(orch.url)
    await joined(orch, node_id)
    exec_id = f"e-logs-{uuid.uuid4().hex[:6]}"
    await orch.ask(node_id, exec_id, IMAGE, "echo one; echo two >&2; sleep 3; echo three")
    await orch.wait_for(lambda: exec_id in orch.bids, 20, "bid")
    # Asked for before the execution starts: the request waits for it (up to EXECUTION_WAIT_SECONDS).
    early = asyncio.create_task(orch.logs(node_id, exec_id, follow=True))
    await orch.accept(node_id, exec_id)
    for _ in range(100):  # history without follow: what is there now
        lines, close = await orch.logs(node_id, exec_id)
        if len(lines) >= 2:
            break
        await asyncio.sleep(0.1)
    assert sorted(lines) == [(1, "one\n"), (2, "two\n")] and close["Code"] == 1000
    # Tail (Bacalhau: from the end of the log, no history): with Follow, only what comes next.
    tail_follow = asyncio.create_task(orch.logs(node_id, exec_id, tail=True, follow=True))
    assert await orch.logs(node_id, exec_id, tail=True) == ([], {"Code": 1000, "Text": ""})
    lines, close = await tail_follow
    assert lines == [(1, "three\n")] and close["Code"] == 1000
    await orch.wait_for(lambda: exec_id in orch.results, 30, "result")
    lines, _ = await orch.logs(node_id, exec_id, follow=True)  # after the end: everything, then the close
    assert sorted(lines) == [(1, "one\n"), (1, "three\n"), (2, "two\n")]
    lines, close = await early
    assert sorted(lines) == [(1, "one\n"), (1, "three\n"), (2, "two\n")] and close["Code"] == 1000
    lines, close = await orch.logs(node_id, exec_id, asked_node="another-node")
    assert lines == [] and close["Code"] == 4000 and "another-node" in close["Text"]
    lines, close = await orch.logs(node_id, "e-never-asked")
    assert lines == [] and close["Code"] == 5000 and "not found" in close["Text"]


async def test_a_log_request_for_an_unknown_execution_waits_without_polling(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for an execution not known yet is a wait for its start, not a store read every 100 ms."""
    monkeypatch.setattr(logstream, "EXECUTION_WAIT_SECONDS", 1.0)
    running = await start_node(orch.url)
    await joined(orch, node_id)
    real = running.node.get
    asked: list[str] = []

    async def counted(execution_id: str) -> Any:
        asked.append(execution_id)
        return await real(execution_id)

    monkeypatch.setattr(running.node, "get", counted)
    began = time.monotonic()
    lines, close = await orch.logs(node_id, "e-not-yet")
    assert lines == [] and close["Code"] == 5000 and "not found" in close["Text"]
    assert time.monotonic() - began >= 0.9  # it did wait
    assert asked.count("e-not-yet") <= 2, asked


# ---------------------------------------------------------------- NKey authentication


def user_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode())


@pytest.fixture
async def nkey_cluster(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, TestOrchestrator, bytes]]:
    """A nats-server that admits two NKey users only: the node's and the orchestrator's."""
    node_seed, orch_seed = user_seed(), user_seed()
    users = ", ".join(f"{{ nkey: {public_key(s)} }}" for s in (node_seed, orch_seed))
    server = NatsServer(log_path=tmp_path / "nats-nkey.log", config=f"authorization {{ users = [ {users} ] }}\n")
    await server.start()
    orch = TestOrchestrator(
        server.url, heartbeat_interval=HEARTBEAT, connect_options={"nkeys_seed_str": orch_seed.decode()}
    )
    try:
        await orch.start()
        yield server, orch, node_seed
    finally:
        await orch.stop()
        await server.stop()


async def test_nkey_seed_authentication_against_a_real_nats_server(
    tmp_path: Path, nkey_cluster: tuple[NatsServer, TestOrchestrator, bytes], start_node: NodeFactory, node_id: str
) -> None:
    server, orch, node_seed = nkey_cluster
    with pytest.raises(Exception, match=r"[Aa]uthorization"):  # the server does want a key
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    seed_file = tmp_path / "node.nk"
    seed_file.write_bytes(node_seed + b"\n")
    seed_file.chmod(0o600)
    await start_node(server.url, nkey_seed_file=seed_file)
    await joined(orch, node_id)
    await orch.ask(node_id, "e-nkey", IMAGE, "true")
    await orch.wait_for(lambda: "e-nkey" in orch.bids, 20, "a bid over the authenticated connection")
