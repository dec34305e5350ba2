"""Execution events, one way: runner → events → the durable store, the watchers, and the node's hooks.

Persistence needs nothing but the events: ``accepted`` carries the request, the terminal state event the
result. Events are written to the store in order by one task (retrying a failing write); watchers get
them as they come, and a slow watcher loses pull progress, never a state, the end, or its end of stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable

from haddock.executor.errors import ExecutionAlreadyComplete, ExecutionAlreadyStarted, ExecutionNotFound
from haddock.executor.records import EventKind, ExecutionEvent, ExecutionRecord, ExecutionState
from haddock.node.store import ExecutionStore

__all__ = ["EventHub", "Watcher"]

log = logging.getLogger(__name__)

WATCH_BACKLOG = 1024


class Watcher:
    """One reader's events, bounded: when it falls behind, pull progress is what it misses."""

    def __init__(self, backlog: int = WATCH_BACKLOG) -> None:
        self._items: collections.deque[ExecutionEvent | None] = collections.deque()
        self._backlog = backlog
        self._ready = asyncio.Event()

    def put(self, item: ExecutionEvent | None) -> None:
        if len(self._items) >= self._backlog:
            if item is not None and item.kind is EventKind.PULL_PROGRESS:
                return
            for queued in self._items:  # make room: drop the oldest pull progress
                if queued is not None and queued.kind is EventKind.PULL_PROGRESS:
                    self._items.remove(queued)
                    break
        self._items.append(item)  # states, the end and the end of stream are never dropped
        self._ready.set()

    async def get(self) -> ExecutionEvent | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


TerminalHook = Callable[[ExecutionEvent], None]


class EventHub:
    """Where the runner's events go: the store (in order), watchers, and hooks on an execution's end."""

    def __init__(self, store: ExecutionStore) -> None:
        self.store = store
        self._queue: asyncio.Queue[ExecutionEvent] = asyncio.Queue()
        self._watchers: dict[str, set[Watcher]] = {}
        self._accepted: dict[str, asyncio.Future[None]] = {}
        self._from_queue: set[str] = set()  # its record exists already (it was queued)
        self._terminal_hooks: list[TerminalHook] = []
        self._task: asyncio.Task[None] | None = None

    def on_terminal(self, hook: TerminalHook) -> None:
        """Call ``hook`` with the terminal state event of every execution (once each)."""
        self._terminal_hooks.append(hook)

    def start(self) -> None:
        self._task = asyncio.create_task(self._persist_loop(), name="haddock-persist")

    async def drain(self, bound: float = 30.0) -> None:
        """Wait until every event so far is persisted (at most ``bound`` seconds), then stop persisting."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), bound)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------------ the sink

    def __call__(self, event: ExecutionEvent) -> None:
        """The runner's event sink: persist in order, fan out to watchers, hooks at the end."""
        if event.kind is not EventKind.PULL_PROGRESS:
            self._queue.put_nowait(event)
        for watcher in list(self._watchers.get(event.execution_id, ())):
            watcher.put(event)
        if event.kind is EventKind.STATE and ExecutionState(event.details["state"]).terminal:
            for hook in self._terminal_hooks:
                try:
                    hook(event)
                except Exception:
                    log.exception("a hook on the end of %s failed", event.execution_id)
            self.end_watchers(event.execution_id)

    def expect_accepted(self, execution_id: str, *, from_queue: bool) -> asyncio.Future[None]:
        """A future resolved once the execution's ``accepted`` event is durable."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._accepted[execution_id] = fut
        if from_queue:
            self._from_queue.add(execution_id)
        return fut

    def forget_accepted(self, execution_id: str) -> None:
        self._accepted.pop(execution_id, None)
        self._from_queue.discard(execution_id)

    # ------------------------------------------------------------------ watchers

    def subscribe(self, execution_id: str) -> Watcher:
        watcher = Watcher()
        self._watchers.setdefault(execution_id, set()).add(watcher)
        return watcher

    def unsubscribe(self, execution_id: str, watcher: Watcher) -> None:
        watchers = self._watchers.get(execution_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            self._watchers.pop(execution_id, None)

    def end_watchers(self, execution_id: str | None = None) -> None:
        """End of stream for the watchers of one execution (all of them when None)."""
        ids = list(self._watchers) if execution_id is None else [execution_id]
        for exec_id in ids:
            for watcher in list(self._watchers.get(exec_id, ())):
                watcher.put(None)

    # ------------------------------------------------------------------ persistence

    async def _persist_loop(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._persist_with_retries(event)
            except Exception as exc:
                log.exception("persisting %s of %s failed for good", event.kind.value, event.execution_id)
                fut = self._accepted.pop(event.execution_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            finally:
                self._queue.task_done()

    async def _persist_with_retries(self, event: ExecutionEvent, attempts: int = 5) -> None:
        """A store write that fails (disk full, I/O error) is tried again before it is given up: a lost
        result would make a restart report the execution wrongly."""
        for attempt in range(1, attempts + 1):
            try:
                await self._persist(event)
                return
            except (ExecutionAlreadyStarted, ExecutionAlreadyComplete, ExecutionNotFound):
                raise  # not transient
            except Exception as exc:
                if attempt == attempts:
                    raise
                log.warning("persisting %s of %s failed (%s); trying again", event.kind.value, event.execution_id, exc)
                await asyncio.sleep(0.2 * 2**attempt)

    async def _persist(self, event: ExecutionEvent) -> None:
        exec_id = event.execution_id
        if event.kind is EventKind.ACCEPTED:
            if exec_id in self._from_queue:
                # Admitted from the queue: preparing from now on, durably, so that a restart takes it back
                # as an execution that was handed to the executor (never queued again).
                self._from_queue.discard(exec_id)
                await self.store.add_event(event, state=ExecutionState.PREPARING)
            else:
                assert event.request is not None, "the runner's 'accepted' event carries the request"
                await self.store.create(ExecutionRecord(request=event.request, events=[event], created_at=event.time))
            fut = self._accepted.pop(exec_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if event.kind is EventKind.STATE:
            state = ExecutionState(event.details["state"])
            if state.terminal and event.result is not None:
                await self.store.set_result(exec_id, event.result, state, at=event.time)
                return
            await self.store.set_state(exec_id, state, at=event.time)
            return
        await self.store.add_event(event)
        if event.kind is EventKind.STARTED and event.details.get("container_id"):
            await self.store.set_container(exec_id, str(event.details["container_id"]))
        if event.kind is EventKind.BUILT and event.details.get("image"):
            await self.store.set_built_image(exec_id, str(event.details["image"]))
