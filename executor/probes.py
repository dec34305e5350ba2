"""A service's health probes, whatever the engine: HTTP GET on a published port, or the image's own HEALTHCHECK.

An HTTP probe passes on a 2xx or 3xx answer within its timeout; anything else fails with a reason a person
reads ("GET http://127.0.0.1:30001/ready: 503 Service Unavailable", "... connection refused"). The node
probes the port it published (on the service's host address; an any-address is probed on loopback), so the
probe sees what the gateway and clients see.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from haddock.executor.driver import ContainerHandle
from haddock.executor.servicespec import HttpProbe, ServiceSpec

if TYPE_CHECKING:  # aiohttp is loaded by the first probe, not by every node that runs no service
    import aiohttp

__all__ = ["ProbeResult", "Prober", "probe_url"]

_ANY = {"0.0.0.0", "::", ""}
MAX_LIVE_BODY = 64 * 1024  # what is read of a job's /live answer


def _other_deployment(body: bytes, expected: int) -> str:
    """Why a job's /live answer is not from the deployment with timestamp ``expected`` ("" when it is)."""
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return "the answer is not the JSON object a job's /live gives (with its deployment_timestamp)"
    if not isinstance(data, dict) or "deployment_timestamp" not in data:
        return "the answer has no deployment_timestamp"
    seen = data["deployment_timestamp"]
    if isinstance(seen, bool) or not isinstance(seen, int | str) or str(seen) != str(expected):
        shown = str(seen)[:40] if isinstance(seen, int | str) else repr(seen)[:40]
        return (
            f"it reports deployment_timestamp {shown}, not this deployment's {expected} "
            "(JOB_DEPLOYMENT_TIMESTAMP): an older container of the job answers"
        )
    return ""


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # what was seen, e.g. "200 OK" or "connection refused"
    final: bool = False  # no later probe can pass (the image has no HEALTHCHECK): the service cannot run


def probe_url(spec: ServiceSpec, probe: HttpProbe) -> str | None:
    """Where ``probe`` goes: the published address of its port (None while the port is not published)."""
    port = spec.port(probe.port)
    if port is None or port.host_port is None:
        return None
    host = port.host_ip or "127.0.0.1"
    if host in _ANY:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port.host_port}{probe.path}"


class Prober:
    """Runs a service's probes; one HTTP session for all of them (closed with :meth:`close`)."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            # No keep-alive: each probe is a fresh connection, as a new client's would be.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0), trust_env=False
            )
        return self._session

    async def http(self, probe: HttpProbe, *, deployment_timestamp: int | None = None) -> ProbeResult:
        """GET the probe's URL. With ``deployment_timestamp`` (a job's liveness, Racetrack's contract), a
        passing answer must also be a JSON object whose ``deployment_timestamp`` is that one: another value
        is an older container of the job answering, which is not this deployment alive."""
        import aiohttp

        url = probe_url(self.spec, probe)
        if url is None:
            return ProbeResult(False, f"port {probe.port or 'of the service'} is not published")
        try:
            async with self._client().get(
                url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=probe.timeout),
                headers={"User-Agent": "haddock-probe"},
            ) as resp:
                detail = f"GET {url}: {resp.status} {resp.reason or ''}".rstrip()
                ok = 200 <= resp.status < 400
                if ok and deployment_timestamp is not None:
                    why = _other_deployment(await resp.content.read(MAX_LIVE_BODY), deployment_timestamp)
                    if why:
                        return ProbeResult(False, f"{detail}, but {why}")
                return ProbeResult(ok, detail)
        except TimeoutError:
            return ProbeResult(False, f"GET {url}: no answer within {probe.timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                reason = "connection refused"
            else:
                reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
            return ProbeResult(False, f"GET {url}: {reason}")
        except aiohttp.ServerDisconnectedError:
            return ProbeResult(False, f"GET {url}: the connection was closed without an answer")
        except aiohttp.ClientOSError as exc:
            if isinstance(exc.__cause__, ConnectionResetError) or exc.errno == errno.ECONNRESET:
                return ProbeResult(False, f"GET {url}: the connection was reset")
            return ProbeResult(False, f"GET {url}: {exc.strerror or exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return ProbeResult(False, f"GET {url}: {type(exc).__name__}: {exc}".rstrip(": "))

    async def image(self, handle: ContainerHandle) -> ProbeResult | None:
        """The image's HEALTHCHECK: None while it is starting, else passed or failed; a final failure when the
        container has no health status at all (its image has no HEALTHCHECK, or ``HEALTHCHECK NONE``)."""
        try:
            status = await handle.health()
        except Exception as exc:
            return ProbeResult(False, f"the engine's health status is unavailable: {exc}")
        if status is None:
            return ProbeResult(False, "its image has no HEALTHCHECK", final=True)
        if status == "starting":
            return None
        return ProbeResult(status == "healthy", f"the image's HEALTHCHECK reports {status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)
