"""The daemon's client of the node's capture process (``capture_proc``): start it, talk to it, follow its logs.

The capture process owns the containers' attach streams and writes the log store; this client
starts it when none answers on ``<log dir>/capture.sock`` (detached, in its own session, so that a
``kill -9`` of the daemon does not end it), asks it to attach to a container before the daemon
starts it, turns its "grew"/"ended" events into wake-ups of this process's log followers
(:class:`RemoteLog`), and closes each log when the execution is finished.

If the capture process dies while the daemon runs, every open capture ends with an error saying
output may be missing, and the next attach starts a new capture process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haddock.executor.docker.capture_proc import LOG_NAME, socket_path
from haddock.executor.errors import ExecutorError
from haddock.executor.logcap import LogCap
from haddock.executor.logstore import LogStore, RemoteLog
from haddock.executor.request import OutputLimits
from haddock.executor.results import STDERR_FILE, STDOUT_FILE, CapturedFile
from haddock.executor.streams import StreamType

__all__ = ["CaptureClient", "CaptureInfo", "CaptureUnavailable"]

log = logging.getLogger(__name__)

CAPTURE_DIED = "the node's capture process ended unexpectedly; output written after that may be missing"
_LAUNCHER = (
    "import subprocess, sys; "
    "subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)"
)
_NAMES = {STDOUT_FILE: StreamType.STDOUT, STDERR_FILE: StreamType.STDERR}


class CaptureUnavailable(ExecutorError):
    """The capture process could not be started or reached."""


@dataclass
class CaptureInfo:
    """What the capture process knows of one execution's output."""

    id: str
    container: str = ""
    committed: int = 0
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    ended: bool = False
    ended_at: float | None = None
    error: str = ""
    lost_bytes: int = 0  # output dropped: the logs being written had used the node's log_max_bytes
    captured: dict[StreamType, CapturedFile] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaptureInfo:
        captured = None
        if d.get("captured"):
            captured = {
                _NAMES[name]: CapturedFile(Path(c["path"]), int(c["total"])) for name, c in d["captured"].items()
            }
        return cls(
            id=str(d["id"]),
            container=str(d.get("container") or ""),
            committed=int(d.get("committed") or 0),
            stdout_bytes=int(d.get("stdout_bytes") or 0),
            stderr_bytes=int(d.get("stderr_bytes") or 0),
            ended=bool(d.get("ended")),
            ended_at=d.get("ended_at"),
            error=str(d.get("error") or ""),
            lost_bytes=int(d.get("lost_bytes") or 0),
            captured=captured,
        )


@dataclass(eq=False)
class _Tracked:
    remote: RemoteLog
    ended: asyncio.Future[CaptureInfo]
    attached: bool = False
    info: CaptureInfo | None = None


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int
    task: asyncio.Task[None] | None = None
    closing: bool = False
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


