"""Each NCL message a compute node handles or sends, end to end: one in-process node, the test orchestrator,
one real nats-server on 127.0.0.1 for the module. What the node sends is asserted field by field against
what Bacalhau's compute node sends (v1.9.3: ``pkg/compute/message_handler.go``, ``watchers/ncl_message_creator.go``,
``executor.go``, ``transport/nclprotocol/compute/controlplane.go``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from haddock.executor.docker.config import DockerConfig
from haddock.executor.errors import ExecutionNotFound
from haddock.executor.records import ExecutionRecord, ExecutionState, ResultStatus
from haddock.node.cluster import messages as m
from haddock.node.cluster.ledger import Ledger
from haddock.node.config import CapacitySettings
from haddock.node.service import Node
from tests.support.natsserver import NatsServer
from tests.support.nclnode import HEARTBEAT, IMAGE, NodeFactory, containers_running, joined, node_containers, transport
from tests.support.orchestrator import TestOrchestrator

pytestmark = pytest.mark.engine

GIB = 1024**3


@pytest.fixture(scope="module")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    server = NatsServer(log_path=tmp_path_factory.mktemp("nats") / "nats.log")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def orch(nats_server: NatsServer) -> AsyncIterator[TestOrchestrator]:
    """A fresh orchestrator per test (its node table and sequence numbers start empty)."""
    o = TestOrchestrator(nats_server.url, heartbeat_interval=HEARTBEAT)
    await o.start()
    yield o
    await o.stop()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def ended(node: Node, exec_id: str, timeout: float = 30) -> ExecutionRecord:
    for _ in range(int(timeout / 0.1)):
        record = await node.get(exec_id)
        if record.state.terminal:
            return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"{exec_id} did not end")


async def ledger_state(ledger: Ledger, exec_id: str) -> str:
    tracked = await ledger.get(exec_id)
    assert tracked is not None
    return tracked.state


def sent_by_node(orch: TestOrchestrator, node_id: str, exec_id: str) -> list[str]:
    """The types of the data messages the node sent about one execution, in order."""
    return [kind for n, _, kind, payload in orch.received if n == node_id and payload["ExecutionID"] == exec_id]


async def ask_and_bid(orch: TestOrchestrator, node_id: str, exec_id: str, command: str) -> None:
    await orch.ask(node_id, exec_id, IMAGE, command)
    await orch.wait_for(lambda: exec_id in orch.bids, 20, f"the bid on {exec_id}")
    assert orch.bids[exec_id][0]["Accepted"], orch.bids[exec_id]


def run_at_once(node_id: str, exec_id: str, command: str, **task: Any) -> dict[str, Any]:
    """An AskForBid with desired state running (bid and, if yes, run at once); ``task`` replaces task fields."""
    doc = TestOrchestrator.execution(node_id, exec_id, IMAGE, command, desired_running=True)
    doc["Execution"]["Job"]["Tasks"][0].update(task)
    return doc


# ---------------------------------------------------------------- CancelExecution


async def test_cancel_execution_cancels_and_the_node_reports_nothing_more(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str
) -> None:
    """Bacalhau's compute node moves a cancelled execution to Cancelled and creates no message for that
    state (ncl_message_creator.go): after the bid, the orchestrator hears nothing more of it."""
    running = await start_node(orch.url)
    t = transport(running)
    assert t.ledger is not None
    await joined(orch, node_id)
    running_one, just_accepted, asked_only = uid("e-cancel-run"), uid("e-cancel-early"), uid("e-cancel-asked")
    for e in (running_one, just_accepted, asked_only):
        await ask_and_bid(orch, node_id, e, "echo started; sleep 60")
    await orch.accept(node_id, running_one)
    await containers_running(node_id)
    await orch.cancel(node_id, running_one)  # running
    await orch.accept(node_id, just_accepted)
    await orch.cancel(node_id, just_accepted)  # right behind its BidAccepted: it may be still starting
    await orch.cancel(node_id, asked_only)  # bid on, never accepted
    await orch.accept(node_id, asked_only)  # a late BidAccepted: it stays cancelled
    for e in (running_one, just_accepted):
        record = await ended(running.node, e)
        assert record.state is ExecutionState.CANCELLED and record.result is not None
        assert record.result.status is ResultStatus.CANCELLED
    with pytest.raises(ExecutionNotFound):
        await running.node.get(asked_only)
    await asyncio.sleep(3 * HEARTBEAT)  # whatever the node would send has gone out by now
    for e in (running_one, just_accepted, asked_only):
        assert sent_by_node(orch, node_id, e) == [m.BID_RESULT]
        assert await ledger_state(t.ledger, e) == "cancelled"
    assert not [c for c in node_containers(node_id) if c.status == "running"]
    await orch.wait_for(
        lambda: orch.nodes[node_id].available.get("CPU") == running.node.capacity.snapshot().capacity.cpu,
        10,
        "capacity back",
    )


async def test_cancel_execution_of_one_running_at_once(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str
) -> None:
    """Desired state running: no BidResult for a yes, and none of anything after the cancel."""
    running = await start_node(orch.url)
    await joined(orch, node_id)
    e = uid("e-cancel-now")
    await orch.send(node_id, m.ASK_FOR_BID, run_at_once(node_id, e, "sleep 60"))
    await containers_running(node_id)
    await orch.cancel(node_id, e)
    assert (await ended(running.node, e)).state is ExecutionState.CANCELLED
    await asyncio.sleep(3 * HEARTBEAT)
    assert sent_by_node(orch, node_id, e) == []


async def test_cancel_execution_of_a_queued_one(orch: TestOrchestrator, start_node: NodeFactory, node_id: str) -> None:
    running = await start_node(orch.url, settings={"capacity": CapacitySettings(max_running=1)})
    await joined(orch, node_id)
    first, queued = uid("e-first"), uid("e-queued")
    for e in (first, queued):
        await ask_and_bid(orch, node_id, e, "sleep 60")
    await orch.accept(node_id, first)
    await containers_running(node_id)
    await orch.accept(node_id, queued)
    for _ in range(100):
        if running.node.queue_position(queued) is not None:
            break
        await asyncio.sleep(0.1)
    assert running.node.queue_position(queued) is not None, "the second one waits for the first"
    await orch.cancel(node_id, queued)
    record = await ended(running.node, queued)
    assert record.state is ExecutionState.CANCELLED and node_containers(node_id, queued) == []  # it never ran
    await orch.cancel(node_id, first)
    assert (await ended(running.node, first)).state is ExecutionState.CANCELLED
    await asyncio.sleep(3 * HEARTBEAT)
    assert sent_by_node(orch, node_id, first) == sent_by_node(orch, node_id, queued) == [m.BID_RESULT]


# ---------------------------------------------------------------- BidRejected


async def test_bid_rejected_drops_the_execution(orch: TestOrchestrator, start_node: NodeFactory, node_id: str) -> None:
    running = await start_node(orch.url)
    t = transport(running)
    assert t.ledger is not None
    await joined(orch, node_id)
    e = uid("e-rejected")
    await ask_and_bid(orch, node_id, e, "echo must not run")
    await orch.reject(node_id, e, "placed on another node")
    await orch.accept(node_id, e)  # a BidAccepted after the rejection changes nothing
    await orch.reject(node_id, "e-never-asked")  # one for an execution the node never heard of: acknowledged
    await orch.wait_for(lambda: all(o.acked for o in orch.outbox[node_id]), 10, "every message acknowledged")
    await asyncio.sleep(3 * HEARTBEAT)
    assert await ledger_state(t.ledger, e) == "rejected"
    assert await t.ledger.get("e-never-asked") is None
    with pytest.raises(ExecutionNotFound):  # nothing ran, nothing was recorded
        await running.node.get(e)
    assert node_containers(node_id, e) == []
    assert not running.node.capacity.holds(e) and running.node.capacity.position(e) is None
    assert sent_by_node(orch, node_id, e) == [m.BID_RESULT]
    assert orch.nodes[node_id].available["CPU"] == running.node.capacity.snapshot().capacity.cpu


# ---------------------------------------------------------------- ComputeError


def compute_error(orch: TestOrchestrator, exec_id: str) -> dict[str, Any]:
    (result,) = orch.results[exec_id]
    assert result["type"] == m.COMPUTE_ERROR, result
    return result


async def test_failures_are_compute_errors_as_bacalhau_writes_them(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str
) -> None:
    """Bacalhau's executor fails an execution with one event: the error as its message, the phase as its
    topic, ``Details: {"IsError": "true"}`` (executor.go handleFailure; its CLI shows only such events as errors)."""
    await start_node(
        orch.url, settings={"docker": DockerConfig(stop_grace=1, pull_attempts=1, allow_private_registries=True)}
    )
    await joined(orch, node_id)
    no_binary, timed_out, no_image = uid("e-nobin"), uid("e-timeout"), uid("e-noimage")
    doc = TestOrchestrator.execution(node_id, no_binary, IMAGE, "")
    doc["Execution"]["Job"]["Tasks"][0]["Engine"]["Params"]["Parameters"] = ["/no/such/binary"]
    await orch.send(node_id, m.ASK_FOR_BID, doc)  # bid on, then accepted: the container cannot start
    await orch.wait_for(lambda: no_binary in orch.bids, 20, "the bid")
    await orch.accept(node_id, no_binary)
    await orch.send(
        node_id, m.ASK_FOR_BID, run_at_once(node_id, timed_out, "sleep 30", Timeouts={"ExecutionTimeout": 1})
    )
    missing = run_at_once(node_id, no_image, "true")  # not on the engine; its registry (allowed) does not answer
    missing["Execution"]["Job"]["Tasks"][0]["Engine"]["Params"]["Image"] = "127.0.0.1:9/haddock-test/absent:1"
    await orch.send(node_id, m.ASK_FOR_BID, missing)
    await orch.wait_for(lambda: all(e in orch.results for e in (no_binary, timed_out, no_image)), 60, "three errors")
    for e, says in (
        (no_binary, "not found in the image"),
        (timed_out, "exceeded its timeout of 1s"),
        (no_image, "127.0.0.1:9/haddock-test/absent:1"),
    ):
        error = compute_error(orch, e)
        assert (error["ExecutionID"], error["JobID"], error["JobType"]) == (e, f"j-{e}", "batch")
        (event,) = error["Events"]
        assert says in event["Message"], event
        assert event["Topic"] == "Running Execution" and event["Details"] == {"IsError": "true"}, event
        assert "RunCommandResult" not in error and "PublishResult" not in error
    assert not orch.duplicates


# ---------------------------------------------------------------- control plane: shutdown notice, node-info updates


async def test_a_graceful_stop_sends_a_shutdown_notice(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str
) -> None:
    """As Bacalhau's control plane on Stop: ``ShutdownNoticeRequest{NodeID, LastOrchestratorSeqNum}`` (haddock
    adds the optional ``Reason``), and nothing after it."""
    running = await start_node(orch.url)
    await joined(orch, node_id)
    e = uid("e-before-stop")
    await ask_and_bid(orch, node_id, e, "true")
    await orch.reject(node_id, e)
    await running.stop(1)
    (notice,) = orch.controls(node_id, m.SHUTDOWN_NOTICE_REQUEST)
    assert notice == {"NodeID": node_id, "Reason": "node shutting down", "LastOrchestratorSeqNum": 2}
    assert not orch.nodes[node_id].connected and orch.nodes[node_id].disconnects == ["shutdown notice"]
    sent = len(orch.control)
    await asyncio.sleep(3 * HEARTBEAT)
    assert len(orch.control) == sent  # no heartbeat, no handshake after it


DYNAMIC = ("AvailableCapacity", "QueueCapacity", "RunningExecutions", "EnqueuedExecutions")


def static(info: dict[str, Any]) -> dict[str, Any]:
    """What Bacalhau's ``HasStaticConfigChanged`` compares: all but the dynamic capacity fields."""
    compute = {k: v for k, v in info["ComputeNodeInfo"].items() if k not in DYNAMIC}
    return info | {"ComputeNodeInfo": compute}


