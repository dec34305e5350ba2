"""Auth, TLS and graceful shutdown of the real daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from haddock.executor.request import RunCommandRequest
from haddock.executor.streams import LogQuery
from haddock.node.client import ClientTls, NodeClient, NodeError
from haddock.node.config import TlsSettings
from haddock.node.server import start_server
from tests.conftest import BUSYBOX, node_settings
from tests.support.certs import make_certs

TOKEN = "s3cret-token-for-tests"


def job(script: str) -> RunCommandRequest:
    return RunCommandRequest.model_validate(
        {
            "job_id": "sec",
            "execution_id": f"sec-{uuid.uuid4().hex[:10]}",
            "engine": {"image": BUSYBOX, "parameters": ["sh", "-c", script]},
        }
    )


async def test_bearer_token_unary_and_streaming(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    from pydantic import SecretStr

    running = await start_server(node_settings(tmp_path, node_id, auth_token=SecretStr(TOKEN)))
    try:
        for token in (None, "wrong", TOKEN + "x"):
            async with NodeClient(running.address, token=token) as anon:
                with pytest.raises(NodeError) as exc:
                    await anon.is_installed()
                assert exc.value.code is grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(NodeError) as exc:
                    await anon.list_executions()
                assert exc.value.code is grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(NodeError) as exc:
                    async for _ in anon.logs("whatever", LogQuery(follow=True)):
                        pass
                assert exc.value.code is grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(NodeError) as exc:
                    async for _ in anon.watch("whatever"):
                        pass
                assert exc.value.code is grpc.StatusCode.UNAUTHENTICATED
        async with NodeClient(running.address, token=TOKEN) as ok:
            req = job("echo authorised")
            done = await ok.run(req)
            assert done.result.stdout == "authorised\n"
            data = b"".join([c.data async for c in ok.logs(req.execution_id)])
            assert data == b"authorised\n"
        # health stays open for probes
        async with grpc.aio.insecure_channel(running.address) as channel:
            resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(1)


async def test_mutual_tls(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    certs = make_certs(tmp_path / "certs")
    tls = TlsSettings(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca)
    running = await start_server(node_settings(tmp_path, node_id, tls=tls))
    try:
        async with NodeClient(
            running.address, tls=ClientTls(ca=certs.ca, cert=certs.client_cert, key=certs.client_key), timeout=10
        ) as good:
            assert await good.is_installed()
        async with NodeClient(running.address, tls=ClientTls(ca=certs.ca), timeout=5) as no_cert:
            with pytest.raises(NodeError) as exc:
                await no_cert.is_installed()
            assert exc.value.code is grpc.StatusCode.UNAVAILABLE
        async with NodeClient(running.address, timeout=5) as plaintext:
            with pytest.raises(NodeError):
                await plaintext.is_installed()
    finally:
        await running.stop(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_flips_health_then_exits_within_grace(tmp_path: Path, node_id: str, busybox_image: str) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    grace = 3
    env = {
        **os.environ,
        "HADDOCK_NODE_ID": node_id,
        "HADDOCK_DATA_DIR": str(tmp_path / "data"),
        "HADDOCK_SHUTDOWN_GRACE": str(grace),
        "HADDOCK_ON_SHUTDOWN": "stop",
        "HADDOCK_LOG_FORMAT": "json",
    }
    haddock = Path(sys.executable).parent / "haddock"
    log = (tmp_path / "daemon.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(haddock), "serve", "--listen", address, env=env, stdout=log, stderr=log
    )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            while True:
                try:
                    resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
                await asyncio.sleep(0.2)
            async with NodeClient(address) as client:
                running_job = job("echo up; sleep 60 & wait $!")
                await client.start(running_job)
            watch = health.Watch(health_pb2.HealthCheckRequest(service="haddock.v1.ExecutorService"))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            second = await asyncio.wait_for(watch.read(), timeout=grace)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            code = await asyncio.wait_for(proc.wait(), timeout=grace + 5)
            elapsed = time.monotonic() - t0
        assert code == 0, (tmp_path / "daemon.log").read_text()
        # in-flight calls and the running job's stop (it ignores SIGTERM) share the one grace period
        assert elapsed < grace + 3, elapsed
        text = (tmp_path / "daemon.log").read_text()
        assert '"message": "shutting down"' in text and '"message": "stopped"' in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
