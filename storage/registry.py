"""The node's storage registry, built from its :class:`~haddock.storage.config.StorageSettings`."""

from __future__ import annotations

from pathlib import Path

from haddock.storage.cache import ContentCache
from haddock.storage.config import StorageSettings
from haddock.storage.inline import InlineStorage
from haddock.storage.local import LocalStorage
from haddock.storage.netpolicy import AddressPolicy
from haddock.storage.provider import StorageRegistry
from haddock.storage.s3 import S3Storage
from haddock.storage.url import UrlStorage


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
            UrlStorage(cache, st.url, policy=policy),
            S3Storage(cache, st.s3, policy=policy),
        ]
    )
