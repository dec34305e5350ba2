"""Proto ⇄ domain conversion of the node's own description (GetNodeInfo): capacity, its services and ports.
Private: import from :mod:`haddock.node.client.convert`.
"""

from __future__ import annotations

from haddock.executor.servicespec import ServicePort
from haddock.node.client._conv_core import (
    resources_from_pb,
    resources_to_pb,
    state_from_pb,
    state_to_pb,
)
from haddock.node.client._conv_request import port_from_pb, port_to_pb
from haddock.node.client._info import NodeInfo, ServiceInfo
from haddock.v1 import node_pb2

# --------------------------------------------------------------------- node info


def info_to_pb(info: NodeInfo) -> node_pb2.GetNodeInfoResponse:
    return node_pb2.GetNodeInfoResponse(
        node_id=info.node_id,
        version=info.version,
        engine_version=info.engine_version,
        capacity=resources_to_pb(info.capacity),
        allocated=resources_to_pb(info.allocated),
        queued=resources_to_pb(info.queued),
        free=resources_to_pb(info.free),
        running_executions=info.running,
        queued_executions=info.queued_count,
        services=[
            node_pb2.ServiceSummary(
                execution_id=svc.execution_id,
                name=svc.name,
                state=state_to_pb(svc.state),
                ports=[port_to_pb(p) for p in svc.ports],
                job_version=svc.job_version,
            )
            for svc in info.services
        ],
        port_range_start=info.port_range[0],
        port_range_end=info.port_range[1],
        ports_in_use=info.ports_in_use,
        gateway_address=info.gateway_address,
    )


def info_from_pb(p: node_pb2.GetNodeInfoResponse) -> NodeInfo:
    return NodeInfo(
        node_id=p.node_id,
        version=p.version,
        engine_version=p.engine_version,
        capacity=resources_from_pb(p.capacity),
        allocated=resources_from_pb(p.allocated),
        queued=resources_from_pb(p.queued),
        free=resources_from_pb(p.free),
        running=p.running_executions,
        queued_count=p.queued_executions,
        services=[
            ServiceInfo(
                execution_id=svc.execution_id,
                name=svc.name,
                state=state_from_pb(svc.state),
                ports=[ServicePort.model_validate(port_from_pb(port)) for port in svc.ports],
                job_version=svc.job_version,
            )
            for svc in p.services
        ],
        port_range=(p.port_range_start, p.port_range_end),
        ports_in_use=p.ports_in_use,
        gateway_address=p.gateway_address,
    )
