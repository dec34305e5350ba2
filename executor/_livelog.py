"""What every log being written looks like to its followers, whoever writes it: how far it has grown, whether
it is closed (and complete), and the followers waiting for it to grow.

Private to :mod:`haddock.executor.logstore`: the base of :class:`~haddock.executor._logwriter.LogWriter` (this
process writes) and :class:`~haddock.executor._remotelog.RemoteLog` (the capture process writes).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from haddock.executor.logstore import LogStore


class LiveLog:
    """A log being written: ``committed`` (a frame boundary), ``closed``, ``complete``, and the followers
    waiting beyond an offset (futures on the store's loop, woken by :meth:`_wake`)."""

    def __init__(self, store: LogStore, execution_id: str, committed: int) -> None:
        self._store = store
        self._execution_id = execution_id
        self._committed = committed
        self._closed = False
        self._complete = False
        # Followers waiting for data (touched on the store's loop).
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def execution_id(self) -> str:
        return self._execution_id

    @property
    def committed(self) -> int:
        """Offset up to which complete frames are written."""
        return self._committed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def complete(self) -> bool:
        """Closed with an END frame."""
        return self._complete

    def _wake(self) -> None:
        """Runs on the store's loop."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait_beyond(self, pos: int) -> None:
        """Wait until the log grows past ``pos`` or the writer is closed (on the store's loop)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if self._committed > pos or self._closed:
                return
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
