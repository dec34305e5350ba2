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
        super().__init__(message or f"execution {execution_id!r} not found on this node")
        self.execution_id = execution_id


class ExecutionAlreadyStarted(ExecutorError):
    code = ErrorCode.ALREADY_EXISTS

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id!r} is already started")
        self.execution_id = execution_id


class ExecutionAlreadyComplete(ExecutorError):
    code = ErrorCode.FAILED_PRECONDITION

    def __init__(self, execution_id: str, state: str) -> None:
        super().__init__(f"execution {execution_id!r} is already complete ({state})")
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
