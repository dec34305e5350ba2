"""The handle of one execution's container: start, wait, stop with grace, finish, remove, let go."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import docker.errors
import requests.exceptions

from haddock.executor.docker.capture import GAP, Capture
from haddock.executor.docker.engine import Engine
from haddock.executor.docker.stats import sample as sample_stats
from haddock.executor.docker.times import engine_timestamp
from haddock.executor.driver import ExitStatus
from haddock.executor.logstore import LogWriter
from haddock.executor.request import RunCommandRequest
from haddock.executor.stats import Stat

__all__ = ["DockerHandle"]

log = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 60


class DockerHandle:
    """One container of this node, fresh (:meth:`start`) or taken back after a restart (:meth:`follow`)."""

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        capture: Capture,
        *,
        stop_signal: str = "SIGTERM",
        request: RunCommandRequest | None = None,
    ) -> None:
        self._engine = engine
        self._request = request
        self._container_id = container_id
        self.capture = capture
        self.stop_signal = stop_signal
        self._stop_reason: str | None = None
        self._exited = False
        self._running = False
        self._capture_task: asyncio.Future[Any] | None = None
        self._stop_lock = asyncio.Lock()
        self._exit: asyncio.Future[int] | None = None

    @property
    def container_id(self) -> str:
        return self._container_id

    @property
    def running(self) -> bool:
        return self._running

    @property
    def exited(self) -> bool:
        return self._exited

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    async def start(self) -> None:
        """The capture process attaches (before start: no byte of output can be missed), then start once."""
        client = await self._engine.client_async()
        request = self._request
        assert request is not None, "a fresh container's handle knows its request"
        if request.is_service:  # its results cover every attempt: written from the log at the end
            await self.capture.attach(self._container_id, None, None)
        else:
            await self.capture.attach(self._container_id, request.results_dir, request.output_limits)
        self._capture_task = asyncio.ensure_future(self.capture.wait_ended())
        try:
            await self._start_once(client)
        except BaseException:
            self._capture_task.cancel()  # the container is removed: its stream ends, and remove() ends the log
            await asyncio.gather(self._capture_task, return_exceptions=True)
            raise
        self._running = True

    async def _start_once(self, client: docker.APIClient) -> None:
        """If the connection drops mid-call, ask the engine whether it started before trying again:
        starting an exited container would run the job twice."""
        while True:
            try:
                await self._engine.api(client.start, self._container_id)
                return
            except requests.exceptions.ConnectionError:
                state = await self._state()
                if state.get("Running") or not str(state.get("StartedAt") or "0001").startswith("0001"):
                    return

    async def follow(self, *, running: bool) -> None:
        """A resumed container: the capture process's capture goes on; or the engine's log of it is copied
        (following it while it runs) into the log; or, with no engine log, the capture process attaches anew
        and the output written while neither the node nor it ran is reported missing."""
        self._running = running
        capture = self.capture
        if capture.remote:  # the capture process held the stream while the node was down: nothing missed
            self._capture_task = asyncio.ensure_future(capture.wait_ended())
            return
        if self._engine.config.log_driver == "none" and (running or capture.writer is not None):
            capture.error = GAP
            if running:
                await capture.attach(self._container_id, None, None)
                self._capture_task = asyncio.ensure_future(capture.wait_ended())
                return
            self._capture_task = asyncio.ensure_future(asyncio.sleep(0))
            return
        if capture.writer is None:  # all output was captured before the node went down
            self._capture_task = asyncio.ensure_future(asyncio.sleep(0))
            return
        loop = asyncio.get_running_loop()
        self._capture_task = loop.run_in_executor(
            self._engine.follow_pool, self._copy_logs, self._engine.client, running
        )

    def _copy_logs(self, client: docker.APIClient, follow: bool) -> None:
        self.capture.copy_engine_logs(client, self._container_id, follow)

    async def wait(self) -> int:
        """The exit code. The output stream ends when the job exits; then the engine's wait answers at once."""
        if self._exit is None:
            self._exit = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._exit)

    async def _wait(self) -> int:
        assert self._capture_task is not None, "start() or follow() first"
        await self._capture_task
        client = await self._engine.client_async()
        while True:
            try:
                result = await self._engine.call(client.wait, self._container_id, timeout=WAIT_POLL_SECONDS)
            except requests.exceptions.ReadTimeout:
                continue  # still running (the stream was cut): keep waiting
            self._exited = True
            return int(result.get("StatusCode", -1))

    async def stop(self, reason: str, *, grace: float | None = None) -> None:
        """The image's stop signal, up to the grace, then SIGKILL. Holds no thread while waiting.

        Records ``reason`` only if the signal reached a running container: a job that ended by
        itself at the same moment keeps its own status.
        """
        client = await self._engine.client_async()
        grace = self._engine.config.stop_grace if grace is None else grace
        exited = asyncio.ensure_future(self.wait())
        async with self._stop_lock:
            if exited.done() or self._stop_reason:
                return
            cid = self._container_id
            log.info("stopping %s (%s; %s, then SIGKILL after %ss)", cid, reason, self.stop_signal, grace)
            try:
                await self._engine.api(client.kill, cid, signal=self.stop_signal if grace else "SIGKILL")
            except docker.errors.APIError as exc:
                if exc.status_code in (404, 409):  # not running any more: it ended by itself
                    return
                log.warning("signalling %s failed (%s); killing it", cid, exc)
                grace = 0
            self._stop_reason = reason
            try:
                await asyncio.wait_for(asyncio.shield(exited), grace)
            except TimeoutError:
                with contextlib.suppress(docker.errors.APIError):
                    await self._engine.api(client.kill, cid, signal="SIGKILL")

    def stats(self, interval: float) -> AsyncIterator[Stat]:
        """Resource samples while it runs (``stats.py``)."""
        return sample_stats(self._engine, self._container_id, interval)

    async def finish(self) -> ExitStatus:
        """After the exit: out-of-memory kill and the container's start and end times (the engine's clock)
        from the engine's state, and a cut stream completed from the engine's own log where it has one."""
        exit_code = await self.wait()
        state = await self._state()
        capture = self.capture
        capture.check_complete(state)
        recovered = False
        if capture.stream_cut and self._engine.config.log_driver != "none":
            # The stream was cut (engine restart, dropped connection): the engine's own log has the rest.
            if capture.remote:
                await capture.take_back()
            capture.error = ""
            await self._engine.api(capture.copy_engine_logs, self._engine.client, self._container_id, False)
            recovered = not capture.error
        if self._request is None or not self._request.is_service:
            await capture.end_log()  # a service's log stays open: it may restart into it (take_log)
        return ExitStatus(
            exit_code=exit_code,
            error="" if self._stop_reason else self._engine.stopped_by_outage(state, exit_code),
            oom_killed=bool(state.get("OOMKilled")),
            capture_error=capture.error,
            output_recovered=recovered,
            captured=capture.captured,
            stdout_bytes=capture.stdout_bytes,
            stderr_bytes=capture.stderr_bytes,
            lost_bytes=capture.lost_bytes,
            started_at=_engine_time(state.get("StartedAt")),
            finished_at=_engine_time(state.get("FinishedAt")),
        )

    async def abandon(self) -> None:
        """The run was interrupted before an exit: stop reading and wait for the reader to end."""
        if self._capture_task is not None and not self._capture_task.done():
            self._capture_task.cancel()  # the capture process goes on until the container is removed
            await asyncio.gather(self._capture_task, return_exceptions=True)
        if self._exit is not None and not self._exit.done():
            self._exit.cancel()
            await asyncio.gather(self._exit, return_exceptions=True)

    def release(self) -> None:
        self.capture.release()

    async def remove(self) -> bool:
        self.capture.close()
        if not self.capture.released:
            with contextlib.suppress(Exception):
                await self.capture.end_log()  # after an interrupted run: the log still gets its END frame
        client = await self._engine.client_async()
        try:
            await self._engine.call(client.remove_container, self._container_id, force=True, v=True)
            return True
        except docker.errors.NotFound:
            return False

    async def take_log(self) -> LogWriter | None:
        capture = self.capture
        if capture.remote:
            writer: LogWriter | None = await capture.take_back()
        else:
            writer = capture.writer
        capture.writer = None  # the next attempt's now: removing this container must not close it
        return writer

    async def health(self) -> str | None:
        health = (await self._state()).get("Health") or {}
        status = health.get("Status")
        return str(status) if status else None

    async def _state(self) -> dict[str, Any]:
        client = await self._engine.client_async()
        return dict((await self._engine.call(client.inspect_container, self._container_id)).get("State") or {})

    async def address(self) -> str | None:
        """The container's IP address on its (first) network; None without one (network none)."""
        client = await self._engine.client_async()
        info = await self._engine.call(client.inspect_container, self._container_id)
        settings = info.get("NetworkSettings") or {}
        for net in (settings.get("Networks") or {}).values():
            if (net or {}).get("IPAddress"):
                return str(net["IPAddress"])
        return str(settings.get("IPAddress") or "") or None


def _engine_time(value: Any) -> datetime | None:
    """A time of the container's state on the engine's clock; None when unset."""
    seconds = engine_timestamp(str(value or ""))
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
