"""Before-stop hooks: registered through the Executor protocol, several at once, each bounded, never fatal."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from haddock.executor.hooks import StopHooks
from haddock.executor.protocol import Executor
from haddock.executor.records import ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient
from tests.conftest import BUSYBOX
from tests.test_services import NodeFactory, service_node  # noqa: F401 - the fixture


async def test_hooks_run_concurrently_each_within_its_timeout_and_failures_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = StopHooks()
    called: list[tuple[str, str]] = []

    async def quick(execution_id: str) -> None:
        called.append(("quick", execution_id))

    async def broken(execution_id: str) -> None:
        called.append(("broken", execution_id))
        raise RuntimeError("boom")

    async def stuck(execution_id: str) -> None:
        called.append(("stuck", execution_id))
        await asyncio.sleep(60)

    hooks.add(quick, name="quick", timeout=1)
    hooks.add(broken, name="broken", timeout=1)
    remove_stuck = hooks.add(stuck, name="stuck", timeout=0.2)
    assert hooks.names == ["quick", "broken", "stuck"]
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="haddock.executor.hooks"):
        await hooks.run("e-1")  # never raises
    assert time.monotonic() - began < 1.0  # bounded by the longest timeout, not the sum, not the stuck hook
    assert sorted(called) == [("broken", "e-1"), ("quick", "e-1"), ("stuck", "e-1")]
    text = caplog.text
    assert "before-stop hook broken for e-1 failed" in text and "boom" in text
    assert "before-stop hook stuck for e-1 did not finish within 0.2s" in text

    remove_stuck()
    remove_stuck()  # idempotent
    assert hooks.names == ["quick", "broken"]
    called.clear()
    await hooks.run("e-2")
    assert sorted(called) == [("broken", "e-2"), ("quick", "e-2")]


@pytest.mark.parametrize("timeout", [-1.0, float("inf"), float("nan")])
def test_a_hook_needs_a_finite_timeout(timeout: float) -> None:
    async def hook(execution_id: str) -> None:
        return None

    with pytest.raises(ValueError, match="finite timeout"):
        StopHooks().add(hook, name="h", timeout=timeout)


async def test_a_cancelled_service_calls_every_hook_then_stops_even_when_hooks_fail(
    service_node: NodeFactory,  # noqa: F811
) -> None:
    running = await service_node()
    executor = running.node.executor
    assert isinstance(executor, Executor)
    stopped = asyncio.Event()
    seen: list[tuple[str, str, bool]] = []

    async def failing(execution_id: str) -> None:
        seen.append(("failing", execution_id, stopped.is_set()))
        raise RuntimeError("the hook broke")

    async def slow(execution_id: str) -> None:
        seen.append(("slow", execution_id, stopped.is_set()))
        await asyncio.sleep(60)

    remove = [
        executor.add_before_stop(failing, name="failing", timeout=1),
        executor.add_before_stop(slow, name="slow", timeout=0.3),
    ]
    assert "gateway drain" in executor.stop_hooks.names  # type: ignore[attr-defined]
    request = RunCommandRequest.model_validate(
        {
            "job_id": "svc",
            "execution_id": f"k-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", "exec sleep 60"]},
            "network": {"mode": "none"},
            "kind": "service",
            "service": {},
        }
    )
    async with NodeClient(running.address) as client:
        await client.start(request)
        assert (await client.wait_ready(request.execution_id)).ready
        assert seen == []  # nothing stops it yet
        began = time.monotonic()
        await client.cancel(request.execution_id)
        done = await client.wait(request.execution_id)
        stopped.set()
    assert done.result.status is ResultStatus.CANCELLED
    assert time.monotonic() - began < 10  # the slow hook held the stop at most its 0.3s (plus the stop itself)
    assert sorted(seen) == [("failing", request.execution_id, False), ("slow", request.execution_id, False)]
    for undo in remove:
        undo()
    await running.stop(1)
    assert executor.stop_hooks.names == []  # type: ignore[attr-defined]  # the gateway's went with it
