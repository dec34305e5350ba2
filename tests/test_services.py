"""Service executions on a real engine and a real node: published ports, probes, restarts, the gateway.

Probe intervals, start periods and backoffs are short here so that the whole file stays fast.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
import grpc
import pytest

from haddock.executor.records import EventKind, ExecutionState, ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient, NodeError
from haddock.node.config import ServicesSettings
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, TelemetryCapture, node_settings
from tests.test_cli import haddock

# A web server on 8080 serving a page that names its execution, and /health for liveness.
WEB = (
    "mkdir -p /www && echo page-$HADDOCK_EXECUTION_ID > /www/index.html && echo ok > /www/health && "
    "exec httpd -f -p 8080 -h /www"
)
FAST_PROBE = {"path": "/", "interval": "100ms", "timeout": "1s", "start_period": "10s"}


def port_block(size: int) -> tuple[int, int]:
    """A range of host ports unlikely to be another test run's (the node also skips ports in use)."""
    start = random.randrange(40000, 60000 - size)
    return start, start + size - 1


NodeFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def service_node(
    tmp_path: Path, node_id: str, busybox_image: str, telemetry: TelemetryCapture
) -> AsyncIterator[NodeFactory]:
    """Start a node with a gateway and a small port range (``ports`` of them)."""
    started: list[RunningServer] = []

    async def make(ports: int = 4, **kw: Any) -> RunningServer:
        services = ServicesSettings(port_range=port_block(ports), gateway_listen="127.0.0.1:0", **kw)
        running = await start_server(node_settings(tmp_path / f"n{len(started)}", node_id, services=services))
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop(1)


def service(script: str = WEB, *, name: str | None = None, **spec: Any) -> RunCommandRequest:
    spec.setdefault("ports", [{"container_port": 8080}])
    spec.setdefault("readiness", FAST_PROBE)
    return RunCommandRequest.model_validate(
        {
            "job_id": "svc",
            "execution_id": f"s-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            "network": {"mode": spec.pop("network", "bridge")},
            "kind": "service",
            "service": {"name": name, **spec},
        }
    )


