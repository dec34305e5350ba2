"""A log that another process (the capture process) writes, as this process's followers see it.

Private to :mod:`haddock.executor.logstore`; use it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from haddock.executor.logstore import LogStore


class RemoteLog:
    """A log written by another process (the capture process), as this process's followers see it.

    The writing process reports how far the log has grown (:meth:`advance`, always a frame
    boundary) and when it stopped writing (:meth:`end`); followers in this process read up to
    ``committed`` and are woken by each report, as by a local :class:`LogWriter`. No polling.
    Used only on the store's event loop.
    """

    def __init__(self, store: LogStore, execution_id: str, committed: int) -> None:
        self._store = store
        self._execution_id = execution_id
        self._committed = committed
        self._closed = False
        self._complete = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def execution_id(self) -> str:
        return self._execution_id

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def complete(self) -> bool:
        return self._complete

    def advance(self, committed: int) -> None:
        """The writer has whole frames up to ``committed``."""
        if committed > self._committed and not self._closed:
            self._committed = committed
            self._wake()

    def end(self, *, complete: bool) -> None:
        """The writer closed the log (with an END frame if ``complete``); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._complete = complete
        self._store._release(self)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait_beyond(self, pos: int) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if self._committed > pos or self._closed:
                return
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def __repr__(self) -> str:
        return f"<RemoteLog {self._execution_id!r} {'closed' if self._closed else 'open'} committed={self._committed}>"
