"""The results writer: what an execution leaves in its results dir, and the inline summary.

After an execution ends — in every terminal case: success, error, timeout, out-of-memory kill,
cancel — the node writes three files into the execution's results dir:

``stdout``, ``stderr``
    The first ``max_<stream>_file_length`` bytes of each stream, byte-exact.
``exitCode``
    The exit code in ASCII without a newline; only when a process ran (``exit_code`` is not None).

and returns each stream's head (at most ``max_<stream>_return_length`` bytes) as inline text.

Guarantees (each one fixes a defect of Bacalhau's writer):

- The inline summary is read until the return limit or EOF, never "one read"; both the inline and
  the file truncation flags are exact (one byte beyond a limit is enough to know).
- Memory is O(limits), never O(output): bytes go to disk as they arrive, and only the inline head
  is held in memory.
- Both streams are consumed concurrently, so a pipe-like source of one cannot deadlock on the other.
- Every file is written atomically (temp file in the same dir, fsync, ``os.replace``, then fsync of
  the directory); on any failure or cancellation no temp files are left and previous files are
  untouched.
- A multi-byte UTF-8 character cut at the return limit is dropped, not turned into garbage.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from haddock.executor.streams import StreamType

if TYPE_CHECKING:
    from haddock.executor.request import OutputLimits

__all__ = [
    "EXIT_CODE_FILE",
    "STDERR_FILE",
    "STDOUT_FILE",
    "CapturedFile",
    "JobResults",
    "ResultFileFiller",
    "StreamSummary",
    "capture_temp_path",
    "decode_inline",
    "remove_capture_files",
    "write_job_results",
]

STDOUT_FILE = "stdout"
STDERR_FILE = "stderr"
EXIT_CODE_FILE = "exitCode"

_log = logging.getLogger(__name__)

# Bytes gathered before a write is handed to a thread: big writes, never per chunk or per byte.
_WRITE_BATCH = 128 * 1024

_T = TypeVar("_T")


@dataclass(frozen=True)
class StreamSummary:
    """What was kept of one output stream."""

    text: str
    """Inline text: at most the return limit in bytes of the stream's head, decoded as UTF-8."""
    truncated: bool
    """The inline text is not the whole stream."""
    file_truncated: bool
    """The file holds less than the whole stream."""
    file_bytes: int
    """Bytes written to the file."""
    total_bytes: int | None
    """Bytes in the stream if it was read to EOF, else None (reading stopped early)."""


@dataclass(frozen=True)
class JobResults:
    """The inline summary of an execution's results."""

    stdout: StreamSummary
    stderr: StreamSummary
    exit_code: int | None


def decode_inline(data: bytes, truncated: bool) -> str:
    """Decode a stream's head as UTF-8 for the inline summary.

    When ``truncated``, the head was cut at a byte limit: a trailing sequence that is an incomplete
    (but so far valid) UTF-8 character — at most 3 bytes — is dropped instead of becoming U+FFFD.
    Any other invalid bytes become U+FFFD, as they do when the head is the whole stream. For valid
    UTF-8 the result therefore encodes to a prefix of ``data``; for invalid input each bad byte
    becomes one U+FFFD character.
    """
    if not truncated:
        return data.decode("utf-8", errors="replace")
    # The incremental decoder holds back exactly the bytes that could still begin a valid
    # character (a lead byte plus fitting continuation bytes); since the stream was cut, we never
    # feed it the rest, so they are dropped.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(data, final=False)