async def test_node_info_update_when_what_the_node_offers_changes(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str
) -> None:
    """Nothing the node offers changes at run time today (labels, engines, publishers, sources and per-job
    maxima come from the config; the capacity is set once, at start): this changes the capacity through the
    call the start makes (``set_capacity``) and checks that exactly one update goes out, with the new info."""
    running = await start_node(orch.url, node_info_update_interval=0.2)
    await joined(orch, node_id)
    await asyncio.sleep(1)  # five intervals
    assert orch.controls(node_id, m.NODE_INFO_UPDATE_REQUEST) == []  # nothing changed: nothing sent
    capacity = running.node.capacity
    smaller = capacity.snapshot().capacity.model_copy(update={"cpu": 1.5, "memory": GIB})
    capacity.set_capacity(smaller)
    await orch.wait_for(lambda: orch.controls(node_id, m.NODE_INFO_UPDATE_REQUEST) != [], 10, "a node-info update")
    await asyncio.sleep(1)
    (update,) = orch.controls(node_id, m.NODE_INFO_UPDATE_REQUEST)  # once, not at every interval
    info = update["NodeInfo"]
    expected = {"CPU": 1.5, "Memory": GIB, "Disk": smaller.disk, "GPU": 0}
    assert info["ComputeNodeInfo"]["MaxCapacity"] == expected
    assert info["ComputeNodeInfo"]["MaxJobRequirements"] == expected  # no per-job maxima: the capacity
    assert info["ComputeNodeInfo"]["AvailableCapacity"] == expected
    (handshake,) = orch.controls(node_id, m.HANDSHAKE_REQUEST)
    before = static(handshake["NodeInfo"])
    for key in ("MaxCapacity", "MaxJobRequirements"):
        before["ComputeNodeInfo"][key] = expected
    assert static(info) == before  # the rest as in the handshake
    assert orch.nodes[node_id].info == info
    await orch.wait_for(lambda: orch.nodes[node_id].available == expected, 5, "heartbeats with the new capacity")


