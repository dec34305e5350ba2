"""The baseline: the engine calls the node makes for a job, made directly with docker-py.

The container config mirrors what ``executor/docker/spec.py:container_spec`` produces with
the node's default settings, read from the node's own config (``node.config.Settings.docker``, a
``DockerConfig``: log driver, pids limit, ``no-new-privileges``, dropped capabilities,
``init`` when the executor has it) plus network ``none``, the three ``haddock.*`` labels, the two
``HADDOCK_*`` variables and the node's container name pattern, so both sides ask the engine for
the same kind of container.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.types

from bench.common import IMAGE, LABEL_EXECUTION, LABEL_JOB, LABEL_NODE, NODE_ID
from haddock.node.config import Settings

_HEADER = struct.Struct(">BxxxL")


@functools.cache
def node_defaults() -> dict[str, Any]:
    """The container settings of a node with default settings (what ``haddock serve`` would use)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Settings(node_id=NODE_ID, data_dir=Path(tmp)).docker
    return {
        "log_driver": cfg.log_driver,
        "log_opts": dict(cfg.log_driver_options) if cfg.log_driver != "none" else {},
        "pids_limit": cfg.pids_limit,
        "no_new_privileges": cfg.no_new_privileges,
        "cap_drop": list(cfg.cap_drop),
        "init": bool(getattr(cfg, "init", False)),
    }


def host_config_kwargs(log_config: docker.types.LogConfig | None = None) -> dict[str, Any]:
    d = node_defaults()
    kw: dict[str, Any] = {
        "network_mode": "none",
        "mounts": [],
        "log_config": log_config or docker.types.LogConfig(type=d["log_driver"], config=d["log_opts"]),
    }
    if d["init"]:
        kw["init"] = True
    if d["pids_limit"]:
        kw["pids_limit"] = d["pids_limit"]
    if d["no_new_privileges"]:
        kw["security_opt"] = ["no-new-privileges"]
    if d["cap_drop"]:
        kw["cap_drop"] = d["cap_drop"]
    return kw


def describe_config(*, log_driver: bool = True) -> str:
    kw = host_config_kwargs()
    lc = kw.pop("log_config")
    if log_driver:
        kw["log_driver"] = lc.type
    kw.pop("mounts")
    return ", ".join(f"{k}={v}" for k, v in kw.items())


def container_spec(
    client: docker.APIClient,
    execution_id: str,
    command: list[str],
    *,
    job_id: str = "bench-job",
    log_config: docker.types.LogConfig | None = None,
) -> dict[str, Any]:
    host_config = client.create_host_config(**host_config_kwargs(log_config))
    return {
        "image": IMAGE,
        "command": command,
        "entrypoint": None,
        "environment": {"HADDOCK_JOB_ID": job_id, "HADDOCK_EXECUTION_ID": execution_id},
        "working_dir": None,
        "labels": {LABEL_NODE: NODE_ID, LABEL_JOB: job_id, LABEL_EXECUTION: execution_id},
        "name": f"haddock-{NODE_ID}-{execution_id}",
        "stdin_open": False,
        "tty": False,
        "host_config": host_config,
    }


def attach(client: docker.APIClient, container_id: str) -> tuple[Any, socket.socket]:
    """POST /attach with an Upgrade, before start (as the node does): the response and its raw socket."""
    response = client.post(
        client._url("/containers/{0}/attach", container_id),
        None,
        params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0},
        stream=True,
        headers={"Connection": "Upgrade", "Upgrade": "tcp"},
    )
    wrapper = client._get_raw_response_socket(response)
    return response, getattr(wrapper, "_sock", wrapper)


def read_frames(sock: socket.socket) -> dict[int, int]:
    """Read a multiplexed attach stream to EOF; return payload bytes per stream (1 stdout, 2 stderr)."""
    counts = {1: 0, 2: 0}
    buf = b""
    remaining = 0
    kind = 1
    while True:
        data = sock.recv(256 * 1024)
        if not data:
            return counts
        buf = buf + data if buf else data
        pos = 0
        while pos < len(buf):
            if remaining:
                take = min(remaining, len(buf) - pos)
                counts[kind] += take
                remaining -= take
                pos += take
                continue
            if len(buf) - pos < _HEADER.size:
                break
            kind, remaining = _HEADER.unpack_from(buf, pos)
            pos += _HEADER.size
        buf = buf[pos:]


