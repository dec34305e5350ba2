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
    await start_node(orch.url, settings={"docker": DockerConfig(stop_grace=1, pull_attempts=1)})
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
    missing = run_at_once(node_id, no_image, "true")  # not on the engine, and no registry to pull it from
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
