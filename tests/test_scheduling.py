"""Bidding, capacity and the queue, end to end on a real node and engine."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest

from haddock.executor.records import ExecutionState, ResultStatus
from haddock.executor.request import Resources, RunCommandRequest
from haddock.node.bidding import BiddingSettings
from haddock.node.client import NodeClient, NodeError
from haddock.node.config import CapacitySettings
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, node_settings
from tests.test_cli import haddock


def job(script: str, **kw: Any) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "sched",
            "execution_id": kw.pop("execution_id", None) or f"s-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            **kw,
        }
    )


async def serve(tmp_path: Path, node: str, **kw: Any) -> RunningServer:
    return await start_server(node_settings(tmp_path, node).model_copy(update=kw))


async def test_30_half_cpu_jobs_on_2_cpus_never_over_commit(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    node = f"sched-{uuid.uuid4().hex[:8]}"
    running = await serve(tmp_path, node, capacity=CapacitySettings(cpu=2, reserve_cpu=0))
    peak = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            found = await asyncio.to_thread(
                docker_client.api.containers, filters={"label": f"haddock.node-id={node}", "status": "running"}
            )
            peak = max(peak, len(found))
            await asyncio.sleep(0.05)

    try:
        sampler = asyncio.create_task(sample())
        async with NodeClient(running.address) as client:
            reqs = [job("sleep 0.7", resources={"cpu": "500m"}) for _ in range(30)]
            await asyncio.gather(*(client.start(r, queue=True) for r in reqs))
            info = await client.node_info()
            assert info.running <= 4 and info.running + info.queued_count == 30 - (
                30 - info.running - info.queued_count
            )
            results = await asyncio.gather(*(client.wait(r.execution_id) for r in reqs))
            stop.set()
            await sampler
            assert all(r.result.status is ResultStatus.SUCCESS for r in results)
            assert 1 <= peak <= 4, peak
            info = await client.node_info()
            assert info.allocated == Resources() and info.queued == Resources()
            assert info.running == 0 and info.queued_count == 0
            assert info.capacity.cpu == 2
    finally:
        stop.set()
        await running.stop(1)


async def test_queue_position_cancel_and_refusals(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    running = await serve(tmp_path, node_id, capacity=CapacitySettings(cpu=1, reserve_cpu=0, max_queued=1))
    try:
        async with NodeClient(running.address) as client:
            hog = job("sleep 30", resources={"cpu": 1})
            await client.start(hog)
            waiting = job("echo finally", resources={"cpu": "500m"})
            await client.start(waiting, queue=True)
            described = await client.describe(waiting.execution_id)
            assert described["state"] == "EXECUTION_STATE_QUEUED"
            assert described["queue_position"] == 1
            assert described["queue_reason"] == "waiting for CPU: requested 500m, free 0 of 1"
            queued_list = await client.list_executions({ExecutionState.QUEUED})
            assert [e.execution_id for e in queued_list] == [waiting.execution_id]

            with pytest.raises(NodeError) as exc:  # the queue holds one
                await client.start(job("true", resources={"cpu": "500m"}), queue=True)
            assert exc.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert exc.value.message == "queue full: 1 execution waiting (max 1)"
            with pytest.raises(NodeError) as exc:  # no queueing asked
                await client.start(job("true", resources={"cpu": "500m"}))
            assert exc.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "insufficient CPU" in exc.value.message
            with pytest.raises(NodeError) as exc:  # can never fit
                await client.start(job("true", resources={"cpu": 2}), queue=True)
            assert exc.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED

            cancelled = await client.cancel(waiting.execution_id)
            assert cancelled.result.status is ResultStatus.CANCELLED
            assert "while queued" in cancelled.result.error_message
            assert (await client.wait(waiting.execution_id)).result.status is ResultStatus.CANCELLED
            with pytest.raises(NodeError) as exc:
                await client.cancel(waiting.execution_id)
            assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION

            # the queue admits in turn once capacity frees
            after = job("echo admitted", resources={"cpu": "500m"})
            await client.start(after, queue=True)
            await client.cancel(hog.execution_id)
            done = await asyncio.wait_for(client.wait(after.execution_id), 30)
            assert done.result.stdout == "admitted\n"
            info = await client.node_info()
            assert info.allocated == Resources() and info.queued_count == 0
    finally:
        await running.stop(1)


async def test_bid_reasons_through_the_api_and_cli(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    bidding = BiddingSettings.model_validate(
        {
            "networking": {"reject_networked": True},
            "image_policy": {"deny": ["docker.io/library/*"]},
            "timeout": {"max_timeout": "1h"},
            "resources": {"max_per_job": {"memory": "1Gi"}},
        }
    )
    running = await serve(tmp_path, node_id, capacity=CapacitySettings(cpu=2, reserve_cpu=0), bidding=bidding)
    try:
        async with NodeClient(running.address) as client:
            ok = job("true", timeout="10m", resources={"memory": "64Mi"})
            yes = await client.should_bid(ok)
            assert yes.should_bid, yes.reason
            assert (await client.should_bid_based_on_usage(ok)).should_bid
            no = await client.should_bid(job("true", timeout="10m", network={"mode": "bridge"}))
            assert (no.should_bid, no.reason) == (False, "this node does not accept networked jobs")
            no = await client.should_bid(job("true"))
            assert no.reason == "this node requires a timeout of at most 1h"
            denied = RunCommandRequest.model_validate(
                {"job_id": "j", "execution_id": "d1", "engine": {"image": "python:3.12"}, "timeout": 60}
            )
            no = await client.should_bid(denied)
            assert no.reason == (
                "image 'python:3.12' (docker.io/library/python) is denied on this node (matches 'docker.io/library/*')"
            )
            no = await client.should_bid_based_on_usage(ok, Resources(memory="2Gi"))
            assert no.reason == "this node allows at most 1Gi of memory per job, requested 2Gi"
            no = await client.should_bid_based_on_usage(job("true", resources={"memory": "64Mi", "cpu": 4}))
            assert no.reason.startswith("insufficient CPU: requested 4")
        cli = await haddock("bid", "--cpu", "64", "--memory", "64Mi", "--timeout", "1m", BUSYBOX, node=running.address)
        assert cli.code == 1
        assert cli.stdout.startswith("no: insufficient CPU: requested 64")
        cli = await haddock("bid", "--memory", "64Mi", "--timeout", "1m", BUSYBOX, node=running.address)
        assert cli.code == 0 and cli.stdout.startswith("yes: ")
    finally:
        await running.stop(1)
