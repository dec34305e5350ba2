"""The domain of haddock: what an execution is and the contract that runs it, whatever the engine.

Modules: ``models`` (requests, results, events, records, log queries), ``sources`` and ``publishers``
(input and publisher specs), ``quantity`` (sizes, CPU, durations), ``imageref``, ``errors``, ``paths``;
``protocol`` (the Executor contract), ``driver`` (what an engine's driver provides), ``runner`` (the
engine-independent lifecycle), ``logstore``, ``results``, ``outputs``; ``docker`` (the Docker driver).

Importing this package loads only the light, pure part (models and errors): the requester side uses
it without the engine, the store or the network libraries.
"""

from __future__ import annotations

from haddock.executor.errors import (
    ErrorCode,
    ExecutionAlreadyComplete,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ExecutionRefused,
    ExecutorError,
    InvalidSpec,
)
from haddock.executor.models import (
    BidResult,
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    LogQuery,
    Resources,
    ResultStatus,
    RunCommandRequest,
    RunCommandResult,
    StreamType,
)

__all__ = [
    "BidResult",
    "ErrorCode",
    "EventKind",
    "ExecutionAlreadyComplete",
    "ExecutionAlreadyStarted",
    "ExecutionEvent",
    "ExecutionNotFound",
    "ExecutionRecord",
    "ExecutionRefused",
    "ExecutionState",
    "ExecutorError",
    "InvalidSpec",
    "LogQuery",
    "Resources",
    "ResultStatus",
    "RunCommandRequest",
    "RunCommandResult",
    "StreamType",
]
