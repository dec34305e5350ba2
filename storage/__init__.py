"""Input sources (inline, local, URL, S3) behind one provider protocol, the content cache, and the
output publishers. The sources and publisher specs themselves are domain data:
:mod:`haddock.executor.sources` and :mod:`haddock.executor.publishers`.

Typical use by the node::

    registry = build_registry(settings.storage, cache_dir=data_dir / "cache")
    volumes = await registry.prepare_all(sources, work_dir)     # in parallel; all or nothing
    request = request.model_copy(update={"inputs": [v.as_input_volume() for v in volumes]})
    ...
    await registry.cleanup_all(volumes)

Names are imported on first use: ``import haddock.storage`` loads neither boto3 nor httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haddock.storage.cache import CacheLease, ContentCache
    from haddock.storage.config import (
        CacheSettings,
        InlineSettings,
        LocalRoot,
        S3InputSettings,
        S3PublishSettings,
        S3Settings,
        StorageSettings,
        UrlSettings,
    )
    from haddock.storage.inline import InlineStorage
    from haddock.storage.local import LocalStorage
    from haddock.storage.provider import PreparedVolume, StorageError, StorageProvider, StorageRegistry
    from haddock.storage.registry import build_registry
    from haddock.storage.s3 import S3Storage
    from haddock.storage.url import UrlStorage

_WHERE = {
    "CacheLease": "cache",
    "ContentCache": "cache",
    "CacheSettings": "config",
    "InlineSettings": "config",
    "LocalRoot": "config",
    "S3InputSettings": "config",
    "S3PublishSettings": "config",
    "S3Settings": "config",
    "StorageSettings": "config",
    "UrlSettings": "config",
    "InlineStorage": "inline",
    "LocalStorage": "local",
    "PreparedVolume": "provider",
    "StorageError": "provider",
    "StorageProvider": "provider",
    "StorageRegistry": "provider",
    "build_registry": "registry",
    "S3Storage": "s3",
    "UrlStorage": "url",
}

__all__ = [
    "CacheLease",
    "CacheSettings",
    "ContentCache",
    "InlineSettings",
    "InlineStorage",
    "LocalRoot",
    "LocalStorage",
    "PreparedVolume",
    "S3InputSettings",
    "S3PublishSettings",
    "S3Settings",
    "S3Storage",
    "StorageError",
    "StorageProvider",
    "StorageRegistry",
    "StorageSettings",
    "UrlSettings",
    "UrlStorage",
    "build_registry",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
