"""The capture process: one per node, it holds the containers' output streams apart from the daemon.

The way podman's conmon and containerd's shims hold a container's stdio apart from their manager,
this small asyncio process owns the attach stream of every container the node runs and writes
each execution's output into the node's log store (:class:`LogWriter`, same files, same format),
and each stream's results file up to its file limit (:class:`ResultFileFiller`), so that the
results need no second copy. It runs in its own session: a ``kill -9`` of the daemon does not end
it, and output printed while the daemon is down is still captured. Containers can therefore run
with the engine's log driver ``none``: the engine keeps no second copy of the output.

Run as ``python -m haddock.executor.docker.capture_proc --dir LOG_DIR [--docker-host H]``; it does
not import docker-py: the attach is one HTTP request on the engine's socket
(:mod:`haddock.executor.docker.capture_attach`), then Docker's multiplexed stream (:class:`Demuxer`).

Protocol (on the unix socket ``capture.sock`` in the log dir; one JSON object a line)
======================================================================================

Requests carry ``"req": n`` and get one reply ``{"req": n, "ok": true, ...}`` or
``{"req": n, "ok": false, "error": "..."}``:

``{"op": "hello", "log_max_live": n | null}``
    → ``"pid"``, ``"captures"``: the info of every capture it holds (a daemon that reconnects).
    ``log_max_live`` (the node's ``log_max_bytes``; absent: unchanged) bounds the logs it writes, together
    (:class:`~haddock.executor.logcap.LogBudget`): every daemon says it when it connects, so the bound
    follows the node's configuration across daemon restarts, and holds while no daemon runs.
``{"op": "attach", "id", "container", "results": {"dir", "stdout_limit", "stderr_limit"} | null, "retry"}``
    Attach to the container (before the daemon starts it) and capture its output into the log of
    execution ``id`` (created or appended to). Replies once the engine accepted the attach.
``{"op": "close", "id", "complete": bool}``
    Close the log (with an END frame if ``complete``) and forget the capture.
``{"op": "drop", "id"}``
    Drop the attach connection as if the engine had cut it (for tests).
``{"op": "bye"}``
    The daemon goes away: with no capture held and no other daemon, exit now.

Events (no ``req``) are sent to every connected daemon: ``{"event": "grew", "id", "committed"}``
(the log has whole frames up to there; coalesced, a few ms apart) and ``{"event": "ended", "info"}``
(the stream ended; the log is synced and the results files are complete).

A capture's info: ``id``, ``container``, ``committed``, ``stdout_bytes``, ``stderr_bytes``,
``ended``, ``ended_at`` (epoch seconds), ``error`` (why output is missing, or ""), ``lost_bytes`` (output
dropped because the logs being written had used ``log_max_live``), ``captured``
(``{"stdout": {"path", "total"}, "stderr": ...}`` when the results files were filled, else null).

The process exits by itself once no daemon has been connected for ``--idle`` seconds and no
stream is open; captures that ended but were never closed are then closed with an END frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haddock.executor.docker.capture_attach import EngineAddress, engine_address, engine_attach
from haddock.executor.docker.stream import Demuxer, StreamProtocolError, coalesce
from haddock.executor.logcap import LogCap
from haddock.executor.logstore import LogNotFound, LogStore, LogWriter
from haddock.executor.results import STDERR_FILE, STDOUT_FILE, ResultFileFiller
from haddock.executor.streams import StreamType

__all__ = [
    "LOCK_NAME",
    "SOCKET_NAME",
    "STREAM_CUT",
    "main",
    "socket_path",
]

log = logging.getLogger("haddock.capture")

SOCKET_NAME = "capture.sock"
LOCK_NAME = "capture.lock"
LOG_NAME = "capture.log"
READ_SIZE = 256 * 1024
SYNC_BYTES = 8 * 1024 * 1024
SYNC_SECONDS = 2.0
GREW_DELAY = 0.005
"""A capture tells daemons how far its log grew at most this often (seconds)."""
STREAM_CUT = "the output stream from the engine was cut"
_MAX_LINE = 1024 * 1024
_FILE_NAMES = {StreamType.STDOUT: STDOUT_FILE, StreamType.STDERR: STDERR_FILE}


# ---------------------------------------------------------------------------
# The socket
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def socket_path(directory: Path) -> Iterator[str]:
    """A path for ``directory/capture.sock`` that fits a unix socket address (108 bytes).

    A long directory is reached through ``/proc/self/fd/N`` of a descriptor held meanwhile.
    """
    full = str(Path(directory) / SOCKET_NAME)
    if len(full.encode()) < 100:
        yield full
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Capture:
    id: str
    container: str
    writer: LogWriter
    fillers: dict[StreamType, ResultFileFiller] | None
    sock: socket.socket | None = None
    task: asyncio.Task[None] | None = None
    ended: bool = False
    ended_at: float | None = None
    error: str = ""
    store_failed: bool = False
    captured: dict[str, dict[str, Any]] | None = None
    grew_pending: bool = False
    closing: bool = False
    ended_event: asyncio.Event = field(default_factory=asyncio.Event)

    def info(self) -> dict[str, Any]:
        out = self.writer.bytes_written
        return {
            "id": self.id,
            "container": self.container,
            "committed": self.writer.committed,
            "stdout_bytes": out[StreamType.STDOUT],
            "stderr_bytes": out[StreamType.STDERR],
            "ended": self.ended,
            "ended_at": self.ended_at,
            "error": self.error,
            "lost_bytes": self.writer.lost_bytes,
            "captured": self.captured,
        }


class CaptureServer:
    def __init__(self, directory: Path, engine: EngineAddress, idle_seconds: float) -> None:
        self.directory = directory
        self.engine = engine
        self.idle_seconds = idle_seconds
        self.logs = LogStore(directory)
        self.captures: dict[str, _Capture] = {}
        self.conns: set[asyncio.StreamWriter] = set()
        self.idle_since = time.monotonic()
        self.leave_now = False

    async def serve(self) -> None:
        with socket_path(self.directory) as path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            server = await asyncio.start_unix_server(self._connection, path=path, limit=_MAX_LINE)
        log.info("capture process %d serving %s", os.getpid(), self.directory / SOCKET_NAME)
        try:
            await self._watch_idle()
        finally:
            server.close()
            with contextlib.suppress(OSError), socket_path(self.directory) as path:
                os.unlink(path)
            for cap in list(self.captures.values()):
                await self._close(cap, complete=cap.ended)

    async def _watch_idle(self) -> None:
        while True:
            await asyncio.sleep(0.2 if self.leave_now else min(1.0, max(self.idle_seconds / 4, 0.05)))
            now = time.monotonic()
            if self.conns or any(not c.ended for c in self.captures.values()):
                self.idle_since = now
                self.leave_now = False
                continue
            if self.leave_now and not self.captures:
                log.info("the last daemon left and no capture is held: exiting")
                return
            if now - self.idle_since >= self.idle_seconds:
                log.info("no daemon for %.1fs and no open stream: exiting", self.idle_seconds)
                return

    # -- connections --------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns.add(writer)
        try:
            while line := await reader.readline():
                try:
                    msg = json.loads(line)
                    op = msg.get("op")
                except ValueError:
                    continue
                reply = await self._handle(op, msg)
                reply["req"] = msg.get("req")
                self._send(writer, reply)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.conns.discard(writer)
            self.idle_since = time.monotonic()
            with contextlib.suppress(Exception):
                writer.close()

    def _send(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        if writer.is_closing():
            return
        with contextlib.suppress(Exception):
            writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def _broadcast(self, msg: dict[str, Any]) -> None:
        for w in list(self.conns):
            self._send(w, msg)

    async def _handle(self, op: object, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            if op == "hello":
                if "log_max_live" in msg:
                    limit = msg["log_max_live"]
                    self.logs.set_live_limit(None if limit is None else int(limit))
                return {"ok": True, "pid": os.getpid(), "captures": [c.info() for c in self.captures.values()]}
            if op == "attach":
                return {"ok": True, "info": await self._attach(msg)}
            if op == "close":
                cap = self.captures.get(str(msg.get("id")))
                if cap is None:
                    return {"ok": False, "error": "unknown capture", "unknown": True}
                await self._close(cap, complete=bool(msg.get("complete", True)))
                return {"ok": True, "info": cap.info()}
            if op == "drop":
                cap = self.captures.get(str(msg.get("id")))
                if cap is not None and cap.sock is not None:
                    with contextlib.suppress(OSError):
                        cap.sock.shutdown(socket.SHUT_RDWR)
                return {"ok": True}
            if op == "bye":
                self.leave_now = True
                return {"ok": True}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:
            log.warning("%s failed: %s", op, exc)
            return {"ok": False, "error": str(exc) or repr(exc)}

    # -- captures -----------------------------------------------------------

    async def _attach(self, msg: dict[str, Any]) -> dict[str, Any]:
        exec_id = str(msg["id"])
        container = str(msg["container"])
        existing = self.captures.get(exec_id)
        if existing is not None:
            if existing.container != container:
                raise ValueError(f"execution {exec_id!r} is already captured from another container")
            return existing.info()
        log_cap = None
        if msg.get("cap"):
            c = msg["cap"]
            log_cap = LogCap(stdout=int(c["stdout"]), stderr=int(c["stderr"]), total=int(c["total"]))
        try:
            writer = await asyncio.to_thread(self.logs.open_append, exec_id, log_cap)
        except LogNotFound:
            writer = await asyncio.to_thread(self.logs.create, exec_id, log_cap)
        fillers: dict[StreamType, ResultFileFiller] | None = None
        try:
            results = msg.get("results")
            if results:
                directory = Path(results["dir"])
                limits = {
                    StreamType.STDOUT: int(results["stdout_limit"]),
                    StreamType.STDERR: int(results["stderr_limit"]),
                }
                try:
                    fillers = {k: ResultFileFiller(directory, _FILE_NAMES[k], limits[k]) for k in limits}
                except OSError as exc:  # the daemon writes the results from the log (and reports why it cannot)
                    log.warning("execution %s: cannot fill the results files: %s", exec_id, exc)
            sock, rest = await engine_attach(self.engine, container, float(msg.get("retry", 60)))
        except BaseException:
            for filler in (fillers or {}).values():
                filler.finish()
            writer.close(complete=False)
            raise
        cap = _Capture(exec_id, container, writer, fillers, sock=sock)
        self.captures[exec_id] = cap
        cap.task = asyncio.create_task(self._pump(cap, sock, rest), name=f"capture-{exec_id}")
        log.info("capturing %s from container %s", exec_id, container[:12])
        return cap.info()

    async def _close(self, cap: _Capture, *, complete: bool) -> None:
        if cap.closing:
            await cap.ended_event.wait()
            return
        cap.closing = True
        if not cap.ended and cap.sock is not None:
            with contextlib.suppress(OSError):
                cap.sock.shutdown(socket.SHUT_RDWR)
        await cap.ended_event.wait()
        await asyncio.to_thread(cap.writer.close, complete=complete)
        self.captures.pop(cap.id, None)

    def _write(self, cap: _Capture, kind: StreamType, payload: bytes) -> None:
        if cap.store_failed:
            return  # keep draining: the job must not block on a full pipe
        try:
            cap.writer.write(kind, payload)
        except OSError as exc:
            cap.store_failed = True
            cap.error = (
                f"the node could not store the job's output ({exc.strerror or exc}); "
                f"output after {cap.writer.stdout_bytes + cap.writer.stderr_bytes} bytes is missing"
            )
            log.error("execution %s: %s", cap.id, cap.error)
            return
        if cap.fillers is not None:
            cap.fillers[kind].write(payload)

    def _grew(self, cap: _Capture) -> None:
        if cap.grew_pending or not self.conns:
            return
        cap.grew_pending = True
        asyncio.get_running_loop().call_later(GREW_DELAY, self._send_grew, cap)

    def _send_grew(self, cap: _Capture) -> None:
        cap.grew_pending = False
        if not cap.ended:
            self._broadcast({"event": "grew", "id": cap.id, "committed": cap.writer.committed})

    async def _pump(self, cap: _Capture, sock: socket.socket, first: bytes) -> None:
        """Read the attach stream on the event loop into the log (and the results files) until it ends."""
        loop = asyncio.get_running_loop()
        demux = Demuxer()
        syncing: asyncio.Future[None] | None = None
        synced_at, synced = time.monotonic(), 0
        try:
            data = first
            while True:
                if data:
                    for kind, payload in coalesce(demux.feed(data)):
                        self._write(cap, kind, payload)
                    self._grew(cap)
                    written = cap.writer.committed
                    due = written - synced >= SYNC_BYTES or (
                        written > synced and time.monotonic() - synced_at >= SYNC_SECONDS
                    )
                    if due and (syncing is None or syncing.done()):
                        # Batched fsync, off the loop: a machine crash loses at most the last batch.
                        syncing = asyncio.ensure_future(asyncio.to_thread(cap.writer.sync))
                        synced_at, synced = time.monotonic(), written
                data = await loop.sock_recv(sock, READ_SIZE)
                if not data:
                    break
        except StreamProtocolError as exc:
            cap.error = cap.error or f"the engine's output stream was not readable ({exc}); output may be missing"
        except OSError as exc:
            if not cap.closing:
                cap.error = cap.error or f"{STREAM_CUT}: the connection dropped ({exc}); output may be missing"
        except asyncio.CancelledError:
            cap.error = cap.error or "the capture process was stopped; output may be missing"
        finally:
            sock.close()
            cap.sock = None
        if demux.pending and not cap.error:
            cap.error = "the output stream ended inside a frame; the last bytes are missing"
        if syncing is not None:
            with contextlib.suppress(Exception):
                await syncing
        cap.captured = await asyncio.to_thread(self._settle, cap)
        cap.ended = True
        cap.ended_at = time.time()
        cap.ended_event.set()
        why = f": {cap.error}" if cap.error else ""
        log.info("capture of %s ended (%d bytes)%s", cap.id, cap.writer.committed, why)
        self._broadcast({"event": "ended", "info": cap.info()})

    @staticmethod
    def _settle(cap: _Capture) -> dict[str, dict[str, Any]] | None:
        with contextlib.suppress(OSError):
            cap.writer.sync()
        if cap.fillers is None:
            return None
        done = {k: f.finish() for k, f in cap.fillers.items()}
        if cap.store_failed or any(c is None for c in done.values()):
            return None
        return {_FILE_NAMES[k]: {"path": str(c.path), "total": c.total_bytes} for k, c in done.items() if c is not None}


def _lock(directory: Path) -> int | None:
    """Hold the node's capture lock (holding its pid) for this process's life; None if another holds it."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # for operators: which process captures this node's output
    return fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m haddock.executor.docker.capture_proc", description=__doc__)
    parser.add_argument("--dir", required=True, type=Path, help="the node's log dir")
    parser.add_argument("--docker-host", default=None)
    parser.add_argument("--idle", type=float, default=10.0, help="exit after this long without daemon or stream")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s capture[%(process)d] %(levelname)s %(message)s")
    directory: Path = args.dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = _lock(directory)
    if lock is None:
        log.info("another capture process serves %s", directory)
        return 0
    try:
        server = CaptureServer(directory, engine_address(args.docker_host), args.idle)
        asyncio.run(server.serve())
    finally:
        os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
