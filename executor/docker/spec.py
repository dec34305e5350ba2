"""A container's specification: a pure function of the request, the prepared inputs and the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.types

from haddock.executor.docker.config import DockerConfig
from haddock.executor.request import RESERVED_ENV_PREFIX, InputVolume, RunCommandRequest

__all__ = [
    "LABEL_ATTEMPT",
    "LABEL_EXECUTION",
    "LABEL_JOB",
    "LABEL_NODE",
    "container_name",
    "container_spec",
    "gpu_request",
    "output_dirs",
    "port_bindings",
]

LABEL_NODE = "haddock.node-id"
LABEL_JOB = "haddock.job-id"
LABEL_EXECUTION = "haddock.execution-id"
LABEL_ATTEMPT = "haddock.attempt"  # a service's container: which attempt (1 = the first, then one per restart)


def container_name(node_id: str, execution_id: str) -> str:
    """Deterministic: one execution, one name, on one node."""
    return f"haddock-{node_id}-{execution_id}"


def output_dirs(request: RunCommandRequest) -> list[Path]:
    """The host directories of the request's named outputs (under its results dir)."""
    assert request.results_dir is not None, "the runner refuses requests without results_dir"
    return [request.results_dir / o.name for o in request.outputs]


def gpu_request(count: int, devices: list[str]) -> docker.types.DeviceRequest:
    """The device request for a job's GPUs: the devices the node allocated, by id (CDI names through
    the CDI driver); by count only when no ids were given (an executor used without a node)."""
    if not devices:
        return docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])
    if all("=" in d and "/" in d.split("=", 1)[0] for d in devices):  # vendor.com/class=name
        return docker.types.DeviceRequest(driver="cdi", device_ids=list(devices))
    return docker.types.DeviceRequest(device_ids=list(devices), capabilities=[["gpu"]])


def port_bindings(request: RunCommandRequest) -> dict[str, tuple[str, int]]:
    """A service's published ports: ``"<container port>/tcp" -> (host ip, host port)``, as the node chose
    them (a request whose ports the node has not published yet has none)."""
    if request.service is None:
        return {}
    return {
        f"{p.container_port}/{p.protocol}": (p.host_ip or "127.0.0.1", p.host_port)
        for p in request.service.ports
        if p.host_port is not None
    }


def container_spec(
    request: RunCommandRequest, volumes: list[InputVolume], config: DockerConfig, node_id: str, *, attempt: int = 1
) -> dict[str, Any]:
    """Keyword arguments of docker-py's ``create_container`` (``host_config`` still as a dict).

    Inputs are bound as prepared (read-only unless a root allows more), each output directory
    read-write at its container path; limits, hardening and labels from the request and the config.
    """
    res = request.resources
    engine = request.engine
    mounts = [
        docker.types.Mount(target=v.target, source=str(v.source), type="bind", read_only=v.read_only)
        for v in [*request.inputs, *volumes]
    ]
    for out, host in zip(request.outputs, output_dirs(request), strict=True):
        mounts.append(docker.types.Mount(target=out.path, source=str(host), type="bind", read_only=False))
    host_config: dict[str, Any] = {
        "network_mode": request.network.mode.value,
        "mounts": mounts,
        "log_config": docker.types.LogConfig(
            type=config.log_driver, config=dict(config.log_driver_options) if config.log_driver != "none" else {}
        ),
        "init": config.init,
    }
    if res.cpu:
        host_config["nano_cpus"] = int(res.cpu * 1e9)
    if res.memory:
        host_config["mem_limit"] = res.memory
        host_config["memswap_limit"] = res.memory  # equal: no swap
    if config.pids_limit:
        host_config["pids_limit"] = config.pids_limit
    if config.no_new_privileges:
        host_config["security_opt"] = ["no-new-privileges"]
    if config.cap_drop:
        host_config["cap_drop"] = list(config.cap_drop)
    if res.gpu:
        host_config["device_requests"] = [gpu_request(res.gpu, request.gpu_devices)]
    bindings = port_bindings(request)
    if bindings:
        host_config["port_bindings"] = bindings
    env = dict(engine.env)
    env[f"{RESERVED_ENV_PREFIX}JOB_ID"] = request.job_id
    env[f"{RESERVED_ENV_PREFIX}EXECUTION_ID"] = request.execution_id
    labels = {LABEL_NODE: node_id, LABEL_JOB: request.job_id, LABEL_EXECUTION: request.execution_id}
    if request.is_service:
        labels[LABEL_ATTEMPT] = str(attempt)
    return {
        "image": engine.image,
        "command": list(engine.parameters) or None,
        "entrypoint": engine.entrypoint,
        "environment": env,
        "working_dir": engine.working_dir,
        "labels": labels,
        "ports": [tuple(key.split("/")) for key in bindings] or None,
        "name": container_name(node_id, request.execution_id),
        "stdin_open": False,
        "tty": False,
        "host_config": host_config,
    }
