"""The node's storage registry, built from its :class:`~haddock.storage.config.StorageSettings`."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haddock.storage.cache import ContentCache
from haddock.storage.config import StorageSettings
from haddock.storage.inline import InlineStorage
from haddock.storage.local import LocalStorage
from haddock.storage.netpolicy import AddressPolicy
from haddock.storage.provider import PreparedVolume, StorageProvider, StorageRegistry

__all__ = ["build_registry"]


class _OnFirstUse:
    """A provider made (its module, and the network library it needs, imported) when it is first used:
    a node whose jobs never name a URL or S3 input never loads httpx or boto3."""

    def __init__(self, source_type: str, library: str, make: Callable[[], StorageProvider[Any]]) -> None:
        self.source_type = source_type
        self._library = library
        self._make = make
        self._provider: StorageProvider[Any] | None = None

    def _get(self) -> StorageProvider[Any]:
        if self._provider is None:
            self._provider = self._make()
        return self._provider

    async def is_installed(self) -> bool:
        if self._provider is not None:
            return await self._provider.is_installed()
        return importlib.util.find_spec(self._library) is not None

    async def has_storage_locally(self, source: Any) -> bool:
        return await self._get().has_storage_locally(source)

    async def get_volume_size(self, source: Any) -> int | None:
        return await self._get().get_volume_size(source)

    async def prepare_storage(self, source: Any, work_dir: Path) -> PreparedVolume:
        return await self._get().prepare_storage(source, work_dir)

    async def cleanup_storage(self, volume: PreparedVolume) -> None:
        await self._get().cleanup_storage(volume)

    async def aclose(self) -> None:
        close = getattr(self._provider, "aclose", None)
        if close is not None:
            await close()


def build_registry(
    settings: StorageSettings | None = None, *, cache_dir: Path | None = None, policy: AddressPolicy | None = None
) -> StorageRegistry:
    """A registry with every provider, each configured by its section of ``settings``; URL and S3
    downloads share one content cache (``settings.cache``) when ``cache_dir`` is set. Every address
    they connect to passes ``policy`` (default: public addresses only unless ``settings.allow_private_networks``)."""
    st = settings or StorageSettings()
    policy = policy or AddressPolicy.of(st)
    cache = ContentCache(cache_dir, st.cache.max_bytes) if cache_dir is not None else None
    return StorageRegistry(
        [
            InlineStorage(st.inline),
            LocalStorage(st.local_roots),
            _OnFirstUse("url", "httpx", lambda: _url_storage(cache, st, policy)),
            _OnFirstUse("s3", "boto3", lambda: _s3_storage(cache, st, policy)),
        ]
    )


def _url_storage(cache: ContentCache | None, st: StorageSettings, policy: AddressPolicy) -> StorageProvider[Any]:
    from haddock.storage.url import UrlStorage

    return UrlStorage(cache, st.url, policy=policy)


def _s3_storage(cache: ContentCache | None, st: StorageSettings, policy: AddressPolicy) -> StorageProvider[Any]:
    from haddock.storage.s3 import S3Storage

    return S3Storage(cache, st.s3, policy=policy)
