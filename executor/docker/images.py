"""Images: pull policy, deduplicated streaming pulls with retries, progress as events.

docker-py's high-level ``images.pull`` swallows errors that the engine reports inside the
progress stream, so the low-level streaming pull is used and any ``error`` record raises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests.exceptions
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from haddock.executor import imageref
from haddock.executor.request import PullPolicy

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


class ImageError(Exception):
    """The image cannot be made available; the message says why."""


class ImageNotPresent(ImageError):
    pass


class PullFailed(ImageError):
    def __init__(self, image: str, reason: str, *, transient: bool) -> None:
        super().__init__(f"pulling image {image!r} failed: {reason}")
        self.reason = reason
        self.transient = transient


_PERMANENT_MARKERS = (
    "not found",
    "manifest unknown",
    "unauthorized",
    "denied",
    "invalid reference",
    "does not exist",
    "no matching manifest",
    "repository name must",
)
_TRANSIENT_MARKERS = (
    "timeout",
    "deadline exceeded",
    "no such host",
    "server misbehaving",
    "internal server error",
    "500",
    "timed out",
    "connection reset",
    "connection refused",
    "tls handshake",
    "eof",
    "temporary failure",
    "too many requests",
    "toomanyrequests",
    "service unavailable",
    "bad gateway",
    "502",
    "503",
    "504",
    "i/o",
    "broken pipe",
)


def is_transient_pull_error(message: str) -> bool:
    """Classify an engine/registry error message: worth retrying, or final?"""
    text = message.lower()
    if any(marker in text for marker in _PERMANENT_MARKERS):
        return False
    return any(marker in text for marker in _TRANSIENT_MARKERS)


@dataclass
class _Pull:
    future: asyncio.Future[dict[str, Any]]  # the pulled image's inspect data
    listeners: list[ProgressCallback] = field(default_factory=list)


class ImageManager:
    """Makes images available to the engine according to a pull policy.

    Concurrent requests for one image share one pull; each gets the progress records.
    """

    def __init__(
        self,
        client: docker.APIClient,
        pool: concurrent.futures.ThreadPoolExecutor,
        pull_pool: concurrent.futures.ThreadPoolExecutor | None = None,
        *,
        attempts: int = 4,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        call: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self._client = client
        self._pool = pool
        # Pulls hold a thread for minutes: a pool of their own, so that they never starve the short
        # calls (stop, kill, inspect) that timeouts and cancels depend on.
        self._pull_pool = pull_pool or pool
        self._attempts = attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._inflight: dict[str, _Pull] = {}
        self._engine_call = call  # short calls through it (the engine's: riding out outages)
        self.pulls_started = 0
        """Pulls actually sent to the engine (attempts not counted): for metrics and tests."""

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._engine_call is not None:
            return await self._engine_call(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def image_info(self, image: str) -> dict[str, Any] | None:
        """The local image's ``inspect`` data, or None when the engine does not have it."""
        try:
            info = await self._call(self._client.inspect_image, image)
        except docker.errors.NotFound:
            return None
        return dict(info)

    async def ensure(
        self, image: str, policy: PullPolicy, on_progress: ProgressCallback | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Make ``image`` available; return (its inspect data, whether a pull was needed)."""
        if policy is not PullPolicy.ALWAYS:
            local = await self.image_info(image)
            if local is not None:
                return local, False
            if policy is PullPolicy.NEVER:
                raise ImageNotPresent(f"image {image!r} is not present on this node and the pull policy is 'never'")
        return await self.pull(image, on_progress), True

    async def pull(self, image: str, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Pull ``image`` (deduplicated with concurrent pulls of the same reference); its inspect data."""
        repo, tag = imageref.pull_reference(image)
        key = f"{repo}:{tag}" if not tag.startswith("sha256:") else f"{repo}@{tag}"
        pull = self._inflight.get(key)
        if pull is None:
            loop = asyncio.get_running_loop()
            pull = _Pull(future=loop.create_future())
            self._inflight[key] = pull
            if on_progress:
                pull.listeners.append(on_progress)
            task = asyncio.create_task(self._pull_with_retries(image, repo, tag, pull))
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        elif on_progress:
            pull.listeners.append(on_progress)
            on_progress({"status": f"Waiting for a pull of {image} already in progress"})
        try:
            # shield: one waiter giving up (cancel) must not abort the shared pull
            return await asyncio.shield(pull.future)
        finally:
            if on_progress in pull.listeners:
                pull.listeners.remove(on_progress)

    async def _pull_with_retries(self, image: str, repo: str, tag: str, pull: _Pull) -> None:
        loop = asyncio.get_running_loop()

        def emit(record: dict[str, Any]) -> None:
            for listener in list(pull.listeners):
                try:
                    listener(record)
                except Exception:  # a listener's bug must not break the pull
                    log.exception("pull progress listener failed")

        def emit_threadsafe(record: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(emit, record)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff_initial, max=self._backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, PullFailed) and e.transient),
            reraise=True,
        )
        try:
            self.pulls_started += 1
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    if number > 1:
                        emit({"status": f"Retrying pull of {image} (attempt {number} of {self._attempts})"})
                    await asyncio.get_running_loop().run_in_executor(
                        self._pull_pool, self._pull_once, image, repo, tag, emit_threadsafe
                    )
            info = await self.image_info(image)
            if info is None:
                raise PullFailed(image, "the engine reported success but has no such image", transient=False)
            pull.future.set_result(info)
        except BaseException as exc:  # the future must always resolve
            if not pull.future.done():
                pull.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            # Nobody may be waiting (all waiters cancelled): avoid "exception never retrieved".
            if pull.future.done() and not pull.future.cancelled():
                pull.future.exception()

    def _pull_once(self, image: str, repo: str, tag: str, emit: ProgressCallback) -> None:
        try:
            stream = self._client.pull(repo, tag=tag, stream=True, decode=True)
            for record in stream:
                if "error" in record:
                    message = str(record.get("error") or record.get("errorDetail", {}).get("message"))
                    raise PullFailed(image, message, transient=is_transient_pull_error(message))
                emit(record)
        except docker.errors.APIError as exc:
            message = str(exc.explanation or exc)
            transient = exc.is_server_error() and is_transient_pull_error(message)
            raise PullFailed(image, message, transient=transient) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise PullFailed(image, f"the Docker engine did not answer: {exc}", transient=True) from exc
