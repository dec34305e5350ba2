"""The node keeps its word: what a bid refuses, Start and Run refuse too, with the bid's reason."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from haddock.executor.request import RunCommandRequest
from haddock.node.bidding import BiddingSettings, ImagePolicyStrategy, normalize_pattern
from haddock.node.client import NodeClient, NodeError
from haddock.node.config import CapacitySettings
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, node_settings
from tests.test_cli import haddock


def job(**kw: Any) -> RunCommandRequest:
    engine = {"image": BUSYBOX, "parameters": ["echo", "hi"], **kw.pop("engine", {})}
    return RunCommandRequest.model_validate(
        {"job_id": "policy", "execution_id": f"p-{uuid.uuid4().hex[:10]}", "engine": engine, **kw}
    )


async def serve(tmp_path: Path, node: str, bidding: dict[str, Any], **kw: Any) -> RunningServer:
    settings = node_settings(tmp_path, node).model_copy(
        update={"bidding": BiddingSettings.model_validate(bidding), **kw}
    )
    return await start_server(settings)


POLICY = {
    "networking": {"reject_networked": True},
    "timeout": {"max_timeout": "10s"},
    "resources": {"max_per_job": {"memory": "64Mi"}},
    "image_policy": {"deny": ["haddock-test/busybox-usr1"]},
}


async def test_start_and_run_enforce_what_the_bid_says(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    running = await serve(tmp_path, node_id, POLICY)
    try:
        async with NodeClient(running.address) as client:
            ok = job(timeout="5s", resources={"memory": "32Mi"})
            assert (await client.run(ok)).result.stdout == "hi\n"
            refused = [
                job(timeout="5s", resources={"memory": "32Mi"}, network={"mode": "bridge"}),
                job(resources={"memory": "32Mi"}),  # no timeout
                job(timeout="1m", resources={"memory": "32Mi"}),
                job(timeout="5s", resources={"memory": "1Gi"}),
                job(timeout="5s"),  # no memory limit
                job(timeout="5s", resources={"memory": "32Mi"}, engine={"image": "haddock-test/busybox-usr1"}),
            ]
            for req in refused:
                semantic = await client.should_bid(req)
                usage = await client.should_bid_based_on_usage(req)
                bid = semantic if not semantic.should_bid else usage
                assert not bid.should_bid, req
                for call in (client.start, client.run):
                    with pytest.raises(NodeError) as exc:
                        await call(req)
                    assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION, exc.value
                    assert exc.value.message == bid.reason
                    with pytest.raises(NodeError) as nf:  # nothing was created
                        await client.get_execution(req.execution_id)
                    assert nf.value.code is grpc.StatusCode.NOT_FOUND
                assert not (running.node.settings.log_dir / f"{req.execution_id}.log").exists()
                assert not running.node.settings.results_dir(req.execution_id).exists()
        args = ["run", "--no-queue", "--timeout", "5s", "--memory", "1Gi", "--network", "bridge", BUSYBOX]
        cli = await haddock(*args, "--", "echo", "hi", node=running.address)
        assert cli.code == 125, cli
        assert cli.stdout == ""
        assert "this node does not accept networked jobs" in cli.stderr
    finally:
        await running.stop(1)


async def test_capacity_alone_decides_queue_or_resource_exhausted(
    tmp_path: Path, node_id: str, busybox_image: str
) -> None:
    running = await serve(
        tmp_path,
        node_id,
        {"resources": {"max_per_job": {"cpu": 1}}},
        capacity=CapacitySettings(cpu=1, reserve_cpu=0, max_queued=2),
    )
    try:
        async with NodeClient(running.address) as client:
            hog = job(resources={"cpu": 1}, engine={"parameters": ["sleep", "30"]})
            await client.start(hog)
            # A bid says no (nothing is free); Start is within policy and queues, or says RESOURCE_EXHAUSTED.
            small = job(resources={"cpu": "500m"})
            assert not (await client.should_bid_based_on_usage(small)).should_bid
            with pytest.raises(NodeError) as exc:
                await client.start(small)
            assert exc.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            await client.start(small, queue=True)
            with pytest.raises(NodeError) as exc:  # over the per-job maximum: policy, not capacity
                await client.start(job(resources={"cpu": 2}), queue=True)
            assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert exc.value.message == "this node allows at most 1 CPUs per job, requested 2"
            await client.cancel(hog.execution_id)
            assert (await client.wait(small.execution_id)).result.stdout == "hi\n"
    finally:
        await running.stop(1)


def _probe(tmp_path: Path, body: str) -> Path:
    script = tmp_path / f"probe-{uuid.uuid4().hex[:6]}.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_external_probe_is_asked_once_per_start_with_a_timeout(
    tmp_path: Path, node_id: str, busybox_image: str
) -> None:
    calls = tmp_path / "calls"
    counting = _probe(tmp_path, f"cat >/dev/null; echo x >> {calls}; echo 'fine by me'; exit 0")
    running = await serve(tmp_path, node_id, {"external_probe": {"command": [str(counting)]}})
    try:
        async with NodeClient(running.address) as client:
            assert (await client.run(job())).result.stdout == "hi\n"
        assert calls.read_text().count("x") == 1
    finally:
        await running.stop(1)
    slow = _probe(tmp_path, "sleep 30")
    running = await serve(tmp_path / "2", node_id, {"external_probe": {"command": [str(slow)], "timeout": "300ms"}})
    try:
        async with NodeClient(running.address) as client:
            with pytest.raises(NodeError) as exc:
                await client.start(job())
        assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert exc.value.message == f"the bid probe command '{slow.name}' did not answer within 300ms"
    finally:
        await running.stop(1)
    broken = tmp_path / "no-such-probe"
    running = await serve(tmp_path / "3", node_id, {"external_probe": {"command": [str(broken)]}})
    try:
        async with NodeClient(running.address) as client:
            with pytest.raises(NodeError) as exc:
                await client.start(job())
        assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "the bid probe command 'no-such-probe' could not be started" in exc.value.message
    finally:
        await running.stop(1)


def test_image_patterns_are_read_like_image_names() -> None:
    assert normalize_pattern("haddock-test/*") == "docker.io/haddock-test/*"
    assert normalize_pattern("docker.io/busybox") == "docker.io/library/busybox"
    assert normalize_pattern("index.docker.io/library/*") == "docker.io/library/*"
    assert normalize_pattern("127.0.0.1:5000/*") == "127.0.0.1:5000/*"
    assert normalize_pattern("localhost/team/*") == "localhost/team/*"
    assert normalize_pattern("*/team/*") == "*/team/*"
    assert normalize_pattern("*") == "*"
    assert normalize_pattern("docker.io/*") == "docker.io/*"


async def test_a_short_pattern_matches_the_normalised_name() -> None:
    from tests.test_bidding import make_ctx

    s = ImagePolicyStrategy(deny=["haddock-test/*"])
    result = await s.bid(make_ctx(engine={"image": BUSYBOX}))
    assert not result.should_bid
    assert result.reason == (
        f"image '{BUSYBOX}' (docker.io/haddock-test/busybox) is denied on this node "
        "(matches 'docker.io/haddock-test/*')"
    )
    allow = ImagePolicyStrategy(allow=["haddock-test/*"])
    assert (await allow.bid(make_ctx(engine={"image": BUSYBOX}))).should_bid
