"""The daemon: a grpc.aio server with health, reflection, auth, TLS and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from haddock.node.api import ExecutorServicer, NodeServicer
from haddock.node.auth import BearerTokenInterceptor
from haddock.node.client import wire
from haddock.node.config import Settings
from haddock.node.service import Node
from haddock.v1 import executor_pb2, executor_pb2_grpc, node_pb2, node_pb2_grpc

if TYPE_CHECKING:
    from haddock.node.cluster.transport import ClusterTransport
    from haddock.node.gateway import Gateway

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name,
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
)


def haddock_version() -> str:
    try:
        return package_version("haddock")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0+source"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if not tls.enabled:
        return None
    assert tls.cert is not None and tls.key is not None
    client_ca = tls.client_ca.read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    node: Node
    health: health.aio.HealthServicer
    port: int
    address: str
    gateway: Gateway | None = None
    cluster: ClusterTransport | None = None

    async def stop(self, grace: float) -> None:
        """Health goes NOT_SERVING first, the orchestrator (if any) gets a shutdown notice, the gateway
        closes (its services are going away); then new calls are refused and in-flight ones get ``grace``
        while the node stops its executions (or lets go of them), each within the same ``grace``."""
        await self.health.enter_graceful_shutdown()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        await asyncio.gather(self.server.stop(grace), self.node.shutdown(grace))


def _interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    interceptors: list[grpc.aio.ServerInterceptor] = []
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        # Not the health service: its Watch writes with context.write, which the interceptor's
        # streaming wrapper cannot handle (it expects async generators); probes need no spans anyway.
        interceptors.append(
            aio_server_interceptor(filter_=filters.negate(filters.health_check()))  # type: ignore[no-untyped-call]
        )
    except ImportError:  # pragma: no cover - the instrumentation is a dependency
        log.warning("gRPC OpenTelemetry instrumentation is not installed; no per-call spans")
    if settings.token is not None:
        interceptors.append(BearerTokenInterceptor(settings.token))
    return interceptors


async def start_server(settings: Settings, node: Node | None = None) -> RunningServer:
    """Build the node and its server, bind, start; returns once it accepts calls."""
    if node is None:
        node = await Node.open(settings, version=haddock_version())
        await node.begin()
    server = grpc.aio.server(
        interceptors=_interceptors(settings),
        options=[("grpc.so_reuseport", 0), *wire.server_options()],
    )
    executor_pb2_grpc.add_ExecutorServiceServicer_to_server(ExecutorServicer(node), server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(node), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    creds = server_credentials(settings)
    try:
        if creds is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, creds)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {settings.listen}: {exc}") from exc
    await server.start()
    gateway: Gateway | None = None
    if settings.services.gateway_listen:
        from haddock.node.gateway import Gateway  # aiohttp's server only when the node runs a gateway

        gateway = Gateway(node, settings.services, token=settings.token)
        try:
            node.gateway_address = await gateway.start(settings.services.gateway_listen)
        except BaseException:
            await server.stop(0)
            raise
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = settings.listen.rpartition(":")[0]
    address = f"{host}:{port}"
    log.info(
        "haddock node serving",
        extra={
            "node_id": settings.node_id,
            "address": address,
            "tls": creds is not None,
            "auth": settings.token is not None,
            "data_dir": str(settings.data_dir),
        },
    )
    cluster = None
    if settings.cluster.enabled:
        from haddock.node.cluster.transport import ClusterTransport  # nats-py only when the node joins a network

        cluster = ClusterTransport(settings.cluster, node, version=haddock_version())
        await cluster.start()
        log.info("joining a Bacalhau network", extra={"orchestrators": settings.cluster.orchestrators})
    return RunningServer(
        server=server,
        node=node,
        health=health_servicer,
        port=port,
        address=address,
        gateway=gateway,
        cluster=cluster,
    )


async def serve(settings: Settings) -> None:
    """Run the node until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine_ok = await running.node.executor.is_installed()
    if not engine_ok:
        log.warning("the Docker engine does not answer; executions will fail until it does")
    await stop.wait()
    log.info(
        "shutting down", extra={"grace_seconds": settings.shutdown_grace, "on_shutdown": settings.on_shutdown.value}
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)
    await running.stop(settings.shutdown_grace)
    log.info("stopped")