class _TempFile:
    """A temp file beside its final name; written from worker threads, renamed into place.

    A lock serializes the worker-thread operations with ``discard``, so that the file is never closed
    (and its descriptor reused) under a write still running in a thread after a cancellation.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.final = directory / name
        self.path = directory / f".{name}.{secrets.token_hex(8)}.tmp"
        self._file: BinaryIO | None = None
        self._lock = threading.Lock()
        self._gone = False

    def open(self) -> None:
        with self._lock:
            if self._gone:
                raise RuntimeError(f"{self.path} was discarded")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags, 0o644)
            self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"{self.path} is not open")
            self._file.write(data)

    def finish(self) -> None:
        """Flush, fsync and close; the file is complete on disk."""
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"{self.path} is not open")
            f, self._file = self._file, None
            try:
                f.flush()
                os.fsync(f.fileno())
            finally:
                f.close()

    def write_all(self, data: bytes) -> None:
        self.open()
        self.write(data)
        self.finish()

    def commit(self) -> None:
        os.replace(self.path, self.final)
        self._gone = True

    def discard(self) -> None:
        """Close and remove the temp file, whatever state it is in. Never raises."""
        with self._lock:
            self._gone = True
            if self._file is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._file.close()
                self._file = None
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)


def capture_temp_path(results_dir: Path, name: str) -> Path:
    """Where a stream's results file is filled during capture, before ``write_job_results`` renames it.

    The name is fixed (not random) so that a restarted daemon finds what the capture process wrote.
    """
    return Path(results_dir) / f".{name}.capture.tmp"


def remove_capture_files(results_dir: Path) -> None:
    """Remove results files a capture filled that are not used (the results are written from the log)."""
    for name in (STDOUT_FILE, STDERR_FILE):
        with contextlib.suppress(OSError):
            os.unlink(capture_temp_path(results_dir, name))


@dataclass(frozen=True)
class CapturedFile:
    """A stream's results file filled during capture: the first ``min(total_bytes, file limit)`` bytes of
    the stream, byte-exact, in ``path`` (see :class:`ResultFileFiller`)."""

    path: Path
    total_bytes: int
    """Bytes in the whole stream (also those beyond the file limit)."""


class ResultFileFiller:
    """Fills one stream's results file while the output is captured, so that the results need no second copy.

    Synchronous (plain ``os.write`` on an ``O_APPEND``-free descriptor): the capture process calls it
    from its event loop, as it does the log writer. Bytes beyond ``limit`` are only counted.
    """

    def __init__(self, results_dir: Path, name: str, limit: int) -> None:
        self.path = capture_temp_path(results_dir, name)
        self.limit = limit
        self.total_bytes = 0
        self.file_bytes = 0
        self.failed: str = ""
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(self.path, flags, 0o644)

    def write(self, data: bytes | memoryview) -> None:
        self.total_bytes += len(data)
        if self._fd is None or self.file_bytes >= self.limit:
            return
        part = memoryview(data)[: self.limit - self.file_bytes]
        try:
            done = 0
            while done < len(part):
                done += os.write(self._fd, part[done:])
        except OSError as exc:  # the results are then written from the log store instead
            self.failed = f"{exc.strerror or exc}"
            self._close()
            return
        self.file_bytes += len(part)

    def finish(self) -> CapturedFile | None:
        """fsync and close; the captured file, or None if it could not be written completely."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.failed = f"{exc.strerror or exc}"
            self._close()
        if self.failed:
            return None
        return CapturedFile(self.path, self.total_bytes)

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


async def _in_thread(fn: Callable[..., _T], *args: object) -> _T:
    return await asyncio.to_thread(fn, *args)


