"""Bacalhau's job and execution model -> haddock's request; what cannot be translated is a reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haddock.executor.quantity import GiB, MiB
from haddock.executor.records import ResultStatus, RunCommandResult
from haddock.node.cluster import messages as m
from haddock.node.cluster.translate import (
    Untranslatable,
    parse_bacalhau_bytes,
    publish_result,
    ran_to_completion,
    to_bacalhau_result,
    to_request,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "ncl" / "ask_for_bid.json").read_text())


def execution(**task_changes: Any) -> m.Execution:
    doc = copy.deepcopy(FIXTURE["Execution"])
    doc["Job"]["Tasks"][0]["Engine"]["Params"]["Image"] = "haddock-test/busybox"
    doc["Job"]["Tasks"][0].update(task_changes)
    return m.Execution.model_validate(doc)


def test_the_fixture_translates() -> None:
    req = to_request(execution())
    assert req.execution_id == "e-00000000-0000-0000-0000-000000000000"
    assert req.job_id == "j-00000000-0000-0000-0000-000000000000"
    assert req.engine.image == "haddock-test/busybox"
    assert req.engine.parameters == ["sh", "-c", "echo hello"]
    assert req.engine.env["GREETING"] == "hello" and req.engine.env["COLOUR"] == "blue"
    assert req.engine.env["BACALHAU_EXECUTION_ID"] == req.execution_id
    assert req.resources.cpu == 0.1
    assert req.resources.memory == 32 * 1000**2  # Bacalhau's "32mb" is decimal
    assert req.network.mode.value == "none"
    assert [(o.name, o.path) for o in req.outputs] == [("outputs", "/outputs")]
    assert [p.type for p in req.publishers] == ["local"]
    assert req.timeout == 60


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1gb", 10**9),
        ("1g", 10**9),
        ("500m", 500 * 10**6),
        ("500mb", 500 * 10**6),
        ("1gi", GiB),
        ("1GiB", GiB),
        ("100Mi", 100 * MiB),
        ("2kib", 2048),
        ("1,000", 1000),
        ("1.5 GB", 1_500_000_000),
        ("42", 42),
    ],
)
def test_bacalhau_sizes(text: str, expected: int) -> None:
    assert parse_bacalhau_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "1zb", "-1gb", "1 g b x"])
def test_bad_sizes_are_reasons(text: str) -> None:
    with pytest.raises(Untranslatable, match="memory"):
        parse_bacalhau_bytes(text)


@given(st.integers(0, 10**6), st.sampled_from(["k", "kb", "m", "mb", "g", "gb"]))
def test_decimal_units_are_decimal(n: int, unit: str) -> None:
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}[unit[0]]
    assert parse_bacalhau_bytes(f"{n}{unit}") == n * scale


@given(st.integers(0, 10**6), st.sampled_from(["ki", "kib", "mi", "mib", "gi", "gib"]))
def test_binary_units_are_binary(n: int, unit: str) -> None:
    scale = {"k": 2**10, "m": 2**20, "g": 2**30}[unit[0]]
    assert parse_bacalhau_bytes(f"{n}{unit.upper()}") == n * scale


@pytest.mark.parametrize(
    ("network", "mode"),
    [({"Type": "None"}, "none"), ({"Type": "Default"}, "none"), ({"Type": "Bridge"}, "bridge"),
     ({"Type": "host"}, "host"), ({"Type": "Full"}, "host"), ({"Type": 5}, "bridge")],
)  # fmt: skip
def test_networks(network: dict[str, Any], mode: str) -> None:
    assert to_request(execution(Network=network)).network.mode.value == mode


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"Network": {"Type": "HTTP", "Domains": ["example.com"]}}, "HTTP \\(example.com\\) is not supported"),
        ({"Network": {"Type": "Warp"}}, "unknown"),
        ({"Engine": {"Type": "wasm", "Params": {}}}, "engine 'wasm' is not supported"),
        ({"Engine": {"Type": "docker", "Params": {}}}, "names no image"),
        ({"Resources": {"CPU": "lots"}}, "CPU 'lots'"),
        ({"Resources": {"Memory": "12 parsecs"}}, "memory '12 parsecs'"),
        ({"Resources": {"GPU": "0.5"}}, "GPU"),
        ({"InputSources": [{"Source": {"Type": "ipfs", "Params": {"CID": "Qm"}}, "Target": "/in"}]}, "ipfs"),
        ({"InputSources": [{"Source": {"Type": "urlDownload", "Params": {"URL": "x"}}, "Target": "in"}]}, "target"),
        ({"Publisher": {"Type": "ipfs"}}, "publisher 'ipfs'"),
        ({"Publisher": {"Type": "s3", "Params": {"Bucket": "b", "Key": "{time}/"}}}, "\\{time\\}"),
        ({"Timeouts": {"ExecutionTimeout": 90 * 24 * 3600}}, "30 days"),
        ({"Env": {"HADDOCK_X": "1"}}, "engine.env"),
    ],
)
def test_refusals_have_reasons(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(Untranslatable, match=reason):
        to_request(execution(**changes))


def test_job_level_refusals() -> None:
    ex = execution()
    assert ex.job is not None
    ex.job.type = "service"
    with pytest.raises(Untranslatable, match="job type 'service'"):
        to_request(ex)
    ex.job.type = "batch"
    ex.job.tasks = ex.job.tasks * 2
    with pytest.raises(Untranslatable, match="exactly one task"):
        to_request(ex)
    with pytest.raises(Untranslatable, match="no job"):
        to_request(m.Execution(id="e-1"))


def test_inputs() -> None:
    sources = [
        {"Source": {"Type": "urlDownload", "Params": {"URL": "https://example.com/a.csv"}}, "Target": "/in/a.csv"},
        {
            "Source": {"Type": "s3", "Params": {"Bucket": "bkt", "Key": "data/*", "Region": "eu-west-1"}},
            "Target": "/s3",
        },
        {"Source": {"Type": "s3", "Params": {"bucket": "bkt", "key": "one.txt"}}, "Target": "/one"},
        {"Source": {"Type": "inline", "Params": {"URL": "data:,hello"}}, "Target": "/hello"},
        {"Source": {"Type": "local", "Params": {"SourcePath": "/srv/x", "ReadWrite": True}}, "Target": "/x"},
    ]
    req = to_request(execution(InputSources=sources))
    dumped = [{"type": s.type, **s.model_dump(exclude_defaults=True)} for s in req.input_sources]
    assert dumped[0] == {"type": "url", "url": "https://example.com/a.csv", "target": "/in/a.csv"}
    assert dumped[1] == {"type": "s3", "bucket": "bkt", "prefix": "data/", "region": "eu-west-1", "target": "/s3"}
    assert dumped[2] == {"type": "s3", "bucket": "bkt", "key": "one.txt", "target": "/one"}
    assert dumped[3] == {"type": "inline", "data_url": "data:,hello", "target": "/hello"}
    assert dumped[4] == {"type": "local", "path": "/srv/x", "read_write": True, "target": "/x"}


@pytest.mark.parametrize(("given", "expected"), [(True, True), (False, False), ("false", False), ("true", True)])
def test_a_local_inputs_read_write_is_read_strictly(given: Any, expected: bool) -> None:
    """The string "false" once meant read-write (truthiness): a host path mounted writable by mistake."""
    src = {"Source": {"Type": "local", "Params": {"SourcePath": "/srv/x", "ReadWrite": given}}, "Target": "/x"}
    (source,) = to_request(execution(InputSources=[src])).input_sources
    assert source.model_dump()["read_write"] is expected


def test_a_local_inputs_read_write_that_is_not_a_boolean_is_refused() -> None:
    src = {"Source": {"Type": "local", "Params": {"SourcePath": "/srv/x", "ReadWrite": "yes"}}, "Target": "/x"}
    with pytest.raises(Untranslatable, match="ReadWrite"):
        to_request(execution(InputSources=[src]))


def test_s3_publisher_placeholders() -> None:
    pub = {"Type": "s3", "Params": {"Bucket": "res", "Key": "{jobID}/{executionID}/", "Encoding": "plain"}}
    spec = to_request(execution(Publisher=pub)).publishers[0].model_dump()
    assert spec["key"] == "{job_id}/{execution_id}/" and spec["bucket"] == "res" and spec["archive"] is False


def test_timeouts() -> None:
    assert to_request(execution(Timeouts={"TotalTimeout": 30})).timeout == 30
    assert to_request(execution(Timeouts={})).timeout is None
    assert to_request(execution(Timeouts={"ExecutionTimeout": 9223372036})).timeout is None  # models.NoTimeout


def test_results_go_back_with_bacalhaus_names() -> None:
    ok = RunCommandResult(status=ResultStatus.ERROR, exit_code=3, stdout="o", stdout_truncated=True, stderr="e")
    assert ran_to_completion(ok)  # a non-zero exit is a completed run, as in Bacalhau
    wire = m.dump(to_bacalhau_result(ok))
    assert wire == {
        "Stdout": "o",
        "StdoutTruncated": True,
        "stderr": "e",
        "StderrTruncated": False,
        "ExitCode": 3,
        "ErrorMsg": "",
    }
    assert not ran_to_completion(RunCommandResult(status=ResultStatus.TIMEOUT, exit_code=137))
    assert not ran_to_completion(RunCommandResult(status=ResultStatus.ERROR, error_message="no image"))
    assert not ran_to_completion(RunCommandResult(status=ResultStatus.SUCCESS, exit_code=0, publish_errors=["s3"]))
    assert publish_result(ok, "/data/r").params == {"URL": "file:///data/r"}
