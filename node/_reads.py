"""The node's read side: what it answers about executions and itself without changing anything — an
execution's events (watch), listings, log streams, node info and its services. Private to
:class:`~haddock.node.service.Node`, whose methods of the same names call these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from haddock.executor.errors import ExecutionNotFound
from haddock.executor.fields import is_valid_id
from haddock.executor.logstore import LogEntry
from haddock.executor.quantity import format_duration
from haddock.executor.records import EventKind, ExecutionEvent, ExecutionRecord, ExecutionState
from haddock.executor.streams import LogQuery
from haddock.node.client import NodeInfo
from haddock.node.client._info import ServiceInfo
from haddock.node.policy import free_of

if TYPE_CHECKING:
    from haddock.node.service import Node

log = logging.getLogger("haddock.node.service")

MAX_LIST = 1000
"""ListExecutions answers at most this many executions."""


def known_id(execution_id: str) -> None:
    """Every call that names an execution checks its id the same way: one that cannot exist is not found."""
    if not is_valid_id(execution_id):
        raise ExecutionNotFound(execution_id)


def arrived(node: Node, execution_id: str) -> None:
    """A Start of this id is through (recorded, or refused): wake whoever waits for it to be known."""
    for waiter in node._arrivals.pop(execution_id, ()):
        if not waiter.done():
            waiter.set_result(None)


async def wait_known(node: Node, execution_id: str, within: float) -> ExecutionRecord:
    """The execution's record; one the node does not know yet is waited for up to ``within`` seconds, woken by
    each Start of that id (never polled), then ExecutionNotFound."""
    known_id(execution_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        arrival: asyncio.Future[None] = loop.create_future()
        node._arrivals.setdefault(execution_id, set()).add(arrival)  # before the look: no Start slips between
        try:
            await node._started(execution_id)
            try:
                return await node.get(execution_id)
            except ExecutionNotFound:
                if loop.time() >= deadline:
                    raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrival, deadline - loop.time())
        finally:
            waiters = node._arrivals.get(execution_id)
            if waiters is not None:
                waiters.discard(arrival)
                if not waiters:
                    del node._arrivals[execution_id]


async def watch(node: Node, execution_id: str) -> AsyncIterator[ExecutionEvent]:
    """Events of an execution: those so far, then live ones until it ends (queued ones too)."""
    known_id(execution_id)
    await node._started(execution_id)
    record = node.live_record(execution_id)
    if record is None:
        record = await node.get(execution_id)  # finished long ago: its history only
        for event in record.events:
            yield event
        return
    watcher = node.events.subscribe(execution_id)
    try:
        seen = list(record.events)
        for event in seen:
            yield event
        if record.state.terminal:
            return
        while True:
            item = await watcher.get()
            if item is None:
                return
            if item in seen:  # already sent from history
                continue
            yield item
    finally:
        node.events.unsubscribe(execution_id, watcher)


async def list_executions(node: Node, states: set[ExecutionState] | None, limit: int) -> list[ExecutionRecord]:
    limit = max(1, min(limit, MAX_LIST))
    merged = {r.execution_id: r for r in await node.store.list(states or None, limit=limit)}
    for r in [*node.executor.records(), *node.admission.records()]:  # fresher than persisted
        if not states or r.state in states:
            merged[r.execution_id] = r
        else:
            merged.pop(r.execution_id, None)
    records = sorted(merged.values(), key=lambda r: r.created_at, reverse=True)
    return records[:limit]


async def log_stream(node: Node, execution_id: str, query: LogQuery | None) -> AsyncIterator[LogEntry]:
    """The execution's output. One that has not run yet (queued) has an empty history, and a follower
    waits for its first byte; one that ended without running has none."""
    known_id(execution_id)
    await node._started(execution_id)
    query = query or LogQuery()
    logs = node.executor.logs
    if not logs.exists(execution_id):
        q = node.admission.get(execution_id)
        if q is not None:  # queued: the runner creates its log when it is admitted
            if not query.follow:
                return
            if await asyncio.shield(q.settled) is not None:  # it ended in the queue
                return
        else:
            record = node.live_record(execution_id) or await node.store.get(execution_id)
            if record is None:
                raise ExecutionNotFound(execution_id)
            if not record.state.terminal:
                await node._recovered.wait()  # unfinished from a previous life: recovery makes its log
            elif not any(e.kind is EventKind.ACCEPTED for e in record.events):
                return  # it ended before it ran (cancelled or refused while queued): no output, ever
        if not logs.exists(execution_id):
            raise ExecutionNotFound(
                execution_id,
                f"the logs of execution {execution_id!r} were removed: logs are kept for "
                f"{format_duration(node.settings.log_retention)} after an execution ends",
            )
    async for entry in node.executor.get_log_stream(execution_id, query):
        yield entry


async def node_info(node: Node) -> NodeInfo:
    engine_version = ""
    try:
        engine_version = str((await node.executor.engine_info()).get("ServerVersion", ""))
    except Exception as exc:  # the engine being down must not break node info
        log.warning("engine info unavailable: %s", exc)
    snap = node.capacity.snapshot()
    return NodeInfo(
        node_id=node.settings.node_id,
        version=node.version,
        engine_version=engine_version,
        capacity=snap.capacity,
        allocated=snap.allocated,
        queued=snap.queued,
        free=free_of(snap),
        running=snap.running,
        queued_count=snap.queued_count,
        services=services(node),
        port_range=(node.ports.start, node.ports.end),
        ports_in_use=node.ports.in_use,
        gateway_address=node.gateway_address,
    )


def services(node: Node) -> list[ServiceInfo]:
    """Service executions holding ports, and their states (live, else queued)."""
    out = []
    for held in node.ports.holders():
        live = node.live_record(held.execution_id)
        state = live.state if live is not None else ExecutionState.QUEUED
        job = live.request.job if live is not None else None
        version = job.manifest.version if job is not None else ""
        out.append(ServiceInfo(held.execution_id, held.service_name or "", state, list(held.ports), version))
    return out
