"""A log that another process (the capture process) writes, as this process's followers see it.

Private to :mod:`haddock.executor.logstore`; use it from there.
"""

from __future__ import annotations

from haddock.executor._livelog import LiveLog


class RemoteLog(LiveLog):
    """A log written by another process (the capture process), as this process's followers see it.

    The writing process reports how far the log has grown (:meth:`advance`, always a frame
    boundary) and when it stopped writing (:meth:`end`); followers in this process read up to
    ``committed`` and are woken by each report, as by a local :class:`LogWriter`. No polling.
    Used only on the store's event loop.
    """

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

    def __repr__(self) -> str:
        return f"<RemoteLog {self._execution_id!r} {'closed' if self._closed else 'open'} committed={self._committed}>"
