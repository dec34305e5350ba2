"""The Docker backend of the Executor contract.

One container per execution, named ``haddock-<node>-<execution>`` and labelled with the
node, job and execution ids. The node's capture process (``capture.py``, ``capture_proc.py``)
attaches to the container *before* the node starts it, so every byte of stdout/stderr goes into
the node's log store (and the results files) as it is produced, whatever happens to the
container or to the daemon afterwards. The job's timeout is enforced by the node (pull time
does not count), with a graceful stop: the image's STOPSIGNAL (SIGTERM by default), then
SIGKILL after the configured grace. Results are written in every terminal case (the
files the capture filled, renamed; else from the log store), then the container is removed.

docker-py is blocking: short API calls run on an API thread pool; copying an engine log (only
with a log driver other than ``none``) holds a thread of a separate pool. The HTTP connection
pool is sized for both.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, field_validator

from haddock.executor.docker.capture import CaptureClient, CaptureInfo, remove_capture_files
from haddock.executor.docker.capture_proc import STREAM_CUT
from haddock.executor.docker.images import ImageError, ImageManager
from haddock.executor.docker.stream import Demuxer, StreamProtocolError
from haddock.executor.errors import (
    EngineUnavailable,
    ExecutionAlreadyComplete,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ExecutionRefused,
    ExecutorError,
    ExecutorShuttingDown,
    InvalidSpec,
)
from haddock.executor.logstore import LogEntry, LogStore, LogWriter
from haddock.executor.models import (
    RESERVED_ENV_PREFIX,
    BidResult,
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    InputVolume,
    NetworkMode,
    Resources,
    ResultStatus,
    RunCommandRequest,
    RunCommandResult,
    StreamType,
    utcnow,
)
from haddock.executor.outputs import OutputWatcher, trim_to_cap
from haddock.executor.protocol import InputPreparer, PreparedInputs, ResultPublisher
from haddock.executor.quantity import format_bytes, format_cpu, format_duration
from haddock.executor.results import CapturedFile, write_job_results

log = logging.getLogger(__name__)
tracer = trace.get_tracer("haddock.executor")

LABEL_NODE = "haddock.node-id"
LABEL_JOB = "haddock.job-id"
LABEL_EXECUTION = "haddock.execution-id"

READ_SIZE = 256 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

EventSink = Callable[[ExecutionEvent], None]


class DockerExecutorConfig(BaseModel):
    """How the Docker backend runs jobs. Every field has a safe default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(default="local", description="labels and names this node's containers")
    log_dir: Path = Field(description="where the log store keeps each execution's output")
    docker_host: str | None = Field(default=None, description="engine address; default from DOCKER_HOST")
    stop_grace_seconds: float = Field(default=10.0, ge=0, description="SIGTERM to SIGKILL on timeout/cancel")
    pids_limit: int | None = Field(default=4096, description="max processes per container; None = no limit")
    no_new_privileges: bool = True
    cap_drop: tuple[str, ...] = ("NET_RAW",)
    allowed_networks: frozenset[NetworkMode] = frozenset({NetworkMode.NONE, NetworkMode.BRIDGE})
    log_driver: str = Field(
        default="none",
        description="the engine's own log driver for containers; the node's capture process keeps the output, "
        "so the engine need not (set e.g. 'local' to also recover output cut by an engine outage)",
    )
    log_driver_options: dict[str, str] = Field(
        default_factory=dict,
        description="options of the log driver (e.g. max-size), ignored for 'none'",
    )
    capture_idle_seconds: float = Field(
        default=10.0, gt=0, description="the capture process exits after this long with no daemon and no stream"
    )
    orphan_grace_seconds: float = Field(
        default=60.0, ge=0, description="a container of this node that no execution knows is removed after this"
    )
    api_workers: int = Field(default=32, ge=1, description="threads for short engine calls")
    pull_workers: int = Field(default=8, ge=1, description="threads for image pulls (each holds one)")
    pull_attempts: int = Field(default=4, ge=1)
    api_timeout_seconds: float = Field(default=120.0, gt=0)
    engine_retry_seconds: float = Field(
        default=60.0, ge=0, description="how long calls ride out an engine outage (restart) before failing"
    )
    init: bool = Field(default=True, description="run an init process (docker --init): signals reach the job")
    default_output_cap: int = Field(
        default=10 * 1024**3, ge=0, description="what a job may write to its outputs when it sets no disk resource"
    )
    max_finished_records: int = Field(default=10_000, ge=0, description="finished executions kept in memory")

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"node_id {v!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return v


@dataclass
class _Running:
    record: ExecutionRecord
    done: asyncio.Future[RunCommandResult]
    cancel_event: asyncio.Event
    writer: LogWriter | None  # a log this process writes; None: the capture process writes it (or it is complete)
    task: asyncio.Task[None] | None = None
    container_id: str | None = None
    stop_signal: str = "SIGTERM"
    attach_response: Any = None
    stop_reason: str | None = None  # "cancel" / "timeout": the node stopped a running container
    exited: bool = False  # the engine reported the exit: too late to cancel
    leave_container: bool = False  # a shutdown lets go of the container (a restart reattaches)
    capture_error: str = ""  # why some output is missing
    capture_ended_at: float | None = None
    capture_info: CaptureInfo | None = None  # what the capture process reported when the stream ended
    captured: dict[StreamType, CapturedFile] | None = None  # results files filled during capture
    gap_message: str = ""  # output written while neither the node nor its capture process ran is missing
    prepared_inputs: PreparedInputs | None = None
    output_cap_message: str = ""  # the job wrote past its output cap
    stop_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Outcome(BaseModel):
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""


