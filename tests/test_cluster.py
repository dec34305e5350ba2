"""Three haddock nodes join a (test) Bacalhau orchestrator over a real nats-server on 127.0.0.1.

The nodes are real ``haddock serve`` processes (own data dirs, ports and node ids) on the one engine;
the orchestrator is tests/support/orchestrator.py. The tests run in order on one cluster: handshake and
heartbeats, 30 jobs, malformed messages, kill -9 of a node, a restart of the NATS server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from haddock.executor.docker import LABEL_NODE
from tests.support.daemon import Daemon
from tests.support.natsserver import NatsServer
from tests.support.orchestrator import TestOrchestrator, encode

pytestmark = pytest.mark.engine

HEARTBEAT = 0.5
IMAGE = "haddock-test/busybox"


@dataclass
class Cluster:
    nats: NatsServer
    orch: TestOrchestrator
    nodes: list[Daemon]

    def node(self, i: int) -> Daemon:
        return self.nodes[i]

    def results_dir(self, d: Daemon, exec_id: str) -> Path:
        return d.data_dir / "executions" / exec_id / "results"


def node_env(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "HADDOCK_CLUSTER__ORCHESTRATORS": json.dumps([url]),
        "HADDOCK_CLUSTER__HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "HADDOCK_CLUSTER__HEARTBEAT_MISS_FACTOR": "3",
        "HADDOCK_CLUSTER__RECONNECT_MIN": "0.2",
        "HADDOCK_CLUSTER__RECONNECT_MAX": "1",
        "HADDOCK_CLUSTER__REQUEST_TIMEOUT": "2",
        "HADDOCK_CLUSTER__LABELS": json.dumps({"zone": "test"}),
        "HADDOCK_CAPACITY__CPU": "2",
        "HADDOCK_CAPACITY__MEMORY": "2Gi",
        "HADDOCK_CAPACITY__RESERVE_MEMORY": "0",
        "HADDOCK_DOCKER__STOP_GRACE": "1",
        **(extra or {}),
    }


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, busybox_image: str) -> AsyncIterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    nats_server = NatsServer(log_path=base / "nats.log")
    await nats_server.start()
    orch = TestOrchestrator(nats_server.url, heartbeat_interval=HEARTBEAT, miss_factor=3)
    await orch.start()
    tag = uuid.uuid4().hex[:6]
    deny = {"HADDOCK_BIDDING__IMAGE_POLICY__DENY": json.dumps(["docker.io/haddock-test/*"])}
    nodes = [
        Daemon(
            node_id=f"cl-{tag}-{i}",
            data_dir=base / f"node{i}",
            log_path=base / f"node{i}.log",
            env=node_env(nats_server.url, deny if i == 2 else None),
        )
        for i in range(3)
    ]
    await asyncio.gather(*(d.start() for d in nodes))
    c = Cluster(nats_server, orch, nodes)
    try:
        yield c
    finally:
        for d in nodes:
            if d.proc is not None and d.proc.returncode is None:
                await d.terminate()
        await orch.stop()
        await nats_server.stop()
        client = docker.from_env()
        for d in nodes:
            for ctr in client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={d.node_id}"}):
                ctr.remove(force=True)
        client.close()


def connected(orch: TestOrchestrator, node_id: str) -> bool:
    n = orch.nodes.get(node_id)
    return n is not None and n.connected


async def containers_running(node_id: str, count: int, timeout: float = 30) -> None:
    """Wait until the engine runs ``count`` containers of the node (not merely admitted executions)."""
    client = docker.from_env()
    try:
        for _ in range(int(timeout / 0.2)):
            running = client.containers.list(filters={"label": f"{LABEL_NODE}={node_id}", "status": "running"})
            if len(running) >= count:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{count} containers of {node_id} did not start")
    finally:
        client.close()


async def run_jobs(c: Cluster, jobs: dict[str, tuple[int, str]], timeout: float = 90) -> None:
    """Ask, accept and wait for each job (execution id -> (node index, command))."""
    for exec_id, (i, command) in jobs.items():
        await c.orch.ask(c.node(i).node_id, exec_id, IMAGE, command)
    await c.orch.wait_for(lambda: all(e in c.orch.bids for e in jobs), 30, "bids")
    for exec_id, (i, _) in jobs.items():
        assert c.orch.bids[exec_id][0]["Accepted"], c.orch.bids[exec_id]
        await c.orch.accept(c.node(i).node_id, exec_id)
    await c.orch.wait_for(lambda: all(e in c.orch.results for e in jobs), timeout, "results")


async def test_nodes_handshake_heartbeat_and_report_capacity(cluster: Cluster) -> None:
    orch = cluster.orch
    ids = [d.node_id for d in cluster.nodes]
    await orch.wait_for(lambda: all(connected(orch, n) and orch.nodes[n].heartbeats >= 2 for n in ids), 30, "nodes")
    for n in ids:
        info = orch.nodes[n].info
        assert info["NodeType"] == "Compute"
        assert info["SupportedProtocols"] == ["ncl/v1"]
        assert info["Labels"] == {"zone": "test"}
        compute = info["ComputeNodeInfo"]
        assert compute["ExecutionEngines"] == ["docker"]
        assert compute["MaxCapacity"]["CPU"] == 2 and compute["MaxCapacity"]["Memory"] == 2 * 1024**3
        assert orch.nodes[n].available["CPU"] == 2
    # The node table changes while an execution runs (0.1 CPU, 32 MB), and back when it ends.
    node0 = orch.nodes[ids[0]]
    exec_id = f"e-cap-{uuid.uuid4().hex[:8]}"
    await orch.ask(ids[0], exec_id, IMAGE, "sleep 3")
    await orch.wait_for(lambda: exec_id in orch.bids, 20, "bid")
    await orch.accept(ids[0], exec_id)
    await orch.wait_for(lambda: node0.available.get("CPU") == pytest.approx(1.9), 20, "capacity in use")
    assert node0.available["Memory"] == 2 * 1024**3 - 32 * 1000**2
    await orch.wait_for(lambda: exec_id in orch.results, 30, "result")
    await orch.wait_for(lambda: node0.available.get("CPU") == 2, 10, "capacity back")


async def test_thirty_jobs_bids_with_reasons_and_results_exactly_once(cluster: Cluster) -> None:
    orch = cluster.orch
    jobs: dict[str, tuple[int, str]] = {}
    for i in range(30):
        command = f"echo job-{i}; echo err-{i} >&2; exit {i % 3}"
        if i % 10 == 0:
            command = f"head -c 3000 /dev/zero | tr '\\0' x; echo job-{i}"  # over the 2 KiB inline limit
        jobs[f"e-{uuid.uuid4().hex[:10]}"] = (i % 3, command)
    for exec_id, (i, command) in jobs.items():
        await orch.ask(cluster.node(i).node_id, exec_id, IMAGE, command)
    await orch.wait_for(lambda: all(e in orch.bids for e in jobs), 60, "30 bids")
    placed: dict[str, tuple[int, str]] = {}
    for exec_id, (i, command) in jobs.items():
        (bid,) = orch.bids[exec_id]
        assert bid["Events"][0]["Message"], "every bid has a reason"
        if i == 2:  # denies the image: says no, and why; the orchestrator places the job elsewhere
            assert not bid["Accepted"]
            assert "haddock-test/busybox" in bid["Events"][0]["Message"]
            placed[f"{exec_id}-r"] = (len(placed) % 2, command)
        else:
            assert bid["Accepted"], bid
            await orch.accept(cluster.node(i).node_id, exec_id)
            placed[exec_id] = (i, command)
    await run_jobs(cluster, {k: v for k, v in placed.items() if k.endswith("-r")})
    await orch.wait_for(lambda: all(e in orch.results for e in placed), 120, "30 results")
    assert len(placed) == 30
    for exec_id, (i, _) in placed.items():
        (result,) = orch.results[exec_id]  # exactly once
        assert result["type"] == "RunResult" and result["node"] == cluster.node(i).node_id
        run = result["RunCommandResult"]
        rdir = cluster.results_dir(cluster.node(i), exec_id)
        stdout = (rdir / "stdout").read_text()
        assert run["ExitCode"] == int((rdir / "exitCode").read_text())
        assert run["StdoutTruncated"] == (len(stdout) > 2048)
        assert stdout.startswith(run["Stdout"]) and (run["StdoutTruncated"] or run["Stdout"] == stdout)
        assert run["stderr"] == (rdir / "stderr").read_text() and not run["StderrTruncated"]
    assert not orch.duplicates


async def test_malformed_messages_are_refused_and_the_node_keeps_serving(cluster: Cluster) -> None:
    node_id = cluster.node(0).node_id
    good, meta = encode("BidRejected", {"ExecutionID": "e-none"})
    bad_crc = good[:1] + b"\x00\x00\x00\x00" + good[5:]
    assert "CRC" in (await cluster.orch.send_raw(node_id, bad_crc, meta))["error"]
    body = b"{this is not json"
    import struct
    import zlib

    not_json = struct.pack(">BI", 1, zlib.crc32(body)) + body
    assert "deserialize" in (await cluster.orch.send_raw(node_id, not_json))["error"]
    unknown, meta = encode("LaunchRockets", {"Target": "moon"})
    assert "unsupported message type" in (await cluster.orch.send_raw(node_id, unknown, meta))["error"]
    wrong, meta = encode("AskForBid", {"Execution": "not an execution"})
    assert "AskForBid" in (await cluster.orch.send_raw(node_id, wrong, meta))["error"]
    exec_id = f"e-after-{uuid.uuid4().hex[:8]}"
    await run_jobs(cluster, {exec_id: (0, "echo still here")})
    assert cluster.orch.results[exec_id][0]["RunCommandResult"]["Stdout"] == "still here\n"


async def test_kill_9_of_a_node_then_restart_delivers_results_exactly_once(cluster: Cluster) -> None:
    orch, node = cluster.orch, cluster.node(1)
    before = f"e-before-{uuid.uuid4().hex[:8]}"
    await run_jobs(cluster, {before: (1, "echo reported before the crash")})
    handshakes = orch.nodes[node.node_id].handshakes
    running = {f"e-kill-{k}-{uuid.uuid4().hex[:6]}": (1, f"sleep 3; echo survived-{k}") for k in range(3)}
    for exec_id, (_, command) in running.items():
        await orch.ask(node.node_id, exec_id, IMAGE, command)
    await orch.wait_for(lambda: all(e in orch.bids for e in running), 20, "bids")
    for exec_id in running:
        await orch.accept(node.node_id, exec_id)
    await containers_running(node.node_id, 3)
    received_before = [r for r in orch.received if r[0] == node.node_id]
    await node.kill()
    await orch.wait_for(lambda: not connected(orch, node.node_id), 10, "node marked disconnected")
    assert orch.nodes[node.node_id].disconnects[-1] == "missed 3 heartbeats"
    await node.start()
    await orch.wait_for(
        lambda: connected(orch, node.node_id) and orch.nodes[node.node_id].handshakes > handshakes, 30, "reconnect"
    )
    await orch.wait_for(lambda: all(e in orch.results for e in running), 60, "results after the restart")
    for exec_id, _ in running.items():
        (result,) = orch.results[exec_id]
        assert result["type"] == "RunResult", result["Events"]
        assert result["RunCommandResult"]["Stdout"] == f"survived-{exec_id.split('-')[2]}\n"
    assert len(orch.results[before]) == 1
    assert not orch.duplicates, orch.duplicates
    after = [r for r in orch.received if r[0] == node.node_id]
    assert after[: len(received_before)] == received_before  # nothing reported before was reported again


async def test_nats_restart_nodes_reconnect_and_lose_nothing(cluster: Cluster) -> None:
    orch = cluster.orch
    ids = [d.node_id for d in cluster.nodes]
    handshakes = {n: orch.nodes[n].handshakes for n in ids}
    jobs = {f"e-nats-{k}-{uuid.uuid4().hex[:6]}": (k % 2, f"sleep 2; echo through-{k}") for k in range(4)}
    for exec_id, (i, command) in jobs.items():
        await orch.ask(cluster.node(i).node_id, exec_id, IMAGE, command)
    await orch.wait_for(lambda: all(e in orch.bids for e in jobs), 20, "bids")
    for exec_id, (i, _) in jobs.items():
        await orch.accept(cluster.node(i).node_id, exec_id)
    await asyncio.sleep(0.5)
    await cluster.nats.stop()
    await asyncio.sleep(3)  # the jobs end while the server is away
    await cluster.nats.start()
    await orch.wait_for(
        lambda: all(connected(orch, n) and orch.nodes[n].handshakes > handshakes[n] for n in ids), 90, "reconnects"
    )
    await orch.wait_for(lambda: all(e in orch.results for e in jobs), 60, "results after the NATS restart")
    for exec_id in jobs:
        assert len(orch.results[exec_id]) == 1
    assert not orch.duplicates, orch.duplicates


async def test_sigterm_sends_a_shutdown_notice(cluster: Cluster) -> None:
    """`haddock serve` stopped by SIGTERM tells the orchestrator, with the last of its messages it handled."""
    orch, node = cluster.orch, cluster.node(0)
    await orch.wait_for(lambda: all(o.acked for o in orch.outbox[node.node_id]), 20, "everything handled")
    assert await node.terminate() == 0
    last = len(orch.outbox[node.node_id])
    notice = {"NodeID": node.node_id, "Reason": "node shutting down", "LastOrchestratorSeqNum": last}
    assert orch.controls(node.node_id, "transport.ShutdownNoticeRequest") == [notice]
    assert not connected(orch, node.node_id) and orch.nodes[node.node_id].disconnects[-1] == "shutdown notice"
