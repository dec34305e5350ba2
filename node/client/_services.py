"""The requester side of services: the ``run --service`` options as a service spec, waiting for readiness,
and ``haddock call`` through the node's HTTP gateway (aiohttp's client, loaded only by that command)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc

from haddock.executor.quantity import parse_duration
from haddock.node.client._client import NodeClient, NodeError

__all__ = ["build_service", "call_gateway", "parse_port", "read_body", "until_ready"]


def _say(message: str) -> None:
    sys.stderr.write(f"haddock: {message}\n")
    sys.stderr.flush()


def parse_port(spec: str, index: int) -> dict[str, Any]:
    """``[NAME=]CONTAINER_PORT[:HOST_PORT]``: the first port is named ``http`` unless named."""
    name, sep, rest = spec.rpartition("=")
    if not sep:
        name = "http" if index == 0 else ""
    container, sep, host = rest.partition(":")
    if not container.isdigit() or (sep and not host.isdigit()):
        raise ValueError(f"port {spec!r} must be [NAME=]CONTAINER_PORT[:HOST_PORT], e.g. 8080 or web=8080:30001")
    return {
        "name": name or f"p{container}",
        "container_port": int(container),
        **({"host_port": int(host)} if sep else {}),
    }


def build_service(
    *,
    name: str | None,
    ports: list[str],
    ready_path: str | None,
    live_path: str | None,
    probe_port: str | None,
    probe_interval: str | None,
    probe_timeout: str | None,
    probe_threshold: int | None,
    start_period: str | None,
    healthcheck: bool,
    restart: str | None,
    max_restarts: int | None,
    backoff: str | None,
    backoff_max: str | None,
) -> dict[str, Any]:
    """The service spec the ``run --service`` options describe (validated by the domain model)."""
    probe: dict[str, Any] = {"port": probe_port}
    for key, value in (("interval", probe_interval), ("timeout", probe_timeout), ("start_period", start_period)):
        if value is not None:
            probe[key] = parse_duration(value)
    if probe_threshold is not None:
        probe["failure_threshold"] = probe_threshold
    restart_spec: dict[str, Any] = {}
    if restart is not None:
        restart_spec["policy"] = restart
    if max_restarts is not None:
        restart_spec["max_restarts"] = max_restarts
    if backoff is not None:
        restart_spec["backoff_initial"] = parse_duration(backoff)
    if backoff_max is not None:
        restart_spec["backoff_max"] = parse_duration(backoff_max)
    return {
        "name": name,
        "ports": [parse_port(spec, i) for i, spec in enumerate(ports)],
        "readiness": {**probe, "path": ready_path} if ready_path else None,
        "liveness": {**probe, "path": live_path} if live_path else None,
        "image_healthcheck": healthcheck,
        "restart": restart_spec,
    }


async def until_ready(client: NodeClient, exec_id: str, *, print_id: bool) -> int:
    """Wait until the service is ready (exit 0, its id on stdout) or has ended (why on stderr, exit 1)."""
    readiness = await client.wait_ready(exec_id)
    if print_id and readiness.ready:
        sys.stdout.write(exec_id + "\n")
    if readiness.ready:
        return 0
    _say(f"{exec_id} is {readiness.state.value}: {readiness.message}")
    return 1


async def call_gateway(
    client: NodeClient,
    target: str,
    *,
    gateway: str | None,
    token: str | None,
    path: str,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: float | None,  # noqa: ASYNC109 - the HTTP request's own timeout, handed to aiohttp
) -> int:
    """One HTTP request to a service through the node's gateway; its body to stdout on a 2xx (exit 0),
    else the status and body to stderr (exit 1). ``target`` is an execution id, else a service name."""
    import aiohttp  # only this command needs it

    base = gateway or (await client.node_info()).gateway_address
    if not base:
        _say("the node runs no HTTP gateway ([services] gateway_listen); or give its address with --gateway")
        return 1
    if not base.startswith(("http://", "https://")):
        base = f"http://{base}"
    try:
        await client.get_execution(target)
        route = f"/exec/{target}"
    except NodeError as exc:
        if exc.code is not grpc.StatusCode.NOT_FOUND:
            raise
        route = f"/svc/{target}"
    url = f"{base.rstrip('/')}{route}/{path.lstrip('/')}"
    sent = dict(headers)
    if token:
        sent.setdefault("Authorization", f"Bearer {token}")
    try:
        async with (
            aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.request(method, url, data=body, headers=sent, allow_redirects=False) as resp,
        ):
            ok = 200 <= resp.status < 300
            out = sys.stdout.buffer if ok else sys.stderr.buffer
            if not ok:
                _say(f"{method} {url}: {resp.status} {resp.reason or ''}".rstrip())
            async for chunk in resp.content.iter_chunked(64 * 1024):
                out.write(chunk)
                out.flush()
            return 0 if ok else 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        _say(f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": "))
        return 1


def read_body(body: str | None) -> bytes | None:
    """The request body: ``@FILE`` (``@-``: stdin), or the text itself."""
    if body is None:
        return None
    if body.startswith("@"):
        name = body[1:]
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    return body.encode()
