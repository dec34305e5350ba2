"""The Docker engine client: docker-py's blocking calls on thread pools, riding out short outages.

docker-py is blocking: short API calls run on an API thread pool, image pulls on a pull pool, and
recovered executions follow the engine's log from a thread each. The HTTP connection pool is sized for
all of them plus one hijacked attach connection per running container.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions

from haddock.executor.docker.config import DockerConfig
from haddock.executor.docker.images import ImageError, ImageManager
from haddock.executor.docker.stream import StreamProtocolError
from haddock.executor.docker.times import engine_timestamp
from haddock.executor.errors import EngineUnavailable, ExecutorError, shown
from haddock.executor.quantity import format_duration

__all__ = ["ENGINE_ERRORS", "Engine", "describe_failure"]

STATS_STREAMS = 256
"""Running containers sampled at once at most (a thread and a connection each); more wait for a thread."""

# What a call to an engine that is not answering raises.
ENGINE_ERRORS = (EngineUnavailable, docker.errors.DockerException, requests.exceptions.RequestException)

# Told once per call that the engine does not answer and the call waits for it (see Engine.on_wait).
_on_wait: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("on_wait", default=None)

# How close to an outage the node saw a container's exit must be to blame the engine (clocks and
# detection lag: the node notices an outage at its next call).
OUTAGE_SLACK_SECONDS = 5.0


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
        # Resource sampling (``stats.py``): a stats stream per running container, read by a thread each, on
        # threads and connections of its own: an engine slow to answer stats holds up no other call.
        self.stats_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=STATS_STREAMS, thread_name_prefix="haddock-stats"
        )
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
        self._stats_client: docker.APIClient | None = None
        self._images: ImageManager | None = None
        self._info: dict[str, Any] | None = None
        # Outages the node saw, as (first failed call, first call answered again or None), wall clock.
        self._outages: list[tuple[float, float | None]] = []

    @property
    def client(self) -> docker.APIClient:
        """The low-level client, created on first use (creating it talks to the engine)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    @property
    def stats_client(self) -> docker.APIClient:
        """A client of its own for the stats streams (one long-lived connection per running container)."""
        with self._lock:
            if self._stats_client is None:
                self._stats_client = self._make_client(max_pool_size=STATS_STREAMS)
            return self._stats_client

    def _make_client(self, **overrides: Any) -> docker.APIClient:
        kwargs = {**self._kwargs, **overrides}
        try:
            if "base_url" in kwargs:
                client = docker.APIClient(**kwargs)
            else:
                env = docker.utils.kwargs_from_env()
                client = docker.APIClient(**{**env, **kwargs})
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"the Docker engine does not answer: {exc}") from exc
        # The engine is local: no proxy or ~/.netrc lookups on every call (a profile hot spot).
        client.trust_env = False
        return client

    async def client_async(self) -> docker.APIClient:
        """The client, created off the event loop (riding out an outage as :meth:`call` does)."""
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        client: docker.APIClient = await self._riding_out(
            lambda: loop.run_in_executor(self.api_pool, lambda: self.client), (EngineUnavailable,)
        )
        return client

    @property
    def images(self) -> ImageManager:
        if self._images is None:
            self._images = ImageManager(
                self.client, self.api_pool, self.pull_pool, attempts=self.config.pull_attempts, call=self.call
            )
        return self._images

    async def images_async(self) -> ImageManager:
        await self.client_async()
        return self.images

    async def api(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One blocking call on the API pool."""
        return await asyncio.get_running_loop().run_in_executor(self.api_pool, lambda: fn(*args, **kwargs))

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An engine call that survives an engine outage (connection refused/reset, socket gone while the
        engine restarts) for ``engine_retry``; then EngineUnavailable saying how long it waited."""
        return await self._riding_out(lambda: self.api(fn, *args, **kwargs), (requests.exceptions.ConnectionError,))

    async def _riding_out(self, attempt: Callable[[], Any], transient: tuple[type[BaseException], ...]) -> Any:
        deadline = time.monotonic() + self.config.engine_retry
        delay = 0.2
        told = False
        while True:
            try:
                out = await attempt()
            except transient as exc:
                self._outage_seen()
                if time.monotonic() + delay > deadline:
                    raise EngineUnavailable(
                        f"the Docker engine did not answer for {format_duration(self.config.engine_retry)} "
                        f"(docker.engine_retry): {exc}"
                    ) from exc
                notify = _on_wait.get()
                if notify is not None and not told:
                    told = True
                    notify(f"waiting for the Docker engine, which does not answer ({_short(exc)})")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self._answered()
                return out

    @staticmethod
    @contextlib.contextmanager
    def on_wait(notify: Callable[[str], None]) -> Iterator[None]:
        """Within the block (and the tasks it starts), calls that wait for an absent engine say so once."""
        token = _on_wait.set(notify)
        try:
            yield
        finally:
            _on_wait.reset(token)

    # ------------------------------------------------------------------ outages the node saw

    def _outage_seen(self) -> None:
        if not self._outages or self._outages[-1][1] is not None:
            self._outages.append((time.time(), None))
            del self._outages[:-100]

    def _answered(self) -> None:
        if self._outages and self._outages[-1][1] is None:
            self._outages[-1] = (self._outages[-1][0], time.time())

    def unavailable_while(self, started: float, finished: float) -> bool:
        """Whether a container that ran from ``started`` to ``finished`` (wall clock) may have been stopped
        by an outage the node saw: it started before the engine answered again, and ended during the outage
        or shortly before the node noticed it (:data:`OUTAGE_SLACK_SECONDS`: the node notices at its next
        call)."""
        now = time.time()
        for start, end in self._outages:
            back = now if end is None else end
            if started < back and start - OUTAGE_SLACK_SECONDS <= finished <= back + 0.5:
                return True
        return False

    def stopped_by_outage(self, state: dict[str, Any], exit_code: int) -> str:
        """Why a container the node did not stop ended, when the engine is to blame: it was killed by a
        signal (exit code above 128) when the engine was away (an engine going down stops its containers).
        Empty otherwise."""
        if exit_code <= 128:
            return ""
        started = engine_timestamp(str(state.get("StartedAt") or ""))
        finished = engine_timestamp(str(state.get("FinishedAt") or ""))
        if started is None or finished is None or not self.unavailable_while(started, finished):
            return ""
        return (
            f"the job's container was stopped by the Docker engine going away (an engine restart stops the "
            f"containers it runs): it exited with code {exit_code} while the engine did not answer"
        )

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
        for pool in (self.api_pool, self.pull_pool, self.follow_pool, self.stats_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        for client in (self._client, self._stats_client):
            if client is not None:
                client.close()


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:199] + "…"


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
