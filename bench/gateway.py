"""Benchmark 3: a small HTTP request through the node's gateway against the same request sent directly to
the service's published port.

Node: ``haddock serve`` as its own process (``bench/output.py``'s ``NodeProcess``) with
``HADDOCK_SERVICES__GATEWAY_LISTEN=127.0.0.1:<free port>`` and a port range of its own. Service: busybox
``httpd -f -p 8080`` serving a 13-byte page, published by the node, readiness on ``/``.

Load: C concurrent clients (default 50) in this process (aiohttp), each sending ``GET /`` in a loop for a
phase of S seconds, a new connection per request on both sides (busybox httpd closes every connection, so
the direct side cannot keep one alive; the gateway side does not either, for fairness). Phases alternate
direct, gateway, direct, ... (R rounds each) after a warm-up of each. Reported: p50 and p99 latency of
every request and throughput (requests / phase time), per side, and the ratios against the goals
(gateway p50 ≤ 1.3x direct, throughput ≥ 0.7x direct). Errors (non-200) are counted and reported.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import common
from bench.common import IMAGE, RUN_TOKEN, log, percentile, table
from bench.output import NodeProcess
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient

GOAL_P50 = 1.3
GOAL_THROUGHPUT = 0.7
PAGE = "hello, world\n"


@dataclass
class GatewayConfig:
    clients: int = 50
    seconds: float = 5.0
    rounds: int = 3


@dataclass
class Side:
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    wall: float = 0.0
    node_cpu: float = 0.0  # CPU seconds of the node process during this side's phases

    @property
    def throughput(self) -> float:
        return self.requests / self.wall if self.wall else 0.0


async def _phase(url: str, clients: int, seconds: float, side: Side | None) -> None:
    """``clients`` loops of GET ``url`` for ``seconds``; into ``side`` (None: a warm-up)."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        stop_at = time.perf_counter() + seconds
        lats: list[float] = []
        errors = 0

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        body = await resp.read()
                        ok = resp.status == 200 and body == PAGE.encode()
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    lats.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    if side is not None:
        side.latencies += lats
        side.requests += len(lats)
        side.errors += errors
        side.wall += wall


def _service(exec_id: str) -> RunCommandRequest:
    script = f"mkdir -p /www && printf '{PAGE.strip()}\\n' > /www/index.html && exec httpd -f -p 8080 -h /www"
    return RunCommandRequest.model_validate(
        {
            "job_id": f"{RUN_TOKEN}-gateway",
            "execution_id": exec_id,
            "engine": {"image": IMAGE, "parameters": ["sh", "-c", script]},
            "network": {"mode": "bridge"},
            "kind": "service",
            "service": {
                "name": "bench",
                "ports": [{"container_port": 8080}],
                "readiness": {"path": "/", "interval": "200ms"},
            },
        }
    )


async def _main(cfg: GatewayConfig, tmp: Path) -> str:
    gateway = f"127.0.0.1:{common.free_port()}"
    low = 41000 + int(RUN_TOKEN[-4:], 16) % 5000
    node = NodeProcess(
        tmp / "data",
        tmp / "node.log",
        {
            "HADDOCK_SERVICES__GATEWAY_LISTEN": gateway,
            "HADDOCK_SERVICES__PORT_RANGE": f"{low}-{low + 9}",
            "HADDOCK_LOG_LEVEL": "WARNING",
        },
    )
    exec_id = f"{RUN_TOKEN}-svc"
    try:
        await node.ready()
        async with NodeClient(node.address) as client:
            await client.start(_service(exec_id))
            readiness = await client.wait_ready(exec_id)
            if not readiness.ready:
                raise RuntimeError(f"the benchmark's service did not become ready: {readiness.message}")
            described = await client.describe(exec_id)
            port = int(described["request"]["service"]["ports"][0]["host_port"])
            urls = {"direct": f"http://127.0.0.1:{port}/", "gateway": f"http://{gateway}/exec/{exec_id}/"}
            log(f"gateway: service {exec_id} on 127.0.0.1:{port}; gateway {gateway}; {cfg.clients} clients")
            sides = {"direct": Side(), "gateway": Side()}
            for url in urls.values():
                await _phase(url, cfg.clients, 1.0, None)
            for i in range(cfg.rounds):
                for name, url in urls.items():
                    cpu0 = common.proc_cpu_seconds(node.pid)
                    await _phase(url, cfg.clients, cfg.seconds, sides[name])
                    sides[name].node_cpu += common.proc_cpu_seconds(node.pid) - cpu0
                    log(f"gateway: round {i + 1} {name}: {sides[name].requests} requests so far")
            await client.cancel(exec_id)
    finally:
        node.stop()
    return report(cfg, sides)


def report(cfg: GatewayConfig, sides: dict[str, Side]) -> str:
    d, g = sides["direct"], sides["gateway"]
    p50 = {k: percentile(s.latencies, 50) for k, s in sides.items()}
    p99 = {k: percentile(s.latencies, 99) for k, s in sides.items()}
    p50_ratio = p50["gateway"] / p50["direct"]
    tput_ratio = g.throughput / d.throughput if d.throughput else float("nan")
    rows = [
        (
            name,
            str(s.requests),
            str(s.errors),
            common.ms(p50[name]),
            common.ms(p99[name]),
            f"{s.throughput:.0f}",
            f"{1000 * s.node_cpu / s.requests:.2f}" if s.requests else "n/a",
        )
        for name, s in sides.items()
    ]
    p50_met = "**met**" if p50_ratio <= GOAL_P50 else "**missed**"
    tput_met = "**met**" if tput_ratio >= GOAL_THROUGHPUT else "**missed**"
    return "\n".join(
        [
            "### Gateway: a small request through the gateway vs direct to the published port",
            "",
            f"{cfg.clients} concurrent clients, GET / (a 13-byte page from busybox httpd), a new connection per "
            f"request; {cfg.rounds} alternating phases of {cfg.seconds:g} s per side after a 1 s warm-up each.",
            "",
            table(rows, ("side", "requests", "errors", "p50 ms", "p99 ms", "req/s", "node CPU ms/request")),
            "",
            f"- gateway p50 / direct p50: {p50_ratio:.3f}x — goal ≤ {GOAL_P50}x: {p50_met}",
            f"- gateway p99 / direct p99: {p99['gateway'] / p99['direct']:.3f}x",
            f"- gateway throughput / direct: {tput_ratio:.3f}x — goal ≥ {GOAL_THROUGHPUT}x: {tput_met}",
            f"- machine load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
            f"(on {os.cpu_count()} CPUs; the load generator runs on the same machine)",
        ]
    )


def run(cfg: GatewayConfig) -> str:
    with tempfile.TemporaryDirectory(prefix="haddock-bench-gw-") as tmp:
        return asyncio.run(_main(cfg, Path(tmp)))
