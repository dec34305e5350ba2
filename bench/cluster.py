"""Benchmark 3: a haddock node as a Bacalhau compute node, through NATS (NCL).

A real nats-server on 127.0.0.1, the test orchestrator (tests/support/orchestrator.py) and one node
started in-process (``start_server`` with ``[cluster]``; heartbeats every second).

- Bid round trip: ``AskForBid`` sent (a request on ``...in.msgs``, acknowledged once the node has bid
  and written its answer to the outbox) until the ``BidResult`` arrives on ``...out.msgs``; one at a time.
- Jobs per second: N no-op jobs (``true``) at once, through the whole NCL path (ask, bid, accept, run,
  RunResult) against the same N jobs through gRPC (``NodeClient.run``, all at once), interleaved.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import IMAGE, NODE_ID, RUN_TOKEN, Stats, log, ms, percentile, table
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient
from haddock.node.cluster.config import ClusterSettings
from haddock.node.config import OnShutdown, Settings
from haddock.node.server import start_server
from tests.support.natsserver import NatsServer
from tests.support.orchestrator import TestOrchestrator


@dataclass
class ClusterConfig:
    asks: int = 1000
    jobs: int = 30
    rounds: int = 2


async def run(cfg: ClusterConfig) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="haddock-bench-cluster-"))
    nats_server = NatsServer(log_path=tmp / "nats.log")
    await nats_server.start()
    orch = TestOrchestrator(nats_server.url, heartbeat_interval=1.0, miss_factor=5)
    await orch.start()
    settings = Settings(
        node_id=NODE_ID,
        listen="127.0.0.1:0",
        data_dir=tmp / "data",
        on_shutdown=OnShutdown.STOP,
        shutdown_grace=5,
        cluster=ClusterSettings(orchestrators=[nats_server.url], heartbeat_interval=1.0),
    )
    running = await start_server(settings)
    client = NodeClient(running.address)
    n = 0

    def new_id(kind: str) -> str:
        nonlocal n
        n += 1
        return f"{RUN_TOKEN}-{kind}-{n:05d}"

    try:
        await orch.wait_for(lambda: NODE_ID in orch.nodes and orch.nodes[NODE_ID].connected, 30, "handshake")
        log(f"cluster: {cfg.asks} bid round trips")
        bids: list[float] = []
        for _ in range(cfg.asks):
            exec_id = new_id("ask")
            t0 = time.perf_counter()
            await orch.ask(NODE_ID, exec_id, IMAGE, "true")
            await orch.wait_for(lambda e=exec_id: e in orch.bids, 10, "bid")  # type: ignore[misc]
            bids.append(time.perf_counter() - t0)
        ncl_rates: list[float] = []
        grpc_rates: list[float] = []
        for r in range(cfg.rounds):
            log(f"cluster: round {r + 1}: {cfg.jobs} no-op jobs through NCL, then through gRPC")
            ids = [new_id("ncl") for _ in range(cfg.jobs)]
            t0 = time.perf_counter()
            for exec_id in ids:
                await orch.ask(NODE_ID, exec_id, IMAGE, "true")
            await orch.wait_for(lambda ids=ids: all(e in orch.bids for e in ids), 60, "bids")  # type: ignore[misc]
            for exec_id in ids:
                await orch.accept(NODE_ID, exec_id)
            await orch.wait_for(lambda ids=ids: all(e in orch.results for e in ids), 300, "results")  # type: ignore[misc]
            ncl_rates.append(cfg.jobs / (time.perf_counter() - t0))
            requests = [
                RunCommandRequest.model_validate(
                    {
                        "job_id": "bench",
                        "execution_id": new_id("grpc"),
                        "engine": {"image": IMAGE, "parameters": ["true"]},
                    }
                )
                for _ in range(cfg.jobs)
            ]
            t0 = time.perf_counter()
            await asyncio.gather(*(client.run(req) for req in requests))
            grpc_rates.append(cfg.jobs / (time.perf_counter() - t0))
        assert not orch.duplicates
        s = Stats.of(bids)
        rows = [
            ["bid round trip (AskForBid → BidResult)", ms(s.p50), ms(percentile(bids, 99)), ms(s.mean), str(s.n)],
        ]
        rates = [
            [f"round {i + 1}", f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}"]
            for i, (a, b) in enumerate(zip(ncl_rates, grpc_rates, strict=True))
        ]
        return "\n".join(
            [
                "### Cluster (NCL over NATS)",
                "",
                table(rows, ["what", "p50", "p99", "mean", "n"]),
                "",
                f"{cfg.jobs} no-op jobs at once, jobs per second:",
                "",
                table(rates, ["", "NCL (ask, accept, RunResult)", "gRPC (Run)", "NCL / gRPC"]),
            ]
        )
    finally:
        await client.close()
        await running.stop(5)
        await orch.stop()
        await nats_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
