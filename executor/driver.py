"""The narrow interface between the runner (the engine-independent lifecycle) and an engine's driver.

The runner (``executor/runner.py``) owns an execution's life: records, states, events, timeouts,
cancellation, output cap, results and publishing. A driver only does what needs the engine: say whether
it can run a kind of job, make an image available, create a container whose output flows into the
node's log, and hand back a :class:`ContainerHandle` for it; find this node's containers again after a
restart and remove those nobody knows. ``executor/docker/`` is the Docker driver; a second backend
implements this protocol and the node does not change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from haddock.executor.logstore import LogWriter
from haddock.executor.records import BidResult, ExecutionRecord
from haddock.executor.request import InputVolume, Resources, RunCommandRequest
from haddock.executor.results import CapturedFile
from haddock.executor.stats import Stat
from haddock.executor.streams import StreamType

__all__ = ["ContainerHandle", "Driver", "ExitStatus", "ImageReady", "ProgressSink"]

# Pull progress records as the engine gives them; ``{"note": ...}`` says why making the image available waits.
ProgressSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ImageReady:
    """The job's image is on the node."""

    image_id: str | None
    pulled: bool  # False: it was there already
    stop_signal: str = "SIGTERM"  # what the image asks to be stopped with


@dataclass(frozen=True)
class ExitStatus:
    """How a container ended, as far as the engine and the output capture know."""

    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""  # the container could not be followed to its end (why)
    capture_error: str = ""  # some output is missing (why)
    output_recovered: bool = False  # a cut stream was completed from the engine's own log
    captured: dict[StreamType, CapturedFile] | None = None  # results files the capture filled (no second copy)
    stdout_bytes: int | None = None  # bytes of each stream, as far as the capture knows
    stderr_bytes: int | None = None
    lost_bytes: int = 0  # output another process (the capture) dropped because the node's log space was full
    # When the container started and ended, on the engine's own clock (None when the engine could not say, e.g.
    # the container is gone): settle.decide_status's timeout rule compares them with the job's timeout.
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ContainerHandle(Protocol):
    """One execution's container, created (not yet started) or taken back after a restart."""

    @property
    def container_id(self) -> str: ...

    @property
    def running(self) -> bool:
        """Whether the container runs now (a resumed one may have exited while the node was down)."""
        ...

    @property
    def exited(self) -> bool:
        """The engine reported the exit: too late to cancel."""
        ...

    @property
    def stop_reason(self) -> str | None:
        """Why the node stopped it ("cancel", "timeout", "output-cap"), set only when the stop signal
        reached a container that was still running: a job that ended by itself keeps its own status."""
        ...

    async def start(self) -> None:
        """Start it; every byte of its output goes into the execution's log from the first one."""
        ...

    async def wait(self) -> int:
        """Its exit code, once it has exited and its output is captured."""
        ...

    async def stop(self, reason: str, *, grace: float | None = None) -> None:
        """Its stop signal, up to ``grace`` (the driver's default when None) to exit, then a kill."""
        ...

    def stats(self, interval: float) -> AsyncIterator[Stat]:
        """Resource samples of the running container every ``interval`` seconds, the first at once, until
        it is no longer running. Never raises for an engine that does not answer: it skips samples."""
        ...

    async def finish(self) -> ExitStatus:
        """After :meth:`wait`: exit code, out-of-memory kill, and whether all output was captured."""
        ...

    async def abandon(self) -> None:
        """The run was interrupted before the exit (an error, a shutdown): stop following its output."""
        ...

    def release(self) -> None:
        """Let go of it: stop capturing, leave the container running (a restarted node takes it back)."""
        ...

    async def remove(self) -> bool:
        """Remove the container; False when it was already gone."""
        ...

    async def take_log(self) -> LogWriter | None:
        """After the exit of a service's container (whose log :meth:`finish` leaves open): the execution's
        log, open for appending here, for the next attempt; None when it cannot be had."""
        ...

    async def health(self) -> str | None:
        """The image's own HEALTHCHECK status ("starting", "healthy", "unhealthy"); None without one."""
        ...

    async def address(self) -> str | None:
        """The address the node reaches the running container on (None: it has none, e.g. network none)."""
        ...


class Driver(Protocol):
    """What the runner needs from an engine."""

    @property
    def stop_grace(self) -> float:
        """Stop signal to kill, by default."""
        ...

    async def is_installed(self) -> bool: ...

    async def engine_info(self) -> dict[str, Any]: ...

    async def inspect_image(self, image: str) -> dict[str, Any] | None: ...

    def check(self, request: RunCommandRequest) -> None:
        """Refuse (ExecutionRefused/InvalidSpec) what this engine cannot run, without starting anything."""
        ...

    async def should_bid(self, request: RunCommandRequest) -> BidResult: ...

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources) -> BidResult: ...

    async def prepare_image(self, request: RunCommandRequest, progress: ProgressSink) -> ImageReady: ...

    async def create(
        self,
        request: RunCommandRequest,
        volumes: list[InputVolume],
        writer: LogWriter,
        *,
        stop_signal: str,
        attempt: int = 1,
    ) -> ContainerHandle:
        """Create the execution's container (not started), its output bound for ``writer``; a service's ports
        published as its request says (host ports chosen by the node), labelled with the ``attempt``."""
        ...

    async def held_logs(self) -> set[str]:
        """Executions whose log another process of this driver still writes (e.g. a capture process that
        outlived the node): the runner must not open those logs; it passes ``writer=None`` to :meth:`resume`."""
        ...

    async def resume(self, record: ExecutionRecord, writer: LogWriter | None) -> ContainerHandle | ExitStatus | None:
        """Take back the container of an execution a previous life of the node left unfinished: a handle
        whose output goes on into ``writer`` (None: all output was captured already), how it ended when it
        cannot be followed (created and never started, removed), or None when the node went down while
        preparing it (pulling the image, fetching inputs): no container was ever created, it can be prepared
        again."""
        ...

    def describe_failure(self, exc: BaseException) -> str:
        """A message for people about an error this driver raised."""
        ...

    def explain_exit(self, exit_code: int, stderr_head: bytes) -> str | None:
        """Why the job's process ended this way when the engine, not the job, says so (e.g. the command is not
        in the image), from the exit code and the first bytes of stderr; None when it is the job's own exit."""
        ...

    async def containers(self) -> dict[str, dict[str, Any]]:
        """This node's containers by execution id."""
        ...

    async def reap_orphans(self, *, keep: set[str], grace: float | None = None) -> list[str]:
        """Remove this node's containers of executions not in ``keep`` once older than the grace."""
        ...

    async def close(self) -> None: ...
