"""The storage provider protocol (after Bacalhau's), prepared volumes, and the registry that prepares
all inputs of an execution in parallel.

A provider turns an input source into a host path that the executor binds into the container
(:meth:`PreparedVolume.as_input_volume`). Providers raise :class:`StorageError` only; its message
names the input (type and url/path/bucket+key) and what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from haddock.executor.errors import ErrorCode, ExecutorError
from haddock.executor.request import InputVolume
from haddock.executor.sources import InputSource, describe_source

if TYPE_CHECKING:
    from haddock.storage.cache import CacheLease, ContentCache

log = logging.getLogger("haddock.storage")

S_contra = TypeVar("S_contra", contravariant=True)
T = TypeVar("T")


class StorageError(ExecutorError):
    """An input could not be prepared. ``str(err)`` names the input and says what went wrong.

    ``code`` says how the gRPC layer reports it: INVALID_ARGUMENT (the request is wrong),
    FAILED_PRECONDITION (the input is missing or refused by the node's policy), RESOURCE_EXHAUSTED
    (over a size cap), UNAVAILABLE (a transient failure that outlasted the retries), INTERNAL.
    """

    def __init__(
        self,
        source: InputSource | None,
        problem: str,
        *,
        code: ErrorCode = ErrorCode.FAILED_PRECONDITION,
    ) -> None:
        message = f"{describe_source(source)} {problem}" if source is not None else problem
        super().__init__(message)
        self.source = source
        self.problem = problem
        self.code = code


@dataclass
class PreparedVolume:
    """A prepared input: ``host_path`` (a file or directory on the node) is bound at ``target``.

    ``cached`` volumes live in the node's content cache and are shared: cleanup releases the
    reference and never deletes them. ``scratch`` is a directory the provider made under the
    execution's work dir and removes at cleanup.
    """

    source: InputSource
    host_path: Path
    target: str
    read_only: bool
    cached: bool
    lease: CacheLease | None = field(default=None, repr=False, compare=False)
    scratch: Path | None = field(default=None, repr=False, compare=False)

    def as_input_volume(self) -> InputVolume:
        return InputVolume(source=self.host_path, target=self.target, read_only=self.read_only)


class StorageProvider(Protocol[S_contra]):
    """Fetches one kind of input source (``source_type`` is its ``type`` field)."""

    source_type: str

    async def is_installed(self) -> bool:
        """Whether this provider can work on this node."""
        ...

    async def has_storage_locally(self, source: S_contra) -> bool:
        """Whether the input is already on the node (in the cache or on disk): nothing to fetch."""
        ...

    async def get_volume_size(self, source: S_contra) -> int | None:
        """The input's size in bytes when it can be known before fetching it, else None."""
        ...

    async def prepare_storage(self, source: S_contra, work_dir: Path) -> PreparedVolume:
        """Fetch the input (into the cache or under ``work_dir``) and say what to mount."""
        ...

    async def cleanup_storage(self, volume: PreparedVolume) -> None:
        """Release what ``prepare_storage`` made; idempotent, never raises for a missing file."""
        ...


# ------------------------------------------------------------------------------------- shared helpers


def scratch_path(work_dir: Path, prefix: str) -> Path:
    """A fresh name for an input's own directory under ``work_dir`` (see :func:`make_scratch`).

    The name is chosen before the directory is made so that a caller cancelled while it is being
    made still knows what to remove."""
    return work_dir.absolute() / f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_scratch(path: Path) -> None:
    """Make an input's own directory (and the work dir, if missing); it must not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir()


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree if it exists. Used on error paths, so it does not raise: a
    failure (after a second try, for a file that appeared meanwhile) is logged."""
    for attempt in (1, 2):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if attempt == 2:
                log.warning("could not remove %s: %s", path, exc)


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread. If the caller is cancelled, wait for the thread to finish before the
    cancellation propagates, so that cleanup after it never races with the thread's writes."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(fut)
        raise


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before retry ``attempt`` (1 = the first retry): exponential, with up to
    ``initial`` of random jitter, at most ``maximum``."""
    return min(maximum, initial * 2.0 ** max(0, attempt - 1) + random.uniform(0, initial))


async def prepare_fetched(
    source: InputSource,
    work_dir: Path,
    fetch: Callable[[Path, bool], Awaitable[Path]],
    *,
    prefix: str,
    cache: ContentCache | None = None,
    cache_key: str | None = None,
    size: int | None = None,
) -> PreparedVolume:
    """The one way a provider makes an input it fetches or writes: into the content cache when there is
    one, the content has an identity (``cache_key``) and its ``size`` fits (the volume then shares the
    cached copy), else into the input's own scratch directory under ``work_dir``, removed at cleanup
    and at once if ``fetch`` fails or is cancelled. Mounted read-only either way.

    ``fetch(dest, shared)`` writes the input under the empty directory ``dest`` and returns the path
    to mount; ``shared`` says whether it is for the cache."""
    if cache is not None and cache_key is not None and cache.accepts(size):
        lease = await cache.get_or_fetch(cache_key, lambda dest: fetch(dest, True), expected_size=size)
        return PreparedVolume(
            source=source, host_path=lease.path, target=source.target, read_only=True, cached=True, lease=lease
        )
    scratch = scratch_path(work_dir, prefix)
    try:
        await run_blocking(make_scratch, scratch)
        path = await fetch(scratch, False)
    except BaseException:
        await run_blocking(remove_tree, scratch)
        raise
    return PreparedVolume(
        source=source, host_path=path, target=source.target, read_only=True, cached=False, scratch=scratch
    )


async def release_volume(volume: PreparedVolume) -> None:
    """The common cleanup: release the cache reference, remove the scratch directory."""
    lease, volume.lease = volume.lease, None
    if lease is not None:
        await lease.release()
    scratch, volume.scratch = volume.scratch, None
    if scratch is not None:
        await run_blocking(remove_tree, scratch)


# ------------------------------------------------------------------------------------------- registry


class StorageRegistry:
    """Providers by source type; prepares, sizes and cleans up all the inputs of an execution."""

    def __init__(self, providers: Iterable[StorageProvider[Any]]) -> None:
        self._providers: dict[str, StorageProvider[Any]] = {}
        for p in providers:
            if p.source_type in self._providers:
                raise ValueError(f"two storage providers for inputs of type {p.source_type!r}")
            self._providers[p.source_type] = p

    @property
    def source_types(self) -> list[str]:
        return sorted(self._providers)

    def provider_for(self, source: InputSource) -> StorageProvider[Any]:
        try:
            return self._providers[source.type]
        except KeyError:
            known = ", ".join(self.source_types) or "none"
            raise StorageError(
                source,
                f"cannot be prepared: this node has no provider for inputs of type {source.type!r} (it has: {known})",
                code=ErrorCode.FAILED_PRECONDITION,
            ) from None

    async def installed_types(self) -> list[str]:
        """The source types whose provider reports itself installed."""
        out = []
        for t, p in sorted(self._providers.items()):
            with contextlib.suppress(Exception):
                if await p.is_installed():
                    out.append(t)
        return out

    async def has_storage_locally(self, source: InputSource) -> bool:
        return await self.provider_for(source).has_storage_locally(source)

    async def get_volume_sizes(self, sources: Sequence[InputSource]) -> list[int | None]:
        """Each input's size when knowable before fetching (queried in parallel). A StorageError says
        an input is certainly unusable (a local path that is not allowed, a missing S3 object)."""
        providers = [self.provider_for(s) for s in sources]
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(p.get_volume_size(s)) for p, s in zip(providers, sources, strict=True)]
        except BaseExceptionGroup as eg:
            errors = [e for e in _leaves(eg) if isinstance(e, StorageError)]
            if errors and len(errors) == len(_leaves(eg)):
                raise errors[0] from None
            raise
        return [t.result() for t in tasks]

    async def get_volume_size(self, sources: Sequence[InputSource]) -> int | None:
        """The inputs' total size in bytes, or None when the size of any of them cannot be known."""
        total = 0
        for size in await self.get_volume_sizes(sources):
            if size is None:
                return None
            total += size
        return total

    async def prepare_all(self, sources: Sequence[InputSource], work_dir: Path) -> list[PreparedVolume]:
        """Prepare every input in parallel; the volumes come back in the order of ``sources``.

        If one fails, the others are cancelled, those already prepared are cleaned up, no temporary
        file remains, and a StorageError naming the failed input is raised. If the caller is
        cancelled, everything prepared so far is cleaned up too.
        """
        providers = [self.provider_for(s) for s in sources]
        targets = [s.target for s in sources]
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            raise StorageError(
                None,
                f"each container path may be mounted once; inputs repeat: {', '.join(dupes)}",
                code=ErrorCode.INVALID_ARGUMENT,
            )
        prepared: list[PreparedVolume | None] = [None] * len(sources)

        async def one(i: int) -> None:
            source = sources[i]
            try:
                prepared[i] = await providers[i].prepare_storage(source, work_dir)
            except StorageError:
                raise
            except Exception as exc:
                log.exception("unexpected error preparing %s", describe_source(source))
                raise StorageError(
                    source, f"could not be prepared: unexpected {type(exc).__name__}: {exc}", code=ErrorCode.INTERNAL
                ) from exc

        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(len(sources)):
                    tg.create_task(one(i), name=f"prepare-input-{i}")
        except BaseException as exc:
            await _shielded(self.cleanup_all([v for v in prepared if v is not None]))
            if isinstance(exc, BaseExceptionGroup):
                errors = [e for e in _leaves(exc) if isinstance(e, StorageError)]
                others = [e for e in _leaves(exc) if not isinstance(e, StorageError | asyncio.CancelledError)]
                if others:  # KeyboardInterrupt, SystemExit and the like: not ours to translate
                    raise others[0] from exc
                if errors:
                    first = errors[0]
                    if len(errors) > 1:
                        names = "; ".join(str(e) for e in errors[1:])
                        first = StorageError(first.source, f"{first.problem} (also failed: {names})", code=first.code)
                    raise first from None
            raise
        return [v for v in prepared if v is not None]

    async def cleanup(self, volume: PreparedVolume) -> None:
        await self.provider_for(volume.source).cleanup_storage(volume)

    async def cleanup_all(self, volumes: Iterable[PreparedVolume]) -> None:
        """Clean up every volume (in parallel); failures are logged, never raised."""
        volumes = list(volumes)
        results = await asyncio.gather(*(self.cleanup(v) for v in volumes), return_exceptions=True)
        for v, r in zip(volumes, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("cleaning up %s failed: %s", describe_source(v.source), r)

    async def aclose(self) -> None:
        """Close the providers that hold connections."""
        for p in self._providers.values():
            close = getattr(p, "aclose", None)
            if close is not None:
                await close()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            out.extend(_leaves(e))
        else:
            out.append(e)
    return out


async def _shielded(coro: Any) -> None:
    """Run ``coro`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
