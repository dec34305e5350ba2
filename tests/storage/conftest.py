"""Real servers on 127.0.0.1 for the storage tests: a programmable HTTP server and moto's S3 server."""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

Route = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.owner.record(self.command, path)
        route = self.server.owner.routes.get(path)
        try:
            if route is None:
                self.reply(404, b"not found")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = _dispatch
    do_HEAD = _dispatch

    # ----------------------------------------------------------------- building blocks for routes

    def reply(
        self,
        status: int = 200,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        length: bool = True,
        chunked: bool = False,
        pieces: int = 1,
        delay: float = 0.0,
    ) -> None:
        """Send ``body`` (in ``pieces`` with ``delay`` between them); with Content-Length, chunked, or
        neither (then the connection closes at the end)."""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        size = max(1, -(-len(body) // pieces)) if body else 0
        for i in range(0, len(body), size or 1):
            part = body[i : i + size]
            if chunked:
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            else:
                self.wfile.write(part)
            self.wfile.flush()
            if delay:
                time.sleep(delay)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that go away mid-response are part of the tests


class HttpServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.counts[(method, path)] += 1

    def add(self, route: Route, name: str = "file") -> str:
        """Serve ``route`` at a fresh path ending in ``name``; returns its URL."""
        path = f"/{uuid.uuid4().hex[:8]}/{name}"
        self.routes[path] = route
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, method: str, url: str) -> int:
        path = "/" + url.split("/", 3)[3].split("?", 1)[0]
        with self._lock:
            return self.counts[(method, path)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.close()


# ------------------------------------------------------------------------------------------------ S3


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, with dummy credentials in the environment (and no real ones)."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path_factory.mktemp("aws") / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path_factory.mktemp("aws") / "credentials"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file (its bytes), symlink ('-> target') and directory ('dir') under ``root``."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def leftovers(*dirs: Path) -> list[str]:
    """Whatever exists under the given directories (which may be missing)."""
    found: list[str] = []
    for d in dirs:
        if d.exists():
            found += [str(p) for p in d.rglob("*")]
    return found
