"""The python3 job type's wrapper: serves a job's ``perform`` over HTTP on 0.0.0.0:7000, at the root and
under /pub/job/{JOB_NAME}/{any version}. The standard library only.

It follows the contract of Racetrack's python wrapper (racetrack-job-runner), so that Racetrack's python
jobs run unchanged: the entrypoint class (``JOB_ENTRYPOINT_PATH``, ``JOB_ENTRYPOINT_CLASS``: default the
only class with ``perform``) is instantiated once; ``POST /api/v1/perform`` calls ``perform(**body)``,
with ``docs_input_example()`` as the body when none is sent; a ``ValueError`` or wrong arguments answer
400, any other exception 500, each with a JSON body naming the error. ``/api/v1/parameters`` describes
``perform``'s parameters, ``/metrics`` serves request counters and the job's own ``metrics()``.

A body is read by its Content-Length or decoded from Transfer-Encoding: chunked (what a proxy such as the
node's gateway sends), at most MAX_BODY_BYTES (413); one that cannot be read whole is answered 400, never
taken for an empty body (which means the example input).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SOURCE_DIR = "/src/job"
_counters = {"requests": 0, "errors": 0, "seconds": 0.0}
_lock = threading.Lock()
MAX_BODY_BYTES = 64 * 1024 * 1024  # a request body larger than this is refused (413)
_state: dict[str, Any] = {"ready": False, "entrypoint": None, "error": None}


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def load_entrypoint() -> Any:
    path = os.environ.get("JOB_ENTRYPOINT_PATH", "")
    wanted = os.environ.get("JOB_ENTRYPOINT_CLASS", "")
    full = os.path.join(SOURCE_DIR, path)
    sys.path.insert(0, SOURCE_DIR)
    sys.path.insert(0, os.path.dirname(full))
    spec = importlib.util.spec_from_file_location("job_entrypoint", full)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the entrypoint file {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["job_entrypoint"] = module
    spec.loader.exec_module(module)
    if wanted:
        cls = getattr(module, wanted, None)
        if cls is None:
            raise RuntimeError(f"{path} has no class {wanted!r}")
    else:
        found = [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module.__name__ and callable(getattr(c, "perform", None))
        ]
        if len(found) != 1:
            raise RuntimeError(
                f"{path} must define exactly one class with perform() (found {len(found)}); set entrypoint_class"
            )
        cls = found[0]
    return cls()


def _parameters(entrypoint: Any) -> dict[str, Any]:
    params = {}
    for name, p in inspect.signature(entrypoint.perform).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        entry: dict[str, Any] = {"required": p.default is inspect.Parameter.empty}
        if p.annotation is not inspect.Parameter.empty:
            entry["type"] = (
                p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
            )
        if p.default is not inspect.Parameter.empty:
            try:
                json.dumps(p.default)
                entry["default"] = p.default
            except TypeError:
                entry["default"] = repr(p.default)
        params[name] = entry
    return params


def _metrics_text(entrypoint: Any) -> str:
    with _lock:
        lines = [
            "# TYPE perform_requests_total counter",
            f"perform_requests_total {_counters['requests']}",
            "# TYPE perform_errors_total counter",
            f"perform_errors_total {_counters['errors']}",
            "# TYPE perform_seconds_total counter",
            f"perform_seconds_total {_counters['seconds']}",
        ]
    job_metrics = getattr(entrypoint, "metrics", None)
    if callable(job_metrics):
        try:
            for metric in job_metrics() or []:
                name = re.sub(r"[^a-zA-Z0-9_:]", "_", str(metric["name"]))
                if metric.get("description"):
                    lines.append(f"# HELP {name} {metric['description']}")
                labels = metric.get("labels") or {}
                shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{shown}}} {float(metric['value'])}" if shown else f"{name} {metric['value']}")
        except Exception as exc:  # the job's metrics must not break the endpoint
            lines.append(f"# the job's metrics() failed: {exc!r}")
    return "\n".join(lines) + "\n"


class BodyError(Exception):
    """A request body that cannot be read: the status to answer and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    server_version = "haddock-python-wrapper/2"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log(f"request {self.address_string()} {format % args}")

    def _route(self) -> str:
        path = self.path.split("?", 1)[0]
        prefix = f"/pub/job/{os.environ.get('JOB_NAME', '')}/"
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            path = rest[rest.index("/") :] if "/" in rest else "/"
        return path

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        route = self._route()
        ts = int(os.environ.get("JOB_DEPLOYMENT_TIMESTAMP") or 0)
        entrypoint = _state["entrypoint"]
        if route == "/live":
            status = 500 if _state["error"] else 200
            self._send(status, {"status": "live", "deployment_timestamp": ts, "error": _state["error"]})
        elif route == "/ready":
            self._send(200 if _state["ready"] else 500, {"status": "ready" if _state["ready"] else "not ready"})
        elif route == "/health":
            self._send(
                200,
                {
                    "service": "job",
                    "job_name": os.environ.get("JOB_NAME", ""),
                    "job_version": os.environ.get("JOB_VERSION", ""),
                    "git_version": os.environ.get("GIT_VERSION", ""),
                    "deployed_by_racetrack_version": os.environ.get("DEPLOYED_BY_RACETRACK_VERSION", ""),
                    "deployment_timestamp": ts,
                    "status": "pass" if _state["ready"] else "starting",
                },
            )
        elif route == "/api/v1/parameters" and entrypoint is not None:
            self._send(200, _parameters(entrypoint))
        elif route == "/metrics":
            self._send(200, _metrics_text(entrypoint).encode(), "text/plain; version=0.0.4")
        elif route == "/":
            self._send(200, {"job_name": os.environ.get("JOB_NAME", ""), "endpoints": ["POST /api/v1/perform"]})
        else:
            self._send(404, {"error": f"not found: {self.path}"})

    def do_POST(self) -> None:
        if self._route() != "/api/v1/perform":
            self._send(404, {"error": f"not found: {self.path}"})
            return
        entrypoint = _state["entrypoint"]
        if entrypoint is None:
            self._send(503, {"error": "the job is not ready"})
            return
        try:
            raw = self._read_body()
        except BodyError as exc:
            self.close_connection = True  # what is left of the body cannot be told from the next request
            self._send(exc.status, {"error": str(exc)})
            return
        started = time.monotonic()
        status, body = self._perform(entrypoint, raw)
        with _lock:
            _counters["requests"] += 1
            _counters["seconds"] += time.monotonic() - started
            if status >= 400:
                _counters["errors"] += 1
        self._send(status, body)

    def _read_body(self) -> bytes:
        """The request's body: by its Content-Length, or decoded from Transfer-Encoding: chunked; at most
        MAX_BODY_BYTES. A body that cannot be read whole raises BodyError (never an empty body: an empty one
        means the example input)."""
        encodings = [e.strip().lower() for e in ",".join(self.headers.get_all("Transfer-Encoding") or []).split(",")]
        encodings = [e for e in encodings if e]
        lengths = self.headers.get_all("Content-Length") or []
        if encodings:
            if encodings != ["chunked"]:
                raise BodyError(
                    400, f"Transfer-Encoding {', '.join(encodings)} is not supported: send chunked or a Content-Length"
                )
            if lengths:
                raise BodyError(400, "a request with both Transfer-Encoding and Content-Length is refused")
            return self._read_chunked()
        if not lengths:
            return b""  # HTTP/1.1: neither header, no body
        if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
            raise BodyError(400, f"Content-Length {', '.join(lengths)} is not a length")
        length = int(lengths[0])
        if length > MAX_BODY_BYTES:
            raise BodyError(413, f"the body ({length} bytes) is larger than {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        if len(raw) != length:
            raise BodyError(400, f"the body ended after {len(raw)} of its {length} bytes (Content-Length)")
        return raw

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise BodyError(400, "the chunked body ended before its last chunk")
            size_text = line.split(b";", 1)[0].strip()
            try:
                if not size_text or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
                    raise ValueError(size_text)
                size = int(size_text, 16)
            except ValueError:
                raise BodyError(400, f"the chunked body has a bad chunk size line {line[:40]!r}") from None
            if size == 0:
                break
            if len(body) + size > MAX_BODY_BYTES:
                raise BodyError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BodyError(400, "the chunked body ended inside a chunk, or a chunk is longer than its size")
            body += data
        for _ in range(100):  # trailer fields, up to the empty line
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n"):
                return bytes(body)
            if not line.endswith(b"\n"):
                break
        raise BodyError(400, "the chunked body's trailer does not end")

    @staticmethod
    def _perform(entrypoint: Any, raw: bytes) -> tuple[int, Any]:
        try:
            if raw.strip():
                args = json.loads(raw)
            else:
                example = getattr(entrypoint, "docs_input_example", None)
                args = example() if callable(example) else {}
        except ValueError as exc:
            return 400, {"error": f"the body is not JSON: {exc}"}
        if not isinstance(args, dict):
            return 400, {"error": "the body must be a JSON object of perform's keyword arguments"}
        try:
            inspect.signature(entrypoint.perform).bind(**args)
        except TypeError as exc:
            return 400, {"error": f"wrong arguments for perform: {exc}"}
        try:
            result = entrypoint.perform(**args)
            return 200, result
        except ValueError as exc:
            log(f"perform: ValueError: {exc}")
            return 400, {"error": str(exc), "type": "ValueError"}
        except Exception as exc:
            log("perform failed:\n" + traceback.format_exc())
            return 500, {"error": str(exc), "type": type(exc).__name__}


def main() -> None:
    server = ThreadingHTTPServer(("0.0.0.0", 7000), Handler)
    server.daemon_threads = True
    log(f"listening on 0.0.0.0:7000 (job {os.environ.get('JOB_NAME', '')})")
    try:
        _state["entrypoint"] = load_entrypoint()
        _state["ready"] = True
        log("the job is ready")
    except Exception as exc:
        _state["error"] = f"{type(exc).__name__}: {exc}"
        log("loading the job failed:\n" + traceback.format_exc())
        sys.exit(1)
    server.serve_forever()


if __name__ == "__main__":
    main()