# ---------------------------------------------------------------- log streaming


def text_of(lines: list[tuple[int, str]], kind: int) -> str:
    return "".join(line for k, line in lines if k == kind)


async def test_log_streams_are_exactly_the_jobs_output(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str
) -> None:
    """Many lines on both streams, a last line without a newline: each stream, put together, is byte for byte
    the job's results file — followed live from the start, read after the end, and read again after the node
    restarted (from the durable log store)."""
    running = await start_node(orch.url)
    await joined(orch, node_id)
    e = uid("e-logs-exact")
    script = (
        'i=0; while [ $i -lt 300 ]; do echo "out $i $(seq -s, 1 30)"; echo "err $i" >&2; i=$((i+1)); done; '
        "sleep 1; printf 'last line without a newline'; printf 'err end' >&2"
    )
    await ask_and_bid(orch, node_id, e, script)
    followed = asyncio.create_task(orch.logs(node_id, e, follow=True))
    await orch.accept(node_id, e)
    await orch.wait_for(lambda: e in orch.results, 30, "the result")
    results = running.node.settings.results_dir(e)
    stdout, stderr = (results / "stdout").read_text(), (results / "stderr").read_text()
    assert stdout.startswith("out 0 1,2,3,") and stdout.endswith(
        "out 299 " + ",".join(map(str, range(1, 31))) + "\nlast line without a newline"
    )
    assert stderr.count("\n") == 300 and stderr.endswith("err 299\nerr end")
    normal = {"Code": 1000, "Text": ""}
    lines, close = await followed
    assert (text_of(lines, 1), text_of(lines, 2), close) == (stdout, stderr, normal)
    lines, close = await orch.logs(node_id, e)
    assert (text_of(lines, 1), text_of(lines, 2), close) == (stdout, stderr, normal)
    assert await orch.logs(node_id, e, tail=True, follow=True) == ([], normal)  # from the end of an ended log
    await running.stop(1)
    await start_node(orch.url)
    await orch.wait_for(lambda: orch.nodes[node_id].connected, 20, "the restarted node")
    lines, close = await orch.logs(node_id, e)
    assert (text_of(lines, 1), text_of(lines, 2), close) == (stdout, stderr, normal)


