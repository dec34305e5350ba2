"""The async Python client for requesters (and the CLI): every node operation, typed.

    async with NodeClient("127.0.0.1:7420", token="...") as node:
        started = await node.start(request)
        async for chunk in node.logs(started.execution_id, LogQuery(follow=True)):
            ...
        done = await node.wait(started.execution_id)

Errors from the node raise :class:`NodeError`, carrying the gRPC status code and the node's
message; an unreachable node raises it with ``UNAVAILABLE``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format

from haddock.executor.logstore import LogEntry
from haddock.executor.records import BidResult, EventKind, ExecutionEvent, ExecutionState, RunCommandResult
from haddock.executor.request import Resources, RunCommandRequest
from haddock.executor.stats import Stat, StatsSummary
from haddock.executor.streams import LogQuery
from haddock.node.client import convert, wire
from haddock.node.client._info import NodeInfo
from haddock.v1 import executor_pb2, executor_pb2_grpc, node_pb2, node_pb2_grpc

DEFAULT_NODE = "127.0.0.1:7420"


class NodeError(Exception):
    """The node refused or failed a call; ``code`` is the gRPC status, ``message`` the node's words."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, exc: grpc.aio.AioRpcError, address: str) -> NodeError:
        code = exc.code()
        details = exc.details() or code.name
        if code is grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
            details = f"cannot reach the node at {address}: {details}"
        return cls(code, details)


@dataclass(frozen=True)
class ClientTls:
    """TLS for the channel: the CA that signed the node's certificate, and for mTLS our own pair."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


@dataclass(frozen=True)
class Started:
    execution_id: str
    results_dir: str


@dataclass(frozen=True)
class Finished:
    execution_id: str
    result: RunCommandResult
    results_dir: str

    def as_json(self) -> dict[str, Any]:
        """The CLI's ``--json`` shape."""
        r = self.result
        return {
            "execution_id": self.execution_id,
            "status": r.status.value,
            "exit_code": r.exit_code,
            "stdout": r.stdout,
            "stdout_truncated": r.stdout_truncated,
            "stdout_file_truncated": r.stdout_file_truncated,
            "stderr": r.stderr,
            "stderr_truncated": r.stderr_truncated,
            "stderr_file_truncated": r.stderr_file_truncated,
            "error_message": r.error_message,
            "results_dir": self.results_dir,
            "published": r.published,
            "publish_errors": r.publish_errors,
            "stats": r.stats.model_dump() if r.stats is not None else None,
        }


@dataclass(frozen=True)
class ExecutionStats:
    """One update of GetExecutionStats: samples (the series so far, then new ones) and the summary."""

    samples: list[Stat]
    summary: StatsSummary | None
    running: bool
    interval: float  # seconds between samples on the node (0: sampling is off)


@dataclass(frozen=True)
class ExecutionSummary:
    execution_id: str
    job_id: str
    image: str
    state: ExecutionState
    status: str
    created_at: str
    finished_at: str
    kind: str = "batch"
    service_name: str = ""
    ports: tuple[str, ...] = ()  # "127.0.0.1:30000->8080/tcp"


@dataclass(frozen=True)
class Readiness:
    """Where a service stands once it is ready or has ended; ``message`` says why."""

    execution_id: str
    state: ExecutionState
    message: str

    @property
    def ready(self) -> bool:
        return self.state is ExecutionState.READY


