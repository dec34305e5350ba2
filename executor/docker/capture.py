"""A container's output into the node's log store, on the daemon's side.

The node's capture process (``capture_proc.py``, reached through ``capture_client.py``) attaches to the
container *before* the node starts it and writes the log and the results files; this module hands an
execution's log over to it, waits for the end of the stream, and closes the log. After a restart, or
when a stream was cut, the engine's own log (if ``docker.log_driver`` keeps one) is copied in from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from haddock.executor.docker.capture_client import CaptureClient
from haddock.executor.docker.capture_proc import STREAM_CUT
from haddock.executor.docker.stream import Demuxer, StreamProtocolError
from haddock.executor.docker.times import engine_timestamp
from haddock.executor.logcap import LogCap
from haddock.executor.logstore import LogWriter
from haddock.executor.request import OutputLimits
from haddock.executor.results import CapturedFile
from haddock.executor.streams import StreamType

__all__ = ["GAP", "STREAM_CUT", "Capture"]

log = logging.getLogger(__name__)

CAPTURE_SLACK_SECONDS = 1.0
GAP = (
    "the node and its capture process were both down while the job ran: output written while neither was "
    "running is missing"
)


class Capture:
    """One container's output: held by the capture process (``remote``), or written here into ``writer``
    (an engine log copied after a restart; None: all of it was captured before)."""

    def __init__(self, execution_id: str, writer: LogWriter | None, client: CaptureClient) -> None:
        self.execution_id = execution_id
        self.writer = writer
        self.client = client
        self.remote = client.tracking(execution_id)  # the capture process holds the stream
        self.response: Any = None  # the HTTP response behind an engine log being copied
        self.error = ""  # why some output is missing
        self.ended_at: float | None = None
        self.released = False  # the node let go of the container (a restart takes it back)
        self.captured: dict[StreamType, CapturedFile] | None = None  # results files filled during capture
        self.stdout_bytes: int | None = None
        self.stderr_bytes: int | None = None
        self.lost_bytes = 0  # output the capture process dropped: the node's log space was full
        self.cap: LogCap | None = writer.cap if writer is not None else None  # carried to the capture process
        # Bytes per stream in the log before this container's output (a service's earlier attempts):
        # the engine's log of this container holds only its own.
        self.skip_base: dict[StreamType, int] = dict(writer.bytes_written) if writer is not None else {}

    async def attach(self, container_id: str, results_dir: Path | None, limits: OutputLimits | None) -> None:
        """Have the capture process attach to the container (before it starts), taking the log over."""
        if self.writer is not None:
            self.cap = self.writer.cap
            self.client.track(self.execution_id, remote=self.client.logs.hand_over(self.writer))
            self.writer = None
        self.remote = True  # from here on the log is closed through the client (also if the attach fails)
        await self.client.attach(self.execution_id, container_id, results_dir=results_dir, limits=limits, cap=self.cap)

    async def wait_ended(self) -> None:
        """Until the capture process reports the end of the stream; note what it says."""
        info = await self.client.wait_ended(self.execution_id)
        self.ended_at = info.ended_at
        self.captured = info.captured
        self.stdout_bytes, self.stderr_bytes = info.stdout_bytes, info.stderr_bytes
        self.lost_bytes = info.lost_bytes
        if info.error and not self.error:
            self.error = info.error

    async def take_back(self) -> LogWriter:
        """Close the capture process's hold on the log (no END) and write it here from now on."""
        await self.client.close(self.execution_id, complete=False)
        self.remote = False
        self.captured = None
        self.writer = await asyncio.to_thread(self.client.logs.open_append, self.execution_id, self.cap)
        return self.writer

    async def end_log(self) -> None:
        """The END frame, written by whoever holds the log (idempotent)."""
        if self.remote:
            self.remote = False
            await self.client.close(self.execution_id, complete=True)
        elif self.writer is not None:
            await asyncio.to_thread(self.writer.close)

    def check_complete(self, state: dict[str, Any]) -> None:
        """If the stream ended well before the container did, the engine cut it: say output is missing."""
        if self.error or self.ended_at is None:
            return
        finished = engine_timestamp(str(state.get("FinishedAt") or ""))
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
        """Let go: the capture process goes on capturing; a restarted node takes the capture back."""
        self.released = True
        if self.remote:
            self.client.forget(self.execution_id)

    def close(self) -> None:
        if self.response is not None:
            with contextlib.suppress(Exception):
                self.response.close()
