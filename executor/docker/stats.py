"""Resource samples of one container from the Docker engine's stats API.

How: one engine stats stream per running container (``GET /containers/{id}/stats?stream=1``: the engine's
collector pushes a document a second for all subscribers at once), read on a thread of its own; CPU cores
are computed from the cumulative counters of two consecutive samples. A periodic one-shot call per
container was measured against it with 50 running containers on a 2-core machine (``python -m bench
stats``): on this engine (20.10) a one-shot call also waits for the collector's next tick (about 1 s), so
it holds a thread as long as a stream does, and costs more CPU (a request per sample). The numbers are in
the benchmark's report.

Sampling must never hold up the job's capture, stop or results: the streams use threads and connections of
their own (``Engine.stats_pool``, ``Engine.stats_client``), nobody waits for a stream to end, and an engine
that stops answering stats makes the iterator skip samples (logged once), never fail the execution.

Both cgroup versions: CPU from ``cpu_stats.cpu_usage.total_usage`` (ns); memory in use is ``usage`` less the
inactive file cache (``total_inactive_file`` on v1, ``inactive_file`` on v2, as ``docker stats`` shows it);
the peak is the engine's ``max_usage`` where the kernel keeps one (v1), else the highest usage seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker.errors

from haddock.executor.docker.engine import Engine
from haddock.executor.docker.times import engine_time
from haddock.executor.stats import Stat

__all__ = ["Reading", "parse_stats", "sample"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    """What the next sample's CPU cores are computed against."""

    time: datetime
    cpu_ns: int
    peak: float


def _blkio(raw: dict[str, Any]) -> tuple[int, int]:
    read = write = 0
    for entry in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += int(entry.get("value") or 0)
        elif op == "write":
            write += int(entry.get("value") or 0)
    return read, write


def parse_stats(raw: dict[str, Any], previous: Reading | None) -> tuple[Stat, Reading] | None:
    """One sample from the engine's stats JSON (cgroup v1 or v2); None when the container is not running."""
    memory = raw.get("memory_stats") or {}
    when = engine_time(str(raw.get("read") or ""))
    if when is None or not memory:
        return None
    cpu_ns = int(((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)
    cores = 0.0
    if previous is not None:
        elapsed_ns = (when - previous.time).total_seconds() * 1e9
        if elapsed_ns > 0 and cpu_ns >= previous.cpu_ns:
            cores = (cpu_ns - previous.cpu_ns) / elapsed_ns
    detail = memory.get("stats") or {}
    usage = int(memory.get("usage") or 0)
    inactive = int(detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0)
    in_use = usage - inactive if inactive < usage else usage
    peak = max(float(memory.get("max_usage") or 0), float(usage), previous.peak if previous else 0.0)
    read, write = _blkio(raw)
    networks = (raw.get("networks") or {}).values()
    stat = Stat(
        time=when,
        cpu_cores=cores,
        cpu_seconds=cpu_ns / 1e9,
        memory_bytes=in_use,
        memory_peak_bytes=peak,
        memory_limit_bytes=int(memory.get("limit") or 0),
        pids=int((raw.get("pids_stats") or {}).get("current") or 0),
        block_read_bytes=read,
        block_write_bytes=write,
        net_rx_bytes=sum(int(n.get("rx_bytes") or 0) for n in networks),
        net_tx_bytes=sum(int(n.get("tx_bytes") or 0) for n in networks),
    )
    return stat, Reading(time=when, cpu_ns=cpu_ns, peak=peak)


class _Stream:
    """One container's engine stats stream, read on a thread of the stats pool; samples go to ``emit``."""

    def __init__(self, engine: Engine, container_id: str, interval: float, emit: Callable[[Stat | None], None]):
        self._engine = engine
        self._container_id = container_id
        self._interval = interval
        self._emit = emit
        self._stopped = threading.Event()
        self._sock: socket.socket | None = None

    def stop(self) -> None:
        """Unblock the reader (shutting its socket down: closing alone does not wake it) and let it end."""
        self._stopped.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        """Until the container stops, it is gone, or :meth:`stop`; an engine error means a new stream after
        the interval (logged once), never an exception."""
        previous: Reading | None = None
        failing = False
        try:
            while not self._stopped.is_set():
                try:
                    previous = self._read(previous)
                    return  # the stream ended: the container stopped
                except docker.errors.NotFound:
                    return
                except Exception as exc:
                    if self._stopped.is_set():
                        return
                    if not failing:
                        log.warning("the stats stream of %s failed (%s); trying on", self._container_id[:12], exc)
                    failing = True
                    self._stopped.wait(max(self._interval, 1.0))
        finally:
            self._emit(None)

    def _read(self, previous: Reading | None) -> Reading | None:
        client = self._engine.stats_client
        response = client._get(
            client._url("/containers/{0}/stats", self._container_id), params={"stream": 1}, stream=True
        )
        try:
            client._raise_for_status(response)
            with contextlib.suppress(Exception):
                wrapper = client._get_raw_response_socket(response)
                raw_sock = getattr(wrapper, "_sock", wrapper)
                self._sock = raw_sock if isinstance(raw_sock, socket.socket) else None
            if self._stopped.is_set():
                return previous
            for raw in client._stream_helper(response, decode=True):
                if self._stopped.is_set():
                    return previous
                when = engine_time(str(raw.get("read") or ""))
                if when is None or not raw.get("memory_stats"):
                    return previous  # no longer running
                if previous is not None and (when - previous.time).total_seconds() < self._interval * 0.9:
                    continue  # the engine pushes every second: take every n-th
                parsed = parse_stats(raw, previous)
                if parsed is None:
                    return previous
                stat, previous = parsed
                self._emit(stat)
            return previous
        finally:
            self._sock = None
            response.close()


async def sample(engine: Engine, container_id: str, interval: float) -> AsyncIterator[Stat]:
    """Samples of a running container about every ``interval`` seconds (the engine pushes one a second;
    intervals are whole seconds in effect), the first at once; ends when the container is gone or no
    longer running. Engine failures skip samples (logged once), never raise."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Stat | None] = asyncio.Queue()

    def emit(item: Stat | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    stream = _Stream(engine, container_id, interval, emit)
    await engine.client_async()  # created off the loop, before the stream thread needs its twin
    reader = loop.run_in_executor(engine.stats_pool, stream.run)
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item
    finally:
        stream.stop()  # never waited for: the thread ends by itself
        reader.add_done_callback(lambda f: f.cancelled() or f.exception())