class NodeClient:
    def __init__(
        self,
        address: str = DEFAULT_NODE,
        *,
        token: str | None = None,
        tls: ClientTls | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address = address
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        options: list[tuple[str, int]] = [("grpc.enable_retries", 1), *wire.client_options()]
        if tls is not None:
            self._channel = grpc.aio.secure_channel(address, tls.credentials(), options=options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self._executor = executor_pb2_grpc.ExecutorServiceStub(self._channel)
        self._node = node_pb2_grpc.NodeServiceStub(self._channel)

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise NodeError.from_rpc(exc, self.address) from None

    # ------------------------------------------------------------------ executor

    async def is_installed(self) -> bool:
        resp = await self._unary(self._executor.IsInstalled, executor_pb2.IsInstalledRequest())
        return bool(resp.installed)

    async def should_bid(self, request: RunCommandRequest) -> BidResult:
        resp = await self._unary(
            self._executor.ShouldBid, executor_pb2.ShouldBidRequest(request=convert.request_to_pb(request))
        )
        return BidResult(should_bid=resp.result.should_bid, reason=resp.result.reason)

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources | None = None) -> BidResult:
        msg = executor_pb2.ShouldBidBasedOnUsageRequest(request=convert.request_to_pb(request))
        if usage is not None:
            msg.usage.CopyFrom(convert.resources_to_pb(usage))
        resp = await self._unary(self._executor.ShouldBidBasedOnUsage, msg)
        return BidResult(should_bid=resp.result.should_bid, reason=resp.result.reason)

    async def start(self, request: RunCommandRequest, *, queue: bool = False, priority: int = 0) -> Started:
        """Start an execution. One that does not fit in what the node has free waits in its queue
        (``queue=True``) or is refused with RESOURCE_EXHAUSTED."""
        resp = await self._unary(
            self._executor.Start,
            executor_pb2.StartRequest(request=convert.request_to_pb(request), queue=queue, priority=priority),
        )
        return Started(execution_id=resp.execution_id, results_dir=resp.results_dir)

    async def run(self, request: RunCommandRequest, *, queue: bool = False, priority: int = 0) -> Finished:
        resp = await self._unary(
            self._executor.Run,
            executor_pb2.RunRequest(request=convert.request_to_pb(request), queue=queue, priority=priority),
        )
        return Finished(resp.execution_id, convert.result_from_pb(resp.result), resp.result.results_dir)

    async def wait(self, execution_id: str) -> Finished:
        resp = await self._unary(self._executor.Wait, executor_pb2.WaitRequest(execution_id=execution_id))
        return Finished(resp.execution_id, convert.result_from_pb(resp.result), resp.result.results_dir)

    async def cancel(self, execution_id: str) -> Finished:
        resp = await self._unary(self._executor.Cancel, executor_pb2.CancelRequest(execution_id=execution_id))
        return Finished(resp.execution_id, convert.result_from_pb(resp.result), resp.result.results_dir)

    async def logs(self, execution_id: str, query: LogQuery | None = None) -> AsyncIterator[LogEntry]:
        """The execution's output (all of it, both streams, by default); resume after a dropped
        connection with ``LogQuery(offset=last.next_offset)``."""
        call = self._executor.GetLogStream(
            convert.log_query_to_pb(execution_id, query or LogQuery()), metadata=self._metadata
        )
        try:
            async for resp in call:
                yield convert.log_entry_from_pb(resp)
        except grpc.aio.AioRpcError as exc:
            raise NodeError.from_rpc(exc, self.address) from None
        finally:
            call.cancel()

    # ------------------------------------------------------------------ node

    async def watch(self, execution_id: str) -> AsyncIterator[ExecutionEvent]:
        """The execution's events so far, then live ones (incl. pull progress) until it ends."""
        call = self._node.WatchExecution(
            node_pb2.WatchExecutionRequest(execution_id=execution_id), metadata=self._metadata
        )
        try:
            async for resp in call:
                yield convert.event_from_pb(resp.event, execution_id)
        except grpc.aio.AioRpcError as exc:
            raise NodeError.from_rpc(exc, self.address) from None
        finally:
            call.cancel()

    async def stats(
        self, execution_id: str, *, max_points: int = 0, follow: bool = False
    ) -> AsyncIterator[ExecutionStats]:
        """The execution's resource samples (at most ``max_points`` in the first update; 0: all the node
        keeps) and their summary; with ``follow``, then the samples taken since, until it ends."""
        call = self._node.GetExecutionStats(
            node_pb2.GetExecutionStatsRequest(execution_id=execution_id, max_points=max_points, follow=follow),
            metadata=self._metadata,
        )
        try:
            async for resp in call:
                yield ExecutionStats(
                    samples=[convert.stat_from_pb(s) for s in resp.samples],
                    summary=convert.summary_from_pb(resp.summary) if resp.HasField("summary") else None,
                    running=resp.running,
                    interval=resp.interval_seconds,
                )
        except grpc.aio.AioRpcError as exc:
            raise NodeError.from_rpc(exc, self.address) from None
        finally:
            call.cancel()

    async def wait_ready(self, execution_id: str) -> Readiness:
        """Until the service execution is ready (its readiness probe passes), or has ended."""
        current = await self.get_execution(execution_id)
        state = convert.state_from_pb(current.state)
        if state is ExecutionState.READY or state.terminal:
            return Readiness(execution_id, state, _ended(current) if state.terminal else "ready")
        seen = len(current.events)  # the watch replays these first: an older 'ready' is not this one
        async for i, event in _enumerate(self.watch(execution_id)):
            if i < seen or event.kind is not EventKind.STATE:
                continue
            state = ExecutionState(str(event.details.get("state")))
            if state is ExecutionState.READY:
                return Readiness(execution_id, state, event.message)
            if state.terminal:
                break
        final = await self.get_execution(execution_id)
        return Readiness(execution_id, convert.state_from_pb(final.state), _ended(final))

    async def node_info(self) -> NodeInfo:
        return convert.info_from_pb(await self._unary(self._node.GetNodeInfo, node_pb2.GetNodeInfoRequest()))

    async def list_job_types(self) -> list[dict[str, Any]]:
        """The job types the node builds jobs with (name, version, url, base_image, single_template, directory)."""
        answer = await self._unary(self._node.ListJobTypes, node_pb2.ListJobTypesRequest())
        return [
            {
                "name": t.name,
                "version": t.version,
                "url": t.url,
                "base_image": t.base_image,
                "single_template": t.single_template,
                "directory": t.directory,
            }
            for t in answer.job_types
        ]

    async def list_executions(
        self, states: set[ExecutionState] | None = None, limit: int = 100
    ) -> list[ExecutionSummary]:
        msg = node_pb2.ListExecutionsRequest(states=[convert.state_to_pb(s) for s in states or ()], limit=limit)
        resp = await self._unary(self._node.ListExecutions, msg)
        out = []
        for e in resp.executions:
            out.append(
                ExecutionSummary(
                    execution_id=e.execution_id,
                    job_id=e.job_id,
                    image=e.image,
                    state=convert.state_from_pb(e.state),
                    status=convert.status_from_pb(e.status).value if e.status else "",
                    created_at=convert.from_timestamp(e.created_at).isoformat() if e.HasField("created_at") else "",
                    finished_at=convert.from_timestamp(e.finished_at).isoformat() if e.HasField("finished_at") else "",
                    kind=convert.kind_from_pb(e.kind).value,
                    service_name=e.service_name,
                    ports=tuple(
                        f"{p.host_ip}:{p.host_port}->{p.container_port}/{p.protocol or 'tcp'}"
                        for p in e.ports
                        if p.host_port
                    ),
                )
            )
        return out

    async def get_execution(self, execution_id: str) -> node_pb2.GetExecutionResponse:
        resp: node_pb2.GetExecutionResponse = await self._unary(
            self._node.GetExecution, node_pb2.GetExecutionRequest(execution_id=execution_id)
        )
        return resp

    async def describe(self, execution_id: str) -> dict[str, Any]:
        """GetExecution as JSON-ready data (proto field names)."""
        msg = await self.get_execution(execution_id)
        data: dict[str, Any] = json_format.MessageToDict(
            msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return data


def _ended(msg: node_pb2.GetExecutionResponse) -> str:
    return msg.result.error_message or convert.state_from_pb(msg.state).value


async def _enumerate(items: AsyncIterator[ExecutionEvent]) -> AsyncIterator[tuple[int, ExecutionEvent]]:
    i = 0
    async for item in items:
        yield i, item
        i += 1
