"""Before-stop hooks: what must happen when a cancel is about to stop a service's container.

Whoever routes requests to services (the node's HTTP gateway) registers a hook with
:meth:`haddock.executor.protocol.Executor.add_before_stop`; the runner calls every hook with the
execution's id once a cancel is decided and before the container gets its stop signal. Several hooks may
be registered; they run concurrently, each bounded by its own ``timeout`` (so the stop waits at most the
longest of them), and a hook that fails or runs out of time is logged, never fatal: the service is
stopped all the same. Registering returns a function that removes the hook again (idempotent).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable

__all__ = ["BeforeStopHook", "StopHooks"]

log = logging.getLogger(__name__)

BeforeStopHook = Callable[[str], Awaitable[None]]
"""Called with the execution id of a service that is about to be stopped."""


@dataclasses.dataclass(frozen=True, eq=False)
class _Registered:
    name: str
    hook: BeforeStopHook
    timeout: float


class StopHooks:
    """The registered before-stop hooks of one executor."""

    def __init__(self) -> None:
        self._hooks: list[_Registered] = []

    def add(self, hook: BeforeStopHook, *, name: str, timeout: float) -> Callable[[], None]:
        """Register ``hook`` (``name`` appears in the node's log when it fails); returns its removal."""
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"the before-stop hook {name!r} needs a finite timeout >= 0, not {timeout!r}")
        entry = _Registered(name, hook, float(timeout))
        self._hooks.append(entry)

        def remove() -> None:
            if entry in self._hooks:
                self._hooks.remove(entry)

        return remove

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self._hooks]

    async def run(self, execution_id: str) -> None:
        """Every hook for ``execution_id``, concurrently, each within its timeout; never raises (but a
        cancellation of the caller)."""
        hooks = list(self._hooks)
        if hooks:
            await asyncio.gather(*(self._one(entry, execution_id) for entry in hooks))

    @staticmethod
    async def _one(entry: _Registered, execution_id: str) -> None:
        try:
            async with asyncio.timeout(entry.timeout):
                await entry.hook(execution_id)
        except TimeoutError:
            log.warning(
                "before-stop hook %s for %s did not finish within %gs; stopping the service anyway",
                entry.name,
                execution_id,
                entry.timeout,
            )
        except Exception:
            log.exception("before-stop hook %s for %s failed; stopping the service anyway", entry.name, execution_id)