async def _aclose(it: AsyncIterator[bytes]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # a source that fails to close must not cost the execution its results
        _log.warning("closing an output stream failed", exc_info=True)


async def _consume(
    source: AsyncIterable[bytes],
    tmp: _TempFile,
    file_limit: int,
    return_limit: int,
    drain: bool,
) -> StreamSummary:
    """Read one stream into its temp file (up to file_limit) and memory (up to return_limit)."""
    await _in_thread(tmp.open)
    head = bytearray()
    pending = bytearray()
    file_bytes = 0
    seen = 0
    stop_after = max(file_limit, return_limit)
    it = aiter(source)
    exhausted = False
    try:
        while True:
            try:
                chunk = await anext(it)
            except StopAsyncIteration:
                exhausted = True
                break
            if not chunk:
                continue
            view = memoryview(chunk)
            if len(head) < return_limit:
                head += view[: return_limit - len(head)]
            if file_bytes < file_limit:
                part = view[: file_limit - file_bytes]
                file_bytes += len(part)
                if len(pending) + len(part) < _WRITE_BATCH:
                    pending += part
                else:
                    if pending:
                        batch, pending = pending, bytearray()
                        await _in_thread(tmp.write, batch)
                    if len(part) >= _WRITE_BATCH:
                        await _in_thread(tmp.write, part)
                    else:
                        pending += part
            seen += len(view)
            # One byte beyond both limits is seen: the flags are exact, the rest is not needed.
            if seen > stop_after and not drain:
                break
        if pending:
            await _in_thread(tmp.write, pending)
        await _in_thread(tmp.finish)
    finally:
        if not exhausted:
            await _aclose(it)
    truncated = seen > return_limit
    return StreamSummary(
        text=decode_inline(bytes(head), truncated),
        truncated=truncated,
        file_truncated=seen > file_limit,
        file_bytes=file_bytes,
        total_bytes=seen if exhausted else None,
    )


def _adopt_check(captured: CapturedFile, file_limit: int, return_limit: int) -> bytes:
    """Check a captured file (size as promised; its writer fsync'ed it) and read the inline head it holds."""
    expected = min(captured.total_bytes, file_limit)
    fd = os.open(captured.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        if size != expected:
            raise OSError(f"the captured file {captured.path} holds {size} bytes, not {expected}")
        return os.pread(fd, min(return_limit, size), 0)
    finally:
        os.close(fd)


async def _adopt(
    captured: CapturedFile,
    source: AsyncIterable[bytes],
    tmp: _TempFile,
    file_limit: int,
    return_limit: int,
) -> StreamSummary:
    """A stream whose file was filled during capture: only the inline head is read (from the file, or
    from ``source`` when the return limit is beyond the file limit)."""
    tmp.path = captured.path  # renamed into place by commit, removed by discard
    total = captured.total_bytes
    head = await _in_thread(_adopt_check, captured, file_limit, return_limit)
    want = min(return_limit, total)
    if len(head) < want:  # the file stops before the inline head does
        buf = bytearray()
        it = aiter(source)
        try:
            async for chunk in it:
                buf += chunk[: want - len(buf)]
                if len(buf) >= want:
                    break
        finally:
            await _aclose(it)
        head = bytes(buf)
    truncated = total > return_limit
    return StreamSummary(
        text=decode_inline(head, truncated),
        truncated=truncated,
        file_truncated=total > file_limit,
        file_bytes=min(total, file_limit),
        total_bytes=total,
    )


def _fsync_dir(directory: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(directory, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)


async def write_job_results(
    results_dir: Path,
    stdout: AsyncIterable[bytes],
    stderr: AsyncIterable[bytes],
    exit_code: int | None,
    limits: OutputLimits,
    *,
    drain: bool = False,
    captured: Mapping[StreamType, CapturedFile] | None = None,
) -> JobResults:
    """Write ``stdout``, ``stderr`` and (if a process ran) ``exitCode`` into ``results_dir``.

    Both streams are read concurrently. A stream is read until EOF or until both of its limits are
    reached and one more byte has been seen; then its iterator is closed (``aclose()``) — unless
    ``drain``, in which case the rest is read and discarded (for producers that must not block, such
    as pipes) and ``total_bytes`` is known.

    ``captured``: streams whose file was already filled during capture (:class:`ResultFileFiller`);
    such a file is renamed into place as it is, and only its inline head is read — no second copy.
    Its source is then read only if the return limit goes beyond the file limit.

    The files appear only once everything was read and synced: if a source raises or the call is
    cancelled, no file is replaced, no temp file is left, and the exception propagates (a single
    failure is raised as itself, not as an exception group).
    """
    results_dir = Path(results_dir)
    await _in_thread(_mkdir, results_dir)
    out_tmp = _TempFile(results_dir, STDOUT_FILE)
    err_tmp = _TempFile(results_dir, STDERR_FILE)
    temps = [out_tmp, err_tmp]
    captured = captured or {}

    def summarize(kind: StreamType, source: AsyncIterable[bytes], tmp: _TempFile) -> Coroutine[Any, Any, StreamSummary]:
        file_limit, return_limit = limits.file_limit(kind), limits.return_limit(kind)
        done = captured.get(kind)
        if done is not None:
            return _adopt(done, source, tmp, file_limit, return_limit)
        return _consume(source, tmp, file_limit, return_limit, drain)

    try:
        try:
            async with asyncio.TaskGroup() as tg:
                out_task = tg.create_task(summarize(StreamType.STDOUT, stdout, out_tmp))
                err_task = tg.create_task(summarize(StreamType.STDERR, stderr, err_tmp))
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        out_summary = out_task.result()
        err_summary = err_task.result()
        if exit_code is not None:
            code_tmp = _TempFile(results_dir, EXIT_CODE_FILE)
            temps.append(code_tmp)
            await _in_thread(code_tmp.write_all, str(int(exit_code)).encode("ascii"))
        # Renames are quick metadata operations: done here, with no await between them, so that a
        # cancellation cannot leave some files of this execution new and others old.
        for tmp in temps:
            tmp.commit()
        if exit_code is None:
            # No process ran: an exitCode from an earlier run in this dir would be a lie.
            (results_dir / EXIT_CODE_FILE).unlink(missing_ok=True)
        await _in_thread(_fsync_dir, results_dir)
    except BaseException:
        for tmp in temps:
            tmp.discard()
        raise
    return JobResults(stdout=out_summary, stderr=err_summary, exit_code=exit_code)
