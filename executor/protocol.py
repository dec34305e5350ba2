"""The Executor contract (after Bacalhau's ``pkg/executor``), independent of any engine.

A backend implements it; the node talks only to this protocol, so a second backend
can be added without touching the node.

- ``start(request)`` returns once the execution is accepted. Errors: ExecutionAlreadyStarted
  (the id is running), ExecutionAlreadyComplete (the id has finished), InvalidSpec, ExecutionRefused.
- ``run(request)`` is ``start`` then ``wait``.
- ``wait(id)`` returns the result; ExecutionNotFound for an unknown id; after completion it
  returns the stored result again, as often as asked.
- ``cancel(id)`` stops a running execution (graceful stop, then kill) and returns when it has
  ended; ExecutionNotFound for an unknown id, ExecutionAlreadyComplete for a finished one.
- ``get_log_stream(id, query)`` yields stream-tagged chunks; reachable as soon as ``start`` returns.
- ``recover(records)`` takes back what a previous life of the node left unfinished; ``reap_orphans``
  removes what the engine has of this node that no execution knows.

``haddock.executor.runner.Runner`` implements it over any :class:`haddock.executor.driver.Driver`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from haddock.executor.hooks import BeforeStopHook
from haddock.executor.jobspec import JobSpec
from haddock.executor.logstore import LogEntry, LogStore
from haddock.executor.records import (
    BidResult,
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    RunCommandResult,
)
from haddock.executor.request import InputVolume, Resources, RunCommandRequest
from haddock.executor.stats import Stat
from haddock.executor.streams import LogQuery


class PreparedInputs(Protocol):
    """Inputs made ready on the node for one execution."""

    @property
    def volumes(self) -> list[InputVolume]: ...

    async def cleanup(self) -> None:
        """Release what was prepared (temporary files; cache references)."""
        ...


class InputPreparer(Protocol):
    """Fetches an execution's ``input_sources`` before its container starts (storage/ implements it)."""

    async def prepare(self, request: RunCommandRequest) -> PreparedInputs:
        """All inputs, in parallel; on any failure nothing is left behind and the error names the input."""
        ...

    async def discard(self, execution_id: str) -> None:
        """Remove what an earlier life of the node prepared for this execution (after a restart)."""
        ...


class ResultPublisher(Protocol):
    """Publishes an execution's results dir as its ``publishers`` ask (storage/ implements it)."""

    async def publish(self, request: RunCommandRequest) -> tuple[list[str], list[str]]:
        """Returns where the results went and a message per publisher that failed; never raises for one."""
        ...


@dataclass(frozen=True)
class BuildOutput:
    """One line of an image build's output; ``step``/``steps`` set on the line that starts a step."""

    line: str
    step: int | None = None
    steps: int | None = None
    instruction: str = ""


@dataclass(frozen=True)
class BuiltJob:
    """A job's image, built (or found: ``built`` False) from its source with its job type."""

    image: str
    built: bool
    stop_signal: str = "SIGTERM"
    jobtype: str = ""  # name:version of the plugin that built it


class JobBuilder(Protocol):
    """Turns a job's source into an image with a job-type plugin (``haddock.node.jobtypes`` implements it)."""

    def check(self, job: JobSpec) -> None:
        """Refuse (InvalidSpec) a job whose job type this node does not have, before anything is fetched."""
        ...

    async def build(
        self, request: RunCommandRequest, source: Path, on_output: Callable[[BuildOutput], None]
    ) -> BuiltJob:
        """Build (or find, by content hash) the job's image from ``source`` (a directory or a tarball)."""
        ...


@runtime_checkable
class Executor(Protocol):
    logs: LogStore  # every execution's output, kept after it ends

    def add_before_stop(self, hook: BeforeStopHook, *, name: str, timeout: float) -> Callable[[], None]:
        """Call ``hook`` with a service's execution id when a cancel is about to stop its container (whoever
        routes requests to services stops and lets those in flight end). Several hooks may be registered;
        they run concurrently, each within its ``timeout``; a failure is logged, never fatal. Returns the
        hook's removal. See :mod:`haddock.executor.hooks`."""
        ...

    async def is_installed(self) -> bool:
        """Whether the engine behind this executor answers."""
        ...

    async def engine_info(self) -> dict[str, Any]:
        """The engine's own description of itself (CPUs, memory, version, runtimes, platform)."""
        ...

    async def inspect_image(self, image: str) -> dict[str, Any] | None:
        """The image as the engine has it locally, or None."""
        ...

    def check(self, request: RunCommandRequest) -> None:
        """What ``start`` would refuse about the request itself, raised now, without starting anything."""
        ...

    async def should_bid(self, request: RunCommandRequest) -> BidResult:
        """Semantic check: can this node run this kind of job at all?"""
        ...

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources) -> BidResult:
        """Resource check: can this node ever provide ``usage`` for the job?"""
        ...

    async def start(self, request: RunCommandRequest) -> None: ...

    async def run(self, request: RunCommandRequest) -> RunCommandResult: ...

    async def wait(self, execution_id: str) -> RunCommandResult: ...

    async def cancel(self, execution_id: str, *, reason: str = "") -> None:
        """Stop the execution; ``reason`` (e.g. "replaced by ...") goes into its cancel-requested event."""
        ...

    def note(self, execution_id: str, kind: EventKind, message: str, **details: Any) -> None:
        """Record an event of the node's about a live execution (with its own events, in order)."""
        ...

    def get_log_stream(self, execution_id: str, query: LogQuery | None = None) -> AsyncIterator[LogEntry]: ...

    def state(self, execution_id: str) -> ExecutionState: ...

    def events(self, execution_id: str) -> list[ExecutionEvent]: ...

    def record(self, execution_id: str) -> ExecutionRecord:
        """Everything known about one execution; ExecutionNotFound for an unknown id."""
        ...

    def records(self) -> list[ExecutionRecord]: ...

    async def recover(self, records: list[ExecutionRecord], stats: Mapping[str, Sequence[Stat]] | None = None) -> None:
        """Take back unfinished executions after a restart; returns once ``wait`` works on each.
        ``stats``: the resource samples kept of each from before (its result's summary covers them)."""
        ...

    async def reap_orphans(self, *, grace: float | None = None, keep: set[str] | None = None) -> list[str]:
        """Remove what the engine has of this node that no execution (nor ``keep``) knows."""
        ...

    async def shutdown(self, *, stop_running: bool = True, grace: float | None = None) -> None:
        """Refuse new work; stop running executions (each within ``grace``), or leave them running."""
        ...
