"""What sampling resource statistics costs: N running containers sampled every second, three ways.

- ``off``: the containers run, nobody samples (the baseline);
- ``stream``: the driver's sampler (``executor/docker/stats.py``): one engine stats stream per container,
  read by a thread each (the engine pushes one document per second per stream);
- ``one-shot``: the alternative measured against it: a one-shot stats call per container per interval,
  from a thread per container.

For each: CPU seconds of this process (the node's side: the sampler and the parsing into ``Stat``) and of
the engine (dockerd + containerd) over the same wall time, as a share of one core. Goal: < 2% of one core
extra for the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker

from bench import common
from bench.raw import host_config_kwargs
from haddock.executor.docker.config import DockerConfig
from haddock.executor.docker.engine import Engine
from haddock.executor.docker.stats import Reading, parse_stats, sample

GOAL = 0.02  # of one core, extra for the node


@dataclass(frozen=True)
class StatsConfig:
    containers: int = 50
    seconds: float = 30.0
    interval: float = 1.0


@dataclass(frozen=True)
class Cost:
    mode: str
    samples: int
    node_core: float  # share of one core
    engine_core: float
    wall: float


def start_containers(client: docker.APIClient, n: int) -> list[str]:
    ids = []
    for i in range(n):
        exec_id = f"{common.RUN_TOKEN}-stats-{i}"
        c = client.create_container(
            common.IMAGE,
            ["sleep", "3600"],
            labels={common.LABEL_NODE: common.NODE_ID, common.LABEL_EXECUTION: exec_id},
            host_config=client.create_host_config(**host_config_kwargs(), mem_limit="16m"),
        )
        client.start(c["Id"])
        ids.append(str(c["Id"]))
    return ids


def measure(mode: str, seconds: float, run: Callable[[threading.Event, list[int]], None]) -> Cost:
    stop = threading.Event()
    count = [0]
    meter = common.CpuMeter()
    worker = threading.Thread(target=run, args=(stop, count), daemon=True)
    worker.start()
    time.sleep(seconds)
    stop.set()
    use = meter.stop()
    worker.join(timeout=10)
    return Cost(mode, count[0], use.self_cpu / use.wall, use.engine_cpu / use.wall, use.wall)


def run_off(ids: list[str], interval: float) -> Callable[[threading.Event, list[int]], None]:
    def go(stop: threading.Event, count: list[int]) -> None:
        stop.wait()

    return go


def run_stream(ids: list[str], interval: float) -> Callable[[threading.Event, list[int]], None]:
    """The driver's sampler: ``executor/docker/stats.py``."""

    def go(stop: threading.Event, count: list[int]) -> None:
        async def main() -> None:
            engine = Engine(DockerConfig())

            async def one(cid: str) -> None:
                async for _ in sample(engine, cid, interval):
                    count[0] += 1

            tasks = [asyncio.create_task(one(cid)) for cid in ids]
            await asyncio.to_thread(stop.wait)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            engine.close()

        asyncio.run(main())

    return go


def run_one_shot(ids: list[str], interval: float) -> Callable[[threading.Event, list[int]], None]:
    """The alternative: a one-shot stats call per container per interval, a thread per container (a
    one-shot call waits for the engine collector's next tick, about a second, on Docker 20.10)."""

    def go(stop: threading.Event, count: list[int]) -> None:
        client = common.docker_client(max_pool_size=len(ids) + 4)
        lock = threading.Lock()

        def loop(cid: str) -> None:
            previous: Reading | None = None
            while not stop.is_set():
                began = time.monotonic()
                with contextlib.suppress(Exception):
                    parsed = parse_stats(client.stats(cid, stream=False, one_shot=True), previous)
                    if parsed is not None:
                        _, previous = parsed
                        with lock:
                            count[0] += 1
                stop.wait(max(0.0, interval - (time.monotonic() - began)))

        threads = [threading.Thread(target=loop, args=(cid,), daemon=True) for cid in ids]
        for t in threads:
            t.start()
        stop.wait()
        deadline = time.monotonic() + 5
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        client.close()

    return go


def run(cfg: StatsConfig) -> str:
    client = common.docker_client()
    common.log(f"stats: starting {cfg.containers} containers")
    ids = start_containers(client, cfg.containers)
    costs: list[Cost] = []
    try:
        time.sleep(2)
        for mode, make in (("off", run_off), ("stream", run_stream), ("one-shot", run_one_shot)):
            common.log(f"stats: {mode} for {cfg.seconds:.0f} s")
            costs.append(measure(mode, cfg.seconds, make(ids, cfg.interval)))
    finally:
        for cid in ids:
            with contextlib.suppress(docker.errors.NotFound):
                client.remove_container(cid, force=True, v=True)
        client.close()
    return report(cfg, costs)


def report(cfg: StatsConfig, costs: list[Cost]) -> str:
    base = costs[0]
    rows = [
        (
            c.mode,
            str(c.samples),
            f"{c.samples / c.wall:.1f}",
            f"{c.node_core * 100:.2f}%",
            f"{(c.node_core - base.node_core) * 100:+.2f}%",
            f"{c.engine_core * 100:.1f}%",
            f"{(c.engine_core - base.engine_core) * 100:+.1f}%",
        )
        for c in costs
    ]
    kept = next(c for c in costs if c.mode == "stream")
    extra = kept.node_core - base.node_core
    lines = [
        f"### Sampling cost: {cfg.containers} running containers, every {cfg.interval:g} s, {cfg.seconds:.0f} s each",
        "",
        common.table(rows, ("mode", "samples", "samples/s", "node CPU", "node extra", "engine CPU", "engine extra")),
        "",
        f"Node CPU is a share of one core. The driver's sampler (stream) costs the node "
        f"{extra * 100:.2f}% of one core extra: {'**met**' if extra < GOAL else '**missed**'} "
        f"(goal < {GOAL * 100:.0f}%).",
    ]
    return "\n".join(lines)
