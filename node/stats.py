"""Resource samples, one way: runner → here → the durable store, and to followers of a running execution.

The runner hands each sample to :class:`StatsHub` (its stats sink, never blocking); samples are written in
batches, once per ``flush_interval``, by one task, bounded per execution in the store (``statstore.py``).
A sample may come before its execution's record is durable (events are persisted by their own task): it
waits for the next flush, and is given up (with a warning) only after ``MAX_FLUSH_ATTEMPTS`` tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from haddock.executor.stats import Stat, StatsAccumulator, StatsSummary, decimate
from haddock.node.store import ExecutionStore

if TYPE_CHECKING:
    from haddock.node.service import Node

__all__ = ["StatsHub", "StatsUpdate", "execution_stats"]

log = logging.getLogger(__name__)

MAX_FLUSH_ATTEMPTS = 30
FOLLOW_BACKLOG = 4096


class StatsHub:
    """The stats sink of the runner: samples into the store, and to followers."""

    def __init__(self, store: ExecutionStore, *, max_samples: int = 3600, flush_interval: float = 1.0) -> None:
        self.store = store
        self.max_samples = max_samples
        self.flush_interval = flush_interval
        self._pending: dict[str, list[Stat]] = {}
        self._attempts: dict[str, int] = {}
        self._followers: dict[str, set[asyncio.Queue[Stat | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __call__(self, execution_id: str, stat: Stat) -> None:
        self._pending.setdefault(execution_id, []).append(stat)
        for queue in list(self._followers.get(execution_id, ())):
            if queue.qsize() < FOLLOW_BACKLOG:
                queue.put_nowait(stat)

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="haddock-stats")

    async def drain(self) -> None:
        """Stop the periodic flush, then write what is pending."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception as exc:  # kept pending: the next flush tries again
                log.warning("writing resource samples failed: %s", exc)

    async def flush(self) -> None:
        """Write every pending sample now."""
        async with self._lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return
            try:
                missing = await self.store.add_stats(batch, max_samples=self.max_samples)
            except BaseException:
                for exec_id, stats in batch.items():  # back in front of what came meanwhile
                    self._pending[exec_id] = stats + self._pending.get(exec_id, [])
                raise
            for exec_id in batch:
                if exec_id not in missing:
                    self._attempts.pop(exec_id, None)
            for exec_id in missing:
                attempts = self._attempts.get(exec_id, 0) + 1
                if attempts >= MAX_FLUSH_ATTEMPTS:
                    log.warning(
                        "%d resource samples of %s were not kept: the execution is not in the store",
                        len(batch[exec_id]),
                        exec_id,
                    )
                    self._attempts.pop(exec_id, None)
                    continue
                self._attempts[exec_id] = attempts
                self._pending[exec_id] = batch[exec_id] + self._pending.get(exec_id, [])

    async def series(self, execution_id: str) -> list[Stat]:
        """Every sample kept of an execution, in time order (written ones and pending ones)."""
        await self.flush()
        stored = await self.store.stats(execution_id)
        return stored + list(self._pending.get(execution_id, ()))

    # ------------------------------------------------------------------ followers

    def end(self, execution_id: str) -> None:
        """The execution ended: its followers get their end of stream."""
        for queue in list(self._followers.get(execution_id, ())):
            queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def follow(self, execution_id: str) -> AsyncIterator[asyncio.Queue[Stat | None]]:
        """New samples of an execution as they come (None: it ended)."""
        queue: asyncio.Queue[Stat | None] = asyncio.Queue()
        self._followers.setdefault(execution_id, set()).add(queue)
        try:
            yield queue
        finally:
            followers = self._followers.get(execution_id)
            if followers is not None:
                followers.discard(queue)
                if not followers:
                    self._followers.pop(execution_id, None)


@dataclass(frozen=True)
class StatsUpdate:
    """What GetExecutionStats sends: samples (the series so far, then new ones) and the summary."""

    samples: list[Stat]
    summary: StatsSummary | None
    running: bool


async def execution_stats(
    node: Node, execution_id: str, *, max_points: int = 0, follow: bool = False
) -> AsyncIterator[StatsUpdate]:
    """The series so far (decimated to ``max_points``; 0: all kept) with its summary; with ``follow`` and
    a running execution, then each new sample as it comes, and a last update with the final summary.
    Unknown ids raise ExecutionNotFound."""
    if max_points < 0:
        raise ValueError(f"max_points must not be negative, not {max_points}")
    await node.get(execution_id)  # NOT_FOUND for unknown ids
    async with node.stats.follow(execution_id) as queue:  # before reading: no sample falls in between
        series = await node.stats.series(execution_id)
        record = await node.get(execution_id)
        acc = StatsAccumulator()
        for stat in series:
            acc.add(stat)
        running = record.result is None
        summary = record.result.stats if record.result is not None and record.result.stats else acc.summary()
        yield StatsUpdate(decimate(series, max_points) if max_points else series, summary, running)
        if not follow or not running:
            return
        last = series[-1].time if series else None
        while True:
            item = await queue.get()
            if item is None:
                break
            if last is not None and item.time <= last:
                continue  # already sent with the series
            last = item.time
            acc.add(item)
            yield StatsUpdate([item], acc.summary(), True)
    record = await node.get(execution_id)
    final = record.result.stats if record.result is not None and record.result.stats else acc.summary()
    yield StatsUpdate([], final, False)
