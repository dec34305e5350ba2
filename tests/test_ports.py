"""Host ports for services: allocated and released exactly once (pure, no engine)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haddock.executor.errors import ExecutionAlreadyStarted, ExecutionRefused
from haddock.executor.request import RunCommandRequest
from haddock.executor.servicespec import RestartSpec
from haddock.node.capacity import CapacityExhausted
from haddock.node.ports import PortAllocator


def svc(exec_id: str, *ports: dict[str, Any]) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "j",
            "execution_id": exec_id,
            "engine": {"image": "busybox"},
            "network": {"mode": "bridge"},
            "kind": "service",
            "service": {"ports": list(ports) or [{"container_port": 8080}]},
        }
    )


def allocator(start: int = 40000, end: int = 40002) -> PortAllocator:
    return PortAllocator(start, end, "127.0.0.1", probe_host=False)


def test_allocate_fills_in_host_ports_and_release_gives_them_back() -> None:
    ports = allocator()
    a = ports.allocate(svc("a", {"name": "http", "container_port": 80}, {"name": "admin", "container_port": 81}))
    assert a.service is not None
    assert [(p.host_port, p.host_ip) for p in a.service.ports] == [(40000, "127.0.0.1"), (40001, "127.0.0.1")]
    b = ports.allocate(svc("b"))
    assert b.service is not None and b.service.ports[0].host_port == 40002
    with pytest.raises(CapacityExhausted, match="no free port for services: all 3 of 40000-40002 are in use"):
        ports.allocate(svc("c"))
    assert "c" not in {h.execution_id for h in ports.holders()}
    ports.release("a")
    ports.release("a")  # idempotent
    assert ports.in_use == 1
    c = ports.allocate(svc("c"))
    assert c.service is not None and c.service.ports[0].host_port == 40000  # the lowest free, used again


def test_asked_for_ports_must_be_in_the_range_and_free() -> None:
    ports = allocator()
    with pytest.raises(ExecutionRefused, match="outside this node's range for services, 40000-40002"):
        ports.allocate(svc("a", {"container_port": 80, "host_port": 39999}))
    got = ports.allocate(svc("a", {"container_port": 80, "host_port": 40001}))
    assert got.service is not None and got.service.ports[0].host_port == 40001
    with pytest.raises(CapacityExhausted, match="host port 40001 is in use"):
        ports.allocate(svc("b", {"container_port": 80, "host_port": 40001}))
    assert ports.refusal(svc("b", {"container_port": 80, "host_port": 40001})) == (
        "host port 40001 is in use (by execution a)"
    )
    with pytest.raises(ExecutionAlreadyStarted):
        ports.allocate(svc("a"))


def test_restore_holds_what_a_request_records() -> None:
    ports = allocator()
    placed = allocator().allocate(svc("a"))
    ports.restore(placed)
    assert ports.in_use == 1 and ports.by_name("x") == []
    nxt = ports.allocate(svc("b"))
    assert nxt.service is not None and nxt.service.ports[0].host_port == 40001


def test_a_batch_request_holds_no_ports() -> None:
    ports = allocator()
    batch = RunCommandRequest.model_validate({"job_id": "j", "execution_id": "b", "engine": {"image": "busybox"}})
    assert ports.allocate(batch) is batch and ports.in_use == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=60))
def test_no_port_is_ever_held_twice_and_release_returns_exactly_what_was_held(ops: list[tuple[bool, int]]) -> None:
    ports = allocator(50000, 50004)
    held: dict[str, int] = {}
    for allocate, n in ops:
        exec_id = f"e{n}"
        if allocate:
            try:
                got = ports.allocate(svc(exec_id))
            except (CapacityExhausted, ExecutionAlreadyStarted):
                assert exec_id in held or len(held) == 5
                continue
            assert got.service is not None and got.service.ports[0].host_port is not None
            held[exec_id] = got.service.ports[0].host_port
        else:
            ports.release(exec_id)
            held.pop(exec_id, None)
        assert len(set(held.values())) == len(held) == ports.in_use
        assert all(50000 <= p <= 50004 for p in held.values())


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    spec = RestartSpec(backoff_initial=0.5, backoff_max=3)
    assert [spec.backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"ports": [{"container_port": 80}, {"container_port": 80, "name": "b"}]}, "published once"),
        ({"ports": [{"container_port": 80}, {"container_port": 81}]}, "port names must be unique"),
        ({"readiness": {"path": "/"}}, "an HTTP probe needs a port"),
        ({"ports": [{"container_port": 80}], "readiness": {"port": "web"}}, "is not one of the service's ports"),
        ({"ports": [{"container_port": 80, "protocol": "udp"}]}, "only tcp"),
        ({"ports": [{"container_port": 70000}]}, "between 1 and 65535"),
        ({"restart": {"max_restarts": -1}}, "max_restarts must be between"),
        ({"name": "bad name"}, "service name 'bad name'"),
    ],
)
def test_bad_service_specs_say_what_is_wrong(service: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunCommandRequest.model_validate(
            {"job_id": "j", "execution_id": "e", "engine": {"image": "busybox"}, "kind": "service", "service": service}
        )


def test_a_batch_execution_has_no_service_spec() -> None:
    with pytest.raises(ValueError, match="only a service execution"):
        RunCommandRequest.model_validate(
            {"job_id": "j", "execution_id": "e", "engine": {"image": "busybox"}, "service": {}}
        )


def test_services_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from haddock.node.config import ServicesSettings, load_settings

    monkeypatch.setenv("HADDOCK_SERVICES__PORT_RANGE", "41000-41009")
    monkeypatch.setenv("HADDOCK_SERVICES__GATEWAY_LISTEN", "127.0.0.1:7480")
    services = load_settings().services
    assert services.ports == (41000, 41009) and services.gateway_listen == "127.0.0.1:7480"
    assert services.publish_address == "127.0.0.1"
    for bad, message in (
        ({"port_range": "9-8"}, "first <= last"),
        ({"port_range": "30000"}, "FIRST-LAST"),
        ({"publish_address": "localhost"}, "must be an IP address"),
        ({"gateway_listen": "7480"}, "HOST:PORT"),
    ):
        with pytest.raises(ValidationError, match=message):
            ServicesSettings.model_validate(bad)
