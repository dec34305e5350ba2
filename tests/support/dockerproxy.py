"""A unix-socket proxy in front of the Docker engine that the test can cut: an engine outage as the
node sees it (connections dropped and refused), without stopping an engine the test did not start."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path


class DockerProxy:
    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.upstream = upstream
        self.cut_off = False
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def cut(self, *, gone: bool = False) -> None:
        """Drop every connection and refuse new ones; ``gone``: the socket disappears too, as while the
        engine restarts (connecting fails with FileNotFoundError)."""
        self.cut_off = True
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()
        if gone:
            if self._server is not None:
                self._server.close()
                self._server = None
            self.path.unlink(missing_ok=True)

    def restore(self) -> None:
        """Accept connections again (after :meth:`cut` without ``gone``)."""
        self.cut_off = False

    async def come_back(self) -> None:
        """The socket is there again and connections are accepted (after any :meth:`cut`)."""
        self.cut_off = False
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