# ---------------------------------------------------------------- replays


async def test_messages_replayed_after_a_reconnect_or_a_restart_have_no_effect(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str
) -> None:
    """Bacalhau's orchestrator answers a reconnecting node's handshake with the sequence number it stored from
    the node's last heartbeat and sends everything after it again, whether the node handled it or not
    (nodes/manager.go resolveStartingOrchestratorSeqNum). Here it starts from 0: every message comes again —
    after a reconnect, and after a restart of the node — and none has an effect."""
    running = await start_node(orch.url)
    await joined(orch, node_id)
    done, rejected, cancelled, at_once = (uid(p) for p in ("e-done", "e-rejected", "e-cancelled", "e-at-once"))
    await ask_and_bid(orch, node_id, done, "echo once")
    await orch.accept(node_id, done)
    await ask_and_bid(orch, node_id, rejected, "echo never")
    await orch.reject(node_id, rejected)
    await ask_and_bid(orch, node_id, cancelled, "sleep 60")
    await orch.accept(node_id, cancelled)
    await orch.send(node_id, m.ASK_FOR_BID, run_at_once(node_id, at_once, "echo at once"))
    await orch.wait_for(lambda: done in orch.results and at_once in orch.results, 30, "two results")
    await containers_running(node_id)
    await orch.cancel(node_id, cancelled)
    assert (await ended(running.node, cancelled)).state is ExecutionState.CANCELLED
    last = len(orch.outbox[node_id])
    await orch.wait_for(lambda: orch.nodes[node_id].node_reported_seq == last, 10, "a heartbeat with all handled")
    received = list(orch.received)
    assert [kind for _, _, kind, _ in received] == [*[m.BID_RESULT] * 3, m.RUN_RESULT, m.RUN_RESULT]

    async def everything_again(restart: bool) -> None:
        nonlocal running
        handshakes = orch.nodes[node_id].handshakes
        sent = {seq: orch.deliveries[(node_id, seq)] for seq in range(1, last + 1)}
        orch.replay_from[node_id] = 0
        if restart:
            await running.stop(1)
            running = await start_node(orch.url)
        else:
            orch.nodes[node_id].connected = False  # the next heartbeat is answered HandshakeRequired
        await orch.wait_for(
            lambda: orch.nodes[node_id].handshakes > handshakes and all(o.acked for o in orch.outbox[node_id]),
            30,
            "every message sent again and acknowledged",
        )
        assert all(orch.deliveries[(node_id, seq)] > n for seq, n in sent.items())  # each one came again
        await asyncio.sleep(3 * HEARTBEAT)
        assert orch.received == received and not orch.duplicates  # no second bid, no second result
        records = {r.execution_id: r.state for r in await running.node.list()}
        assert records == {
            done: ExecutionState.COMPLETED,
            cancelled: ExecutionState.CANCELLED,
            at_once: ExecutionState.COMPLETED,
        }
        assert [c for c in node_containers(node_id) if c.status == "running"] == []
        assert orch.nodes[node_id].node_reported_seq == last

    await everything_again(restart=False)
    await everything_again(restart=True)


