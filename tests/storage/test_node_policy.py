"""Where requesters may make the node connect, through the real node and engine: no request to a
private address (bids included), a redirect chain through a stand-in public host never reaches the
secret, and S3 buckets and endpoints only as the operator lists them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from haddock.node.client import NodeClient, NodeError
from haddock.node.server import start_server
from haddock.node.service import Node
from haddock.storage.config import S3InputSettings, S3PublishSettings, S3Settings, StorageSettings
from tests.conftest import node_settings
from tests.storage.conftest import HttpServer
from tests.storage.test_netpolicy import SECRET, StandIn, redirect_to, serve
from tests.storage.test_node_inputs import job


@pytest.fixture
def secret_server() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.close()


def any_request(server: HttpServer) -> int:
    return sum(server.counts.values())


async def test_bids_send_nothing_to_private_addresses(
    tmp_path: Path, node_id: str, busybox_image: str, secret_server: HttpServer
) -> None:
    """ShouldBidBasedOnUsage asks inputs for their sizes: never of an address the policy refuses."""
    url = secret_server.add(serve(SECRET), "secret")  # type: ignore[arg-type]
    endpoint = f"http://127.0.0.1:{secret_server.port}"
    running = await start_server(node_settings(tmp_path, node_id, storage=StorageSettings()))
    try:
        async with NodeClient(running.address) as client:
            for source in (
                {"type": "url", "url": url, "target": "/in/x"},
                {"type": "url", "url": "http://169.254.169.254/latest/meta-data/", "target": "/in/x"},
                {"type": "s3", "bucket": "bkt", "key": "k", "endpoint_url": endpoint, "target": "/in/x"},
            ):
                req = job("true", input_sources=[source])
                bid = await client.should_bid_based_on_usage(req)
                assert not bid.should_bid and "not a public address" in bid.reason, bid.reason
    finally:
        await running.stop(1)
    assert any_request(secret_server) == 0


async def test_a_redirect_chain_never_reaches_the_secret(
    tmp_path: Path, node_id: str, busybox_image: str, http_server: HttpServer, secret_server: HttpServer
) -> None:
    """The issue's reproduction: a public URL answering 302 to a private one. The job never sees the
    secret, the node never asks for it, and the execution says why."""
    secret = secret_server.add(serve(SECRET), "secret")  # type: ignore[arg-type]
    stand_in = StandIn(http_server)
    public = stand_in.url(http_server.add(redirect_to(secret), "data.txt"))  # type: ignore[arg-type]
    settings = node_settings(tmp_path, node_id, storage=StorageSettings())  # the real policy...
    node = await Node.open(settings, version="test", address_policy=stand_in.policy)  # ...and a stand-in
    await node.begin()
    running = await start_server(settings, node)
    try:
        async with NodeClient(running.address) as client:
            req = job("cat /in/x", input_sources=[{"type": "url", "url": public, "target": "/in/x"}])
            assert (await client.should_bid(req)).should_bid  # the first host is public
            bid = await client.should_bid_based_on_usage(req)
            assert not bid.should_bid and f"was redirected to {secret!r}" in bid.reason
            done = await client.run(req)
    finally:
        await running.stop(1)
    assert done.result.exit_code is None and SECRET.decode() not in (done.result.stdout or "")
    assert f"was redirected to {secret!r}, which resolves to 127.0.0.1" in (done.result.error_message or "")
    assert any_request(secret_server) == 0


async def test_s3_buckets_only_as_the_operator_lists_them(
    tmp_path: Path, node_id: str, busybox_image: str, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    s3_client.put_object(Bucket=bucket, Key="in.txt", Body=b"allowed data")
    storage = StorageSettings(
        allow_private_networks=True,  # moto is on 127.0.0.1
        s3=S3Settings(
            inputs=S3InputSettings(allowed_buckets=("b-*",)),
            publish=S3PublishSettings(allowed_buckets=("results",)),
        ),
    )
    running = await start_server(node_settings(tmp_path, node_id, storage=storage))
    other_input = {"type": "s3", "bucket": "secrets", "key": "k", "endpoint_url": s3_endpoint, "target": "/in/x"}
    other_publisher = {"type": "s3", "bucket": bucket, "endpoint_url": s3_endpoint}
    try:
        async with NodeClient(running.address) as client:
            for req, needle in (
                (
                    job("true", input_sources=[other_input]),
                    "s3 input s3://secrets/k is refused: the bucket 'secrets' is not one this node reads inputs "
                    "from (allowed: b-*)",
                ),
                (
                    job("true", publishers=[other_publisher]),
                    f"publishing to s3://{bucket}/{{job_id}}/{{execution_id}}/ is refused: the bucket {bucket!r} is "
                    "not one this node publishes to (allowed: results)",
                ),
            ):
                bid = await client.should_bid(req)
                assert not bid.should_bid and bid.reason == needle
                usage = await client.should_bid_based_on_usage(req)
                assert not usage.should_bid or not req.input_sources  # sizes are asked of allowed buckets only
                with pytest.raises(NodeError) as refused:
                    await client.start(req)
                assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION and refused.value.message == needle
            allowed = {"type": "s3", "bucket": bucket, "key": "in.txt", "endpoint_url": s3_endpoint, "target": "/in/x"}
            ok = job("cat /in/x", input_sources=[allowed])
            assert (await client.should_bid(ok)).should_bid
            done = await client.run(ok)
            assert done.result.stdout == "allowed data", done.result
    finally:
        await running.stop(1)
