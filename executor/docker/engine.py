"""The Docker engine client: docker-py's blocking calls on thread pools, riding out short outages.

docker-py is blocking: short API calls run on an API thread pool, image pulls on a pull pool, and
recovered executions follow the engine's log from a thread each. The HTTP connection pool is sized for
all of them plus one hijacked attach connection per running container.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import requests.exceptions

from haddock.executor.docker.config import DockerConfig
from haddock.executor.docker.images import ImageError, ImageManager
from haddock.executor.docker.stream import StreamProtocolError
from haddock.executor.errors import EngineUnavailable, ExecutorError, shown

__all__ = ["ENGINE_ERRORS", "Engine", "describe_failure"]

# What a call to an engine that is not answering raises.
ENGINE_ERRORS = (EngineUnavailable, docker.errors.DockerException, requests.exceptions.RequestException)


class Engine:
    """One node's connection to its Docker engine. Bound to the event loop it is first used on."""

    def __init__(self, config: DockerConfig) -> None:
        self.config = config
        self.api_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.api_workers, thread_name_prefix="haddock-docker-api"
        )
        self.pull_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.pull_workers, thread_name_prefix="haddock-docker-pull"
        )
        # Recovered executions follow the engine's log from a thread each, for their container's life.
        self.follow_pool = concurrent.futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="haddock-follow")
        kwargs: dict[str, Any] = {
            "version": "auto",
            "timeout": config.api_timeout,
            # every API thread, every pull, and one hijacked attach connection per running container
            "max_pool_size": config.api_workers + config.pull_workers + 64,
        }
        if config.host:
            kwargs["base_url"] = config.host
        self._kwargs = kwargs
        self._lock = threading.Lock()
        self._client: docker.APIClient | None = None
        self._images: ImageManager | None = None
        self._info: dict[str, Any] | None = None

    @property
    def client(self) -> docker.APIClient:
        """The low-level client, created on first use (creating it talks to the engine)."""
        with self._lock:
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

    async def client_async(self) -> docker.APIClient:
        """The client, created off the event loop."""
        if self._client is not None:
            return self._client
        return await asyncio.get_running_loop().run_in_executor(self.api_pool, lambda: self.client)

    @property
    def images(self) -> ImageManager:
        if self._images is None:
            self._images = ImageManager(self.client, self.api_pool, self.pull_pool, attempts=self.config.pull_attempts)
        return self._images

    async def images_async(self) -> ImageManager:
        await self.client_async()
        return self.images

    async def api(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One blocking call on the API pool."""
        return await asyncio.get_running_loop().run_in_executor(self.api_pool, lambda: fn(*args, **kwargs))

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An engine call that survives a short engine outage (connection refused/reset), bounded."""
        deadline = time.monotonic() + self.config.engine_retry
        delay = 0.2
        while True:
            try:
                return await self.api(fn, *args, **kwargs)
            except requests.exceptions.ConnectionError as exc:
                if time.monotonic() + delay > deadline:
                    raise EngineUnavailable(f"the Docker engine did not answer: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def info(self) -> dict[str, Any]:
        """``docker info`` of the engine (cached)."""
        if self._info is None:
            client = await self.client_async()
            self._info = dict(await self.api(client.info))
        return self._info

    async def ping(self) -> bool:
        try:
            client = await self.client_async()
            return bool(await self.api(client.ping))
        except ENGINE_ERRORS:
            return False

    def close(self) -> None:
        for pool in (self.api_pool, self.pull_pool, self.follow_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()


def describe_failure(exc: BaseException) -> str:
    """A message for people about why an execution could not run."""
    if isinstance(exc, ImageError | ExecutorError):
        return str(exc)
    if isinstance(exc, docker.errors.APIError):
        explanation = str(exc.explanation or exc)
        return explain_exec_failure(explanation) or f"the Docker engine refused: {explanation}"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"the Docker engine did not answer: {exc}"
    if isinstance(exc, StreamProtocolError):
        return f"reading the container's output failed: {exc}"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_failure(e) for e in exc.exceptions)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"internal error: {exc!r}"


# runc at start: exec: "foo": executable file not found in $PATH / exec: "/x": stat /x: no such file or directory
_RUNC_NOT_FOUND = re.compile(r'exec: "([^"]*)": (?:executable file not found|stat [^:]*: no such file or directory)')
_RUNC_NOT_EXECUTABLE = re.compile(r'exec: "([^"]*)": permission denied')
# docker-init (tini, the engine's init) when the job's command cannot be executed
_INIT_EXEC_FAILED = re.compile(
    rb"^\[FATAL tini \(\d+\)\] exec (.*) failed: (No such file or directory|Permission denied)$"
)


def explain_exec_failure(engine_message: str) -> str | None:
    """The job's command could not be executed, in words, from the runtime's error at start; else None."""
    found = _RUNC_NOT_FOUND.search(engine_message)
    if found:
        return f"executable {shown(found.group(1))} not found in the image"
    found = _RUNC_NOT_EXECUTABLE.search(engine_message)
    if found:
        return f"{shown(found.group(1))} in the image is not an executable (permission denied)"
    return None


def explain_init_exit(exit_code: int, stderr_head: bytes) -> str | None:
    """With the engine's init, a command that cannot be executed is exit 127 (126) and one line on stderr."""
    if exit_code not in (126, 127):
        return None
    found = _INIT_EXEC_FAILED.match(stderr_head.split(b"\n", 1)[0])
    if found is None:
        return None
    command = found.group(1).decode("utf-8", "replace")
    if found.group(2) == b"Permission denied":
        return f"{shown(command)} in the image is not an executable (permission denied)"
    return f"executable {shown(command)} not found in the image"
