"""The node's HTTP gateway to its services: a streaming reverse proxy (aiohttp, server and client).

``/exec/{execution_id}/{path}`` goes to that execution; ``/svc/{service_name}/{path}`` to one of the
ready executions of that service name, in turn (round-robin); Racetrack's ``/pub/job/{name}/{version}/{path}``
to the ready executions of that job (a job type's service) and version, ``latest`` the newest ready one.
The request goes to the service's routed
port (its readiness probe's port, else its first) on the address the node published it on, with its
method, query, headers (less hop-by-hop ones and the node's own token) and body; the answer comes back
as it is. Bodies stream both ways: nothing is held whole in memory.

When the node has a token, every request must carry it (``Authorization: Bearer <token>``). Errors are
JSON ``{"error": ..., "status": ...}``: 401 without the token, 404 for an execution or service the node
does not know, 503 when none is ready, 502 when the service does not answer (refused, reset), 504 when it
is silent past the timeouts. A request that could not connect to one execution of a service is tried on
the next ready one (nothing was sent yet), so stopping one replica loses no request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from haddock.executor.jobspec import semver_key
from haddock.executor.records import ExecutionState
from haddock.executor.servicespec import ServicePort

if TYPE_CHECKING:
    from haddock.node.config import ServicesSettings
    from haddock.node.service import Node

__all__ = ["Gateway", "Target"]

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)
_ANY = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class Target:
    execution_id: str
    host: str
    port: int

    def url(self, path: str, query: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/{path}" + (f"?{query}" if query else "")


class _Refusal(Exception):
    def __init__(self, status: int, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def _json_error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": message, "status": status, **extra}, status=status)


def _routed_port(ports: tuple[ServicePort, ...] | list[ServicePort], probe_port: str | None) -> ServicePort | None:
    if probe_port is not None:
        for p in ports:
            if p.name == probe_port:
                return p
    return ports[0] if ports else None


class _NextTarget(Exception):
    """Nothing was sent to this execution: the next one may answer (the message says why not this one)."""


class Gateway:
    """Routes HTTP to the node's ready services. :meth:`start` binds; :meth:`stop` closes."""

    def __init__(self, node: Node, settings: ServicesSettings, *, token: str | None) -> None:
        self.node = node
        self.settings = settings
        self._token = token.encode() if token else None
        self._turns: dict[str, itertools.count[int]] = {}
        self._in_flight: collections.Counter[str] = collections.Counter()  # requests being proxied, by execution
        self._draining: set[str] = set()  # executions being stopped: no new request goes to them
        self._drained = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._unregister: Callable[[], None] | None = None  # the drain's before-stop hook, while serving
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.gateway_connect_timeout, sock_read=settings.gateway_read_timeout
        )
        self.address = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self, listen: str) -> str:
        """Serve on ``listen``; from now on a cancelled service is drained (:meth:`drain`) before it stops."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/exec/{execution_id}", self._exec)
        app.router.add_route("*", "/exec/{execution_id}/{path:.*}", self._exec)
        app.router.add_route("*", "/svc/{name}", self._svc)
        app.router.add_route("*", "/svc/{name}/{path:.*}", self._svc)
        app.router.add_route("*", "/pub/job/{name}/{version}", self._job)
        app.router.add_route("*", "/pub/job/{name}/{version}/{path:.*}", self._job)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            auto_decompress=False,  # bytes pass through as the service sent them
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port), reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise RuntimeError(f"the gateway cannot listen on {listen}: {exc.strerror or exc}") from exc
        server = getattr(site, "_server", None)
        bound = server.sockets[0].getsockname() if server is not None and server.sockets else (host, int(port))
        self.address = f"{host}:{bound[1]}"
        # A cancelled service stops taking requests and those in flight end (within gateway_drain); then it stops.
        self._unregister = self.node.executor.add_before_stop(
            self.drain, name="gateway drain", timeout=self.settings.gateway_drain + 1.0
        )
        log.info("gateway serving", extra={"address": self.address, "auth": self._token is not None})
        return self.address

    async def stop(self) -> None:
        if self._unregister is not None:
            self._unregister()
            self._unregister = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ routing

    def targets_for_execution(self, execution_id: str) -> list[Target]:
        """The execution's routed port if it is ready. Raises _Refusal (404, 503)."""
        held = self.node.ports.get(execution_id)
        if held is None:
            record = self.node.live_record(execution_id)
            if record is None or not record.request.is_service:
                message = f"no service execution {execution_id!r} runs on this node"
                raise _Refusal(404, message, execution_id=execution_id)
            if record.state.terminal:
                message = f"execution {execution_id!r} has ended (state: {record.state.value})"
                raise _Refusal(503, message, execution_id=execution_id, state=record.state.value)
            raise _Refusal(
                503, f"execution {execution_id!r} publishes no ports on this node", execution_id=execution_id
            )
        target = self._ready_target(held.execution_id, held.ports)
        if target is None:
            record = self.node.live_record(execution_id)
            state = record.state.value if record is not None else "unknown"
            raise _Refusal(
                503, f"execution {execution_id!r} is not ready (state: {state})", execution_id=execution_id, state=state
            )
        return [target]

    def targets_for_service(self, name: str) -> list[Target]:
        """The ready executions of the service name, starting with the next one's turn. Raises _Refusal."""
        held = sorted(self.node.ports.by_name(name), key=lambda a: a.execution_id)
        if not held:
            raise _Refusal(404, f"no service named {name!r} runs on this node", service=name)
        ready = [t for a in held if (t := self._ready_target(a.execution_id, a.ports)) is not None]
        if not ready:
            raise _Refusal(503, f"no execution of service {name!r} is ready ({len(held)} not ready)", service=name)
        turn = next(self._turns.setdefault(name, itertools.count())) % len(ready)
        return ready[turn:] + ready[:turn]

    def targets_for_job(self, name: str, version: str) -> list[Target]:
        """Racetrack's /pub/job/{name}/{version}: the ready executions of that job and version; ``latest``
        the newest ready version (SemVer order). Raises _Refusal (404, 503)."""
        jobs = []
        for held in self.node.ports.by_name(name):
            record = self.node.live_record(held.execution_id)
            if record is not None and record.request.job is not None:
                jobs.append((record.request.job.manifest.version, held))
        if not jobs:
            raise _Refusal(404, f"no job named {name!r} runs on this node", job=name)
        ready = [(v, t) for v, a in jobs if (t := self._ready_target(a.execution_id, a.ports)) is not None]
        if version == "latest":
            if not ready:
                raise _Refusal(503, f"no version of job {name!r} is ready", job=name)
            newest = max((v for v, _ in ready), key=semver_key)
            chosen = [t for v, t in ready if v == newest]
        else:
            if not any(v == version for v, _ in jobs):
                raise _Refusal(404, f"job {name!r} has no version {version!r} on this node", job=name)
            chosen = [t for v, t in ready if v == version]
            if not chosen:
                raise _Refusal(503, f"version {version} of job {name!r} is not ready", job=name)
        chosen.sort(key=lambda t: t.execution_id)
        turn = next(self._turns.setdefault(f"job:{name}:{version}", itertools.count())) % len(chosen)
        return chosen[turn:] + chosen[:turn]

    def _ready_target(self, execution_id: str, ports: tuple[ServicePort, ...]) -> Target | None:
        if execution_id in self._draining:
            return None
        record = self.node.live_record(execution_id)
        if record is None or record.state is not ExecutionState.READY or record.request.service is None:
            return None
        probe = record.request.service.readiness
        port = _routed_port(ports, probe.port if probe is not None else None)
        if port is None or port.host_port is None:
            return None
        host = port.host_ip or "127.0.0.1"
        return Target(execution_id, "127.0.0.1" if host in _ANY else host, port.host_port)

    # ------------------------------------------------------------------ handlers

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, lambda: self.targets_for_execution(request.match_info["execution_id"]))

    async def _svc(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, lambda: self.targets_for_service(request.match_info["name"]))

    async def _job(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self._route(request, lambda: self.targets_for_job(info["name"], info["version"]))

    async def _route(self, request: web.Request, choose: Any) -> web.StreamResponse:
        if not self._authorized(request):
            resp = _json_error(401, "this gateway needs the node's token: Authorization: Bearer <token>")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="haddock"'
            return resp
        try:
            targets: list[Target] = choose()
        except _Refusal as exc:
            return _json_error(exc.status, exc.message, **exc.extra)
        return await self._proxy(request, targets)

    async def _proxy(self, request: web.Request, targets: list[Target]) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if self._token is not None:
            headers.pop("Authorization", None)  # the node's token is not the service's business
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        path = request.match_info.get("path", "")
        body = request.content if request.body_exists else None
        last_error = ""
        for target in targets:
            self._in_flight[target.execution_id] += 1
            try:
                return await self._attempt(request, target, headers, path, body)
            except _NextTarget as exc:
                last_error = str(exc)
            finally:
                self._in_flight[target.execution_id] -= 1
                if not self._in_flight[target.execution_id]:
                    del self._in_flight[target.execution_id]
                    async with self._drained:
                        self._drained.notify_all()
        return _json_error(502, last_error or "no execution answered")

    async def _attempt(
        self, request: web.Request, target: Target, headers: dict[str, str], path: str, body: Any
    ) -> web.StreamResponse:
        """One try at one execution; _NextTarget when nothing was sent and the next one may answer."""
        assert self._session is not None
        try:
            upstream = await self._session.request(
                request.method,
                target.url(path, request.query_string),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=self._timeout,
            )
        except aiohttp.ClientConnectorError as exc:
            # Nothing was sent: the next ready execution of the service may answer.
            raise _NextTarget(
                f"execution {target.execution_id!r} refused the connection ({exc.os_error or exc})"
            ) from None
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                what = f"did not accept the connection within {self.settings.gateway_connect_timeout:g}s"
            else:
                what = f"did not answer within {self.settings.gateway_read_timeout:g}s"
            return _json_error(504, f"execution {target.execution_id!r} {what}", execution_id=target.execution_id)
        except aiohttp.ClientError as exc:
            return _json_error(
                502,
                f"execution {target.execution_id!r} failed the request: {exc}",
                execution_id=target.execution_id,
            )
        try:
            return await self._relay(request, upstream, target)
        finally:
            upstream.release()

    async def drain(self, execution_id: str) -> None:
        """Route nothing more to the execution (it is being stopped) and wait, at most
        ``gateway_drain``, for the requests in flight to it to end."""
        for ended in [e for e in self._draining if self.node.live_record(e) is None]:
            self._draining.discard(ended)  # bounded: executions that are over are forgotten
        self._draining.add(execution_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.gateway_drain):
                async with self._drained:
                    await self._drained.wait_for(lambda: not self._in_flight[execution_id])

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, target: Target
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                response.headers.add(key, value)
        if upstream.content_length is not None and "Content-Length" in upstream.headers:
            response.content_length = upstream.content_length
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except (aiohttp.ClientError, TimeoutError, ConnectionResetError, asyncio.IncompleteReadError) as exc:
            log.info("gateway: relaying from %s broke off: %s", target.execution_id, exc)
            if request.transport is not None:
                request.transport.close()
        return response
