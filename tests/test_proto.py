"""The generated gRPC code of the contract (proto/haddock/v1): importable as ``haddock.v1``, complete, fresh.

The full contract checks (buf lint, format, breaking, staleness) are scripts/check-proto.sh, run by
`make lint`; these tests are the fast Python side of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from haddock.v1 import executor_pb2, executor_pb2_grpc, node_pb2, node_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parent.parent
GENERATED_ROOT = ROOT / "proto" / "haddock"


def _full_request() -> types_pb2.RunCommandRequest:
    request = types_pb2.RunCommandRequest(
        job_id="job-1",
        execution_id="exec-1.a_b",
        engine=types_pb2.DockerEngineSpec(
            image="registry.local/busybox:1.36",
            entrypoint=["/bin/sh", "-c"],
            parameters=["echo hé && exit 3"],
            env={"A": "1", "UNICODE": "ü€"},
            working_dir="/work",
            pull_policy=types_pb2.PULL_POLICY_IF_NOT_PRESENT,
        ),
        resources=types_pb2.Resources(cpu=0.5, memory_bytes=256 * 2**20, disk_bytes=2**40, gpu=1),
        network=types_pb2.NetworkConfig(mode=types_pb2.NETWORK_MODE_BRIDGE),
        inputs=[
            types_pb2.InputVolume(source="/data/in", target="/inputs/a", read_only=True),
            types_pb2.InputVolume(source="/data/other", target="/inputs/b", read_only=True),
        ],
        outputs=[types_pb2.ResultPath(name="out", path="/outputs")],
        input_sources=[
            types_pb2.InputSource(inline=types_pb2.InlineSource(data_url="data:,hi", target="/in/inline")),
            types_pb2.InputSource(local=types_pb2.LocalSource(path="/srv/d", target="/in/local", read_write=True)),
            types_pb2.InputSource(url=types_pb2.UrlSource(url="https://h/x", target="/in/url", sha256="ab" * 32)),
            types_pb2.InputSource(
                s3=types_pb2.S3Source(
                    bucket="bkt",
                    key="k",
                    prefix="p/",
                    filter=".*",
                    region="eu-west-1",
                    endpoint_url="http://127.0.0.1:9000",
                    version_id="v1",
                    sha256="cd" * 32,
                    target="/in/s3",
                )
            ),
        ],
        publishers=[
            types_pb2.Publisher(local=types_pb2.LocalPublisher(archive=True)),
            types_pb2.Publisher(
                s3=types_pb2.S3Publisher(
                    bucket="bkt", key="{job_id}/", region="eu", endpoint_url="http://127.0.0.1:1", archive=True
                )
            ),
        ],
        output_limits=types_pb2.OutputLimits(
            max_stdout_file_length=2**30,
            max_stdout_return_length=2048,
            max_stderr_file_length=0,  # explicit 0 ("keep nothing") must survive, unlike an unset field
            max_stderr_return_length=1,
        ),
        kind=types_pb2.EXECUTION_KIND_SERVICE,
        service=types_pb2.ServiceSpec(
            name="web",
            ports=[
                types_pb2.ServicePort(
                    name="http", container_port=8080, protocol="tcp", host_port=30001, host_ip="127.0.0.1"
                )
            ],
            readiness=types_pb2.HttpProbe(
                port="http",
                path="/ready",
                interval=Duration(seconds=1),
                timeout=Duration(seconds=1),
                failure_threshold=2,
                start_period=Duration(seconds=5),
            ),
            liveness=types_pb2.HttpProbe(
                port="http",
                path="/live",
                interval=Duration(seconds=2),
                timeout=Duration(seconds=1),
                failure_threshold=3,
                start_period=Duration(seconds=10),
            ),
            image_healthcheck=True,
            restart=types_pb2.RestartSpec(
                policy=types_pb2.RESTART_POLICY_ALWAYS,
                max_restarts=5,
                backoff_initial=Duration(nanos=500_000_000),
                backoff_max=Duration(seconds=30),
            ),
        ),
    )
    request.timeout.FromSeconds(90)
    request.timeout.nanos = 500_000_000
    return request


def _unset_fields(message: Message, prefix: str = "") -> list[str]:
    """Paths of the fields of ``message`` (recursively) that are unset or empty."""
    unset: list[str] = []
    for field in message.DESCRIPTOR.fields:
        path = f"{prefix}{field.name}"
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_") and message.WhichOneof(oneof.name) != field.name:
            continue  # one member of a oneof is set; the others cannot be
        value = getattr(message, field.name)
        if field.is_repeated:
            if len(value) == 0:
                unset.append(path)
            elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
                for i, item in enumerate(value):
                    unset.extend(_unset_fields(item, f"{path}[{i}]."))
        elif field.message_type is not None:
            if not message.HasField(field.name):
                unset.append(path)
            elif field.message_type.full_name.startswith("haddock."):
                unset.extend(_unset_fields(value, f"{path}."))
        elif field.has_presence:
            if not message.HasField(field.name):
                unset.append(path)
        elif value == field.default_value:
            unset.append(path)
    return unset


def test_run_command_request_round_trips_with_every_field_set() -> None:
    request = _full_request()
    # A new field in the contract must be set here too, so that it is covered by the round trip.
    assert _unset_fields(request) == []

    data = request.SerializeToString(deterministic=True)
    decoded = types_pb2.RunCommandRequest.FromString(data)

    assert decoded == request
    assert _unset_fields(decoded) == []
    assert decoded.SerializeToString(deterministic=True) == data
    assert decoded.output_limits.HasField("max_stderr_file_length")
    assert decoded.output_limits.max_stderr_file_length == 0
    assert decoded.engine.env["UNICODE"] == "ü€"
    assert decoded.timeout.ToNanoseconds() == 90_500_000_000
    assert decoded.resources.cpu == 0.5

    # Nested in the RPC messages too.
    start = executor_pb2.StartRequest(request=request)
    assert executor_pb2.StartRequest.FromString(start.SerializeToString()).request == request
    execution = node_pb2.GetExecutionResponse(execution_id="exec-1.a_b", request=request)
    assert node_pb2.GetExecutionResponse.FromString(execution.SerializeToString()).request == request


def test_generated_modules_live_in_haddock_v1_not_beside_our_executor_package() -> None:
    import haddock.executor as executor

    assert executor_pb2.__name__ == "haddock.v1.executor_pb2"
    assert executor_pb2_grpc.__name__ == "haddock.v1.executor_pb2_grpc"
    assert Path(executor_pb2.__file__).parent == GENERATED_ROOT / "v1"
    assert Path(executor.__file__).resolve().parent == ROOT / "executor"
    assert types_pb2.DESCRIPTOR.package == "haddock.v1"

    service = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"]
    assert service.full_name == "haddock.v1.ExecutorService"
    assert {m.name for m in service.methods} == {
        "IsInstalled",
        "ShouldBid",
        "ShouldBidBasedOnUsage",
        "Start",
        "Run",
        "Wait",
        "Cancel",
        "GetLogStream",
    }
    assert hasattr(executor_pb2_grpc, "ExecutorServiceStub")
    assert hasattr(executor_pb2_grpc, "add_ExecutorServiceServicer_to_server")
    assert hasattr(node_pb2_grpc, "NodeServiceStub")


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".proto" and "__pycache__" not in p.parts
    }


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    checked_in = _files(GENERATED_ROOT)
    generated = _files(tmp_path / "haddock")
    assert sorted(checked_in) == sorted(generated), "generated files added or removed: run `make proto`"
    stale = [name for name in generated if checked_in[name] != generated[name]]
    assert stale == [], f"stale generated files {stale}: run `make proto`"
