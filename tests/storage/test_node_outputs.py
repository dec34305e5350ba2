"""Outputs: the cap on what a job writes, and publishing the results, through the real node."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from haddock.executor.outputs import directory_usage
from haddock.executor.records import ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, node_settings

MiB = 1024 * 1024


def job(script: str, **kw: Any) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "outs",
            "execution_id": f"out-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            **kw,
        }
    )


async def serve(tmp_path: Path, node_id: str) -> RunningServer:
    return await start_server(node_settings(tmp_path, node_id))


async def test_output_cap_fails_the_job_and_keeps_up_to_the_cap(
    tmp_path: Path, node_id: str, busybox_image: str
) -> None:
    running = await serve(tmp_path, node_id)
    try:
        async with NodeClient(running.address) as client:
            within = await client.run(
                job("echo small > /out/a.txt", outputs=[{"name": "out", "path": "/out"}], resources={"disk": "4Mi"})
            )
            assert within.result.status is ResultStatus.SUCCESS
            assert Path(within.results_dir, "out", "a.txt").read_text() == "small\n"

            over = job(
                "head -c 1048576 /dev/zero > /out/first; sleep 0.3; "
                "i=0; while [ $i -lt 200 ]; do head -c 1048576 /dev/zero > /out/f$i; i=$((i+1)); done; echo done",
                outputs=[{"name": "out", "path": "/out"}],
                resources={"disk": "4Mi"},
            )
            done = await client.run(over)
        assert done.result.status is ResultStatus.ERROR
        assert "output cap of 4Mi" in done.result.error_message
        assert "done" not in done.result.stdout, "the job was stopped"
        out = Path(done.results_dir, "out")
        assert directory_usage([out]) <= 4 * MiB
        assert (out / "first").stat().st_size == MiB  # the earliest writes are kept
    finally:
        await running.stop(1)


async def test_results_published_to_s3_under_the_templated_key(
    tmp_path: Path, node_id: str, busybox_image: str, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    running = await serve(tmp_path, node_id)
    try:
        req = job(
            "echo hello; echo oops >&2; mkdir -p /out/sub; echo data > /out/sub/x.txt",
            outputs=[{"name": "out", "path": "/out"}],
            publishers=[
                {
                    "type": "s3",
                    "bucket": bucket,
                    "key": "results/{node_id}/{job_id}/{execution_id}/",
                    "endpoint_url": s3_endpoint,
                },
                {"type": "local", "archive": True},
            ],
        )
        async with NodeClient(running.address) as client:
            done = await client.run(req)
        assert done.result.status is ResultStatus.SUCCESS, done.result.error_message
        assert done.result.publish_errors == []
        prefix = f"results/{node_id}/outs/{req.execution_id}/"
        assert f"s3://{bucket}/{prefix}" in done.result.published
        listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        keys = sorted(o["Key"].removeprefix(prefix) for o in listed.get("Contents", []))
        assert keys == ["exitCode", "out/sub/x.txt", "stderr", "stdout"]
        body = {k: s3_client.get_object(Bucket=bucket, Key=prefix + k)["Body"].read() for k in keys}
        assert body == {"exitCode": b"0", "out/sub/x.txt": b"data\n", "stderr": b"oops\n", "stdout": b"hello\n"}
        assert (Path(done.results_dir).parent / "results.tar.gz").is_file()
    finally:
        await running.stop(1)


async def test_failed_publish_is_reported_not_fatal(
    tmp_path: Path, node_id: str, busybox_image: str, s3_endpoint: str
) -> None:
    running = await serve(tmp_path, node_id)
    try:
        req = job(
            "echo fine", publishers=[{"type": "s3", "bucket": "no-such-bucket-here", "endpoint_url": s3_endpoint}]
        )
        async with NodeClient(running.address) as client:
            done = await client.run(req)
        assert done.result.status is ResultStatus.SUCCESS
        assert done.result.stdout == "fine\n"
        assert done.result.published == []
        assert len(done.result.publish_errors) == 1 and "no-such-bucket-here" in done.result.publish_errors[0]
    finally:
        await running.stop(1)