async def get(url: str, **kw: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as resp:
        return resp.status, await resp.text()


async def published_port(client: NodeClient, exec_id: str) -> int:
    described = await client.describe(exec_id)
    return int(described["request"]["service"]["ports"][0]["host_port"])


async def events(client: NodeClient, exec_id: str) -> list[dict[str, Any]]:
    return list((await client.describe(exec_id))["events"])


# ----------------------------------------------------------------------------- acceptance


async def test_service_ready_published_and_through_the_gateway_then_cancelled_and_its_port_reused(
    service_node: NodeFactory,
) -> None:
    node = await service_node(ports=2)
    gw = f"http://{node.node.gateway_address}"
    done = await haddock(
        "run",
        "--node",
        node.address,
        "--service",
        "--port",
        "8080",
        "--ready-path",
        "/",
        "--probe-interval",
        "100ms",
        "--name",
        "web",
        "--detach",
        BUSYBOX,
        "--",
        "sh",
        "-c",
        WEB,
        limit=60,
    )
    assert done.code == 0, done.stderr
    exec_id = done.stdout.strip()
    async with NodeClient(node.address) as client:
        assert (await client.get_execution(exec_id)).state == 9  # EXECUTION_STATE_READY
        port = await published_port(client, exec_id)
        low, high = node.node.ports.start, node.node.ports.end
        assert low <= port <= high
        page = f"page-{exec_id}\n"
        assert await get(f"http://127.0.0.1:{port}/") == (200, page)
        assert await get(f"{gw}/exec/{exec_id}/") == (200, page)
        assert await get(f"{gw}/svc/web/") == (200, page)
        assert await get(f"{gw}/svc/web/index.html?x=1") == (200, page)

        called = await haddock("call", "--node", node.address, exec_id)
        assert (called.code, called.stdout) == (0, page), called.stderr
        called = await haddock("call", "--node", node.address, "web", "--path", "/missing")
        assert called.code == 1 and "404" in called.stderr

        listed = await haddock("ls", "--node", node.address)
        assert f"127.0.0.1:{port}->8080/tcp" in listed.stdout
        info = await client.node_info()
        assert [(s.execution_id, s.name, s.state) for s in info.services] == [(exec_id, "web", ExecutionState.READY)]
        assert info.ports_in_use == 1 and info.gateway_address == node.node.gateway_address
        shown = await haddock("node", "info", "--node", node.address)
        assert f"127.0.0.1:{port}->8080/tcp" in shown.stdout

        loop = asyncio.get_running_loop()
        began = loop.time()
        cancelled = await haddock("cancel", "--node", node.address, exec_id)
        assert cancelled.code == 0 and "cancelled" in cancelled.stdout
        assert loop.time() - began < 2 + 5  # the stop grace (2s), and the CLI's own start
        assert node.node.ports.in_use == 0
        listed = await haddock("ls", "--node", node.address)
        assert f"127.0.0.1:{port}->8080/tcp" not in listed.stdout  # an ended service holds no port
        status, body = await get(f"{gw}/exec/{exec_id}/")
        assert status == 503 and "has ended (state: cancelled)" in body
        status, body = await get(f"{gw}/exec/nothing-here/")
        assert status == 404 and "no service execution 'nothing-here'" in body

        second = service(name="web")
        await client.start(second)
        assert (await client.wait_ready(second.execution_id)).ready
        assert await published_port(client, second.execution_id) == port  # the freed port, used again
        await client.cancel(second.execution_id)


async def test_a_service_never_ready_ends_in_error_with_the_probes_last_failure(service_node: NodeFactory) -> None:
    node = await service_node()
    request = service("sleep 60", readiness={**FAST_PROBE, "start_period": "1s"})
    async with NodeClient(node.address) as client:
        await client.start(request)
        readiness = await client.wait_ready(request.execution_id)
        assert readiness.state is ExecutionState.FAILED
        done = await client.wait(request.execution_id)
    assert done.result.status is ResultStatus.ERROR
    message = done.result.error_message
    assert "did not become ready within its start period of 1s" in message
    assert "; last readiness probe: GET http://127.0.0.1:" in message
    assert any(why in message for why in ("connection refused", "was reset", "closed without an answer")), message
    assert node.node.ports.in_use == 0


async def test_on_failure_restarts_up_to_the_limit_then_error(service_node: NodeFactory) -> None:
    node = await service_node()
    request = service(
        "echo run; exit 1",
        ports=[],
        readiness=None,
        restart={"policy": "on-failure", "max_restarts": 2, "backoff_initial": "50ms"},
        network="none",
    )
    async with NodeClient(node.address) as client:
        await client.start(request)
        done = await client.wait(request.execution_id)
        described = await client.describe(request.execution_id)
    assert done.result.status is ResultStatus.ERROR and done.result.exit_code == 1
    assert "exited with code 1" in done.result.error_message
    assert "restarted 2 times" in done.result.error_message
    kinds = [e["kind"] for e in described["events"]]
    assert kinds.count("started") == 3 and kinds.count("restarting") == 2 and kinds.count("exited") == 3
    assert described["attempts"] == 3
    states = [e["details"]["state"] for e in described["events"] if e["kind"] == "state"]
    assert states.count("restarting") == 2 and states[-1] == "failed"
    stdout = done.result.stdout.splitlines()
    assert stdout[0] == "run" and stdout.count("run") == 3
    assert [line for line in stdout if line.startswith("--- haddock: restart")] == [
        "--- haddock: restart 1, attempt 2: exited with code 1 ---",
        "--- haddock: restart 2, attempt 3: exited with code 1 ---",
    ]
    assert Path(done.results_dir, "exitCode").read_text() == "1"
    # the markers are in both streams, so that a reader of either sees where an attempt begins
    assert [line for line in done.result.stderr.splitlines() if line.startswith("--- haddock: restart")] == [
        "--- haddock: restart 1, attempt 2: exited with code 1 ---",
        "--- haddock: restart 2, attempt 3: exited with code 1 ---",
    ]


async def test_an_out_of_memory_kill_is_the_reason_of_the_restart(service_node: NodeFactory) -> None:
    node = await service_node()
    request = service(
        "a=xxxxxxxxxxxxxxxx; while true; do a=$a$a; done",
        ports=[],
        readiness=None,
        restart={"policy": "on-failure", "max_restarts": 1, "backoff_initial": "50ms"},
        network="none",
    )
    request = request.model_copy(update={"resources": request.resources.model_copy(update={"memory": 32 * 1024**2})})
    async with NodeClient(node.address) as client:
        await client.start(request)
        done = await client.wait(request.execution_id)
        described = await client.describe(request.execution_id)
    assert done.result.status is ResultStatus.KILLED, done.result
    assert "ran out of memory (its limit is 32Mi)" in done.result.error_message
    restarting = [e for e in described["events"] if e["kind"] == "state" and e["details"]["state"] == "restarting"]
    assert len(restarting) == 1 and "ran out of memory (its limit is 32Mi)" in restarting[0]["message"], restarting


async def test_run_no_wait_then_wait_ready_then_cancel(service_node: NodeFactory) -> None:
    node = await service_node()
    done = await haddock(
        "run", "--node", node.address, "--service", "--port", "8080", "--ready-path", "/",
        "--probe-interval", "100ms", "--restart", "never", "--no-wait", BUSYBOX, "--", "sh", "-c", WEB,
        limit=60,
    )  # fmt: skip
    assert done.code == 0, done.stderr
    exec_id = done.stdout.strip()
    ready = await haddock("wait", "--node", node.address, "--ready", exec_id, limit=60)
    assert ready.code == 0, ready.stderr
    async with NodeClient(node.address) as client:
        assert (await client.get_execution(exec_id)).state == 9  # EXECUTION_STATE_READY
        described = await client.describe(exec_id)
        assert described["request"]["service"]["restart"]["policy"] == "RESTART_POLICY_NEVER"
    cancelled = await haddock("cancel", "--node", node.address, exec_id, limit=60)
    assert cancelled.code != 125, cancelled.stderr
    ended = await haddock("wait", "--node", node.address, "--ready", exec_id, limit=60)
    assert ended.code == 1, ended


@pytest.mark.parametrize("policy", ["never", "on-failure"])
async def test_a_service_that_exits_0_and_is_not_restarted_ends_in_error(
    service_node: NodeFactory, policy: str
) -> None:
    """A service is meant to keep running: when it ends by itself and its policy does not restart it, it
    failed (issue 12: "`error` when it exits and its policy says not to restart"), even with exit code 0."""
    node = await service_node()
    request = service("echo bye", ports=[], readiness=None, restart={"policy": policy}, network="none")
    async with NodeClient(node.address) as client:
        await client.start(request)
        done = await client.wait(request.execution_id)
        described = await client.describe(request.execution_id)
    assert done.result.status is ResultStatus.ERROR, done.result
    assert done.result.exit_code == 0
    assert done.result.error_message == (
        f"the service exited with code 0; its restart policy '{policy}' does not restart it"
    )
    states = [e["details"]["state"] for e in described["events"] if e["kind"] == "state"]
    assert states[-1] == "failed"


async def test_a_failing_liveness_probe_restarts_the_service(service_node: NodeFactory) -> None:
    node = await service_node()
    # The health file goes away 1s after the start: liveness fails, the node restarts the container.
    script = f"(sleep 1; rm /www/health) & {WEB}"
    request = service(
        script,
        liveness={"path": "/health", "interval": "100ms", "failure_threshold": 2, "start_period": "0s"},
        restart={"policy": "on-failure", "max_restarts": 5, "backoff_initial": "50ms"},
    )
    async with NodeClient(node.address) as client:
        await client.start(request)
        seen: list[Any] = []
        async for event in client.watch(request.execution_id):
            seen.append(event)
            if event.kind is EventKind.STARTED and sum(e.kind is EventKind.STARTED for e in seen) == 2:
                break
        assert (await client.wait_ready(request.execution_id)).ready  # the new container is ready again
        await client.cancel(request.execution_id)
    probe = next(e for e in seen if e.kind is EventKind.PROBE_FAILED)
    assert probe.details["probe"] == "liveness" and "404" in probe.message
    states = [e.details.get("state") for e in seen if e.kind is EventKind.STATE]
    assert states[states.index("ready") :][:3] == ["ready", "unhealthy", "restarting"]
    restart = next(e for e in seen if e.kind is EventKind.RESTARTING)
    assert "failed its liveness probe 2 times" in restart.message


async def test_the_gateway_alternates_between_replicas_and_loses_nothing_when_one_stops(
    service_node: NodeFactory,
) -> None:
    node = await service_node()
    gw = f"http://{node.node.gateway_address}/svc/pair/"
    a, b = service(name="pair"), service(name="pair")
    async with NodeClient(node.address) as client:
        for r in (a, b):
            await client.start(r)
        for r in (a, b):
            assert (await client.wait_ready(r.execution_id)).ready
        pages = [(await get(gw))[1].strip() for _ in range(4)]
        assert sorted(set(pages)) == sorted({f"page-{a.execution_id}", f"page-{b.execution_id}"})
        assert pages[0] != pages[1] and pages[0] == pages[2] and pages[1] == pages[3]

        answers: list[tuple[int, str]] = []
        stop = asyncio.Event()

        async def hammer() -> None:
            async with aiohttp.ClientSession() as s:
                while not stop.is_set():
                    async with s.get(gw) as resp:
                        answers.append((resp.status, (await resp.text()).strip()))

        workers = [asyncio.create_task(hammer()) for _ in range(4)]
        await asyncio.sleep(0.3)
        await client.cancel(a.execution_id)
        after = len(answers)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
        await client.cancel(b.execution_id)
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert {page for _, page in answers[after:]} == {f"page-{b.execution_id}"}


async def test_services_are_refused_with_a_reason(service_node: NodeFactory) -> None:
    node = await service_node(ports=1)
    low = node.node.ports.start
    async with NodeClient(node.address) as client:
        unnetworked = service(network="none")
        bid = await client.should_bid(unnetworked)
        assert not bid.should_bid and "needs network mode 'bridge'" in bid.reason
        with pytest.raises(NodeError) as refused:
            await client.start(unnetworked)
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "needs network mode 'bridge'" in refused.value.message

        outside = service(ports=[{"container_port": 8080, "host_port": low + 1}])
        bid = await client.should_bid(outside)
        assert not bid.should_bid and f"outside this node's range for services, {low}-{low}" in bid.reason
        with pytest.raises(NodeError) as refused:
            await client.start(outside)
        assert "outside this node's range" in refused.value.message

        first = service()
        await client.start(first)
        second = service()
        bid = await client.should_bid_based_on_usage(second)
        assert not bid.should_bid and "insufficient ports" in bid.reason
        with pytest.raises(NodeError) as refused:
            await client.start(second)
        assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no free port for services" in refused.value.message
        with pytest.raises(NodeError) as unknown:
            await client.describe(second.execution_id)
        assert unknown.value.code is grpc.StatusCode.NOT_FOUND
        await client.cancel(first.execution_id)
        assert node.node.ports.in_use == 0


async def test_the_gateway_needs_the_token_and_says_what_is_wrong_in_json(
    tmp_path: Path, node_id: str, busybox_image: str, telemetry: TelemetryCapture
) -> None:
    services = ServicesSettings(port_range=port_block(2), gateway_listen="127.0.0.1:0")
    running = await start_server(node_settings(tmp_path, node_id, services=services, auth_token="s3cret"))
    gw = f"http://{running.node.gateway_address}"
    try:
        status, body = await get(f"{gw}/svc/none/")
        assert status == 401 and '"error"' in body
        auth = {"Authorization": "Bearer s3cret"}
        status, body = await get(f"{gw}/svc/none/", headers=auth)
        assert status == 404 and "no service named 'none'" in body
        request = service("sleep 30", name="slow", readiness={**FAST_PROBE, "start_period": "30s"})
        async with NodeClient(running.address, token="s3cret") as client:
            await client.start(request)
            status, body = await get(f"{gw}/svc/slow/", headers=auth)
            assert status == 503 and "no execution of service 'slow' is ready" in body
            status, body = await get(f"{gw}/exec/{request.execution_id}/", headers=auth)
            assert status == 503 and "is not ready" in body
            await client.cancel(request.execution_id)
    finally:
        await running.stop(1)


async def test_the_gateway_answers_502_for_a_service_that_hangs_up_and_504_for_one_that_is_silent(
    service_node: NodeFactory,
) -> None:
    node = await service_node(gateway_read_timeout=1.0)
    gw = f"http://{node.node.gateway_address}"
    # no readiness probe: ready once started; one accepts and closes at once, one accepts and says nothing
    hangs_up = service("exec nc -ll -p 8080 -e true", readiness=None)
    silent = service("exec nc -ll -p 8080 -e sleep 1000", readiness=None)
    async with NodeClient(node.address) as client:
        for request in (hangs_up, silent):
            await client.start(request)
            await client.wait_ready(request.execution_id)
        status, body = await get(f"{gw}/exec/{hangs_up.execution_id}/")
        assert status == 502, body
        assert f"execution '{hangs_up.execution_id}' failed the request" in body
        status, body = await get(f"{gw}/exec/{silent.execution_id}/")
        assert status == 504, body
        assert f"execution '{silent.execution_id}' did not answer within 1s" in body
        for request in (hangs_up, silent):
            await client.cancel(request.execution_id)


async def test_gateway_streams_large_bodies(service_node: NodeFactory, docker_client: docker.DockerClient) -> None:
    node = await service_node()
    script = "mkdir -p /www && head -c 8388608 /dev/urandom > /www/big && echo ok > /www/index.html && " + (
        "exec httpd -f -p 8080 -h /www"
    )
    request = service(script)
    async with NodeClient(node.address) as client:
        await client.start(request)
        assert (await client.wait_ready(request.execution_id)).ready
        port = await published_port(client, request.execution_id)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/big") as resp:
                direct = await resp.read()
            async with s.get(f"http://{node.node.gateway_address}/exec/{request.execution_id}/big") as resp:
                assert resp.status == 200 and resp.content_length == len(direct)
                proxied = await resp.read()
        assert proxied == direct and len(direct) == 8 * 1024 * 1024
        await client.cancel(request.execution_id)


async def test_kill_9_with_three_ready_services_takes_them_back_on_the_same_ports(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    from tests.support.daemon import Daemon, free_port

    node = f"svc-{uuid.uuid4().hex[:8]}"
    low, high = port_block(4)
    gateway = f"127.0.0.1:{free_port()}"
    daemon = Daemon(
        node,
        tmp_path / "data",
        tmp_path / "daemon.log",
        env={
            "HADDOCK_ON_SHUTDOWN": "stop",
            "HADDOCK_DOCKER__STOP_GRACE": "2s",
            "HADDOCK_SERVICES__PORT_RANGE": f"{low}-{high}",
            "HADDOCK_SERVICES__GATEWAY_LISTEN": gateway,
        },
    )
    requests = [service(name="trio") for _ in range(3)]
    vanishing = service(restart={"policy": "on-failure", "backoff_initial": "50ms"})
    labelled = {"label": f"haddock.node-id={node}"}
    try:
        await daemon.start()
        async with NodeClient(daemon.address) as client:
            for r in [*requests, vanishing]:
                await client.start(r)
            for r in [*requests, vanishing]:
                assert (await client.wait_ready(r.execution_id)).ready
            ports = {r.execution_id: await published_port(client, r.execution_id) for r in requests}
            vanishing_port = await published_port(client, vanishing.execution_id)
        await daemon.kill()
        docker_client.containers.get(f"haddock-{node}-{vanishing.execution_id}").remove(force=True)
        containers = {c.id for c in docker_client.containers.list(filters=labelled)}
        assert len(containers) == 3

        await daemon.start()
        async with NodeClient(daemon.address) as client:
            for r in requests:
                assert (await client.wait_ready(r.execution_id)).ready
                assert await published_port(client, r.execution_id) == ports[r.execution_id]
                kinds = [e["kind"] for e in await events(client, r.execution_id)]
                assert "recovered" in kinds and kinds.count("started") == 1
                assert await get(f"http://{gateway}/exec/{r.execution_id}/") == (200, f"page-{r.execution_id}\n")
            # The one whose container vanished is restarted under its policy, on its port.
            assert (await client.wait_ready(vanishing.execution_id)).ready
            assert await published_port(client, vanishing.execution_id) == vanishing_port
            restarted = [e for e in await events(client, vanishing.execution_id) if e["kind"] == "restarting"]
            assert len(restarted) == 1 and "removed while the node was down" in restarted[0]["message"]
            await client.cancel(vanishing.execution_id)
            assert {c.id for c in docker_client.containers.list(filters=labelled)} == containers
            info = await client.node_info()
            assert info.ports_in_use == 3 and {s.execution_id for s in info.services} == set(ports)
            pages = {(await get(f"http://{gateway}/svc/trio/"))[1] for _ in range(3)}
            assert pages == {f"page-{r.execution_id}\n" for r in requests}
            for r in requests:
                done = await client.cancel(r.execution_id)
                assert done.result.status is ResultStatus.CANCELLED
        assert await daemon.terminate() == 0
    finally:
        await daemon.kill()
        for c in docker_client.containers.list(all=True, filters=labelled):
            c.remove(force=True)
