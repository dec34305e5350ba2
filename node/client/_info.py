"""What a node says about itself (GetNodeInfo), and the capacity books it reports: plain values both the node and
its requesters use."""

from __future__ import annotations

from dataclasses import dataclass, field

from haddock.executor.records import ExecutionState
from haddock.executor.request import Resources
from haddock.executor.servicespec import ServicePort


@dataclass(frozen=True)
class ServiceInfo:
    """A service execution that holds ports on the node."""

    execution_id: str
    name: str
    state: ExecutionState
    ports: list[ServicePort]
    job_version: str = ""  # a job of a job type (gateway /pub/job/{name}/{version}/)


@dataclass(frozen=True)
class CapacitySnapshot:
    """The books at one moment. ``free`` is capacity minus allocated (0 where the capacity is unknown)."""

    capacity: Resources
    allocated: Resources
    """What admitted executions hold."""
    queued: Resources
    """What queued executions ask for."""
    free: Resources
    running: int
    """How many executions are admitted and not released."""
    queued_count: int


@dataclass(frozen=True)
class NodeInfo(CapacitySnapshot):
    """The node's books (``free``: what is neither running nor queued) and who it is: ids, versions, services, ports."""

    node_id: str
    version: str
    engine_version: str
    services: list[ServiceInfo] = field(default_factory=list)
    port_range: tuple[int, int] = (0, 0)
    ports_in_use: int = 0
    gateway_address: str = ""
