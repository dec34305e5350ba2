"""Validation of requests: bad input gets a clear message."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from haddock.executor.request import OutputLimits, Resources, RunCommandRequest


def request(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "job_id": "j1",
        "execution_id": "e1",
        "results_dir": "/tmp/results/e1",
        "engine": {"image": "busybox:1.36", "parameters": ["echo", "hi"]},
    }
    for key, value in overrides.items():
        if key.startswith("engine_"):
            base["engine"][key.removeprefix("engine_")] = value
        else:
            base[key] = value
    return base


def error_of(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as info:
        RunCommandRequest.model_validate(request(**overrides))
    return str(info.value)


def test_valid_request_defaults() -> None:
    req = RunCommandRequest.model_validate(request(timeout="30s", resources={"cpu": "500m", "memory": "64Mi"}))
    assert req.timeout == 30.0
    assert req.resources.cpu == 0.5 and req.resources.memory == 64 * 1024**2
    assert req.network.mode.value == "none"
    assert req.output_limits.max_stdout_file_length == 1024**3
    assert req.output_limits.max_stdout_return_length == 2048
    assert req.engine.pull_policy.value == "if-not-present"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"engine_image": ""}, "image must not be empty"),
        ({"engine_image": "Busybox"}, "not a valid image reference"),
        ({"engine_image": "busybox latest"}, "not a valid image reference"),
        ({"engine_working_dir": "tmp"}, "must be an absolute path"),
        ({"engine_env": {"1BAD": "x"}}, "is not valid"),
        ({"engine_env": {"A-B": "x"}}, "is not valid"),
        ({"engine_env": {"HADDOCK_JOB_ID": "x"}}, "reserved"),
        ({"engine_env": {"haddock_thing": "x"}}, "reserved"),
        ({"resources": {"cpu": -1}}, "must not be negative"),
        ({"resources": {"cpu": "4096"}}, "more than any node has"),
        ({"resources": {"memory": "1Mi"}}, "below the engine's minimum"),
        ({"resources": {"memory": "1000Ti"}}, "more than any node has"),
        ({"resources": {"memory": "lots"}}, "is not a byte size"),
        ({"resources": {"gpu": -2}}, "must not be negative"),
        ({"outputs": [{"name": "../x", "path": "/out"}]}, "single path segment"),
        ({"outputs": [{"name": "a/b", "path": "/out"}]}, "single path segment"),
        ({"outputs": [{"name": "..", "path": "/out"}]}, "single path segment"),
        ({"outputs": [{"name": "stdout", "path": "/out"}]}, "reserved"),
        ({"outputs": [{"name": "o", "path": "out"}]}, "absolute path"),
        ({"outputs": [{"name": "o", "path": "/"}]}, "root directory"),
        ({"outputs": [{"name": "o", "path": "/a"}, {"name": "o", "path": "/b"}]}, "unique"),
        ({"inputs": [{"source": "rel", "target": "/in"}]}, "absolute path on the node"),
        ({"inputs": [{"source": "/x", "target": "/in/../etc"}]}, "'..'"),
        (
            {"inputs": [{"source": "/x", "target": "/d"}], "outputs": [{"name": "o", "path": "/d"}]},
            "mounted once",
        ),
        ({"execution_id": "has space"}, "execution_id"),
        ({"execution_id": ""}, "execution_id"),
        ({"job_id": "-dash"}, "job_id"),
        ({"results_dir": "relative/dir"}, "results_dir"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"timeout": "forever"}, "is not a duration"),
        ({"timeout": "400d"}, "at most 30 days"),
        ({"timeout": "4w"}, "is not a duration"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_rejections(overrides: dict[str, Any], message: str) -> None:
    assert message in error_of(**overrides)


def test_image_references() -> None:
    for image in (
        "busybox",
        "busybox:1.36",
        "127.0.0.1:5000/haddock-test/busybox:latest",
        "ghcr.io/org/repo@sha256:" + "a" * 64,
        "localhost/x_y__z-w:v1.2",
    ):
        assert RunCommandRequest.model_validate(request(engine_image=image)).engine.image == image


def test_output_limits_quantities() -> None:
    limits = OutputLimits(max_stdout_file_length="1Mi", max_stdout_return_length="100")  # type: ignore[arg-type]
    assert limits.max_stdout_file_length == 1024**2 and limits.max_stdout_return_length == 100
    with pytest.raises(ValidationError, match="must not be negative"):
        OutputLimits(max_stderr_file_length=-1)


def test_resources_zero_means_unlimited() -> None:
    r = Resources()
    assert (r.cpu, r.memory, r.disk, r.gpu) == (0.0, 0, 0, 0)
