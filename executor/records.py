"""What a requester gets back and the node keeps: how an execution ended (:class:`RunCommandResult`), where
it is in its life (:class:`ExecutionState`), what happened to it (:class:`ExecutionEvent`), its record, and a
node's answer to a bid (:class:`BidResult`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import Field

from haddock.executor.fields import DomainModel
from haddock.executor.request import RunCommandRequest
from haddock.executor.stats import StatsSummary


class ExecutionState(StrEnum):
    """Where an execution is in its life. The last three are terminal."""

    QUEUED = "queued"
    PREPARING = "preparing"  # inputs and image
    RUNNING = "running"
    FINISHING = "finishing"  # capturing output, writing results, cleaning up
    COMPLETED = "completed"  # ran and exited 0
    FAILED = "failed"  # error, timeout or killed: see the result
    CANCELLED = "cancelled"
    # A service's life between start and end (executor/service.py):
    STARTING = "starting"  # its container runs; not yet ready
    READY = "ready"  # the readiness probe passes: the gateway routes to it
    UNHEALTHY = "unhealthy"  # the readiness probe fails (past its threshold): not routed to
    RESTARTING = "restarting"  # its container ended; a new one starts after a backoff
    STOPPING = "stopping"  # cancelled: no longer routed to, being stopped

    @property
    def terminal(self) -> bool:
        return self in (ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.CANCELLED)


class ResultStatus(StrEnum):
    """How an execution ended (Fn's set)."""

    SUCCESS = "success"
    ERROR = "error"  # non-zero exit, or the node could not run it
    TIMEOUT = "timeout"
    KILLED = "killed"  # out of memory
    CANCELLED = "cancelled"

    @property
    def state(self) -> ExecutionState:
        if self is ResultStatus.SUCCESS:
            return ExecutionState.COMPLETED
        if self is ResultStatus.CANCELLED:
            return ExecutionState.CANCELLED
        return ExecutionState.FAILED


class RunCommandResult(DomainModel):
    """How an execution ended. Inline text is cut at the return limits; files at the file limits."""

    status: ResultStatus
    exit_code: int | None = Field(default=None, description="the process's exit code; None when none ran")
    stdout: str = ""
    stdout_truncated: bool = False
    stdout_file_truncated: bool = False
    stderr: str = ""
    stderr_truncated: bool = False
    stderr_file_truncated: bool = False
    error_message: str = ""
    not_executed: bool = Field(
        default=False,
        description="the container started but its command could not be executed (not found, not an executable; "
        "the init's exit code 126/127): the job never ran",
    )
    published: list[str] = Field(default_factory=list, description="where the results were published")
    publish_errors: list[str] = Field(default_factory=list, description="publishers that failed, and why")
    stats: StatsSummary | None = Field(default=None, description="resource use sampled while the container ran")


class BidResult(DomainModel):
    should_bid: bool
    reason: str

    @classmethod
    def yes(cls, reason: str = "this node can run the job") -> BidResult:
        return cls(should_bid=True, reason=reason)

    @classmethod
    def no(cls, reason: str) -> BidResult:
        return cls(should_bid=False, reason=reason)


class EventKind(StrEnum):
    QUEUED = "queued"
    ACCEPTED = "accepted"
    PULLING = "pulling"
    PULL_PROGRESS = "pull-progress"
    IMAGE_READY = "image-ready"
    BUILDING = "building"  # a job's image is built (details: step, steps, instruction)
    BUILT = "built"  # a job's image is there (details: image, built: False when nothing was built)
    INPUTS_PREPARED = "inputs-prepared"
    STARTED = "started"
    ANSWERED = "answered"  # a batch job's wrapper answered the payload (details: http_status, bytes)
    EXITED = "exited"
    RESULTS_WRITTEN = "results-written"
    PUBLISHED = "published"
    OUTPUT_CAP_EXCEEDED = "output-cap-exceeded"
    CLEANED_UP = "cleaned-up"
    CANCEL_REQUESTED = "cancel-requested"
    RECOVERED = "recovered"
    OUTPUT_RECOVERED = "output-recovered"
    TIMED_OUT = "timed-out"
    FAILED = "failed"
    STATE = "state"
    PROBE_FAILED = "probe-failed"  # a service's probe failed (details: probe, reason, failures)
    RESTARTING = "restarting"  # a service's container ended and will be replaced (details: attempt, reason)
    NOT_APPLIED = (
        "not-applied"  # a job's manifest fields of Racetrack's cluster, accepted and not applied (details: fields)
    )
    DEPLOYED = "deployed"  # a job's deployment is ready and took over (details: replaced, the ids it stopped)


def utcnow() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_accepted_lock = threading.Lock()
_last_accepted_ms = 0


def epoch_ms(when: datetime) -> int:
    """``when`` as whole milliseconds since the Unix epoch (exact: no float rounding)."""
    return (when - _EPOCH) // _MS


def accepted_now() -> datetime:
    """When an execution is accepted (its ``created_at``): now, but at least a millisecond after the one this
    process accepted last, so no two executions share a millisecond — a job's ``JOB_DEPLOYMENT_TIMESTAMP``
    (:func:`epoch_ms` of it) tells each deployment apart, and acceptance is a strict order."""
    global _last_accepted_ms
    with _accepted_lock:
        now = utcnow()
        ms = epoch_ms(now)
        if ms <= _last_accepted_ms:
            ms = _last_accepted_ms + 1
            now = _EPOCH + ms * _MS
        _last_accepted_ms = ms
        return now


class ExecutionEvent(DomainModel):
    """Something that happened to an execution, for operators and requesters to see."""

    execution_id: str
    kind: EventKind
    message: str
    time: datetime = Field(default_factory=utcnow)
    details: dict[str, Any] = Field(default_factory=dict)
    # What persistence needs travels with the event (never serialised): the request on 'accepted',
    # the result on the terminal state.
    request: RunCommandRequest | None = Field(default=None, exclude=True, repr=False)
    result: RunCommandResult | None = Field(default=None, exclude=True, repr=False)


@dataclass
class ExecutionRecord:
    """What the node knows about one execution: its request, where it is, what happened, how it ended."""

    request: RunCommandRequest
    state: ExecutionState = ExecutionState.PREPARING
    events: list[ExecutionEvent] = field(default_factory=list)
    created_at: datetime = field(default_factory=accepted_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    container_id: str | None = None
    result: RunCommandResult | None = None
    built_image: str | None = None  # a job's: the image its build made (kept; restarts make containers from it)

    @property
    def execution_id(self) -> str:
        return self.request.execution_id
