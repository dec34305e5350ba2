"""The Docker driver: one container per execution, named ``haddock-<node>-<execution>`` and labelled with
the node, job and execution ids, hardened by default, its output attached before it starts.

It implements :class:`haddock.executor.driver.Driver`; the lifecycle around it (timeouts, cancel, results)
is the runner's. One concern a file, as Nomad's ``drivers/docker``: ``engine.py`` (client, pools,
retries), ``spec.py`` (the container spec), ``capture.py`` (output), ``handle.py`` (one container),
``images.py`` (pulls), ``reconcile.py`` (orphans).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import docker.errors

from haddock.executor.docker import reconcile
from haddock.executor.docker.capture import Capture
from haddock.executor.docker.capture_client import CaptureClient, CaptureInfo
from haddock.executor.docker.config import DockerConfig
from haddock.executor.docker.engine import ENGINE_ERRORS, Engine, describe_failure, explain_init_exit
from haddock.executor.docker.handle import DockerHandle
from haddock.executor.docker.images import ImageManager
from haddock.executor.docker.spec import LABEL_EXECUTION, LABEL_NODE, container_name, container_spec, output_dirs
from haddock.executor.driver import ExitStatus, ImageReady, ProgressSink
from haddock.executor.errors import ExecutionRefused, ExecutorError, InvalidSpec
from haddock.executor.logstore import LogStore, LogWriter
from haddock.executor.quantity import format_bytes, format_cpu
from haddock.executor.records import BidResult, EventKind, ExecutionRecord, ExecutionState
from haddock.executor.request import InputVolume, NetworkMode, Resources, RunCommandRequest
from haddock.executor.service import attempt_output_base

__all__ = ["JOB_NETWORK", "DockerDriver"]

JOB_NETWORK = "haddock-jobs"
"""Jobs (job types) with network none run here: an internal network (no way out) the node reaches them on."""

log = logging.getLogger(__name__)


class DockerDriver:
    """Runs executions as Docker containers of node ``node_id``."""

    def __init__(self, config: DockerConfig, *, node_id: str) -> None:
        self.config = config
        self.node_id = node_id
        self.engine = Engine(config)
        self._captures: CaptureClient | None = None
        self._held: dict[str, CaptureInfo] = {}  # what the capture process held when the node (re)started
        self._job_network_lock = asyncio.Lock()

    def bind_logs(self, logs: LogStore) -> None:
        """The node's log store: the capture process (one per log dir) writes into it."""
        self._captures = CaptureClient(
            logs.root,
            logs,
            docker_host=self.config.host,
            idle_seconds=self.config.capture_idle,
            engine_retry_seconds=self.config.engine_retry,
        )

    @property
    def captures(self) -> CaptureClient:
        """The client of the node's capture process."""
        if self._captures is None:
            raise RuntimeError("the Docker driver has no log store: call bind_logs() first")
        return self._captures

    @property
    def stop_grace(self) -> float:
        return self.config.stop_grace

    @property
    def images(self) -> ImageManager:
        return self.engine.images

    def container_name(self, execution_id: str) -> str:
        return container_name(self.node_id, execution_id)

    # ------------------------------------------------------------------ what this engine can run

    async def is_installed(self) -> bool:
        return await self.engine.ping()

    async def engine_info(self) -> dict[str, Any]:
        return await self.engine.info()

    async def inspect_image(self, image: str) -> dict[str, Any] | None:
        """The local image's inspect data, or None when the engine does not have it."""
        return await (await self.engine.images_async()).image_info(image)

    def _network_refusal(self, request: RunCommandRequest) -> str | None:
        mode = request.network.mode
        if request.service is not None and request.service.ports and mode is not NetworkMode.BRIDGE:
            return (
                f"a service with ports needs network mode 'bridge' (its ports are published from the container's "
                f"network); it asks for '{mode}'"
            )
        if mode in self.config.allowed_networks:
            return None
        allowed = ", ".join(sorted(m.value for m in self.config.allowed_networks)) or "no networking"
        return f"this node does not accept jobs with network mode '{mode}' (allowed: {allowed})"

    def check(self, request: RunCommandRequest) -> None:
        refusal = self._network_refusal(request)
        if refusal:
            raise ExecutionRefused(refusal)

    async def should_bid(self, request: RunCommandRequest) -> BidResult:
        if not await self.is_installed():
            return BidResult.no("this node's Docker engine is not answering")
        refusal = self._network_refusal(request)
        if refusal:
            return BidResult.no(refusal)
        if request.resources.gpu and not await self._gpu_runtime_available():
            return BidResult.no("this node has no GPUs (no GPU runtime is configured in its Docker engine)")
        return BidResult.yes("this node can run Docker jobs of this kind")

    async def should_bid_based_on_usage(self, request: RunCommandRequest, usage: Resources) -> BidResult:
        try:
            info = await self.engine_info()
        except ENGINE_ERRORS:
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
        except ENGINE_ERRORS:
            return False
        return "nvidia" in (info.get("Runtimes") or {})

    def describe_failure(self, exc: BaseException) -> str:
        return describe_failure(exc)

    def explain_exit(self, exit_code: int, stderr_head: bytes) -> str | None:
        return explain_init_exit(exit_code, stderr_head) if self.config.init else None

    # ------------------------------------------------------------------ one execution's container

    async def prepare_image(self, request: RunCommandRequest, progress: ProgressSink) -> ImageReady:
        engine = request.engine
        # The engine may be away (restarting): the calls wait for it up to engine_retry, and say so.
        with self.engine.on_wait(lambda why: progress({"note": why})):
            images = await self.engine.images_async()
            info, pulled = await images.ensure(engine.image, engine.pull_policy, progress)
        stop_signal = str((info.get("Config") or {}).get("StopSignal") or "SIGTERM")
        return ImageReady(image_id=info.get("Id"), pulled=pulled, stop_signal=stop_signal)

    async def create(
        self,
        request: RunCommandRequest,
        volumes: list[InputVolume],
        writer: LogWriter,
        *,
        stop_signal: str,
        attempt: int = 1,
    ) -> DockerHandle:
        if request.results_dir is None:
            raise InvalidSpec("results_dir is required: the executor needs to know where to write results")
        client = await self.engine.client_async()

        def spec() -> dict[str, Any]:
            for host in output_dirs(request):
                host.mkdir(parents=True, exist_ok=True)
            return container_spec(request, volumes, self.config, self.node_id, attempt=attempt)

        kwargs = await asyncio.to_thread(spec)
        if request.job is not None and not request.is_service and request.network.mode is NetworkMode.NONE:
            # The node must reach a job's wrapper (port 7000) and the job must reach nothing: a network
            # of the engine's with no way out (internal), which the node's host can still reach.
            kwargs["host_config"]["network_mode"] = await self._job_network(client)
        kwargs["host_config"] = client.create_host_config(**kwargs["host_config"])
        try:
            created = await self.engine.call(client.create_container, **kwargs)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            # A container with this execution's name exists: left from an earlier life of this node.
            # Never touch a running one; an exited one holds nothing this execution needs.
            existing = await self.engine.api(client.inspect_container, kwargs["name"])
            if (existing.get("State") or {}).get("Running"):
                raise ExecutorError(
                    f"a container for execution {request.execution_id!r} is already running on this node "
                    f"({kwargs['name']}); it was not started by this execution"
                ) from exc
            log.warning("removing stale exited container %s", kwargs["name"])
            await self.engine.api(client.remove_container, kwargs["name"], force=True)
            created = await self.engine.api(client.create_container, **kwargs)
        capture = Capture(request.execution_id, writer, self.captures)
        return DockerHandle(self.engine, str(created["Id"]), capture, stop_signal=stop_signal, request=request)

    async def _job_network(self, client: docker.APIClient) -> str:
        """The internal network for jobs that asked for none (created once, labelled with this node)."""
        name = JOB_NETWORK
        async with self._job_network_lock:
            found = await self.engine.call(client.networks, names=[name])
            if not any(n.get("Name") == name for n in found):
                try:
                    await self.engine.call(
                        client.create_network, name, driver="bridge", internal=True, labels={LABEL_NODE: self.node_id}
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # another node on this engine made it meanwhile
                        raise
        return name

    # ------------------------------------------------------------------ after a restart

    async def containers(self) -> dict[str, dict[str, Any]]:
        """This node's containers by execution id (``docker ps -a`` filtered by the node label)."""
        client = await self.engine.client_async()
        found = await self.engine.call(client.containers, all=True, filters={"label": f"{LABEL_NODE}={self.node_id}"})
        return {str(c["Labels"].get(LABEL_EXECUTION, "")): c for c in found}

    async def held_logs(self) -> set[str]:
        """Executions whose log the capture process still holds (it went on while the node was down)."""
        self._held = await self.captures.connect()
        return set(self._held)

    async def resume(self, record: ExecutionRecord, writer: LogWriter | None) -> DockerHandle | ExitStatus | None:
        held = self._held.pop(record.execution_id, None)
        if held is not None:
            self.captures.track(record.execution_id, held)
        resumed = await self._resume(record, writer)
        if isinstance(resumed, ExitStatus) and held is not None:
            # No container to follow: the log is complete (a service's stays open: it may restart into it).
            await self.captures.close(record.execution_id, complete=not record.request.is_service)
        return resumed

    async def _resume(self, record: ExecutionRecord, writer: LogWriter | None) -> DockerHandle | ExitStatus | None:
        container_id = record.container_id
        if container_id is None:
            container_id = str((await self.containers()).get(record.execution_id, {}).get("Id") or "") or None
        if container_id is None:
            if _never_ran(record, writer):
                return None  # the node went down while preparing it: it is prepared again
            return ExitStatus(error=_REMOVED)
        client = await self.engine.client_async()
        try:
            info = await self.engine.call(client.inspect_container, container_id)
        except docker.errors.NotFound:
            return ExitStatus(error=_REMOVED)
        state = info.get("State") or {}
        if not state.get("Running") and str(state.get("StartedAt") or "0001").startswith("0001"):
            handle = DockerHandle(self.engine, container_id, Capture(record.execution_id, None, self.captures))
            await handle.remove()
            return ExitStatus(error="the node went down after creating the job's container but before starting it")
        stop_signal = str((info.get("Config") or {}).get("StopSignal") or "SIGTERM")
        capture = Capture(record.execution_id, writer, self.captures)
        capture.skip_base = attempt_output_base(record)  # a service's later attempt: its own output only
        handle = DockerHandle(self.engine, container_id, capture, stop_signal=stop_signal, request=record.request)
        await handle.follow(running=bool(state.get("Running")))
        return handle

    async def reap_orphans(self, *, keep: set[str], grace: float | None = None) -> list[str]:
        client = await self.engine.client_async()

        async def remove(container_id: str) -> bool:
            try:
                await self.engine.call(client.remove_container, container_id, force=True, v=True)
                return True
            except docker.errors.NotFound:
                return False

        return await reconcile.reap_orphans(
            self.containers, remove, keep=keep, grace=self.config.orphan_grace if grace is None else grace
        )

    async def close(self) -> None:
        if self._captures is not None:
            await self._captures.aclose()
        self.engine.close()


_REMOVED = "the job's container was removed while the node was down; its exit status is unknown"


def _never_ran(record: ExecutionRecord, writer: LogWriter | None) -> bool:
    """No container of it is found, and nothing says one ever ran: the node went down while preparing it.
    Its state, its events and its log agree (a container that started before the node could note it has
    written to the log, or it is found by name)."""
    return (
        record.state in (ExecutionState.QUEUED, ExecutionState.PREPARING)
        and record.started_at is None
        and not any(e.kind in (EventKind.STARTED, EventKind.EXITED) for e in record.events)
        and writer is not None
        and writer.committed == 0
    )
