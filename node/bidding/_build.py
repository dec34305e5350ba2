"""Assembly: :func:`build_chain` turns :class:`BiddingSettings` into the semantic and the resource chain."""

from __future__ import annotations

from collections.abc import Iterable

from haddock.node.bidding._chain import BidChain, BidStrategy, Chains, EnginePlatform, ImagePlatformLookup
from haddock.node.bidding._probe import ExternalProbeStrategy
from haddock.node.bidding._resources import ResourceStrategy
from haddock.node.bidding._semantic import (
    ImagePlatformStrategy,
    ImagePolicyStrategy,
    NetworkingStrategy,
    StorageStrategy,
    TimeoutStrategy,
)
from haddock.node.bidding._settings import BiddingSettings


def build_chain(
    settings: BiddingSettings,
    *,
    image_platform_lookup: ImagePlatformLookup | None,
    storage_types_installed: Iterable[str],
    engine_platform: EnginePlatform | None = None,
) -> Chains:
    """The semantic chain (cheap checks first, the external probe last) and the resource chain.

    ``image_platform_lookup`` and ``engine_platform`` are needed when ``image_platform`` is on.
    """
    semantic: list[BidStrategy] = []
    if settings.networking is not None and settings.networking.enabled:
        n = settings.networking
        semantic.append(NetworkingStrategy(reject_networked=n.reject_networked, allowed_modes=n.allowed_modes))
    if settings.timeout is not None and settings.timeout.enabled:
        t = settings.timeout
        semantic.append(TimeoutStrategy(min_timeout=t.min_timeout, max_timeout=t.max_timeout))
    if settings.image_policy is not None and settings.image_policy.enabled:
        semantic.append(ImagePolicyStrategy(allow=settings.image_policy.allow, deny=settings.image_policy.deny))
    if settings.storage is not None and settings.storage.enabled:
        semantic.append(
            StorageStrategy(installed=storage_types_installed, require_local=settings.storage.require_local)
        )
    if settings.image_platform is not None and settings.image_platform.enabled:
        p = settings.image_platform
        if image_platform_lookup is None or engine_platform is None:
            raise ValueError(
                "bidding.image_platform is on but the node gave no way to find image and engine platforms; "
                "set bidding.image_platform.enabled = false or pass image_platform_lookup and engine_platform"
            )
        semantic.append(
            ImagePlatformStrategy(
                lookup=image_platform_lookup,
                engine_platform=engine_platform,
                unknown=p.unknown,
                cache_ttl=p.cache_ttl,
                also_accept=p.also_accept,
            )
        )
    if settings.external_probe is not None and settings.external_probe.enabled:
        e = settings.external_probe
        semantic.append(ExternalProbeStrategy(command=e.command, url=e.url, headers=e.headers, timeout=e.timeout))
    resource: list[BidStrategy] = []
    if settings.resources is not None and settings.resources.enabled:
        resource.append(ResourceStrategy(max_per_job=settings.resources.max_per_job))
    return Chains(semantic=BidChain(semantic), resource=BidChain(resource))
