"""Run the real `haddock serve` as a separate process, as an operator would."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HADDOCK = str(Path(sys.executable).parent / "haddock")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    node_id: str
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    address: str = ""
    proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 30) -> None:
        self.address = self.address or f"127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HADDOCK_")}
        env.update(
            {
                "HADDOCK_NODE_ID": self.node_id,
                "HADDOCK_DATA_DIR": str(self.data_dir),
                "HADDOCK_LISTEN": self.address,
                "HADDOCK_LOG_FORMAT": "json",
                **self.env,
            }
        )
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(HADDOCK, "serve", env=env, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start:\n{self.log_text()}")
                await asyncio.sleep(0.2)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def kill(self) -> None:
        """kill -9: no shutdown, no flushing, as a crash."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), timeout)
