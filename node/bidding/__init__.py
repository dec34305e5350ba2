"""Bid strategies: whether this node takes a job, and why (after Bacalhau's bid strategies).

A requester asks a node two questions: will it run this *kind* of job (the semantic chain:
networking, image policy, image platform, input storage, timeout, an operator's external
probe), and does it have room for it now (the resource chain). Each strategy answers with a
:class:`BidResult` whose reason is a sentence a person understands; a :class:`BidChain` runs
its strategies in order and the first "no" wins.

Everything is configured by :class:`BiddingSettings` (the node's ``[bidding]`` TOML table), and
:func:`build_chain` turns it into the two chains.

The parts: ``_chain`` (the contract and the chains), ``_settings`` (the ``[bidding]`` models),
``_semantic`` (networking, image policy, image platform, storage, timeout), ``_resources`` (room for
the job), ``_probe`` (the operator's external probe), ``_build`` (:func:`build_chain`).
"""

from __future__ import annotations

from haddock.node.bidding._build import build_chain
from haddock.node.bidding._chain import (
    BidChain,
    BidContext,
    BidStrategy,
    Chains,
    EnginePlatform,
    ImagePlatformLookup,
)
from haddock.node.bidding._probe import ExternalProbeStrategy
from haddock.node.bidding._resources import ResourceStrategy
from haddock.node.bidding._semantic import (
    ImagePlatformStrategy,
    ImagePolicyStrategy,
    NetworkingStrategy,
    StorageStrategy,
    TimeoutStrategy,
    image_matches,
    normalize_pattern,
    platform_from_engine_info,
    platform_from_image_inspect,
)
from haddock.node.bidding._settings import (
    BiddingSettings,
    ExternalProbeSettings,
    ImagePlatformSettings,
    ImagePolicySettings,
    NetworkingSettings,
    ResourceLimits,
    ResourceSettings,
    StorageSettings,
    TimeoutSettings,
    normalize_arch,
)

__all__ = [
    "BidChain",
    "BidContext",
    "BidStrategy",
    "BiddingSettings",
    "Chains",
    "EnginePlatform",
    "ExternalProbeSettings",
    "ExternalProbeStrategy",
    "ImagePlatformLookup",
    "ImagePlatformSettings",
    "ImagePlatformStrategy",
    "ImagePolicySettings",
    "ImagePolicyStrategy",
    "NetworkingSettings",
    "NetworkingStrategy",
    "ResourceLimits",
    "ResourceSettings",
    "ResourceStrategy",
    "StorageSettings",
    "StorageStrategy",
    "TimeoutSettings",
    "TimeoutStrategy",
    "build_chain",
    "image_matches",
    "normalize_arch",
    "normalize_pattern",
    "platform_from_engine_info",
    "platform_from_image_inspect",
]
