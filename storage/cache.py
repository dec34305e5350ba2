"""A content cache for downloaded inputs, shared by the executions of a node.

Layout under ``root``::

    entries/<key>/meta.json     what the entry is (content path, size); its mtime is the entry's last use
    entries/<key>/content/...   the content: one file, or a directory tree
    tmp/                        downloads in progress (emptied when the cache is opened)

An entry appears atomically (a rename from ``tmp/``), so a crash never leaves half an entry.
Entries are keyed by what identifies their content (:func:`sha256_key`, :func:`url_key`,
:func:`s3_object_key`, :func:`s3_prefix_key`: pure functions). The cache holds at most
``max_bytes``: when over, the least recently used entries that no prepared volume holds are
evicted; an entry in use is never evicted (the bound is exceeded for as long as it must be).
Concurrent requests for one key fetch once: the others wait on the key's lock, then find it.

One node process owns a cache directory; its methods run on that process's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from haddock.storage.provider import remove_tree, run_blocking

log = logging.getLogger("haddock.storage.cache")

_KEY_RE = re.compile(r"^[a-z0-9]+-[0-9a-f]{64}$")

# --------------------------------------------------------------------------------------- key derivation


def _digest(kind: str, *parts: object) -> str:
    canonical = json.dumps([kind, *parts], separators=(",", ":"), ensure_ascii=True)
    return f"{kind}-{hashlib.sha256(canonical.encode()).hexdigest()}"


def sha256_key(sha256: str) -> str:
    """Content known by its SHA-256: the same key whichever URL or bucket it comes from."""
    digest = sha256.lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"not a SHA-256 digest: {sha256!r}")
    return f"sha256-{digest}"


def url_key(url: str, *, sha256: str | None, etag: str | None, last_modified: str | None) -> str | None:
    """The key of a URL's content: its sha256 when given, else the URL (without fragment) with the
    validators the server gave (ETag, Last-Modified). None when nothing identifies the content:
    such a download is not cached."""
    if sha256:
        return sha256_key(sha256)
    if not etag and not last_modified:
        return None
    return _digest("url", url.partition("#")[0], etag or "", last_modified or "")


def s3_object_key(
    *,
    endpoint_url: str | None,
    bucket: str,
    key: str,
    version_id: str | None,
    etag: str | None,
    sha256: str | None = None,
) -> str | None:
    """One object: its sha256 when given, else (endpoint, bucket, key, version id) or, without a
    version id, (endpoint, bucket, key, ETag). None when neither version id nor ETag is known."""
    if sha256:
        return sha256_key(sha256)
    if version_id:
        return _digest("s3v", endpoint_url or "", bucket, key, version_id)
    if etag:
        return _digest("s3e", endpoint_url or "", bucket, key, etag)
    return None


def s3_prefix_key(
    *,
    endpoint_url: str | None,
    bucket: str,
    prefix: str,
    filter: str | None,
    objects: Iterable[tuple[str, str, int]],
) -> str:
    """A directory of objects: (endpoint, bucket, prefix, filter) and every (key, ETag, size) listed,
    in key order — any change to any object makes a new key."""
    listing = sorted(objects)
    return _digest("s3p", endpoint_url or "", bucket, prefix, filter or "", [list(o) for o in listing])


# -------------------------------------------------------------------------------------------- the cache


@dataclass
class _Entry:
    key: str
    content: Path
    size: int
    last_used: float
    refs: int = 0


@dataclass
class CacheLease:
    """A reference to a cache entry held by a prepared volume; ``release`` once done (idempotent)."""

    key: str
    path: Path
    size: int
    hit: bool
    _cache: ContentCache = field(repr=False)
    _released: bool = field(default=False, repr=False)

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._cache._release(self.key)


Fetch = Callable[[Path], Awaitable[Path]]
"""Writes the content into the given empty directory and returns the content's path (a file or a
directory inside it)."""


class ContentCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("the cache's size bound must be positive")
        self.root = root.absolute()
        self.max_bytes = max_bytes
        self._entries_dir = self.root / "entries"
        self._tmp_dir = self.root / "tmp"
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._entries_dir.mkdir(parents=True, exist_ok=True)
        remove_tree(self._tmp_dir)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    # ------------------------------------------------------------------------------------- inspection

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def refs(self, key: str) -> int:
        entry = self._entries.get(key)
        return entry.refs if entry is not None else 0

    def accepts(self, size: int | None) -> bool:
        """Whether content of this size can be cached at all (unknown sizes are tried)."""
        return size is None or size <= self.max_bytes

    # ------------------------------------------------------------------------------------------- use

    async def get_or_fetch(self, key: str, fetch: Fetch, *, expected_size: int | None = None) -> CacheLease:
        """A lease on the entry ``key``, fetched first when it is not here.

        Concurrent callers with one key wait for each other: one fetches, the others then find the
        entry. If the fetch fails (or its caller is cancelled) nothing is kept and the next waiter
        tries itself. Exceptions from ``fetch`` propagate unchanged.
        """
        if not _KEY_RE.match(key):
            raise ValueError(f"not a cache key: {key!r}")
        lease = self._acquire(key, hit=True)
        if lease is not None:
            return lease
        async with self._key_lock(key):
            lease = self._acquire(key, hit=True)
            if lease is not None:
                return lease
            staging = self._tmp_dir / f"{key}-{uuid.uuid4().hex[:8]}"
            content_dir = staging / "content"
            final = self._entries_dir / key
            try:
                await run_blocking(content_dir.mkdir, 0o755, True)
                if expected_size is not None:
                    await self._evict(need=expected_size)
                content = await fetch(content_dir)
                rel = content.relative_to(staging)  # ValueError if fetch returned a path elsewhere
                size = await run_blocking(_tree_size, content)
            except BaseException:
                await _shielded_remove(staging)
                raise
            try:
                await run_blocking(_commit, staging, final, rel, size)
            except asyncio.CancelledError:
                # run_blocking waited for the thread: if the entry is in place, keep it for the next user
                if (final / "meta.json").exists():
                    self._entries[key] = _Entry(key=key, content=final / rel, size=size, last_used=time.time())
                else:
                    await _shielded_remove(staging)
                raise
            except BaseException:
                await _shielded_remove(staging)
                raise
            self._entries[key] = _Entry(key=key, content=final / rel, size=size, last_used=time.time())
            lease = self._acquire(key, hit=False)
            assert lease is not None
        await self._evict()
        return lease

    def lookup(self, key: str) -> Path | None:
        """The content path of an entry, without taking a reference (for has_storage_locally)."""
        entry = self._entries.get(key)
        return entry.content if entry is not None else None

    async def evict(self) -> None:
        """Evict unused entries, least recently used first, until the cache is within its bound."""
        await self._evict()

    # --------------------------------------------------------------------------------------- internals

    def _acquire(self, key: str, *, hit: bool) -> CacheLease | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.refs += 1
        entry.last_used = time.time()
        self._touch(entry)
        return CacheLease(key=key, path=entry.content, size=entry.size, hit=hit, _cache=self)

    async def _release(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.refs = max(0, entry.refs - 1)
        entry.last_used = time.time()
        self._touch(entry)
        await self._evict()

    def _touch(self, entry: _Entry) -> None:
        with contextlib.suppress(OSError):
            os.utime(self._entries_dir / entry.key / "meta.json", (entry.last_used, entry.last_used))

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _evict(self, need: int = 0) -> None:
        """Evict unused entries (LRU first) until ``total + need <= max_bytes`` or none is left unused."""
        total = self.total_bytes
        if total + need <= self.max_bytes:
            return
        doomed: list[_Entry] = []
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            if total + need <= self.max_bytes:
                break
            if entry.refs > 0:
                continue
            del self._entries[entry.key]
            total -= entry.size
            doomed.append(entry)
        trash: list[Path] = []
        for entry in doomed:
            # out of the entries directory at once (a rename), deleted in a thread
            dest = self._tmp_dir / f"evicted-{entry.key}-{uuid.uuid4().hex[:8]}"
            try:
                (self._entries_dir / entry.key).rename(dest)
                trash.append(dest)
            except OSError as exc:
                log.warning("could not evict cache entry %s: %s", entry.key, exc)
            log.info("evicted cache entry %s (%d bytes)", entry.key, entry.size)
        if total + need > self.max_bytes:
            log.info(
                "content cache holds %d bytes (bound %d): the rest is in use by prepared volumes",
                total,
                self.max_bytes,
            )
        for path in trash:
            await _shielded_remove(path)

    def _load(self) -> None:
        for d in self._entries_dir.iterdir():
            meta_path = d / "meta.json"
            try:
                if not _KEY_RE.match(d.name):
                    raise ValueError("not a cache key")
                meta = json.loads(meta_path.read_text())
                content = d / str(meta["content"])
                size = int(meta["size"])
                if not content.exists() and not content.is_symlink():
                    raise ValueError("content missing")
                last_used = meta_path.stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("removing unreadable cache entry %s: %s", d, exc)
                remove_tree(d)
                continue
            self._entries[d.name] = _Entry(key=d.name, content=content, size=size, last_used=last_used)


def _tree_size(path: Path) -> int:
    """Bytes in a file or directory tree (symlinks are counted, not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(dirpath, name))
                if not stat.S_ISDIR(st.st_mode):
                    total += st.st_size
    return total


def _commit(staging: Path, final: Path, rel: Path, size: int) -> None:
    meta = {"content": str(rel), "size": size, "created": time.time()}
    (staging / "meta.json").write_text(json.dumps(meta))
    if final.exists():  # a leftover that _load did not know about
        remove_tree(final)
    staging.rename(final)


async def _shielded_remove(path: Path) -> None:
    await run_blocking(remove_tree, path)
