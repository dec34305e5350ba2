"""Host ports for services: a node capacity, allocated and released exactly once by the node.

A service's ports are published on the operator's address (``[services] publish_address``) and on host
ports from the operator's range (``[services] port_range``). The node chooses them when it accepts the
execution, before it is queued or run, and writes them into the execution's request (``host_port``,
``host_ip``), so they are recorded with the execution and survive a restart of the node (:meth:`restore`).
A requester may ask for a particular host port: one outside the range is refused, one in use too.

Allocation and release happen on the event loop with no ``await`` in between, so two services never get
the same port; :meth:`release` is idempotent. A port some other program on the host holds is skipped
(a test bind on the publish address).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from dataclasses import dataclass

from haddock.executor.errors import ExecutionAlreadyStarted, ExecutionRefused
from haddock.executor.request import RunCommandRequest
from haddock.executor.servicespec import ServicePort
from haddock.node.capacity import CapacityExhausted

__all__ = ["Allocation", "PortAllocator"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Allocation:
    """What one service execution holds."""

    execution_id: str
    service_name: str | None
    ports: tuple[ServicePort, ...]


class PortAllocator:
    """The node's books of host ports in ``[start, end]`` on ``address``."""

    def __init__(self, start: int, end: int, address: str, *, probe_host: bool = True) -> None:
        if not 1 <= start <= end <= 65535:
            raise ValueError(f"port range {start}-{end} must be within 1-65535, start <= end")
        self.start = start
        self.end = end
        self.address = address
        self._probe_host = probe_host
        self._held: dict[str, Allocation] = {}
        self._used: dict[int, str] = {}  # host port -> execution id

    # ------------------------------------------------------------------ questions

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def in_use(self) -> int:
        return len(self._used)

    def holders(self) -> list[Allocation]:
        return list(self._held.values())

    def get(self, execution_id: str) -> Allocation | None:
        return self._held.get(execution_id)

    def by_name(self, name: str) -> list[Allocation]:
        return [a for a in self._held.values() if a.service_name == name]

    def refusal(self, request: RunCommandRequest, *, usage: bool = True) -> str | None:
        """Why the node would refuse the request's ports (None: it would not). ``usage``: also whether
        enough ports are free now (the resource question), not only whether it ever could."""
        if request.service is None or not request.service.ports:
            return None
        for port in request.service.ports:
            if port.host_port is not None and not self.start <= port.host_port <= self.end:
                return (
                    f"host port {port.host_port} (port {port.name!r}) is outside this node's range for services, "
                    f"{self.start}-{self.end}"
                )
        wanted = len(request.service.ports)
        if wanted > self.size:
            return f"the service needs {wanted} ports; this node has {self.size} for services"
        if not usage:
            return None
        for port in request.service.ports:
            holder = self._used.get(port.host_port or 0)
            if holder is not None:
                return f"host port {port.host_port} is in use (by execution {holder})"
        free = self.size - len(self._used)
        if wanted > free:
            return (
                f"insufficient ports: the service needs {wanted}, {free} of this node's {self.size} "
                f"({self.start}-{self.end}) are free"
            )
        return None

    # ------------------------------------------------------------------ allocate and release

    def allocate(self, request: RunCommandRequest) -> RunCommandRequest:
        """The request with its ports published: host ports from the range, on the node's address.

        Raises ExecutionRefused for a host port outside the range, CapacityExhausted when the range has
        no free port (or an asked-for one is in use), ExecutionAlreadyStarted when the id holds ports.
        """
        spec = request.service
        if spec is None or not spec.ports:
            return request
        exec_id = request.execution_id
        if exec_id in self._held:
            raise ExecutionAlreadyStarted(exec_id)
        refusal = self.refusal(request, usage=False)
        if refusal is not None:
            raise ExecutionRefused(refusal)
        chosen: list[ServicePort] = []
        taken: set[int] = set()
        for port in spec.ports:
            if port.host_port is not None:
                holder = self._used.get(port.host_port)
                if holder is not None or port.host_port in taken:
                    raise CapacityExhausted(f"host port {port.host_port} is in use (by execution {holder or exec_id})")
                number = port.host_port
            else:
                found = self._find_free(taken | {p.host_port for p in spec.ports if p.host_port is not None})
                if found is None:
                    raise CapacityExhausted(
                        f"no free port for services: all {self.size} of {self.start}-{self.end} are in use"
                    )
                number = found
            taken.add(number)
            chosen.append(port.model_copy(update={"host_port": number, "host_ip": self.address}))
        self._hold(exec_id, spec.name, chosen)
        service = spec.model_copy(update={"ports": chosen})
        return request.model_copy(update={"service": service})

    def restore(self, request: RunCommandRequest) -> None:
        """After a restart of the node: hold again the ports an unfinished execution's request records."""
        spec = request.service
        if spec is None or not spec.ports or request.execution_id in self._held:
            return
        ports = [p for p in spec.ports if p.host_port is not None]
        for p in ports:
            assert p.host_port is not None
            holder = self._used.get(p.host_port)
            if holder is not None:
                log.warning("execution %s and %s both hold host port %d", request.execution_id, holder, p.host_port)
            if not self.start <= p.host_port <= self.end:
                log.warning("execution %s holds host port %d, outside the range now", request.execution_id, p.host_port)
        self._hold(request.execution_id, spec.name, ports)

    def release(self, execution_id: str) -> None:
        """Give the execution's ports back. Idempotent."""
        held = self._held.pop(execution_id, None)
        if held is None:
            return
        for p in held.ports:
            if p.host_port is not None and self._used.get(p.host_port) == execution_id:
                del self._used[p.host_port]
        log.debug("ports of %s released", execution_id)

    # ------------------------------------------------------------------ internals

    def _hold(self, execution_id: str, name: str | None, ports: list[ServicePort]) -> None:
        self._held[execution_id] = Allocation(execution_id, name, tuple(ports))
        for p in ports:
            if p.host_port is not None:
                self._used.setdefault(p.host_port, execution_id)

    def _find_free(self, exclude: set[int]) -> int | None:
        """The lowest free port of the range (a released one is used again), skipping ones the host uses."""
        for port in range(self.start, self.end + 1):
            if port in self._used or port in exclude:
                continue
            if self._probe_host and self._busy_on_host(port):
                continue
            return port
        return None

    def _busy_on_host(self, port: int) -> bool:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as sock:
            # As a server binds (docker-proxy does): closed connections in TIME_WAIT do not count, a listener does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    log.info("host port %d is used by another program; skipped", port)
                    return True
                return False  # e.g. the address is not local: the engine will say
        return False
