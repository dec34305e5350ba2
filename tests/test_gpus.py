"""GPUs: detection, the allocator under the capacity books, the container's device request, and the
node handing each execution its own devices (the real device path cannot run on these machines)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import docker.types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from haddock.executor.docker.config import DockerConfig
from haddock.executor.docker.spec import container_spec, gpu_request
from haddock.executor.request import Resources, RunCommandRequest
from haddock.node.capacity import CapacityExhausted, CapacityManager
from haddock.node.config import CapacitySettings
from haddock.node.gpus import GpuPool, choose_gpus, gpus_from_engine_info, parse_nvidia_smi
from haddock.node.service import Node
from tests.conftest import BUSYBOX, node_settings

UUIDS = ["GPU-6d1f6a35-0000-0000-0000-000000000001", "GPU-6d1f6a35-0000-0000-0000-000000000002"]


def gpus(n: int) -> Resources:
    return Resources(gpu=n)


# ------------------------------------------------------------------------------------------- detection


def test_nvidia_smi_output() -> None:
    out = f"0, {UUIDS[0]}\n1, {UUIDS[1]}\n\n"
    assert parse_nvidia_smi(out) == UUIDS
    assert parse_nvidia_smi("0, \n1\n") == ["0", "1"]  # no UUID: the index


def test_cdi_devices_from_engine_info() -> None:
    info = {
        "DiscoveredDevices": [
            {"Source": "cdi", "ID": "nvidia.com/gpu=0"},
            {"Source": "cdi", "ID": "nvidia.com/gpu=1"},
            {"Source": "cdi", "ID": "nvidia.com/gpu=all"},
            {"Source": "cdi", "ID": "vendor.com/net=eth1"},
            "junk",
        ]
    }
    assert gpus_from_engine_info(info) == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert gpus_from_engine_info({}) == [] and gpus_from_engine_info({"DiscoveredDevices": None}) == []


def test_which_gpus_the_node_offers() -> None:
    assert choose_gpus(None, None, UUIDS) == UUIDS
    assert choose_gpus(None, ["a", "b"], UUIDS) == ["a", "b"]
    assert choose_gpus(1, None, UUIDS) == UUIDS[:1]
    assert choose_gpus(2, None, []) == ["0", "1"]
    assert choose_gpus(0, None, UUIDS) == [] and choose_gpus(None, None, []) == []


def test_capacity_settings_for_gpus() -> None:
    assert CapacitySettings(gpu_devices=["0", "GPU-x"]).gpu_devices == ["0", "GPU-x"]
    with pytest.raises(ValidationError, match=r"capacity\.gpu = 3 but capacity\.gpu_devices names 1"):
        CapacitySettings(gpu=3, gpu_devices=["0"])
    with pytest.raises(ValidationError, match="must not repeat"):
        CapacitySettings(gpu_devices=["0", "0"])
    with pytest.raises(ValidationError):
        CapacitySettings(gpu_devices=["bad id with spaces"])


# ------------------------------------------------------------------------------------------- allocator


def test_pool_gives_each_its_own_and_takes_back_once() -> None:
    pool = GpuPool(["0", "1", "2"])
    assert pool.take("a", 2) == ("0", "1")
    assert pool.take("b", 1) == ("2",)
    with pytest.raises(ValueError, match="only 0 of 3 GPUs are free"):
        pool.take("c", 1)
    assert pool.give("a") == ("0", "1") and pool.give("a") == ()
    assert pool.take("c", 1, prefer=["1"]) == ("1",)
    assert pool.free() == ["0"]


async def test_capacity_allocates_distinct_devices_and_refuses_when_none_are_free() -> None:
    cap = CapacityManager(Resources.model_construct(gpu=2), gpu_devices=UUIDS)
    await cap.acquire("a", gpus(1), queue=False)
    await cap.acquire("b", gpus(1), queue=False)
    assert {cap.devices("a"), cap.devices("b")} == {(UUIDS[0],), (UUIDS[1],)}
    with pytest.raises(CapacityExhausted, match="insufficient GPUs: requested 1, free 0 of 2"):
        await cap.acquire("c", gpus(1), queue=False)
    waiting = asyncio.create_task(cap.acquire("c", gpus(1), queue=True))
    await asyncio.sleep(0)
    freed = cap.devices("a")
    cap.release("a")
    cap.release("a")  # exactly once: the second does nothing
    await waiting
    assert cap.devices("c") == freed and cap.devices("a") == ()
    assert cap.snapshot().allocated.gpu == 2
    cap.release("b")
    cap.release("c")
    assert cap.snapshot().allocated.gpu == 0 and cap.devices("c") == ()


async def test_a_recovered_execution_gets_back_the_devices_its_container_uses() -> None:
    cap = CapacityManager(Resources.model_construct(gpu=2), gpu_devices=UUIDS)
    await cap.acquire("old", gpus(1), queue=False, prefer_devices=[UUIDS[1]])
    assert cap.devices("old") == (UUIDS[1],)


async def test_default_ids_are_indices() -> None:
    cap = CapacityManager(Resources.model_construct(gpu=2))
    await cap.acquire("a", gpus(2), queue=False)
    assert cap.devices("a") == ("0", "1")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 3), st.booleans()), max_size=40))
def test_held_devices_never_overlap(ops: list[tuple[str, int, bool]]) -> None:
    """Whatever the order of acquires and releases, no device is held twice and the books agree."""

    async def run() -> None:
        devices = ["d0", "d1", "d2", "d3"]
        cap = CapacityManager(Resources.model_construct(gpu=4), gpu_devices=devices)
        for exec_id, n, release in ops:
            if release:
                cap.release(exec_id)
            elif not cap.holds(exec_id):
                with contextlib.suppress(CapacityExhausted):
                    await cap.acquire(exec_id, gpus(n), queue=False)
            held = [d for e in "abcdef" for d in cap.devices(e)]
            assert len(held) == len(set(held)) and set(held) <= set(devices)
            assert cap.snapshot().allocated.gpu == len(held)

    asyncio.run(run())


# ------------------------------------------------------------------------------------------- the container


def request(**kw: object) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "j",
            "execution_id": f"g-{uuid.uuid4().hex[:8]}",
            "engine": {"image": BUSYBOX, "parameters": ["true"]},
            "results_dir": "/tmp/results",
            **kw,
        }
    )


def test_the_device_request_names_the_allocated_devices() -> None:
    spec = container_spec(request(resources={"gpu": 2}, gpu_devices=UUIDS), [], DockerConfig(), "n1")
    (dr,) = spec["host_config"]["device_requests"]
    assert dr["DeviceIDs"] == UUIDS and dr["Capabilities"] == [["gpu"]] and not dr.get("Count")
    cdi = gpu_request(1, ["nvidia.com/gpu=1"])
    assert cdi["Driver"] == "cdi" and cdi["DeviceIDs"] == ["nvidia.com/gpu=1"]
    # without a node (no ids): by count, as before
    assert gpu_request(1, []) == docker.types.DeviceRequest(count=1, capabilities=[["gpu"]])
    assert "device_requests" not in container_spec(request(), [], DockerConfig(), "n1")["host_config"]


def test_device_ids_must_match_the_gpu_count() -> None:
    with pytest.raises(ValidationError, match="gpu_devices names 1 devices for a request of 2 GPUs"):
        request(resources={"gpu": 2}, gpu_devices=["0"])
    with pytest.raises(ValidationError, match="is not a device id"):
        request(resources={"gpu": 1}, gpu_devices=["0; rm -rf /"])
    with pytest.raises(ValidationError, match="must not repeat"):
        request(resources={"gpu": 2}, gpu_devices=["0", "0"])


# ------------------------------------------------------------------------------------------- the node


async def test_the_node_hands_each_execution_its_own_devices(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    """Against the real engine (which has no GPUs here, so the containers cannot be created): each
    execution is given distinct device ids by the node, a requester's ids are dropped, and what the
    executions held is free again once they end."""
    settings = node_settings(tmp_path, node_id, capacity=CapacitySettings(gpu_devices=UUIDS))
    node = await Node.open(settings, version="test")
    await node.begin()
    try:
        assert node.capacity.snapshot().capacity.gpu == 2
        chosen = request(resources={"gpu": 1}, gpu_devices=[UUIDS[0]])
        assert node.prepare(chosen).gpu_devices == []  # the requester's choice is not kept
        reqs = [request(resources={"gpu": 1}) for _ in range(2)]
        for r in reqs:
            await node.start(r)
        with pytest.raises(CapacityExhausted, match="insufficient GPUs: requested 1, free 0 of 2"):
            await node.start(request(resources={"gpu": 1}))
        given_ids = [(await node.get(r.execution_id)).request.gpu_devices for r in reqs]
        assert sorted(given_ids) == [[UUIDS[0]], [UUIDS[1]]]
        for r in reqs:
            await node.wait(r.execution_id)
        snap = node.capacity.snapshot()
        assert snap.allocated.gpu == 0 and snap.free.gpu == 2
    finally:
        await node.shutdown(1)
