"""What a node says about itself (GetNodeInfo): a plain value both the node and its requesters use."""

from __future__ import annotations

from dataclasses import dataclass

from haddock.executor.models import Resources


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    version: str
    engine_version: str
    capacity: Resources
    allocated: Resources
    queued: Resources
    free: Resources
    running: int
    queued_count: int
