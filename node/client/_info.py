"""What a node says about itself (GetNodeInfo): a plain value both the node and its requesters use."""

from __future__ import annotations

from dataclasses import dataclass, field

from haddock.executor.models import ExecutionState, Resources, ServicePort


@dataclass(frozen=True)
class ServiceInfo:
    """A service execution that holds ports on the node."""

    execution_id: str
    name: str
    state: ExecutionState
    ports: list[ServicePort]


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
    services: list[ServiceInfo] = field(default_factory=list)
    port_range: tuple[int, int] = (0, 0)
    ports_in_use: int = 0
    gateway_address: str = ""
