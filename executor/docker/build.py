"""Image builds: docker-py's streaming build of a prepared context, deduplicated like pulls, steps as progress.

A build is asked for by tag (the caller's content hash): an image that exists under the tag is not built
again, and concurrent builds of one tag share one build (each waiter gets the output). The engine's
classic builder reports ``Step n/m : INSTRUCTION`` lines; each becomes a progress record with the step, and
every line of output goes to the listeners (the node puts it into the execution's log). A failed build
raises :class:`BuildFailed` with the failing step and the last lines of output; a build over its timeout
is abandoned (the engine's build goes on unseen; nothing is tagged) and says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests.exceptions

from haddock.executor.protocol import BuildOutput
from haddock.executor.quantity import format_duration

__all__ = ["BuildFailed", "BuildOutput", "ImageBuilder"]

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
TAIL_LINES = 20
_NOISE = ("Removing intermediate container", " ---> ")  # the builder's own bookkeeping, not the step's output


BuildListener = Callable[[BuildOutput], None]


class BuildFailed(Exception):
    """The build failed; the message names the step and ends with the last lines of output."""

    def __init__(self, what: str, reason: str, *, step: str = "", tail: list[str] | None = None) -> None:
        self.reason = reason
        self.step = step
        self.tail = tail or []
        message = f"building {what} failed"
        if step:
            message += f" at {step}"
        message += f": {reason}"
        if self.tail:
            message += "\n" + "\n".join(self.tail)
        super().__init__(message)


@dataclass
class _Build:
    future: asyncio.Future[dict[str, Any]]
    listeners: list[BuildListener] = field(default_factory=list)


class ImageBuilder:
    """Builds images on the engine from in-memory tar contexts."""

    def __init__(
        self,
        client: docker.APIClient,
        pool: concurrent.futures.ThreadPoolExecutor,
        *,
        network_mode: str = "none",
    ) -> None:
        self._client = client
        self._pool = pool
        self._network_mode = network_mode
        self._inflight: dict[str, _Build] = {}
        self.builds_started = 0
        """Builds actually sent to the engine: for tests and metrics."""

    async def image_info(self, tag: str) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(self._pool, self._client.inspect_image, tag)
        except docker.errors.ImageNotFound:
            return None
        return dict(info)

    async def ensure(
        self,
        tag: str,
        context: Callable[[], bytes],
        *,
        what: str,
        build_timeout: float,
        labels: dict[str, str] | None = None,
        on_output: BuildListener | None = None,
        dockerfile: str = "Dockerfile",
    ) -> tuple[dict[str, Any], bool]:
        """The image ``tag`` (inspect data), built from ``context()`` (a tar with a Dockerfile) unless it is
        there; whether it was built. ``what`` names it in messages."""
        info = await self.image_info(tag)
        if info is not None:
            return info, False
        build = self._inflight.get(tag)
        if build is None:
            build = _Build(future=asyncio.get_running_loop().create_future())
            self._inflight[tag] = build
            if on_output:
                build.listeners.append(on_output)
            task = asyncio.create_task(self._build(tag, context, what, build_timeout, labels or {}, dockerfile, build))
            task.add_done_callback(lambda _t: self._inflight.pop(tag, None))
        elif on_output:
            build.listeners.append(on_output)
            on_output(BuildOutput(line=f"waiting for a build of {what} already in progress"))
        try:
            return await asyncio.shield(build.future), True
        finally:
            if on_output in build.listeners:
                build.listeners.remove(on_output)

    async def _build(
        self,
        tag: str,
        context: Callable[[], bytes],
        what: str,
        build_timeout: float,
        labels: dict[str, str],
        dockerfile: str,
        build: _Build,
    ) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def emit(out: BuildOutput) -> None:
            for listener in list(build.listeners):
                try:
                    listener(out)
                except Exception:
                    log.exception("build output listener failed")

        def emit_threadsafe(out: BuildOutput) -> None:
            loop.call_soon_threadsafe(emit, out)

        try:
            self.builds_started += 1
            work = loop.run_in_executor(
                self._pool, self._build_once, tag, context, what, labels, dockerfile, emit_threadsafe, stop
            )
            try:
                await asyncio.wait_for(asyncio.shield(work), build_timeout)
            except TimeoutError:
                stop.set()
                raise BuildFailed(
                    what,
                    f"it took longer than the build timeout of {format_duration(build_timeout)} "
                    "([jobtypes] build_timeout)",
                ) from None
            info = await self.image_info(tag)
            if info is None:
                raise BuildFailed(what, "the engine reported success but has no image under the tag")
            build.future.set_result(info)
        except BaseException as exc:
            if not build.future.done():
                build.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if build.future.done() and not build.future.cancelled():
                build.future.exception()

    def _build_once(
        self,
        tag: str,
        context: Callable[[], bytes],
        what: str,
        labels: dict[str, str],
        dockerfile: str,
        emit: BuildListener,
        stop: threading.Event,
    ) -> None:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        step = ""
        partial = ""
        try:
            stream = self._client.build(
                fileobj=io.BytesIO(context()),
                custom_context=True,
                encoding="gzip",
                tag=tag,
                dockerfile=dockerfile,
                rm=True,
                forcerm=True,
                network_mode=self._network_mode,
                labels=labels,
                decode=True,
            )
            for record in stream:
                if stop.is_set():
                    return
                if "error" in record or "errorDetail" in record:
                    message = str(record.get("error") or (record.get("errorDetail") or {}).get("message") or "")
                    emit(BuildOutput(line=message))
                    raise BuildFailed(
                        what,
                        message.strip().splitlines()[-1] if message.strip() else "error",
                        step=step,
                        tail=list(tail),
                    )
                text = record.get("stream")
                if not isinstance(text, str):
                    continue
                partial += text
                *lines, partial = partial.split("\n")
                for line in lines:
                    line = line.rstrip("\r")
                    m = _STEP_RE.match(line)
                    if m:
                        instruction = m.group(3) if len(m.group(3)) <= 100 else m.group(3)[:100] + "…"
                        step = f"step {m.group(1)}/{m.group(2)} ({instruction})"
                        tail.clear()
                        emit(
                            BuildOutput(line=line, step=int(m.group(1)), steps=int(m.group(2)), instruction=m.group(3))
                        )
                    else:
                        if not line.startswith(_NOISE):
                            tail.append(line)
                        emit(BuildOutput(line=line))
            if partial:
                emit(BuildOutput(line=partial))
        except docker.errors.APIError as exc:
            raise BuildFailed(what, str(exc.explanation or exc), step=step, tail=list(tail)) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise BuildFailed(what, f"the Docker engine did not answer: {exc}", step=step, tail=list(tail)) from exc
