"""Housekeeping: the reaper of containers nobody knows, and the pruner of old logs and records."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from haddock.executor.protocol import Executor
from haddock.executor.records import ExecutionState, utcnow
from haddock.node.config import Settings
from haddock.node.store import ExecutionStore

__all__ = ["Housekeeping"]

log = logging.getLogger(__name__)

TERMINAL = frozenset(s for s in ExecutionState if s.terminal)


class Housekeeping:
    """Runs the reaper and the pruner in the background until :meth:`stop`."""

    def __init__(
        self, settings: Settings, executor: Executor, store: ExecutionStore, *, live: Callable[[str], bool]
    ) -> None:
        """``live(id)``: the execution is not over yet in memory (its log and record must stay)."""
        self.settings = settings
        self.executor = executor
        self.store = store
        self._live = live
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._reap_loop(), name="haddock-reaper"))
        self._tasks.append(asyncio.create_task(self._prune_loop(), name="haddock-pruner"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _reap_loop(self) -> None:
        interval = max(5.0, self.settings.docker.orphan_grace / 2)
        while True:
            try:
                # Containers of executions the store has not finished are not orphans (recovery may
                # still be waiting for the engine).
                keep = {r.execution_id for r in await self.store.non_terminal()}
                await self.executor.reap_orphans(keep=keep)
            except Exception as exc:
                log.warning("looking for orphaned containers failed: %s", exc)
            await asyncio.sleep(interval)

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("pruning failed")
            await asyncio.sleep(self.settings.prune_interval)

    async def prune(self) -> list[str]:
        """Remove logs past their retention or over the size cap (oldest first), and old records."""
        now = utcnow()
        removed: list[str] = []
        finished = [
            r
            for r in await self.store.list(set(TERMINAL), limit=1_000_000)
            if r.finished_at is not None and not self._live(r.execution_id)
        ]
        finished.sort(key=lambda r: r.finished_at or r.created_at)
        logs = self.executor.logs
        cutoff = now - timedelta(seconds=self.settings.log_retention)
        sizes = {r.execution_id: _size(logs.path(r.execution_id)) for r in finished}
        total = sum(_size(p) or 0 for p in logs.root.glob("*.log"))
        for r in finished:
            exec_id = r.execution_id
            if sizes[exec_id] is None:
                continue
            assert r.finished_at is not None
            if r.finished_at < cutoff or total > self.settings.log_max_bytes:
                await asyncio.to_thread(logs.delete, exec_id)
                total -= sizes[exec_id] or 0
                removed.append(exec_id)
        if removed:
            log.info("pruned logs", extra={"count": len(removed)})
        for exec_id in await self.store.prune(now - timedelta(seconds=self.settings.record_retention)):
            await asyncio.to_thread(shutil.rmtree, self.settings.executions_dir / exec_id, True)
            if logs.exists(exec_id):
                await asyncio.to_thread(logs.delete, exec_id)
        return removed


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