@dataclass
class RawTiming:
    total: float
    phases: dict[str, float]
    exit_code: int
    output_bytes: int


def run_noop(client: docker.APIClient, execution_id: str, command: list[str]) -> RawTiming:
    """create, attach, start, read the output to EOF, wait, remove: what the node does for a job."""
    t0 = time.perf_counter()
    spec = container_spec(client, execution_id, command)
    cid = client.create_container(**spec)["Id"]
    t1 = time.perf_counter()
    response, sock = attach(client, cid)
    t2 = time.perf_counter()
    try:
        client.start(cid)
        t3 = time.perf_counter()
        counts = read_frames(sock)
        t4 = time.perf_counter()
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            response.close()
    code = int(client.wait(cid)["StatusCode"])
    t5 = time.perf_counter()
    client.remove_container(cid, force=True, v=True)
    t6 = time.perf_counter()
    phases = {
        "create": t1 - t0,
        "attach": t2 - t1,
        "start": t3 - t2,
        "output to EOF": t4 - t3,
        "wait": t5 - t4,
        "remove": t6 - t5,
    }
    return RawTiming(t6 - t0, phases, code, sum(counts.values()))


# --------------------------------------------------------------------------- the docker CLI (the floor)


def cli_run_args(
    execution_id: str, command: list[str], *, log_driver: str = "none", log_opts: dict[str, str] | None = None
) -> list[str]:
    """``docker run --rm`` of the container the node would make for ``command`` (same name pattern,
    labels, env and host config), attached to stdout/stderr, with the given engine log driver."""
    d = node_defaults()
    args = ["docker", "run", "--rm", "--name", f"haddock-{NODE_ID}-{execution_id}"]
    for k, v in {LABEL_NODE: NODE_ID, LABEL_JOB: "bench-job", LABEL_EXECUTION: execution_id}.items():
        args += ["--label", f"{k}={v}"]
    args += ["--env", "HADDOCK_JOB_ID=bench-job", "--env", f"HADDOCK_EXECUTION_ID={execution_id}"]
    args += ["--network", "none", "--log-driver", log_driver]
    for k, v in (log_opts or {}).items():
        args += ["--log-opt", f"{k}={v}"]
    if d["init"]:
        args.append("--init")
    if d["pids_limit"]:
        args += ["--pids-limit", str(d["pids_limit"])]
    if d["no_new_privileges"]:
        args += ["--security-opt", "no-new-privileges"]
    for cap in d["cap_drop"]:
        args += ["--cap-drop", cap]
    return [*args, IMAGE, *command]


def cli_run(
    execution_id: str, command: list[str], *, log_driver: str = "none", log_opts: dict[str, str] | None = None
) -> float:
    """Run :func:`cli_run_args` with its output to /dev/null; the wall time of the CLI, start to exit."""
    args = cli_run_args(execution_id, command, log_driver=log_driver, log_opts=log_opts)
    t0 = time.perf_counter()
    res = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {res.returncode}: {res.stderr.decode()[-500:]}")
    return wall


# --------------------------------------------------------------------------- engine call tracing


def endpoint(method: str, url: str) -> str:
    """``GET /containers/{id}/json`` from a full engine URL."""
    path = urlsplit(url).path
    parts = [p for p in path.split("/") if p]
    if parts and parts[0].startswith("v1."):
        parts = parts[1:]
    if len(parts) >= 2 and parts[0] == "containers" and parts[1] != "create":
        parts = ["containers", "{id}", *parts[2:]]
    elif len(parts) >= 2 and parts[0] == "images" and parts[-1] == "json":
        parts = ["images", "{name}", "json"]
    return f"{method} /{'/'.join(parts)}"


@dataclass
class HttpTrace:
    """Every HTTP request a docker-py client sends, with how long ``send`` took (to the headers)."""

    calls: list[tuple[str, float]] = field(default_factory=list)

    def install(self, session: Any) -> None:
        original = session.send

        def send(request: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(request, **kwargs)
            finally:
                self.calls.append((endpoint(request.method, request.url), time.perf_counter() - t))

        session.send = send

    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int) -> list[tuple[str, float]]:
        return self.calls[mark:]
