"""The domain of haddock: what an execution is and the contract that runs it, whatever the engine.

Modules: ``request`` (what a requester asks for), ``servicespec`` (a service's ports, probes, restarts),
``records`` (results, states, events, records, bids), ``fields`` (the models' base and field types),
``streams`` (stream types, log queries), ``sources`` and ``publishers`` (input and publisher specs),
``quantity`` (sizes, CPU, durations), ``imageref``, ``errors``, ``paths``; ``protocol`` (the Executor
contract), ``driver`` (what an engine's driver provides), ``runner`` (the engine-independent lifecycle),
``logstore``, ``results``, ``outputs``; ``docker`` (the Docker driver).

Names are imported on first use (``from haddock.executor import RunCommandRequest`` loads the models):
importing a module of this package loads no more than that module needs, so that the node's capture
process, which uses the log store and ``streams`` only, never loads pydantic or the models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haddock.executor.errors import (
        ErrorCode,
        ExecutionAlreadyComplete,
        ExecutionAlreadyStarted,
        ExecutionNotFound,
        ExecutionRefused,
        ExecutorError,
        InvalidSpec,
    )
    from haddock.executor.records import (
        BidResult,
        EventKind,
        ExecutionEvent,
        ExecutionRecord,
        ExecutionState,
        ResultStatus,
        RunCommandResult,
    )
    from haddock.executor.request import Resources, RunCommandRequest
    from haddock.executor.streams import LogQuery, StreamType

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

_WHERE = {
    **dict.fromkeys(
        [
            "ErrorCode",
            "ExecutionAlreadyComplete",
            "ExecutionAlreadyStarted",
            "ExecutionNotFound",
            "ExecutionRefused",
            "ExecutorError",
            "InvalidSpec",
        ],
        "errors",
    ),
    **dict.fromkeys(
        [
            "BidResult",
            "EventKind",
            "ExecutionEvent",
            "ExecutionRecord",
            "ExecutionState",
            "ResultStatus",
            "RunCommandResult",
        ],
        "records",
    ),
    **dict.fromkeys(["Resources", "RunCommandRequest"], "request"),
    "LogQuery": "streams",
    "StreamType": "streams",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