class DockerExecutor:
    """Runs executions as Docker containers. Bound to the event loop it is first used on."""

    def __init__(
        self,
        config: DockerExecutorConfig,
        *,
        event_sink: EventSink | None = None,
        input_preparer: InputPreparer | None = None,
        result_publisher: ResultPublisher | None = None,
    ) -> None:
        self.config = config
        self._event_sink = event_sink
        self._input_preparer = input_preparer
        self._result_publisher = result_publisher
        self._api_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.api_workers, thread_name_prefix="haddock-docker-api"
        )
        self._pull_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.pull_workers, thread_name_prefix="haddock-docker-pull"
        )
        # Recovered executions follow the engine's log from a thread each, for their container's life.
        self._follow_pool = concurrent.futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="haddock-follow")
        kwargs: dict[str, Any] = {
            "version": "auto",
            "timeout": config.api_timeout_seconds,
            # every API thread, every pull, and one hijacked attach connection per running container
            "max_pool_size": config.api_workers + config.pull_workers + 64,
        }
        if config.docker_host:
            kwargs["base_url"] = config.docker_host
        self._kwargs = kwargs
        self._client_lock = threading.Lock()
        self._client: docker.APIClient | None = None
        self._images: ImageManager | None = None
        self.logs = LogStore(config.log_dir)
        self.capture = CaptureClient(
            config.log_dir,
            self.logs,
            docker_host=config.docker_host,
            idle_seconds=config.capture_idle_seconds,
            engine_retry_seconds=config.engine_retry_seconds,
        )
        self._records: dict[str, ExecutionRecord] = {}
        self._running: dict[str, _Running] = {}
        self._closing = False
        self._stop_grace = config.stop_grace_seconds
        self._engine_info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ engine plumbing

    @property
    def client(self) -> docker.APIClient:
        """The low-level client, created on first use (creating it talks to the engine)."""
        with self._client_lock:
            if self._client is None:
                try:
                    if "base_url" in self._kwargs:
                        client = docker.APIClient(**self._kwargs)
                    else:
                        env = docker.utils.kwargs_from_env()
                        client = docker.APIClient(**{**env, **self._kwargs})
                    # The engine is local: no proxy or ~/.netrc lookups on every call (a profile hot spot).
                    client.trust_env = False
                    self._client = client
                except docker.errors.DockerException as exc:
                    raise EngineUnavailable(f"the Docker engine does not answer: {exc}") from exc
            return self._client

    @property
    def images(self) -> ImageManager:
        if self._images is None:
            self._images = ImageManager(
                self.client, self._api_pool, self._pull_pool, attempts=self.config.pull_attempts
            )
        return self._images

    async def _images_async(self) -> ImageManager:
        await self._client_async()  # create the client off the event loop
        return self.images

    async def _api(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._api_pool, lambda: fn(*args, **kwargs))

    async def _client_async(self) -> docker.APIClient:
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._api_pool, lambda: self.client)

    async def inspect_image(self, image: str) -> dict[str, Any] | None:
        """The local image's inspect data, or None when the engine does not have it."""
        return await (await self._images_async()).image_info(image)

    async def engine_info(self) -> dict[str, Any]:
        """``docker info`` of the engine (cached)."""
        if self._engine_info is None:
            client = await self._client_async()
            self._engine_info = dict(await self._api(client.info))
        return self._engine_info

    def container_name(self, execution_id: str) -> str:
        return f"haddock-{self.config.node_id}-{execution_id}"

    # ------------------------------------------------------------------ contract: bidding

    async def is_installed(self) -> bool:
        try:
            client = await self._client_async()
            return bool(await self._api(client.ping))
        except (EngineUnavailable, docker.errors.DockerException, requests.exceptions.RequestException):
            return False

    async def should_bid(self, request: RunCommandRequest) -> BidResult:
        if self._closing:
            return BidResult.no("this node is shutting down")
        if not await self.is_installed():
            return BidResult.no("this node's Docker engine is not answering")
        mode = request.network.mode
        if mode not in self.config.allowed_networks:
            allowed = ", ".join(sorted(m.value for m in self.config.allowed_networks)) or "no networking"
            return BidResult.no(f"this node does not accept jobs with network mode '{mode}' (allowed: {allowed})")
        if request.resources.gpu and not await self._gpu_runtime_available():
            return BidResult.no("this node has no GPUs (no GPU runtime is configured in its Docker engine)")
        return BidResult.yes("this node can run Docker jobs of this kind")

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources) -> BidResult:
        try:
            info = await self.engine_info()
        except (EngineUnavailable, docker.errors.DockerException, requests.exceptions.RequestException):
            return BidResult.no("this node's Docker engine is not answering")
        ncpu = float(info.get("NCPU") or 0)
        mem = int(info.get("MemTotal") or 0)
        if ncpu and usage.cpu > ncpu:
            return BidResult.no(
                f"insufficient CPU: requested {format_cpu(usage.cpu)} cores, this node has {format_cpu(ncpu)}"
            )
        if mem and usage.memory > mem:
            return BidResult.no(
                f"insufficient memory: requested {format_bytes(usage.memory)}, this node has {format_bytes(mem)}"
            )
        if usage.gpu and not await self._gpu_runtime_available():
            return BidResult.no(f"insufficient GPUs: requested {usage.gpu}, this node has none")
        return BidResult.yes("this node has the resources the job asks for")

    async def _gpu_runtime_available(self) -> bool:
        try:
            info = await self.engine_info()
        except (EngineUnavailable, docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        return "nvidia" in (info.get("Runtimes") or {})

    # ------------------------------------------------------------------ contract: lifecycle

    def check(self, request: RunCommandRequest) -> None:
        """What ``start`` would refuse about the request itself, without starting anything."""
        if self._closing:
            raise ExecutorShuttingDown()
        if request.results_dir is None:
            raise InvalidSpec("results_dir is required: the executor needs to know where to write results")
        if request.input_sources and self._input_preparer is None:
            raise InvalidSpec("this executor was given no way to fetch input sources")
        if request.publishers and self._result_publisher is None:
            raise InvalidSpec("this executor was given no way to publish results")
        mode = request.network.mode
        if mode not in self.config.allowed_networks:
            allowed = ", ".join(sorted(m.value for m in self.config.allowed_networks)) or "no networking"
            raise ExecutionRefused(f"this node does not accept jobs with network mode '{mode}' (allowed: {allowed})")

    async def start(self, request: RunCommandRequest) -> None:
        exec_id = request.execution_id
        existing = self._records.get(exec_id)
        if existing is not None:
            if existing.state.terminal:
                raise ExecutionAlreadyComplete(exec_id, existing.state.value)
            raise ExecutionAlreadyStarted(exec_id)
        self.check(request)
        # Register synchronously (no await between the check and here) so that a concurrent start
        # of the same id sees it; the log exists before start returns, so it can be streamed at once.
        record = ExecutionRecord(request=request)
        self._records[exec_id] = record
        try:
            # The capture process writes the log; this process follows it (followers wait from now on).
            await asyncio.to_thread(self.logs.create_empty, exec_id)
            self.capture.track(exec_id)
        except FileExistsError:
            self._records.pop(exec_id, None)
            raise ExecutionAlreadyComplete(exec_id, "an execution with this id already ran on this node") from None
        except Exception as exc:
            self._records.pop(exec_id, None)
            raise ExecutorError(f"cannot create the log of execution {exec_id!r}: {exc}") from exc
        except BaseException:
            self._records.pop(exec_id, None)
            raise
        loop = asyncio.get_running_loop()
        running = _Running(record=record, done=loop.create_future(), cancel_event=asyncio.Event(), writer=None)
        self._running[exec_id] = running
        self._emit(record, EventKind.ACCEPTED, f"accepted execution of {request.engine.image}")
        running.task = asyncio.create_task(self._execute(running), name=f"haddock-exec-{exec_id}")

    async def run(self, request: RunCommandRequest) -> RunCommandResult:
        await self.start(request)
        return await self.wait(request.execution_id)

    async def wait(self, execution_id: str) -> RunCommandResult:
        record = self.record(execution_id)
        if record.result is not None:
            return record.result
        running = self._running.get(execution_id)
        if running is None:  # pragma: no cover - a record without result is always running
            raise ExecutionNotFound(execution_id)
        return await asyncio.shield(running.done)

    async def cancel(self, execution_id: str) -> None:
        record = self.record(execution_id)
        running = self._running.get(execution_id)
        if running is None or running.done.done() or running.exited or record.state.terminal:
            raise ExecutionAlreadyComplete(execution_id, record.state.value)
        if not running.cancel_event.is_set():
            self._emit(record, EventKind.CANCEL_REQUESTED, "cancellation requested")
            running.cancel_event.set()
        result = await asyncio.shield(running.done)
        if result.status is not ResultStatus.CANCELLED:
            # It ended by itself before the cancellation could stop it.
            raise ExecutionAlreadyComplete(execution_id, result.status.value)

    def state(self, execution_id: str) -> ExecutionState:
        return self.record(execution_id).state

    def events(self, execution_id: str) -> list[ExecutionEvent]:
        return list(self.record(execution_id).events)

    def record(self, execution_id: str) -> ExecutionRecord:
        record = self._records.get(execution_id)
        if record is None:
            raise ExecutionNotFound(execution_id)
        return record

    def records(self) -> list[ExecutionRecord]:
        return list(self._records.values())

    async def get_log_stream(
        self,
        execution_id: str,
        *,
        with_history: bool = True,
        follow: bool = False,
        offset: int | None = None,
        tail_lines: int | None = None,
        streams: frozenset[StreamType] = frozenset(StreamType),
    ) -> AsyncIterator[LogEntry]:
        if execution_id not in self._records and not self.logs.exists(execution_id):
            raise ExecutionNotFound(execution_id)
        start = offset
        if start is None and not with_history and tail_lines is None:
            start = self.logs.end_offset(execution_id)
        async for entry in self.logs.read(
            execution_id, offset=start or 0, follow=follow, streams=streams, tail_lines=tail_lines
        ):
            yield entry

    async def shutdown(self, *, stop_running: bool = True, grace: float | None = None) -> None:
        """Refuse new work; stop running executions (or leave their containers running).

        ``grace`` caps each container's stop grace (stop signal to SIGKILL) so that the node can
        promise when it is gone.
        """
        self._closing = True
        if grace is not None:
            self._stop_grace = min(self._stop_grace, grace)
        running = list(self._running.values())
        if stop_running:
            for r in running:
                if not r.done.done():
                    r.cancel_event.set()
            waits: list[asyncio.Future[Any]] = [asyncio.shield(r.done) for r in running]
        else:
            for r in running:
                r.leave_container = True
                if r.task is not None:
                    r.task.cancel()
            waits = [r.task for r in running if r.task is not None]
        if waits:
            # Bounded: a stop takes at most the grace plus a kill; the engine may be gone.
            _, pending = await asyncio.wait(waits, timeout=self._stop_grace + 30)
            if pending:
                log.warning("%d executions did not end within the shutdown bound", len(pending))
            for w in waits:
                if w.done() and not w.cancelled():
                    w.exception()
        await self.capture.aclose()
        for pool in (self._api_pool, self._pull_pool, self._follow_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    # ------------------------------------------------------------------ recovery after a restart

    async def node_containers(self) -> dict[str, dict[str, Any]]:
        """This node's containers by execution id (``docker ps -a`` filtered by the node label)."""
        client = await self._client_async()
        found = await self._engine_call(
            client.containers, all=True, filters={"label": f"{LABEL_NODE}={self.config.node_id}"}
        )
        return {str(c["Labels"].get(LABEL_EXECUTION, "")): c for c in found}

    async def recover(self, records: list[ExecutionRecord]) -> None:
        """Take back the executions a previous life of this node left unfinished.

        For each: a container that still runs is followed again (output from where the node's log
        ends, the remaining timeout enforced); one that exited meanwhile has its output and exit
        status collected; a missing one ends the execution with a clear message. Results are then
        written as usual. Returns once every execution is registered (``wait`` works on them).
        """
        containers = await self.node_containers()
        captures = await self.capture.connect()
        for record in records:
            exec_id = record.execution_id
            if exec_id in self._records:
                continue
            record.result = None
            writer: LogWriter | None
            if exec_id in captures:
                writer = None  # the capture process went on capturing while the node was down
                self.capture.track(exec_id, captures[exec_id])
            elif not self.logs.exists(exec_id):
                writer = await asyncio.to_thread(self.logs.create, exec_id)
            elif self.logs.is_complete(exec_id):
                writer = None  # all output was captured before the node went down
            else:
                writer = await asyncio.to_thread(self.logs.open_append, exec_id)
            loop = asyncio.get_running_loop()
            running = _Running(record=record, done=loop.create_future(), cancel_event=asyncio.Event(), writer=writer)
            container = containers.get(exec_id)
            if container is not None:
                running.container_id = str(container["Id"])
                record.container_id = running.container_id
            # Registered together, with no await between: a record is never seen without its handle.
            self._records[exec_id] = record
            self._running[exec_id] = running
            self._emit(record, EventKind.RECOVERED, "the node restarted and took the execution back")
            running.task = asyncio.create_task(
                self._execute(running, recovered=True), name=f"haddock-recover-{exec_id}"
            )
        for exec_id in set(captures) - set(self._running):
            # Captures of executions that are already finished (the node went down while closing them).
            if captures[exec_id].ended:
                await self.capture.close(exec_id)

    async def reap_orphans(self, *, grace: float | None = None, keep: set[str] | None = None) -> list[str]:
        """Remove containers with this node's label that no execution knows, once older than the grace.

        ``keep``: execution ids whose containers must stay (unfinished in the node's store)."""
        grace = self.config.orphan_grace_seconds if grace is None else grace
        keep = keep or set()
        client = await self._client_async()
        removed = []
        now = time.time()
        for exec_id, c in (await self.node_containers()).items():
            if exec_id in keep or exec_id in self._running:
                continue
            if exec_id in self._records and self._records[exec_id].result is None:
                continue
            if now - float(c.get("Created") or 0) < grace:
                continue
            try:
                await self._engine_call(client.remove_container, c["Id"], force=True, v=True)
            except docker.errors.NotFound:
                continue
            log.warning(
                "removed container %s of execution %r: no execution on this node knows it",
                c.get("Names", ["?"])[0].lstrip("/"),
                exec_id,
            )
            removed.append(exec_id)
        return removed

    async def _resume(self, running: _Running) -> _Outcome:
        """The recovered execution's container: follow it (or read what it left), then its exit status."""
        record = running.record
        request = record.request
        if running.container_id is None:
            if record.state in (ExecutionState.QUEUED, ExecutionState.PREPARING):
                # Not known to have started: either it never did, or the node went down before noting it.
                return _Outcome(
                    error="the job's container was not found when the node restarted: the node went down before "
                    "starting it, or it was removed while the node was down; its exit status is unknown"
                )
            return _Outcome(error="the job's container was removed while the node was down; its exit status is unknown")
        client = await self._client_async()
        container_id = running.container_id
        try:
            info = await self._engine_call(client.inspect_container, container_id)
        except docker.errors.NotFound:
            return _Outcome(error="the job's container was removed while the node was down; its exit status is unknown")
        state = info.get("State") or {}
        running.stop_signal = str((info.get("Config") or {}).get("StopSignal") or "SIGTERM")
        if not state.get("Running") and str(state.get("StartedAt") or "0001").startswith("0001"):
            return _Outcome(error="the node went down after creating the job's container but before starting it")
        exec_id = record.execution_id
        capture: asyncio.Future[Any]
        if self.capture.tracking(exec_id):
            # The capture process held the stream while the node was down: nothing was missed.
            capture = asyncio.ensure_future(self._capture_done(running))
        elif self.config.log_driver == "none" and (state.get("Running") or running.writer is not None):
            # Neither the node nor its capture process ran for a while, and the engine kept no log.
            running.gap_message = (
                "the node and its capture process were both down while the job ran: output written "
                "while neither was running is missing"
            )
            if state.get("Running"):
                if running.writer is not None:
                    await asyncio.to_thread(running.writer.close, complete=False)
                    running.writer = None
                elif self.logs.exists(exec_id) and self.logs.is_complete(exec_id):
                    raise ExecutorError(f"the log of execution {exec_id!r} is complete but its container still runs")
                await self.capture.attach(exec_id, container_id, results_dir=None, limits=None)
                capture = asyncio.ensure_future(self._capture_done(running))
            else:
                capture = asyncio.ensure_future(asyncio.sleep(0))
        elif running.writer is not None:
            skip = running.writer.bytes_written
            capture = asyncio.ensure_future(
                asyncio.get_running_loop().run_in_executor(
                    self._follow_pool,
                    _copy_engine_logs,
                    client,
                    container_id,
                    running,
                    skip,
                    bool(state.get("Running")),
                )
            )
        else:
            capture = asyncio.ensure_future(asyncio.sleep(0))
        if state.get("Running"):
            self._set_state(record, ExecutionState.RUNNING)
            remaining = None
            if request.timeout is not None:
                started = record.started_at or record.created_at
                remaining = max(0.0, request.timeout - (utcnow() - started).total_seconds())
            exited = asyncio.create_task(self._wait_exit(running, container_id, capture))
            cancel_wait = asyncio.create_task(running.cancel_event.wait())
            try:
                done, _ = await asyncio.wait(
                    {exited, cancel_wait}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if exited not in done:
                    await self._stop(running, container_id, "cancel" if cancel_wait in done else "timeout", exited)
                exit_code = await exited
            finally:
                cancel_wait.cancel()
            state = (await self._engine_call(client.inspect_container, container_id)).get("State") or {}
        else:
            await capture
            exit_code = int(state.get("ExitCode", -1))
        oom = bool(state.get("OOMKilled"))
        self._emit(
            record, EventKind.EXITED, f"container exited with code {exit_code}", exit_code=exit_code, oom_killed=oom
        )
        return _Outcome(exit_code=exit_code, oom_killed=oom)

    # ------------------------------------------------------------------ the execution itself

    def _emit(self, record: ExecutionRecord, kind: EventKind, message: str, **details: Any) -> ExecutionEvent:
        event = ExecutionEvent(execution_id=record.request.execution_id, kind=kind, message=message, details=details)
        if kind is not EventKind.PULL_PROGRESS:
            record.events.append(event)
        if self._event_sink is not None:
            try:
                self._event_sink(event)
            except Exception:
                log.exception("event sink failed")
        return event

    def _set_state(self, record: ExecutionRecord, state: ExecutionState) -> None:
        if record.state is not state:
            record.state = state
            self._emit(record, EventKind.STATE, f"state: {state.value}", state=state.value)

    async def _execute(self, running: _Running, *, recovered: bool = False) -> None:
        """The execution's task. Whatever happens, ``done`` is resolved and the container removed
        (unless a shutdown let go of it)."""
        record = running.record
        request = record.request
        try:
            with tracer.start_as_current_span(
                "execution",
                attributes={
                    "haddock.execution_id": request.execution_id,
                    "haddock.job_id": request.job_id,
                    "haddock.image": request.engine.image,
                    "haddock.recovered": recovered,
                },
            ) as span:
                result = await self._execute_traced(running, recovered=recovered)
                span.set_attribute("haddock.status", result.status.value)
                if result.exit_code is not None:
                    span.set_attribute("haddock.exit_code", result.exit_code)
                if result.status is not ResultStatus.SUCCESS:
                    span.set_status(trace.StatusCode.ERROR, result.error_message)
        except asyncio.CancelledError:
            if not running.done.done():
                running.done.set_exception(ExecutorShuttingDown())
                running.done.exception()  # retrieved: nobody may be waiting
            raise
        except BaseException as exc:  # pragma: no cover - _execute_traced handles what it can foresee
            log.exception("execution %s failed unexpectedly", request.execution_id)
            if not running.done.done():
                result = RunCommandResult(status=ResultStatus.ERROR, error_message=f"internal error: {exc!r}")
                record.result = result
                record.finished_at = utcnow()
                self._set_state(record, ExecutionState.FAILED)
                running.done.set_result(result)
            if not isinstance(exc, Exception):
                raise
        else:
            running.done.set_result(result)
        finally:
            self._running.pop(request.execution_id, None)
            self._forget_old_records()

    async def _execute_traced(self, running: _Running, *, recovered: bool = False) -> RunCommandResult:
        record = running.record
        outcome = _Outcome()
        status: ResultStatus | None = None
        try:
            try:
                if recovered:
                    with tracer.start_as_current_span("resume"):
                        outcome = await self._resume(running)
                else:
                    outcome, status = await self._prepare_and_run(running)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = _Outcome(error=_describe_failure(exc))
                if outcome.error.startswith("internal error"):
                    log.exception("execution %s failed", record.execution_id)
            if status is None:
                status = self._status(running, outcome)
            with tracer.start_as_current_span("write-results"):
                return await self._finish(running, status, outcome)
        except asyncio.CancelledError:
            if running.writer is not None:
                if running.leave_container:
                    # The node goes down and leaves the container running: keep the log open-ended
                    # (no END frame) so that a restart can append to it.
                    running.writer.close(complete=False)
                else:
                    running.writer.close()
            # The capture process goes on capturing: a restart finds its capture.
            self.capture.forget(record.execution_id)
            raise
        finally:
            if running.attach_response is not None:
                with contextlib.suppress(Exception):
                    running.attach_response.close()
            if running.container_id is not None and not running.leave_container:
                await self._remove_container(record, running.container_id)
            if not running.leave_container:
                try:
                    if running.prepared_inputs is not None:
                        await running.prepared_inputs.cleanup()
                    elif recovered and record.request.input_sources and self._input_preparer is not None:
                        await self._input_preparer.discard(record.execution_id)  # prepared by a previous life
                except Exception as exc:
                    log.warning("cleaning up the inputs of %s failed: %s", record.execution_id, exc)

    async def _prepare_and_run(self, running: _Running) -> tuple[_Outcome, ResultStatus | None]:
        """Image and inputs (at once), container, run. Returns the outcome, and a status when it is
        decided before running."""
        image = asyncio.create_task(self._prepare_image(running))
        steps: list[asyncio.Task[Any]] = [image]
        if running.record.request.input_sources:
            steps.append(asyncio.create_task(self._prepare_inputs(running)))
        try:
            await asyncio.gather(*steps)
        except BaseException:
            for step in steps:
                step.cancel()
            await asyncio.gather(*steps, return_exceptions=True)
            raise
        stop_signal = image.result()
        if running.cancel_event.is_set():
            return _Outcome(), ResultStatus.CANCELLED
        with tracer.start_as_current_span("run"):
            running.stop_signal = stop_signal
            running.container_id = await self._create_container(running)
            if running.cancel_event.is_set():  # cancelled while creating: never start it
                return _Outcome(), ResultStatus.CANCELLED
            return await self._run_container(running, running.container_id), None

    def _forget_old_records(self) -> None:
        """Keep a bounded number of finished executions in memory (the node persists them)."""
        excess = len(self._records) - len(self._running) - self.config.max_finished_records
        if excess <= 0:
            return
        finished = sorted(
            (r for r in self._records.values() if r.result is not None),
            key=lambda r: r.finished_at or r.created_at,
        )
        for r in finished[:excess]:
            del self._records[r.execution_id]

    async def _prepare_inputs(self, running: _Running) -> None:
        """Fetch the input sources (in parallel; a failure names the input and leaves nothing behind)."""
        assert self._input_preparer is not None
        record = running.record
        with tracer.start_as_current_span("inputs"):
            prepare = asyncio.create_task(self._input_preparer.prepare(record.request))
            cancelled = asyncio.create_task(running.cancel_event.wait())
            try:
                await asyncio.wait({prepare, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                cancelled.cancel()
            if not prepare.done():
                prepare.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await prepare
                return
            running.prepared_inputs = prepare.result()
        n = len(running.prepared_inputs.volumes)
        self._emit(record, EventKind.INPUTS_PREPARED, f"{n} input{'s' if n != 1 else ''} ready")

    async def _prepare_image(self, running: _Running) -> str:
        """Make the image available; return its stop signal."""
        with tracer.start_as_current_span("pull"):
            return await self._prepare_image_traced(running)

    async def _prepare_image_traced(self, running: _Running) -> str:
        record = running.record
        engine = record.request.engine
        self._emit(record, EventKind.PULLING, f"making image {engine.image} available ({engine.pull_policy})")

        def progress(rec: dict[str, Any]) -> None:
            detail = rec.get("progressDetail") or {}
            self._emit(
                record,
                EventKind.PULL_PROGRESS,
                str(rec.get("status", "")),
                layer=rec.get("id"),
                current=detail.get("current"),
                total=detail.get("total"),
            )

        images = await self._images_async()
        pull = asyncio.ensure_future(images.ensure(engine.image, engine.pull_policy, progress))
        cancelled = asyncio.ensure_future(running.cancel_event.wait())
        try:
            await asyncio.wait({pull, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if not pull.done():
            pull.cancel()  # the shared pull goes on for other waiters
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pull
            return "SIGTERM"
        info, pulled = pull.result()
        self._emit(
            record,
            EventKind.IMAGE_READY,
            f"image {engine.image} {'pulled' if pulled else 'present'}",
            image_id=info.get("Id"),
            pulled=pulled,
        )
        return str((info.get("Config") or {}).get("StopSignal") or "SIGTERM")

    def _container_spec(self, request: RunCommandRequest, prepared: list[InputVolume]) -> dict[str, Any]:
        cfg = self.config
        res = request.resources
        engine = request.engine
        mounts = [
            docker.types.Mount(target=v.target, source=str(v.source), type="bind", read_only=v.read_only)
            for v in [*request.inputs, *prepared]
        ]
        for out in request.outputs:
            host = _results_dir(request) / out.name
            host.mkdir(parents=True, exist_ok=True)
            mounts.append(docker.types.Mount(target=out.path, source=str(host), type="bind", read_only=False))
        host_config: dict[str, Any] = {
            "network_mode": request.network.mode.value,
            "mounts": mounts,
            "log_config": docker.types.LogConfig(
                type=cfg.log_driver, config=dict(cfg.log_driver_options) if cfg.log_driver != "none" else {}
            ),
            "init": cfg.init,
        }
        if res.cpu:
            host_config["nano_cpus"] = int(res.cpu * 1e9)
        if res.memory:
            host_config["mem_limit"] = res.memory
            host_config["memswap_limit"] = res.memory  # equal: no swap
        if cfg.pids_limit:
            host_config["pids_limit"] = cfg.pids_limit
        if cfg.no_new_privileges:
            host_config["security_opt"] = ["no-new-privileges"]
        if cfg.cap_drop:
            host_config["cap_drop"] = list(cfg.cap_drop)
        if res.gpu:
            host_config["device_requests"] = [docker.types.DeviceRequest(count=res.gpu, capabilities=[["gpu"]])]
        env = dict(engine.env)
        env[f"{RESERVED_ENV_PREFIX}JOB_ID"] = request.job_id
        env[f"{RESERVED_ENV_PREFIX}EXECUTION_ID"] = request.execution_id
        return {
            "image": engine.image,
            "command": list(engine.parameters) or None,
            "entrypoint": engine.entrypoint,
            "environment": env,
            "working_dir": engine.working_dir,
            "labels": {
                LABEL_NODE: cfg.node_id,
                LABEL_JOB: request.job_id,
                LABEL_EXECUTION: request.execution_id,
            },
            "name": self.container_name(request.execution_id),
            "stdin_open": False,
            "tty": False,
            "host_config": host_config,
        }

    async def _create_container(self, running: _Running) -> str:
        request = running.record.request
        client = await self._client_async()
        prepared = running.prepared_inputs.volumes if running.prepared_inputs is not None else []
        spec = await asyncio.to_thread(self._container_spec, request, prepared)
        spec["host_config"] = client.create_host_config(**spec["host_config"])
        try:
            created = await self._engine_call(client.create_container, **spec)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            # A container with this execution's name exists: left from an earlier life of this node.
            # Never touch a running one; an exited one holds nothing this execution needs.
            existing = await self._api(client.inspect_container, spec["name"])
            if (existing.get("State") or {}).get("Running"):
                raise ExecutorError(
                    f"a container for execution {request.execution_id!r} is already running on this node "
                    f"({spec['name']}); it was not started by this execution"
                ) from exc
            log.warning("removing stale exited container %s", spec["name"])
            await self._api(client.remove_container, spec["name"], force=True)
            created = await self._api(client.create_container, **spec)
        container_id = str(created["Id"])
        running.record.container_id = container_id
        return container_id

    async def _run_container(self, running: _Running, container_id: str) -> _Outcome:
        record = running.record
        request = record.request
        client = await self._client_async()
        # Attach (by the capture process) before start: no byte of output can be missed.
        await self.capture.attach(
            request.execution_id, container_id, results_dir=_results_dir(request), limits=request.output_limits
        )
        capture = asyncio.create_task(self._capture_done(running))
        try:
            await self._start_container(client, container_id)
        except BaseException:
            capture.cancel()  # the container is removed: its stream ends, and _finish closes the log
            await asyncio.gather(capture, return_exceptions=True)
            raise
        record.started_at = utcnow()
        self._set_state(record, ExecutionState.RUNNING)
        self._emit(record, EventKind.STARTED, "container started", container_id=container_id)

        exited = asyncio.create_task(self._wait_exit(running, container_id, capture))
        cancel_wait = asyncio.create_task(running.cancel_event.wait())
        cap_hit = asyncio.Event()

        async def on_cap_exceeded(usage: int) -> None:
            cap_hit.set()

        output_dirs = [_results_dir(request) / o.name for o in request.outputs]
        cap = request.resources.disk or self.config.default_output_cap
        watcher = OutputWatcher(output_dirs, cap, on_cap_exceeded) if output_dirs else None
        cap_wait = asyncio.create_task(cap_hit.wait())
        try:
            async with watcher if watcher is not None else contextlib.nullcontext():
                done, _ = await asyncio.wait(
                    {exited, cancel_wait, cap_wait}, timeout=request.timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if exited not in done and cap_wait in done:
                    # Stop at once: what matters now is the node's disk.
                    self._emit(
                        record,
                        EventKind.OUTPUT_CAP_EXCEEDED,
                        f"the job wrote past its output cap of {format_bytes(cap)}; stopping it",
                    )
                    await self._stop(running, container_id, "output-cap", exited, grace=0)
                await self._settle(running, record, container_id, exited, cancel_wait, done, request)
        finally:
            cancel_wait.cancel()
            cap_wait.cancel()
            if not exited.done():
                exited.cancel()
                capture.cancel()
                await asyncio.gather(exited, capture, return_exceptions=True)
        if watcher is not None and watcher.exceeded:
            running.output_cap_message = watcher.message()
            await asyncio.to_thread(trim_to_cap, output_dirs, cap)
        exit_code = exited.result()
        state = (await self._engine_call(client.inspect_container, container_id)).get("State") or {}

        oom = bool(state.get("OOMKilled"))
        self._check_capture_complete(running, state)
        if (
            running.capture_error.startswith(STREAM_CUT)
            and self.config.log_driver != "none"
            and running.writer is None
            and running.capture_info is not None
        ):
            # The stream was cut (engine restart, dropped connection): the engine's own log has the rest.
            running.capture_error = ""
            running.captured = None
            await self.capture.close(request.execution_id, complete=False)
            running.writer = await asyncio.to_thread(self.logs.open_append, request.execution_id)
            await asyncio.get_running_loop().run_in_executor(
                self._api_pool,
                _copy_engine_logs,
                client,
                container_id,
                running,
                running.writer.bytes_written,
                False,
            )
            if not running.capture_error:
                self._emit(
                    record,
                    EventKind.OUTPUT_RECOVERED,
                    "output recovered from the engine's log after the stream was cut",
                )
        self._emit(
            record, EventKind.EXITED, f"container exited with code {exit_code}", exit_code=exit_code, oom_killed=oom
        )
        return _Outcome(exit_code=exit_code, oom_killed=oom)

    async def _settle(
        self,
        running: _Running,
        record: ExecutionRecord,
        container_id: str,
        exited: asyncio.Task[int],
        cancel_wait: asyncio.Task[Any],
        done: set[asyncio.Task[Any]],
        request: RunCommandRequest,
    ) -> None:
        """After the first of exit / cancel / timeout: stop the container if it still runs, wait for its exit."""
        if not exited.done() and not running.stop_reason:
            if cancel_wait in done:
                await self._stop(running, container_id, "cancel", exited)
            elif request.timeout is not None and not done:
                self._emit(
                    record,
                    EventKind.TIMED_OUT,
                    f"the job exceeded its timeout of {format_duration(request.timeout)}; stopping it",
                )
                await self._stop(running, container_id, "timeout", exited)
        await exited

    async def _capture_done(self, running: _Running) -> None:
        """Wait until the capture process reports the end of the container's stream; note what it says."""
        info = await self.capture.wait_ended(running.record.execution_id)
        running.capture_info = info
        running.capture_ended_at = info.ended_at
        running.captured = info.captured
        if info.error and not running.capture_error:
            running.capture_error = info.error

    def _check_capture_complete(self, running: _Running, state: dict[str, Any]) -> None:
        """If the stream ended well before the container did, the engine cut it: say output is missing."""
        if running.capture_error or running.capture_ended_at is None:
            return
        finished = _parse_engine_time(str(state.get("FinishedAt") or ""))
        if finished is not None and running.capture_ended_at < finished - CAPTURE_SLACK_SECONDS:
            running.capture_error = f"{STREAM_CUT}: the engine closed it before the job ended; output may be missing"

    async def _wait_exit(self, running: _Running, container_id: str, capture: Awaitable[Any]) -> int:
        """The container's exit code. The attach stream ends when the job exits; then wait answers at once."""
        await capture
        client = await self._client_async()
        while True:
            try:
                result = await self._engine_call(client.wait, container_id, timeout=WAIT_POLL_SECONDS)
            except requests.exceptions.ReadTimeout:
                continue  # still running (the stream was cut): keep waiting
            running.exited = True
            return int(result.get("StatusCode", -1))

    async def _start_container(self, client: docker.APIClient, container_id: str) -> None:
        """Start the container once. If the connection drops mid-call, ask the engine whether it
        started before trying again: starting an exited container would run the job twice."""
        while True:
            try:
                await self._api(client.start, container_id)
                return
            except requests.exceptions.ConnectionError:
                state = (await self._engine_call(client.inspect_container, container_id)).get("State") or {}
                if state.get("Running") or not str(state.get("StartedAt") or "0001").startswith("0001"):
                    return

    async def _engine_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An engine call that survives a short engine outage (connection refused/reset), bounded."""
        deadline = time.monotonic() + self.config.engine_retry_seconds
        delay = 0.2
        while True:
            try:
                return await self._api(fn, *args, **kwargs)
            except requests.exceptions.ConnectionError as exc:
                if time.monotonic() + delay > deadline:
                    raise EngineUnavailable(f"the Docker engine did not answer: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _stop(
        self,
        running: _Running,
        container_id: str,
        reason: str,
        exited: asyncio.Task[int],
        *,
        grace: float | None = None,
    ) -> None:
        """Send the image's stop signal, wait up to the grace, then SIGKILL. Holds no thread while waiting.

        Records ``reason`` only if the signal reached a running container: a job that ended by
        itself at the same moment keeps its own status.
        """
        client = await self._client_async()
        grace = self._stop_grace if grace is None else grace
        async with running.stop_lock:
            if exited.done() or running.stop_reason:
                return
            log.info("stopping %s (%s; %s, then SIGKILL after %ss)", container_id, reason, running.stop_signal, grace)
            try:
                await self._api(client.kill, container_id, signal=running.stop_signal if grace else "SIGKILL")
            except docker.errors.APIError as exc:
                if exc.status_code in (404, 409):  # not running any more: it ended by itself
                    return
                log.warning("signalling %s failed (%s); killing it", container_id, exc)
                grace = 0
            running.stop_reason = reason
            try:
                await asyncio.wait_for(asyncio.shield(exited), grace)
            except TimeoutError:
                with contextlib.suppress(docker.errors.APIError):
                    await self._api(client.kill, container_id, signal="SIGKILL")

    def _status(self, running: _Running, outcome: _Outcome) -> ResultStatus:
        if running.stop_reason == "cancel":
            return ResultStatus.CANCELLED
        if running.stop_reason == "timeout":
            return ResultStatus.TIMEOUT
        if running.output_cap_message:
            return ResultStatus.ERROR
        if outcome.oom_killed:
            return ResultStatus.KILLED
        if outcome.error or running.capture_error or running.gap_message or outcome.exit_code != 0:
            return ResultStatus.ERROR
        return ResultStatus.SUCCESS

    def _message(self, request: RunCommandRequest, status: ResultStatus, outcome: _Outcome) -> str:
        if outcome.error:
            return outcome.error
        if status is ResultStatus.KILLED:
            limit = format_bytes(request.resources.memory) if request.resources.memory else "the node's memory"
            return f"the job ran out of memory: it was killed for exceeding its memory limit of {limit}"
        if status is ResultStatus.TIMEOUT:
            assert request.timeout is not None
            return f"the job exceeded its timeout of {format_duration(request.timeout)} and was stopped"
        if status is ResultStatus.CANCELLED:
            return "the execution was cancelled"
        if status is ResultStatus.ERROR and outcome.exit_code not in (0, None):
            return f"the job exited with code {outcome.exit_code}"
        return ""

    async def _finish(self, running: _Running, status: ResultStatus, outcome: _Outcome) -> RunCommandResult:
        """Write the results (from the log store, never from the engine) and settle the record. Never raises."""
        record = running.record
        request = record.request
        self._set_state(record, ExecutionState.FINISHING)
        exec_id = request.execution_id
        message = "; ".join(
            m
            for m in (
                running.output_cap_message or self._message(request, status, outcome),
                running.gap_message,
                running.capture_error,
            )
            if m
        )

        async def stream(kind: StreamType) -> AsyncIterator[bytes]:
            async for entry in self.logs.read(exec_id, streams=frozenset({kind})):
                yield entry.data

        writer = running.writer
        info = running.capture_info
        results_dir = _results_dir(request)
        try:
            if writer is not None:
                await asyncio.to_thread(writer.close)
            else:
                await self.capture.close(exec_id)  # the END frame, written by whoever holds the log
            written = None
            if running.captured is not None:
                try:
                    # The capture process filled the results files: rename them, read the inline heads.
                    written = await write_job_results(
                        results_dir,
                        stream(StreamType.STDOUT),
                        stream(StreamType.STDERR),
                        outcome.exit_code,
                        request.output_limits,
                        captured=running.captured,
                    )
                except OSError as exc:
                    log.warning("the captured results of %s are not usable (%s); copying from the log", exec_id, exc)
            if written is None:
                await asyncio.to_thread(remove_capture_files, results_dir)
                written = await write_job_results(
                    results_dir,
                    stream(StreamType.STDOUT),
                    stream(StreamType.STDERR),
                    outcome.exit_code,
                    request.output_limits,
                )
            if writer is not None:
                out_bytes, err_bytes = writer.stdout_bytes, writer.stderr_bytes
            elif info is not None:
                out_bytes, err_bytes = info.stdout_bytes, info.stderr_bytes
            else:
                out_bytes, err_bytes = written.stdout.total_bytes or 0, written.stderr.total_bytes or 0
            self._emit(
                record,
                EventKind.RESULTS_WRITTEN,
                f"results written to {request.results_dir}",
                stdout_bytes=out_bytes,
                stderr_bytes=err_bytes,
            )
            lost = bool(running.capture_error or running.gap_message)
            published, publish_errors = await self._publish(record)
            result = RunCommandResult(
                status=status,
                exit_code=outcome.exit_code,
                stdout=written.stdout.text,
                stdout_truncated=written.stdout.truncated or lost,
                stdout_file_truncated=written.stdout.file_truncated or lost,
                stderr=written.stderr.text,
                stderr_truncated=written.stderr.truncated or lost,
                stderr_file_truncated=written.stderr.file_truncated or lost,
                error_message=message,
                published=published,
                publish_errors=publish_errors,
            )
        except Exception as exc:
            log.exception("writing results of %s failed", exec_id)
            result = RunCommandResult(
                status=ResultStatus.ERROR if status is ResultStatus.SUCCESS else status,
                exit_code=outcome.exit_code,
                error_message=f"{message + '; ' if message else ''}writing results to "
                f"{request.results_dir} failed: {_describe_failure(exc)}",
            )
        record.result = result
        record.finished_at = utcnow()
        if result.status is not ResultStatus.SUCCESS:
            self._emit(record, EventKind.FAILED, result.error_message, status=result.status.value)
        self._set_state(record, result.status.state)
        return result

    async def _publish(self, record: ExecutionRecord) -> tuple[list[str], list[str]]:
        """Publish the results dir as the request asks; failures are reported in the result, not raised."""
        request = record.request
        if not request.publishers or self._result_publisher is None:
            return [], []
        with tracer.start_as_current_span("publish"):
            try:
                published, errors = await self._result_publisher.publish(request)
            except Exception as exc:  # a publisher's bug must not lose the result
                log.exception("publishing the results of %s failed", record.execution_id)
                published, errors = [], [f"publishing failed: {exc}"]
        self._emit(
            record,
            EventKind.PUBLISHED,
            f"results published to {', '.join(published)}" if published else "publishing failed",
            published=", ".join(published),
            errors="; ".join(errors),
        )
        return published, errors

    async def _remove_container(self, record: ExecutionRecord, container_id: str) -> None:
        client = await self._client_async()
        try:
            await self._engine_call(client.remove_container, container_id, force=True, v=True)
            self._emit(record, EventKind.CLEANED_UP, "container removed")
        except docker.errors.NotFound:
            pass
        except (docker.errors.APIError, EngineUnavailable) as exc:
            # Left for the reaper: it carries this node's labels.
            log.warning("could not remove container %s: %s", container_id, exc)


CAPTURE_SLACK_SECONDS = 1.0
SYNC_BYTES = 8 * 1024 * 1024
SYNC_SECONDS = 2.0
WAIT_POLL_SECONDS = 60


def _describe_failure(exc: BaseException) -> str:
    """A message for people about why an execution could not run."""
    if isinstance(exc, ImageError | ExecutorError):
        return str(exc)
    if isinstance(exc, docker.errors.APIError):
        return f"the Docker engine refused: {exc.explanation or exc}"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"the Docker engine did not answer: {exc}"
    if isinstance(exc, StreamProtocolError):
        return f"reading the container's output failed: {exc}"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe_failure(e) for e in exc.exceptions)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"internal error: {exc!r}"


def _parse_engine_time(text: str) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds) as epoch seconds; None for the zero time."""
    if not text or text.startswith("0001-"):
        return None
    main, _, rest = text.partition(".")
    frac = "".join(ch for ch in rest if ch.isdigit())[:6]
    try:
        dt = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return dt.timestamp() + (int(frac.ljust(6, "0")) / 1e6 if frac else 0.0)


def _results_dir(request: RunCommandRequest) -> Path:
    assert request.results_dir is not None, "start() refuses requests without results_dir"
    return request.results_dir


def _copy_engine_logs(
    client: docker.APIClient, container_id: str, running: _Running, skip: dict[StreamType, int], follow: bool
) -> None:
    """Runs in a thread for a recovered execution: copy the engine's log of the container into the
    node's log, skipping per stream the bytes the node already has, following it while it runs."""
    writer = running.writer
    assert writer is not None
    response = client._get(
        client._url("/containers/{0}/logs", container_id),
        params={"stdout": 1, "stderr": 1, "follow": int(follow)},
        stream=True,
        timeout=None if follow else 600,
    )
    running.attach_response = response
    try:
        client._raise_for_status(response)
        demux = Demuxer()
        left = dict(skip)
        for data in response.iter_content(chunk_size=None):
            for kind, payload in demux.feed(data):
                already = left.get(kind, 0)
                if already:
                    cut = min(already, len(payload))
                    left[kind] = already - cut
                    payload = payload[cut:]
                if payload:
                    writer.write(kind, payload)
        if any(left.values()):
            running.capture_error = (
                "the engine no longer holds all of the job's output (its log was rotated); "
                "output written while the node was down may be missing"
            )
    except (OSError, requests.exceptions.RequestException, docker.errors.APIError, StreamProtocolError) as exc:
        running.capture_error = (
            f"collecting the job's output from the engine's log failed ({exc}); output may be missing"
        )
    finally:
        running.capture_ended_at = time.time()
        response.close()