async def test_a_message_handled_again_after_a_failure_midway_completes_its_effect(
    orch: TestOrchestrator, start_node: NodeFactory, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's state is written, then the handling fails (a crash there is the same): the message is not
    acknowledged, so it comes again. Handled again, it must finish the job — send the bid, stop the
    container — not take itself for a replay of a message fully handled."""
    running = await start_node(orch.url)
    t = transport(running)
    assert t.ledger is not None
    await joined(orch, node_id)
    asked, at_once, cancelled = uid("e-asked"), uid("e-at-once"), uid("e-cancelled")
    await ask_and_bid(orch, node_id, cancelled, "sleep 60")
    await orch.accept(node_id, cancelled)
    await containers_running(node_id)
    failed: list[str] = []

    def fail_once_after(name: str) -> None:
        ledger = t.ledger
        real = getattr(type(ledger), name)

        async def written_then_failed(*args: Any) -> Any:
            await real(ledger, *args)
            monkeypatch.undo()
            failed.append(name)
            raise OSError(f"the disk went away after {name}")

        monkeypatch.setattr(ledger, name, written_then_failed)

    fail_once_after("track")  # AskForBid: tracked, no bid in the outbox yet
    await orch.ask(node_id, asked, IMAGE, "echo ran")
    await orch.wait_for(lambda: asked in orch.bids, 20, "the bid, once the AskForBid came again")
    assert len(orch.bids[asked]) == 1 and orch.bids[asked][0]["Accepted"]
    fail_once_after("set_state")  # BidAccepted: marked accepted, not started yet
    await orch.accept(node_id, asked)
    await orch.wait_for(lambda: asked in orch.results, 20, "the result, once the BidAccepted came again")
    assert orch.results[asked][0]["RunCommandResult"]["Stdout"] == "ran\n"
    fail_once_after("track")  # AskForBid to run at once: tracked as accepted, not started yet
    await orch.send(node_id, m.ASK_FOR_BID, run_at_once(node_id, at_once, "echo ran at once"))
    await orch.wait_for(lambda: at_once in orch.results, 20, "the result, once the AskForBid came again")
    assert orch.results[at_once][0]["RunCommandResult"]["Stdout"] == "ran at once\n"
    fail_once_after("set_state")  # CancelExecution: marked cancelled, the container not stopped yet
    await orch.cancel(node_id, cancelled)
    assert (await ended(running.node, cancelled)).state is ExecutionState.CANCELLED
    assert failed == ["track", "set_state", "track", "set_state"]
    await asyncio.sleep(3 * HEARTBEAT)
    assert sent_by_node(orch, node_id, asked) == [m.BID_RESULT, m.RUN_RESULT]
    assert sent_by_node(orch, node_id, at_once) == [m.RUN_RESULT]
    assert sent_by_node(orch, node_id, cancelled) == [m.BID_RESULT] and not orch.duplicates