class CaptureClient:
    """One per executor. Bound to the event loop it is first used on."""

    def __init__(
        self,
        log_dir: Path,
        logs: LogStore,
        *,
        docker_host: str | None = None,
        idle_seconds: float = 10.0,
        engine_retry_seconds: float = 60.0,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.logs = logs
        self.docker_host = docker_host
        self.idle_seconds = idle_seconds
        self.engine_retry_seconds = engine_retry_seconds
        self._conn: _Conn | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._req = 0
        self._tracked: dict[str, _Tracked] = {}
        self._untracked_ended: dict[str, CaptureInfo] = {}

    @property
    def pid(self) -> int | None:
        """The capture process's pid while connected."""
        return self._conn.pid if self._conn is not None else None

    # -- connection ---------------------------------------------------------

    async def connect(self) -> dict[str, CaptureInfo]:
        """Connect (starting the capture process if none answers); the captures it holds, by execution id."""
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._conn is not None and not self._conn.writer.is_closing():
                hello = await self._request(self._hello())
                return {c["id"]: CaptureInfo.from_json(c) for c in hello.get("captures", [])}
            deadline = time.monotonic() + 15
            spawned = False
            while True:
                try:
                    with socket_path(self.log_dir) as path:
                        reader, writer = await asyncio.open_unix_connection(path, limit=1024 * 1024)
                    conn = _Conn(reader, writer, 0)
                    conn.task = asyncio.create_task(self._read(conn), name="haddock-capture-client")
                    self._conn = conn
                    hello = await self._request(self._hello())
                    conn.pid = int(hello.get("pid") or 0)
                    return {c["id"]: CaptureInfo.from_json(c) for c in hello.get("captures", [])}
                except (OSError, CaptureUnavailable) as exc:
                    self._conn = None
                    if time.monotonic() > deadline:
                        raise CaptureUnavailable(f"the node's capture process does not answer: {exc}") from exc
                    if not spawned:
                        await asyncio.to_thread(self._spawn)
                        spawned = True
                    await asyncio.sleep(0.05)

    def _hello(self) -> dict[str, Any]:
        """The greeting, with the bound of the logs being written (this node's ``log_max_bytes``)."""
        budget = self.logs.budget
        return {"op": "hello", "log_max_live": budget.max_bytes if budget is not None else None}

    def _spawn(self) -> None:
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        args = [sys.executable, "-m", "haddock.executor.docker.capture_proc", "--dir", str(self.log_dir)]
        args += ["--idle", str(self.idle_seconds)]
        if self.docker_host:
            args += ["--docker-host", self.docker_host]
        # Started through a launcher that exits at once (a double fork, as conmon does): the capture
        # process is never the daemon's child, and in its own session a kill -9 of the daemon (or of
        # its process group) does not end it.
        with open(self.log_dir / LOG_NAME, "ab") as out:
            subprocess.run(
                [sys.executable, "-c", _LAUNCHER, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                close_fds=True,
                cwd="/",
                check=True,
                timeout=30,
            )
        log.info("started a capture process for %s", self.log_dir)

    async def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        conn = self._conn
        if conn is None or conn.writer.is_closing():
            raise CaptureUnavailable("not connected to the node's capture process")
        self._req += 1
        req = self._req
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.pending[req] = fut
        try:
            conn.writer.write(json.dumps({**msg, "req": req}).encode() + b"\n")
            await conn.writer.drain()
            return await fut
        except OSError as exc:
            raise CaptureUnavailable(f"the node's capture process went away: {exc}") from exc
        finally:
            conn.pending.pop(req, None)

    async def _read(self, conn: _Conn) -> None:
        try:
            while line := await conn.reader.readline():
                msg = json.loads(line)
                if "req" in msg and msg["req"] is not None:
                    fut = conn.pending.get(int(msg["req"]))
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg.get("event") == "grew":
                    tracked = self._tracked.get(str(msg.get("id")))
                    if tracked is not None:
                        tracked.remote.advance(int(msg["committed"]))
                elif msg.get("event") == "ended":
                    self._ended(CaptureInfo.from_json(msg["info"]))
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            log.warning("the connection to the capture process failed: %s", exc)
        finally:
            if self._conn is conn:
                self._conn = None
            for fut in conn.pending.values():
                if not fut.done():
                    fut.set_exception(CaptureUnavailable("the node's capture process went away"))
            with contextlib.suppress(Exception):
                conn.writer.close()
            if not conn.closing:
                self._lost()

    def _lost(self) -> None:
        """The capture process is gone: what it was capturing ends with an error."""
        for exec_id, tracked in self._tracked.items():
            if tracked.attached and not tracked.ended.done():
                log.error("execution %s: %s", exec_id, CAPTURE_DIED)
                info = CaptureInfo(
                    exec_id, committed=tracked.remote.committed, ended=True, ended_at=time.time(), error=CAPTURE_DIED
                )
                self._ended(info, lost=True)

    def _ended(self, info: CaptureInfo, *, lost: bool = False) -> None:
        tracked = self._tracked.get(info.id)
        if tracked is None:
            # Not tracked yet (a daemon that reconnects lists the captures, then tracks them): kept for track().
            self._untracked_ended[info.id] = info
            return
        tracked.info = info
        tracked.remote.advance(info.committed)
        if lost:
            tracked.remote.end(complete=False)
            tracked.attached = False
        if not tracked.ended.done():
            tracked.ended.set_result(info)

    # -- captures -----------------------------------------------------------

    def track(self, execution_id: str, info: CaptureInfo | None = None, *, remote: RemoteLog | None = None) -> None:
        """Follow a log the capture process writes (or will write): followers here wait on its events.

        ``remote``: the log is already tracked in the store (handed over by a writer of this process)."""
        if execution_id in self._tracked:
            return
        info = self._untracked_ended.pop(execution_id, info)
        committed = info.committed if info is not None else 0
        if remote is None:
            remote = self.logs.track(execution_id, committed)
        fut: asyncio.Future[CaptureInfo] = asyncio.get_running_loop().create_future()
        tracked = _Tracked(remote, fut, attached=info is not None, info=info)
        self._tracked[execution_id] = tracked
        if info is not None and info.ended:
            fut.set_result(info)

    def tracking(self, execution_id: str) -> bool:
        """The capture process holds (or held) this execution's stream."""
        tracked = self._tracked.get(execution_id)
        return tracked is not None and (tracked.attached or tracked.ended.done())

    async def attach(
        self,
        execution_id: str,
        container_id: str,
        *,
        results_dir: Path | None,
        limits: OutputLimits | None,
        cap: LogCap | None = None,
    ) -> CaptureInfo:
        """Have the capture process attach to the container (call before starting it)."""
        await self.connect()
        self.track(execution_id)
        msg: dict[str, Any] = {
            "op": "attach",
            "id": execution_id,
            "container": container_id,
            "retry": self.engine_retry_seconds,
            "results": None,
            "cap": None if cap is None else {"stdout": cap.stdout, "stderr": cap.stderr, "total": cap.total},
        }
        if results_dir is not None and limits is not None:
            msg["results"] = {
                "dir": str(results_dir),
                "stdout_limit": limits.file_limit(StreamType.STDOUT),
                "stderr_limit": limits.file_limit(StreamType.STDERR),
            }
        reply = await self._request(msg)
        if not reply.get("ok"):
            raise ExecutorError(f"attaching to the job's container failed: {reply.get('error')}")
        info = CaptureInfo.from_json(reply["info"])
        tracked = self._tracked[execution_id]
        tracked.attached = True
        tracked.remote.advance(info.committed)
        return info

    async def wait_ended(self, execution_id: str) -> CaptureInfo:
        """The capture's info once its stream ended (the container exited or the stream was cut)."""
        return await asyncio.shield(self._tracked[execution_id].ended)

    def ended_info(self, execution_id: str) -> CaptureInfo | None:
        tracked = self._tracked.get(execution_id)
        return tracked.info if tracked is not None and tracked.ended.done() else None

    async def drop(self, execution_id: str) -> None:
        """Cut the capture's attach connection, as an engine could (for tests)."""
        await self._request({"op": "drop", "id": execution_id})

    async def close(self, execution_id: str, *, complete: bool = True) -> None:
        """Close the execution's log (END frame if ``complete``) and stop tracking it; never leaves it open.

        Done by the capture process if it holds the log, else here."""
        tracked = self._tracked.pop(execution_id, None)
        closed_remotely = False
        if self._conn is not None:
            with contextlib.suppress(CaptureUnavailable):
                reply = await self._request({"op": "close", "id": execution_id, "complete": complete})
                closed_remotely = bool(reply.get("ok"))
        if tracked is not None:
            tracked.remote.end(complete=complete and closed_remotely)
            if not tracked.ended.done():
                tracked.ended.cancel()
        if not closed_remotely:
            await asyncio.to_thread(self._close_locally, execution_id, complete)

    def _close_locally(self, execution_id: str, complete: bool) -> None:
        if not self.logs.exists(execution_id) or self.logs.is_complete(execution_id):
            return
        self.logs.open_append(execution_id).close(complete=complete)

    def forget(self, execution_id: str) -> None:
        """Stop tracking without closing (the daemon lets go; the capture process goes on)."""
        tracked = self._tracked.pop(execution_id, None)
        if tracked is not None:
            tracked.remote.end(complete=False)
            if not tracked.ended.done():
                tracked.ended.cancel()

    async def aclose(self) -> None:
        """Disconnect; the capture process exits soon after if it holds nothing."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(CaptureUnavailable, asyncio.TimeoutError):
                await asyncio.wait_for(self._request({"op": "bye"}), 5)
            self._conn = None
            conn.closing = True
            if conn.task is not None:
                conn.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.task
            with contextlib.suppress(Exception):
                conn.writer.close()
