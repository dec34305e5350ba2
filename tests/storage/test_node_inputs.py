"""Inputs of every source type, through the real node and engine."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from haddock.executor.records import EventKind, ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient, NodeError
from haddock.node.server import RunningServer, start_server
from haddock.storage.config import LocalRoot, StorageSettings
from tests.conftest import BUSYBOX, node_settings
from tests.storage.conftest import Handler, HttpServer


def job(script: str, **kw: Any) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "inputs",
            "execution_id": f"in-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
            **kw,
        }
    )


def served(body: bytes, etag: str | None = None) -> Any:
    def route(h: Handler) -> None:
        h.reply(200, body, headers={"ETag": etag} if etag else None)

    return route


@pytest.fixture
async def node(tmp_path: Path, node_id: str, busybox_image: str) -> Any:
    allowed = tmp_path / "allowed"
    writable = tmp_path / "writable"
    allowed.mkdir()
    writable.mkdir()
    settings = node_settings(tmp_path, node_id).model_copy(
        update={
            "storage": StorageSettings(
                local_roots=(LocalRoot(path=allowed), LocalRoot(path=writable, read_write=True)),
                allow_private_networks=True,  # the test servers are on 127.0.0.1
            )
        }
    )
    running = await start_server(settings)
    yield running, allowed, writable
    await running.stop(1)


def tarball(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


async def test_every_source_type_mounted_and_read_only(
    node: tuple[RunningServer, Path, Path], http_server: HttpServer, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    running, allowed, writable = node
    (allowed / "local.txt").write_text("from local\n")
    (writable / "notes.txt").write_text("v1\n")
    url = http_server.add(served(b"from url\n", etag='"u1"'), "data.txt")
    s3_client.put_object(Bucket=bucket, Key="objs/s3.txt", Body=b"from s3\n")
    s3_client.put_object(Bucket=bucket, Key="tree/a.txt", Body=b"A\n")
    s3_client.put_object(Bucket=bucket, Key="tree/sub/b.txt", Body=b"B\n")
    tgz = "data:application/gzip;base64," + __import__("base64").b64encode(tarball({"x/y.txt": b"tar\n"})).decode()
    endpoint = urllib.parse.quote(s3_endpoint, safe="")
    req = job(
        "cat /in/inline /in/local/local.txt /in/url /in/s3 /in/tree/a.txt /in/tree/sub/b.txt /in/tgz/x/y.txt; "
        "for f in /in/local/local.txt /in/url /in/s3; do "
        "  if echo x >> $f 2>/dev/null; then echo WRITABLE $f; else echo ro; fi; done; "
        "echo v2 >> /rw/notes.txt && echo rw-ok",
        input_sources=[
            {"type": "inline", "data_url": "data:,from%20inline%0A", "target": "/in/inline"},
            {"type": "local", "path": str(allowed), "target": "/in/local"},
            {"type": "local", "path": str(writable), "target": "/rw", "read_write": True},
            {"type": "url", "url": url, "target": "/in/url", "sha256": hashlib.sha256(b"from url\n").hexdigest()},
            {"type": "s3", "bucket": bucket, "key": "objs/s3.txt", "endpoint_url": s3_endpoint, "target": "/in/s3"},
            {"type": "s3", "bucket": bucket, "prefix": "tree/", "endpoint_url": s3_endpoint, "target": "/in/tree"},
            {"type": "inline", "data_url": tgz, "target": "/in/tgz"},
        ],
    )
    assert endpoint  # (quoted form used by the CLI test)
    async with NodeClient(running.address) as client:
        done = await client.run(req)
    assert done.result.status is ResultStatus.SUCCESS, done.result.error_message + done.result.stderr
    assert done.result.stdout == ("from inline\nfrom local\nfrom url\nfrom s3\nA\nB\ntar\nro\nro\nro\nrw-ok\n"), (
        done.result.stdout
    )
    assert (allowed / "local.txt").read_text() == "from local\n"
    assert (writable / "notes.txt").read_text() == "v1\nv2\n"
    # the execution's input work dir is gone once it ends
    assert not (running.node.settings.executions_dir / req.execution_id / "inputs").exists()


async def test_shared_url_downloaded_once(node: tuple[RunningServer, Path, Path], http_server: HttpServer) -> None:
    running, _, _ = node
    url = http_server.add(served(b"shared\n" * 1000, etag='"s1"'), "shared.bin")
    reqs = [
        job("wc -c < /in/shared", input_sources=[{"type": "url", "url": url, "target": "/in/shared"}]) for _ in range(2)
    ]
    async with NodeClient(running.address) as client:
        for r in reqs:
            await client.start(r)
        results = [await client.wait(r.execution_id) for r in reqs]
    assert [r.result.stdout.strip() for r in results] == ["7000", "7000"]
    assert http_server.count("GET", url) == 1


@pytest.mark.parametrize("problem", ["404", "checksum", "oversize", "escape"])
async def test_failing_input_fails_before_any_container(
    node: tuple[RunningServer, Path, Path], http_server: HttpServer, problem: str, tmp_path: Path
) -> None:
    running, allowed, _ = node
    good = http_server.add(served(b"fine\n", etag='"g"'), "good.txt")
    if problem == "404":
        bad: dict[str, Any] = {
            "type": "url",
            "url": f"http://127.0.0.1:{http_server.port}/missing/x",
            "target": "/in/b",
        }
        expect = "404"
    elif problem == "checksum":
        bad = {"type": "url", "url": http_server.add(served(b"abc"), "c.txt"), "target": "/in/b", "sha256": "0" * 64}
        expect = "sha256"
    elif problem == "oversize":
        bad = {"type": "inline", "data_url": "data:," + "x" * (1536 * 1024), "target": "/in/b"}
        expect = "1Mi"
    else:
        secret = tmp_path / "secret.txt"
        secret.write_text("no")
        (allowed / "link").symlink_to(secret)
        bad = {"type": "local", "path": str(allowed / "link"), "target": "/in/b"}
        expect = "allowed"
    req = job("echo should-not-run", input_sources=[{"type": "url", "url": good, "target": "/in/a"}, bad])
    async with NodeClient(running.address) as client:
        done = await client.run(req)
        described = await client.describe(req.execution_id)
    assert done.result.status is ResultStatus.ERROR
    assert done.result.exit_code is None
    assert expect in done.result.error_message, done.result.error_message
    kinds = [e["kind"] for e in described["events"]]
    assert EventKind.STARTED.value not in kinds
    assert not described.get("container_id")
    work = running.node.settings.executions_dir / req.execution_id / "inputs"
    assert not work.exists()
    cache = running.node.settings.data_dir / "cache"
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name or p.name.startswith(".")] if cache.exists() else True


async def test_private_addresses_refused_by_default(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    from haddock.storage.config import StorageSettings as S

    running = await start_server(node_settings(tmp_path, node_id, storage=S()))
    try:
        async with NodeClient(running.address) as client:
            for source, needle in (
                (
                    {"type": "url", "url": "http://169.254.169.254/latest/meta-data/", "target": "/in/x"},
                    "169.254.169.254",
                ),
                ({"type": "url", "url": "http://127.0.0.1:9/x", "target": "/in/x"}, "127.0.0.1"),
                (
                    {
                        "type": "s3",
                        "bucket": "bkt",
                        "key": "k",
                        "endpoint_url": "http://10.1.2.3:9000",
                        "target": "/in/x",
                    },
                    "10.1.2.3",
                ),
            ):
                req = job("true", input_sources=[source])
                bid = await client.should_bid(req)
                assert not bid.should_bid and needle in bid.reason and "not a public address" in bid.reason
                with pytest.raises(NodeError) as refused:
                    await client.start(req)
                assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
                assert "not a public address" in refused.value.message
    finally:
        await running.stop(1)
