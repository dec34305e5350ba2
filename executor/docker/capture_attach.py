"""The capture process's attach to the Docker engine, without docker-py: where the engine listens
(``unix://`` or plain ``tcp://``), and ``POST /containers/{id}/attach`` upgraded to the raw
multiplexed stream that :mod:`haddock.executor.docker.capture_proc` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

__all__ = ["AttachError", "EngineAddress", "engine_address", "engine_attach"]

MAX_ANSWER = 1024 * 1024
"""The most the engine's answer to an attach (its headers) may be."""


@dataclass(frozen=True)
class EngineAddress:
    family: int
    address: str | tuple[str, int]


def engine_address(docker_host: str | None) -> EngineAddress:
    """The engine's address from ``docker_host`` (or ``DOCKER_HOST``): ``unix://`` or plain ``tcp://``."""
    host = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    parts = urlsplit(host)
    if parts.scheme in ("unix", ""):
        return EngineAddress(socket.AF_UNIX, parts.path or host)
    if parts.scheme in ("tcp", "http"):
        return EngineAddress(socket.AF_INET, (parts.hostname or "127.0.0.1", parts.port or 2375))
    raise ValueError(f"the capture process cannot reach a Docker engine at {host!r} (unix:// or tcp:// only)")


class AttachError(Exception):
    """The engine refused or failed the attach."""


async def engine_attach(engine: EngineAddress, container: str, retry: float) -> tuple[socket.socket, bytes]:
    """``POST /containers/{id}/attach`` upgraded to a raw stream; the socket and bytes read past the headers.

    Connection failures are retried for ``retry`` seconds (an engine restarting)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + retry
    delay = 0.2
    while True:
        sock = socket.socket(engine.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, engine.address), 30)
            break
        except (OSError, TimeoutError) as exc:
            sock.close()
            if time.monotonic() + delay > deadline:
                raise AttachError(f"the Docker engine did not answer: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        request = (
            f"POST /containers/{quote(container, safe='')}/attach?stream=1&stdout=1&stderr=1&logs=0 HTTP/1.1\r\n"
            "Host: docker\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        ).encode()
        await loop.sock_sendall(sock, request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 60)
            if not chunk:
                raise AttachError("the Docker engine closed the connection before answering the attach")
            buf += chunk
            if len(buf) > MAX_ANSWER:
                raise AttachError("the Docker engine sent an oversized answer to the attach")
        head, _, rest = buf.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            raise AttachError(f"the Docker engine answered the attach with {status_line!r}") from None
        if status in (101, 200):
            return sock, rest
        with contextlib.suppress(OSError, TimeoutError):
            while len(rest) < 65536:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 1)
                if not chunk:
                    break
                rest += chunk
        message = rest.decode("utf-8", "replace").strip()
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(message[message.index("{") :]).get("message") or message)
        raise AttachError(f"the Docker engine refused to attach ({status}): {message}")
    except BaseException:
        sock.close()
        raise
