"""Input sources (inline, local, URL, S3) behind one provider protocol, and the content cache.

Typical use by the node::

    registry = build_registry(cache_dir=data_dir / "cache", local_roots=[LocalRoot(Path("/data"))])
    volumes = await registry.prepare_all(sources, work_dir)     # in parallel; all or nothing
    request = request.model_copy(update={"inputs": [v.as_input_volume() for v in volumes]})
    ...
    await registry.cleanup_all(volumes)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from haddock.storage.cache import CacheLease, ContentCache
from haddock.storage.inline import InlineStorage
from haddock.storage.local import LocalRoot, LocalStorage
from haddock.storage.models import InlineSource, InputSource, LocalSource, S3Source, UrlSource, describe_source
from haddock.storage.provider import PreparedVolume, StorageError, StorageProvider, StorageRegistry
from haddock.storage.s3 import S3Config, S3Storage
from haddock.storage.url import UrlConfig, UrlStorage

GiB = 1024**3


def build_registry(
    *,
    cache_dir: Path | None = None,
    cache_max_bytes: int = 20 * GiB,
    local_roots: Iterable[LocalRoot] = (),
    inline_max_bytes: int = 10 * 1024 * 1024,
    url: UrlConfig | None = None,
    s3: S3Config | None = None,
) -> StorageRegistry:
    """A registry with every provider; URL and S3 downloads share one content cache when ``cache_dir`` is set."""
    cache = ContentCache(cache_dir, cache_max_bytes) if cache_dir is not None else None
    return StorageRegistry(
        [
            InlineStorage(max_bytes=inline_max_bytes),
            LocalStorage(local_roots),
            UrlStorage(cache, url),
            S3Storage(cache, s3),
        ]
    )


__all__ = [
    "CacheLease",
    "ContentCache",
    "InlineSource",
    "InlineStorage",
    "InputSource",
    "LocalRoot",
    "LocalSource",
    "LocalStorage",
    "PreparedVolume",
    "S3Config",
    "S3Source",
    "S3Storage",
    "StorageError",
    "StorageProvider",
    "StorageRegistry",
    "UrlConfig",
    "UrlSource",
    "UrlStorage",
    "build_registry",
    "describe_source",
]
