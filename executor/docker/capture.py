"""A container's output into the node's log store: the attach stream read on the event loop, and the
engine's own log copied in after a restart or a cut stream.

The node attaches *before* it starts the container, so no byte can be missed. The attach stream is read
with non-blocking socket reads on the event loop: no thread per running container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions

from haddock.executor.docker.stream import Demuxer, StreamProtocolError
from haddock.executor.logstore import LogWriter
from haddock.executor.models import StreamType

__all__ = ["STREAM_CUT", "Capture", "attach", "parse_engine_time"]

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
SYNC_BYTES = 8 * 1024 * 1024
SYNC_SECONDS = 2.0
CAPTURE_SLACK_SECONDS = 1.0
STREAM_CUT = "the output stream from the engine was cut"


class Capture:
    """One container's output on its way into ``writer`` (None: all of it was captured before)."""

    def __init__(self, execution_id: str, writer: LogWriter | None) -> None:
        self.execution_id = execution_id
        self.writer = writer
        self.sock: socket.socket | None = None
        self.response: Any = None  # the HTTP response behind the stream: collecting it closes the socket
        self.error = ""  # why some output is missing
        self.ended_at: float | None = None
        self.released = False  # the node let go of the container (a restart reattaches)
        # Bytes per stream in the log before this container's output (a service's earlier attempts):
        # the engine's log of this container holds only its own.
        self.skip_base: dict[StreamType, int] = dict(writer.bytes_written) if writer is not None else {}

    async def read_attached(self, sock: socket.socket) -> None:
        """Read the attach stream into the log store until it ends.

        If the log store refuses (disk full), keep draining the stream so the job is not blocked on
        a full pipe, and record that output was lost.
        """
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        demux = Demuxer()
        writer = self.writer
        assert writer is not None
        synced_at, synced_bytes = time.monotonic(), 0
        try:
            while True:
                data = await loop.sock_recv(sock, READ_SIZE)
                if not data:
                    break
                written = writer.stdout_bytes + writer.stderr_bytes
                if written - synced_bytes >= SYNC_BYTES or (
                    written > synced_bytes and time.monotonic() - synced_at >= SYNC_SECONDS
                ):
                    # Batched fsync: a crash of the machine loses at most the last batch of output.
                    await asyncio.to_thread(writer.sync)
                    synced_at, synced_bytes = time.monotonic(), written
                for kind, payload in _coalesce(demux.feed(data)):
                    if self.error:
                        continue
                    try:
                        writer.write(kind, payload)
                    except ValueError:
                        if writer.closed:  # the node let go of this container
                            return
                        raise
                    except OSError as exc:
                        self.error = (
                            f"the node could not store the job's output ({exc.strerror or exc}); "
                            f"output after {writer.stdout_bytes + writer.stderr_bytes} bytes is missing"
                        )
                        log.error("execution %s: %s", self.execution_id, self.error)
        except StreamProtocolError as exc:
            self.error = f"the engine's output stream was not readable ({exc}); output may be missing"
        except OSError as exc:
            if not self.released:
                self.error = f"{STREAM_CUT}: the connection dropped ({exc}); output may be missing"
        finally:
            self.ended_at = time.time()
            close_socket(sock)
        if demux.pending and not self.error:
            self.error = "the output stream ended inside a frame; the last bytes are missing"

    def check_complete(self, state: dict[str, Any]) -> None:
        """If the stream ended well before the container did, the engine cut it: say output is missing."""
        if self.error or self.ended_at is None:
            return
        finished = parse_engine_time(str(state.get("FinishedAt") or ""))
        if finished is not None and self.ended_at < finished - CAPTURE_SLACK_SECONDS:
            self.error = f"{STREAM_CUT}: the engine closed it before the job ended; output may be missing"

    @property
    def stream_cut(self) -> bool:
        return self.error.startswith(STREAM_CUT)

    def copy_engine_logs(self, client: docker.APIClient, container_id: str, follow: bool) -> None:
        """Runs in a thread: copy the engine's log of the container into the node's log, skipping per
        stream the bytes the node already has, following it while it runs."""
        writer = self.writer
        assert writer is not None
        skip = {k: max(0, v - self.skip_base.get(k, 0)) for k, v in writer.bytes_written.items()}
        response = client._get(
            client._url("/containers/{0}/logs", container_id),
            params={"stdout": 1, "stderr": 1, "follow": int(follow)},
            stream=True,
            timeout=None if follow else 600,
        )
        self.response = response
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
                self.error = (
                    "the engine no longer holds all of the job's output (its log was rotated); "
                    "output written while the node was down may be missing"
                )
        except (OSError, requests.exceptions.RequestException, docker.errors.APIError, StreamProtocolError) as exc:
            self.error = f"collecting the job's output from the engine's log failed ({exc}); output may be missing"
        finally:
            self.ended_at = time.time()
            response.close()

    def release(self) -> None:
        """Stop reading; the container goes on."""
        self.released = True
        if self.sock is not None:
            close_socket(self.sock)

    def close(self) -> None:
        if self.response is not None:
            with contextlib.suppress(Exception):
                self.response.close()


def attach(client: docker.APIClient, container_id: str, timeout: float) -> tuple[Any, socket.socket]:
    """Attach to a container's stdout/stderr stream; return the HTTP response and its raw socket.

    This is docker-py's ``attach_socket`` but keeping the response: on a unix socket docker-py
    cannot tie the response to the socket it returns, and once the response is collected the
    socket wrapper is closed under the reader.
    """
    response = client.post(
        client._url("/containers/{0}/attach", container_id),
        None,
        params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0},
        stream=True,
        headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        timeout=timeout,
    )
    try:
        wrapper = client._get_raw_response_socket(response)
        raw = getattr(wrapper, "_sock", wrapper)
        if not isinstance(raw, socket.socket):
            raise StreamProtocolError(f"unexpected attach transport {type(raw).__name__}")
    except BaseException:
        response.close()
        raise
    return response, raw


def close_socket(sock: socket.socket) -> None:
    """Unblock a reader: shut the socket down (closing alone does not wake it)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def parse_engine_time(text: str) -> float | None:
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


def _coalesce(pieces: list[tuple[StreamType, bytes]]) -> list[tuple[StreamType, bytes]]:
    """Join consecutive pieces of one stream: one log write per read per stream, not per engine frame."""
    runs: list[tuple[StreamType, list[bytes]]] = []
    for kind, data in pieces:
        if runs and runs[-1][0] is kind:
            runs[-1][1].append(data)
        else:
            runs.append((kind, [data]))
    return [(kind, parts[0] if len(parts) == 1 else b"".join(parts)) for kind, parts in runs]
