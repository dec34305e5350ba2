"""Domain errors. Each carries the gRPC status it maps to (the mapping itself lives in one place, node.api)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Transport-neutral error categories; names match gRPC status codes."""

    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL = "INTERNAL"


class ExecutorError(Exception):
    """Base of every error the executor raises on purpose. ``str(err)`` is a message for people."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ExecutionNotFound(ExecutorError):
    code = ErrorCode.NOT_FOUND

    def __init__(self, execution_id: str, message: str | None = None) -> None:
        super().__init__(message or f"execution {shown(execution_id)} not found on this node")
        self.execution_id = execution_id


class ExecutionAlreadyStarted(ExecutorError):
    code = ErrorCode.ALREADY_EXISTS

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {shown(execution_id)} is already started")
        self.execution_id = execution_id


class ExecutionAlreadyComplete(ExecutorError):
    code = ErrorCode.FAILED_PRECONDITION

    def __init__(self, execution_id: str, state: str) -> None:
        super().__init__(f"execution {shown(execution_id)} is already complete ({state})")
        self.execution_id = execution_id


class InvalidSpec(ExecutorError):
    """The request is well-formed but cannot be run as asked."""

    code = ErrorCode.INVALID_ARGUMENT


class ExecutionRefused(ExecutorError):
    """The node's policy does not allow this job (the bid reason says why)."""

    code = ErrorCode.FAILED_PRECONDITION


class EngineUnavailable(ExecutorError):
    code = ErrorCode.UNAVAILABLE


class ExecutorShuttingDown(ExecutorError):
    code = ErrorCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("the node is shutting down and accepts no new executions")


SHOWN_MOST = 200
"""Values a requester sent are echoed in messages up to this many characters."""


def shown(value: object, most: int = SHOWN_MOST) -> str:
    """``repr(value)`` for a message, a long string cut to ``most`` characters with an ellipsis, so that an
    error about a huge field stays small."""
    if isinstance(value, str) and len(value) > most:
        return repr(value[:most]) + f"… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= most + 2 else text[:most] + "…"


def clip(message: str, most_bytes: int = 1000) -> str:
    """A message cut to at most ``most_bytes`` of UTF-8 (with an ellipsis): what crosses the wire as an error."""
    data = message.encode("utf-8", "replace")
    if len(data) <= most_bytes:
        return message
    return data[: most_bytes - 3].decode("utf-8", "ignore") + "…"
