"""The orchestrator's log requests (``node.compute.<id>.ExecutionLogs/v1``), served from the node's log store.

Bacalhau's stream protocol (``pkg/nats/stream``): the request is ``{"consumerId", "streamId",
"heartBeatRequestSub", "body"}`` with ``body`` the base64 of ``{"ExecutionID", "NodeID", "Tail",
"Follow"}``; the node answers on the request's reply subject with one message per log line,
``{"type": 1, "data": base64({"value": {"Type": 1|2, "Line": "..."}})}`` (1 stdout, 2 stderr), and ends
with ``{"type": 2, "closeError": {"Code": 1000}}`` (4000: bad request, 5000: the node failed).

The request's fields, as Bacalhau's compute node reads them (``pkg/compute/logstream``):

- ``Tail``: start at the end of the log — no history, only what is written from now on (Bacalhau's
  reader starts at "now"); without ``Tail``, the whole history first;
- ``Follow``: keep the stream open for new output until the execution ends; without it the stream ends
  after what is there (so ``Tail`` without ``Follow`` is an empty stream);
- ``NodeID``: the node the orchestrator means; a request for another node is refused (4000) rather than
  answered with this node's logs;
- ``ExecutionID``: an execution the node does not know (yet) is waited for up to
  ``EXECUTION_WAIT_SECONDS`` — a request may race the start of an execution it just accepted; the wait is
  woken by the node's Start of that id (:meth:`Node.wait_known`), not a poll — then refused (5000,
  "execution ... not found"), as Bacalhau's compute node does.

The producer's heartbeats (which let a consumer's abandoned streams be cancelled early) are not
implemented: a stream ends when the execution's output ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from haddock.executor.errors import ExecutorError
from haddock.executor.streams import LogQuery, StreamType
from haddock.node.cluster import messages as m
from haddock.node.service import Node

log = logging.getLogger(__name__)

EXECUTION_WAIT_SECONDS = 5.0  # Bacalhau's executionMaxWaitTime


class LogStreamServer:
    def __init__(self, nc: NATS, node: Node) -> None:
        self.nc = nc
        self.node = node
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, msg: Msg) -> None:
        if not msg.reply:
            log.error("cluster: a log request without a reply subject on %s", msg.subject)
            return
        task = asyncio.create_task(self._serve(msg.reply, msg.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _send(self, reply: str, doc: dict[str, Any]) -> None:
        await self.nc.publish(reply, json.dumps(doc).encode())

    async def _close(self, reply: str, code: int, text: str = "") -> None:
        with contextlib.suppress(Exception):
            await self._send(reply, {"type": m.STREAM_CLOSE, "closeError": {"Code": code, "Text": text}})

    async def _serve(self, reply: str, data: bytes) -> None:
        try:
            stream_request = m.StreamRequest.model_validate_json(data)
            request = m.ExecutionLogsRequest.model_validate_json(base64.b64decode(stream_request.body))
        except (ValidationError, ValueError) as exc:
            await self._close(reply, m.CLOSE_BAD_REQUEST, f"error decoding ExecutionLogsRequest: {exc}")
            return
        own = self.node.settings.node_id
        if request.node_id and request.node_id != own:
            await self._close(reply, m.CLOSE_BAD_REQUEST, f"this is node {own}, not {request.node_id}")
            return
        try:
            query = LogQuery(with_history=not request.tail, follow=request.follow)
            await self.node.wait_known(request.execution_id, EXECUTION_WAIT_SECONDS)
            async for entry in self.node.get_log_stream(request.execution_id, query):
                kind = m.LOG_STDOUT if entry.stream == StreamType.STDOUT else m.LOG_STDERR
                value = {"value": {"Type": kind, "Line": entry.data.decode("utf-8", errors="replace")}}
                await self._send(
                    reply, {"type": m.STREAM_DATA, "data": base64.b64encode(json.dumps(value).encode()).decode()}
                )
        except ExecutorError as exc:
            await self._close(reply, m.CLOSE_INTERNAL_ERROR, f"error in handler ExecutionLogsRequest: {exc}")
            return
        await self._close(reply, m.CLOSE_NORMAL)
