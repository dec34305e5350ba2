"""gRPC servicers: translate proto ⇄ domain and map domain errors to status codes. Nothing is decided here.

``grpc_status`` is the one place where errors become gRPC status codes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from pydantic import ValidationError

from haddock.executor.errors import ErrorCode, ExecutorError, clip, shown
from haddock.executor.logstore import LogCorrupted, LogNotFound
from haddock.executor.quantity import QuantityError
from haddock.executor.records import EventKind, ExecutionRecord
from haddock.node.client import convert
from haddock.node.client.convert import validation_message
from haddock.node.service import Node, new_execution_id
from haddock.v1 import executor_pb2, executor_pb2_grpc, node_pb2, node_pb2_grpc
from haddock.v1 import types_pb2 as pb

log = logging.getLogger(__name__)

_CODES = {
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message for an error raised while serving a call; the message under 1 KiB, whatever
    the request echoed into it (gRPC carries it in a header)."""
    code, message = _status(exc)
    return code, clip(message)


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ExecutorError):
        return _CODES[exc.code], exc.message
    if isinstance(exc, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, validation_message(exc)
    if isinstance(exc, QuantityError | convert.ConversionError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {exc}"
    if isinstance(exc, LogNotFound):
        return grpc.StatusCode.NOT_FOUND, f"no logs for execution {shown(exc.execution_id)} on this node"
    if isinstance(exc, LogCorrupted):
        return grpc.StatusCode.DATA_LOSS, str(exc)
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


R = TypeVar("R")


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = grpc_status(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", fn.__name__)
            await context.abort(code, message)
            raise AssertionError("unreachable") from exc

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = grpc_status(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", fn.__name__)
            await context.abort(code, message)

    return wrapper


def _request(p: pb.RunCommandRequest) -> Any:
    if not p.execution_id:
        p.execution_id = new_execution_id()
    return convert.request_from_pb(p)


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    @unary
    async def IsInstalled(self, request: Any, context: Any) -> executor_pb2.IsInstalledResponse:
        return executor_pb2.IsInstalledResponse(installed=await self.node.executor.is_installed())

    @unary
    async def ShouldBid(self, request: Any, context: Any) -> executor_pb2.ShouldBidResponse:
        bid = await self.node.should_bid(_request(request.request))
        return executor_pb2.ShouldBidResponse(result=pb.BidResult(should_bid=bid.should_bid, reason=bid.reason))

    @unary
    async def ShouldBidBasedOnUsage(self, request: Any, context: Any) -> executor_pb2.ShouldBidBasedOnUsageResponse:
        usage = convert.resources_from_pb(request.usage) if request.HasField("usage") else None
        bid = await self.node.should_bid_based_on_usage(_request(request.request), usage)
        return executor_pb2.ShouldBidBasedOnUsageResponse(
            result=pb.BidResult(should_bid=bid.should_bid, reason=bid.reason)
        )

    @unary
    async def Start(self, request: Any, context: Any) -> executor_pb2.StartResponse:
        started = await self.node.start(_request(request.request), queue=request.queue, priority=request.priority)
        return executor_pb2.StartResponse(execution_id=started.execution_id, results_dir=str(started.results_dir))

    @unary
    async def Run(self, request: Any, context: Any) -> executor_pb2.RunResponse:
        started = await self.node.start(_request(request.request), queue=request.queue, priority=request.priority)
        result = await self.node.wait(started.execution_id)
        return executor_pb2.RunResponse(
            execution_id=started.execution_id, result=convert.result_to_pb(result, str(started.results_dir))
        )

    @unary
    async def Wait(self, request: Any, context: Any) -> executor_pb2.WaitResponse:
        result = await self.node.wait(request.execution_id)
        return executor_pb2.WaitResponse(
            execution_id=request.execution_id, result=convert.result_to_pb(result, await self._results_dir(request))
        )

    @unary
    async def Cancel(self, request: Any, context: Any) -> executor_pb2.CancelResponse:
        result = await self.node.cancel(request.execution_id)
        return executor_pb2.CancelResponse(
            execution_id=request.execution_id, result=convert.result_to_pb(result, await self._results_dir(request))
        )

    @streaming
    async def GetLogStream(self, request: Any, context: Any) -> AsyncIterator[executor_pb2.GetLogStreamResponse]:
        query = convert.log_query_from_pb(request)
        async for entry in self.node.get_log_stream(request.execution_id, query):
            yield convert.log_entry_to_pb(entry)

    async def _results_dir(self, request: Any) -> str:
        results_dir = (await self.node.get(request.execution_id)).request.results_dir
        return str(results_dir) if results_dir else ""


def _summary(r: ExecutionRecord) -> node_pb2.ExecutionSummary:
    msg = node_pb2.ExecutionSummary(
        execution_id=r.execution_id,
        job_id=r.request.job_id,
        image=r.request.engine.image,
        state=convert.state_to_pb(r.state),
        created_at=convert.timestamp(r.created_at),
        finished_at=convert.timestamp(r.finished_at),
    )
    if r.result is not None:
        msg.status = convert.status_to_pb(r.result.status)
    msg.kind = convert.kind_to_pb(r.request.kind)
    if r.request.service is not None:
        msg.service_name = r.request.service.name or ""
        if not r.state.terminal:  # an ended service holds no port any more
            msg.ports.extend(convert.port_to_pb(p) for p in r.request.service.ports)
    return msg


def execution_to_pb(r: ExecutionRecord) -> node_pb2.GetExecutionResponse:
    results_dir = str(r.request.results_dir) if r.request.results_dir else ""
    msg = node_pb2.GetExecutionResponse(
        execution_id=r.execution_id,
        request=convert.request_to_pb(r.request),
        state=convert.state_to_pb(r.state),
        created_at=convert.timestamp(r.created_at),
        started_at=convert.timestamp(r.started_at),
        finished_at=convert.timestamp(r.finished_at),
        events=[convert.event_to_pb(e) for e in r.events],
        results_dir=results_dir,
        attempts=sum(1 for e in r.events if e.kind is EventKind.STARTED),
    )
    if r.result is not None:
        msg.result.CopyFrom(convert.result_to_pb(r.result, results_dir))
    return msg


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    @unary
    async def GetNodeInfo(self, request: Any, context: Any) -> node_pb2.GetNodeInfoResponse:
        return convert.info_to_pb(await self.node.info())

    @unary
    async def ListJobTypes(self, request: Any, context: Any) -> node_pb2.ListJobTypesResponse:
        return node_pb2.ListJobTypesResponse(
            job_types=[
                node_pb2.JobType(
                    name=p.name,
                    version=p.version,
                    url=p.url,
                    base_image=base_image,
                    single_template=p.single_template,
                    directory=str(p.directory),
                )
                for p, base_image in self.node.job_types()
            ]
        )

    @unary
    async def ListExecutions(self, request: Any, context: Any) -> node_pb2.ListExecutionsResponse:
        states = {convert.state_from_pb(s) for s in request.states}
        records = await self.node.list(states, limit=request.limit or 100)
        return node_pb2.ListExecutionsResponse(executions=[_summary(r) for r in records])

    @unary
    async def GetExecution(self, request: Any, context: Any) -> node_pb2.GetExecutionResponse:
        msg = execution_to_pb(await self.node.get(request.execution_id))
        position = self.node.queue_position(request.execution_id)
        if position is not None:
            msg.queue_position = position.position
            msg.queue_reason = position.reason
        return msg

    @streaming
    async def WatchExecution(self, request: Any, context: Any) -> AsyncIterator[node_pb2.WatchExecutionResponse]:
        async for event in self.node.watch(request.execution_id):
            yield node_pb2.WatchExecutionResponse(event=convert.event_to_pb(event))

    @streaming
    async def GetExecutionStats(self, request: Any, context: Any) -> AsyncIterator[node_pb2.GetExecutionStatsResponse]:
        interval = self.node.settings.stats.interval
        async for update in self.node.stats_of(
            request.execution_id, max_points=request.max_points, follow=request.follow
        ):
            msg = node_pb2.GetExecutionStatsResponse(
                samples=[convert.stat_to_pb(s) for s in update.samples],
                running=update.running,
                interval_seconds=interval,
            )
            if update.summary is not None:
                msg.summary.CopyFrom(convert.summary_to_pb(update.summary))
            yield msg
