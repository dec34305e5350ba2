"""Job types (after Racetrack) on a real engine and a real node: the golang and python3 plugins build a user's
``perform`` into an HTTP job, run once (batch) or deployed as a service behind the gateway.

The base images are the local debootstrap ones (scripts/build-test-images.sh, once per machine); job images
are tagged by content, so a rerun of unchanged fixtures builds nothing.
"""

from __future__ import annotations

import json
import random
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from haddock.executor.jobspec import ManifestError, parse_manifest
from haddock.node.client import NodeClient
from haddock.node.config import ServicesSettings
from haddock.node.jobtypes.config import JobTypesSettings
from haddock.node.server import RunningServer, start_server
from tests.conftest import TelemetryCapture, node_settings
from tests.test_cli import haddock

JOBS = Path(__file__).parent / "fixtures" / "jobs"
BASE_IMAGES = {"golang": "haddock-test/golang:latest", "python3": "haddock-test/python3:latest"}


@pytest.fixture(scope="module")
def base_images() -> dict[str, str]:
    client = docker.from_env()
    try:
        for image in BASE_IMAGES.values():
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                pytest.fail(f"{image} is missing: run scripts/build-test-images.sh (make bootstrap)")
    finally:
        client.close()
    return BASE_IMAGES


NodeFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def job_node(
    tmp_path: Path, node_id: str, base_images: dict[str, str], telemetry: TelemetryCapture
) -> AsyncIterator[RunningServer]:
    start = random.randrange(40000, 59000)
    services = ServicesSettings(port_range=(start, start + 7), gateway_listen="127.0.0.1:0")
    settings = node_settings(
        tmp_path, node_id, services=services, jobtypes=JobTypesSettings(base_images=base_images, build_timeout=300)
    )
    running = await start_server(settings)
    yield running
    await running.stop(1)


def copy_job(fixture: str, tmp_path: Path, **manifest: Any) -> Path:
    """A fixture job copied (so that it can be changed), its manifest updated."""
    target = tmp_path / f"{fixture}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(JOBS / fixture, target)
    if manifest:
        data = parse_manifest((target / "job.yaml").read_text()).model_dump(exclude={"not_applied"})
        data.update(manifest)
        (target / "job.yaml").write_text(json.dumps(data))
    return target


async def post(url: str, body: bytes) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body) as resp:
        return resp.status, await resp.text()


async def events(client: NodeClient, exec_id: str) -> list[dict[str, Any]]:
    return list((await client.describe(exec_id))["events"])


def build_steps(evs: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in evs if e["kind"] == "building" and (e.get("details") or {}).get("step")]


# ----------------------------------------------------------------------------- the manifest


def test_manifest_accepts_racetracks_forms_and_reports_cluster_fields() -> None:
    older = parse_manifest((JOBS / "adder-go" / "job.yaml").read_text())
    assert older.jobtype == "golang:latest" and older.golang().gomod == "go.mod"
    assert older.not_applied == ["git"]
    newer = parse_manifest((JOBS / "adder-python" / "job.yaml").read_text())
    assert newer.jobtype_name == "python3" and newer.jobtype_version == "2.x"
    assert newer.resources.memory_bytes == 256 * 1024 * 1024 and newer.resources.cpu_cores == 0.5


@pytest.mark.parametrize(
    ("yaml", "field"),
    [
        ("name: my_job\njobtype: golang", "name"),
        ("name: adder\njobtype: golang\nflavour: x", "flavour"),
        ("name: adder\njobtype: golang\nversion: one", "version"),
        ("name: adder\njobtype: python3\njobtype_extra: {entrypoint_class: A}", "entrypoint_path"),
        ("name: adder", "jobtype"),
        ("name: adder\njobtype: golang\nnot_applied: [git, bogus]", "not_applied"),  # only cluster fields
        ("name: adder\njobtype: golang\nresources: {memory_max: lots}", "memory_max"),
        # what the templates put in COPY/RUN/ENV lines may not break out of them (Dockerfile injection)
        (
            'name: adder\njobtype: python3\njobtype_extra: {entrypoint_path: "a.py\\nADD http://169.254.169.254/ /x"}',
            "entrypoint_path",
        ),
        ('name: adder\njobtype: python3\njobtype_extra: {entrypoint_path: "a\\".py"}', "entrypoint_path"),
        ('name: adder\njobtype: golang\nlabels: {git_version: "1\\"\\nFROM evil/x"}', "git_version"),
        ('name: adder\njobtype: golang\nlabels: {git_version: "$(id)"}', "git_version"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_field(yaml: str, field: str) -> None:
    with pytest.raises(ManifestError, match=field):
        parse_manifest(yaml)


async def test_a_bad_manifest_is_refused_before_anything_is_built(job_node: RunningServer, tmp_path: Path) -> None:
    for change, field in (({"name": "my_job"}, "name"), ({"replicaz": 2}, "replicaz")):
        job = copy_job("adder-go", tmp_path, **change)
        done = await haddock("run", "--node", job_node.address, "--job", str(job), "--payload", "{}")
        assert done.code == 125, done.stderr
        assert field in done.stderr and "Traceback" not in done.stderr
    async with NodeClient(job_node.address) as client:
        assert await client.list_executions() == []


# ----------------------------------------------------------------------------- batch


async def test_go_job_in_batch_mode_answers_into_stdout_and_fails_with_the_jobs_error(
    job_node: RunningServer,
) -> None:
    done = await haddock(
        "run",
        "--node",
        job_node.address,
        "--job",
        str(JOBS / "adder-go"),
        "--payload",
        '{"numbers":[1,2,3]}',
        "--json",
        limit=300,
    )
    assert done.code == 0, done.stderr
    result = json.loads(done.out)
    assert result["status"] == "success"
    results = job_node.node.settings.executions_dir / result["execution_id"] / "results"
    assert (results / "stdout").read_text() == "6"
    assert (results / "exitCode").read_text() == "0"
    assert "listening on 0.0.0.0:7000" in (results / "stderr").read_text()
    # The manifest's cluster-only `git`: one note on stderr, and an event on the execution.
    notes = [line for line in done.stderr.splitlines() if "not applied" in line]
    assert len(notes) == 1 and "git" in notes[0] and "single node" in notes[0], done.stderr
    async with NodeClient(job_node.address) as client:
        noted = [e for e in await events(client, result["execution_id"]) if e["kind"] == "not-applied"]
    assert len(noted) == 1 and noted[0]["details"]["fields"] == "git", noted
    assert "git" in noted[0]["message"] and "single node" in noted[0]["message"]

    failed = await haddock(
        "run",
        "--node",
        job_node.address,
        "--job",
        str(JOBS / "adder-go"),
        "--payload",
        '{"nothing": 1}',
        "--json",
        limit=120,
    )
    assert failed.code != 0
    answer = json.loads(failed.out)
    assert answer["status"] == "error"
    assert "HTTP 500" in answer["error_message"] and "'numbers' parameter was not given" in answer["error_message"]


async def test_python_job_in_batch_mode_value_error_is_400(job_node: RunningServer) -> None:
    ok = await haddock(
        "run",
        "--node",
        job_node.address,
        "--job",
        str(JOBS / "adder-python"),
        "--payload",
        '{"numbers":[1,2,3]}',
        limit=300,
    )
    assert ok.code == 0, ok.stderr
    assert ok.out == b"6"
    bad = await haddock(
        "run",
        "--node",
        job_node.address,
        "--job",
        str(JOBS / "adder-python"),
        "--payload",
        '{"numbers":["x"]}',
        "--json",
        limit=120,
    )
    answer = json.loads(bad.out)
    assert answer["status"] == "error"
    assert "HTTP 400" in answer["error_message"] and "must hold numbers only" in answer["error_message"]
    # One coherent sequence: the answer, then the container's one exit (stopped by the node once answered).
    async with NodeClient(job_node.address) as client:
        evs = await events(client, answer["execution_id"])
    kinds = [e["kind"] for e in evs]
    assert kinds.count("exited") == 1 and kinds.count("answered") == 1, kinds
    assert kinds.index("started") < kinds.index("answered") < kinds.index("exited") < kinds.index("results-written")
    answered = evs[kinds.index("answered")]
    assert answered["details"]["http_status"] == "400" and "HTTP 400" in answered["message"], answered
    exited = evs[kinds.index("exited")]
    assert exited["message"].endswith("(stopped by the node: the job had answered)"), exited
    assert exited["details"]["stop_reason"] == "batch-done", exited


async def test_a_syntax_error_ends_error_with_the_compilers_message(job_node: RunningServer, tmp_path: Path) -> None:
    job = copy_job("adder-go", tmp_path)
    (job / "perform.go").write_text((job / "perform.go").read_text().replace("return sumNumbers", "return sumNumbers("))
    done = await haddock("run", "--node", job_node.address, "--job", str(job), "--payload", "{}", "--json", limit=300)
    assert done.code != 0
    answer = json.loads(done.out)
    assert answer["status"] == "error"
    assert "syntax error" in answer["error_message"], answer["error_message"]
    assert "failed at step 3/" in answer["error_message"]  # the failing step is named (2 is the COPY)


async def test_a_go_module_needing_downloads_says_what_to_do(job_node: RunningServer, tmp_path: Path) -> None:
    job = copy_job("adder-go", tmp_path)
    (job / "go.mod").write_text("module supersmart\n\ngo 1.19\n\nrequire github.com/pkg/errors v0.9.1\n")
    (job / "perform.go").write_text((job / "perform.go").read_text().replace('"errors"', '"github.com/pkg/errors"'))
    done = await haddock("run", "--node", job_node.address, "--job", str(job), "--payload", "{}", "--json", limit=300)
    answer = json.loads(done.out)
    assert answer["status"] == "error"
    assert "module proxy" in answer["error_message"] and "go mod vendor" in answer["error_message"]


# ----------------------------------------------------------------------------- service mode


async def test_deploy_go_job_call_it_through_the_gateway_and_redeploy_without_building(
    job_node: RunningServer,
) -> None:
    node = job_node.address
    gw = f"http://{job_node.node.gateway_address}"
    first = await haddock("deploy", "--node", node, str(JOBS / "adder-go"), limit=300)
    assert first.code == 0, first.stderr
    exec_id = first.out.decode().strip()
    assert [line for line in first.stderr.splitlines() if "not applied" in line] == [
        "note: job.yaml's git is accepted but not applied: Racetrack's cluster-only fields do not apply on a "
        "single node"
    ], first.stderr

    called = await haddock("call", "--node", node, "adder", '{"numbers": [40, 2]}')
    assert (called.code, called.out) == (0, b"42"), called.stderr
    missing = await haddock("call", "--node", node, "adder@0.0.1", "{}")
    assert missing.code == 1 and "500" in missing.stderr and "'numbers' parameter was not given" in missing.stderr
    status, _ = await post(f"{gw}/pub/job/adder/latest/api/v1/perform", b"not json")
    assert status == 400
    status, text = await post(f"{gw}/pub/job/adder/latest/api/v1/perform", b'{"numbers": [1, 1]}')
    assert (status, text) == (200, "2")

    async with NodeClient(node) as client:
        described = await client.describe(exec_id)
        created = described["created_at"]
        async with aiohttp.ClientSession() as s, s.get(f"{gw}/pub/job/adder/0.0.1/live") as resp:
            live = await resp.json()
        from datetime import datetime

        from haddock.executor.records import epoch_ms

        assert live["deployment_timestamp"] == epoch_ms(datetime.fromisoformat(created))

        again = await haddock("deploy", "--node", node, str(JOBS / "adder-go"), limit=300)
        assert again.code == 0, again.stderr
        second = again.out.decode().strip()
        evs = await events(client, second)
        assert build_steps(evs) == []  # nothing was built
        assert any(e["kind"] == "built" and "nothing to build" in e["message"] for e in evs), evs
        assert "replacing " + exec_id in again.stderr
        assert (await client.describe(exec_id))["state"] == "EXECUTION_STATE_CANCELLED"
        called = await haddock("call", "--node", node, "adder", '{"numbers": [40, 2]}')
        assert called.out == b"42"
        await client.cancel(second)


async def test_deploy_python_job_a_broken_new_version_keeps_the_old_one_serving(
    job_node: RunningServer, tmp_path: Path
) -> None:
    node = job_node.address
    job = copy_job("adder-python", tmp_path)
    first = await haddock("deploy", "--node", node, str(job), limit=300)
    assert first.code == 0, first.stderr
    old = first.out.decode().strip()
    assert (await haddock("call", "--node", node, "adder", '{"numbers": [40, 2]}')).out == b"42"
    bad = await haddock("call", "--node", node, "adder", '{"numbers": ["x"]}')
    assert bad.code == 1 and "400" in bad.stderr and "must hold numbers only" in bad.stderr

    # One changed file: only the job's layer is built (the base image is there already).
    broken = copy_job("adder-python", tmp_path, version="0.0.3")
    (broken / "entrypoint.py").write_text("class AdderJob:\n    def perform(self, numbers)\n        return 1\n")
    done = await haddock("deploy", "--node", node, str(broken), limit=300)
    assert done.code != 0
    assert "SyntaxError" in done.stderr or "invalid syntax" in done.stderr or "expected ':'" in done.stderr
    async with NodeClient(node) as client:
        new = next(e for e in await client.list_executions() if e.execution_id != old)
        evs = await events(client, new.execution_id)
        steps = build_steps(evs)
        assert steps and all("python_wrapper" not in s for s in steps)  # no base image build
        assert (await client.describe(old))["state"] == "EXECUTION_STATE_READY"
    assert (await haddock("call", "--node", node, "adder", '{"numbers": [1, 2]}')).out == b"3"


async def test_jobtypes_lists_the_shipped_plugins(job_node: RunningServer) -> None:
    done = await haddock("jobtypes", "--node", job_node.address, "--json")
    assert done.code == 0, done.stderr
    found = {t["name"]: t for t in json.loads(done.out)}
    assert set(found) == {"golang", "python3"}
    assert found["golang"]["base_image"] == BASE_IMAGES["golang"]


@pytest.mark.parametrize(
    "line",
    [
        "--index-url http://169.254.169.254/simple",
        "-r /etc/passwd",
        "https://example.com/x.whl",
        "./local-pkg",
        "pkg @ https://example.com/p.zip",
        "-f http://10.0.0.1/",
    ],
)
def test_requirements_name_packages_only(tmp_path: Path, line: str) -> None:
    """A requester's requirements file is read by pip on the node: no options, URLs or paths reach it."""
    from haddock.executor.errors import InvalidSpec
    from haddock.node.jobtypes.builder import _check_requirements

    req = tmp_path / "requirements.txt"
    req.write_text(f"six==1.16.0\n{line}\n")
    with pytest.raises(InvalidSpec, match="only package requirements"):
        _check_requirements(req, "requirements.txt")
    req.write_text("six==1.16.0  # a comment\nrequests[socks]>=2\n\n")
    _check_requirements(req, "requirements.txt")


@pytest.mark.parametrize("plugin", ["golang", "python3"])
def test_system_dependencies_are_installed_in_one_layer_after_an_apt_get_update(plugin: str) -> None:
    """apt-get install needs the package lists (a base image ships none): update, install and clean them in
    one RUN, so that no layer keeps stale or bulky lists."""
    from haddock.node.jobtypes.builder import render_template
    from haddock.node.jobtypes.config import SHIPPED_PLUGINS_DIR

    fixture = "adder-go" if plugin == "golang" else "adder-python"
    data = parse_manifest((JOBS / fixture / "job.yaml").read_text()).model_dump(exclude={"not_applied"})
    manifest = parse_manifest({**data, "system_dependencies": ["curl", "jq"]})
    rendered = render_template(
        SHIPPED_PLUGINS_DIR / plugin / "job-template.Dockerfile",
        base_image="base",
        env_vars={},
        manifest=manifest.template_view(),
        git_version="",
        deployed_by_racetrack_version="haddock test",
        job_type_version="1",
    )
    runs = [i for i in rendered.replace("\\\n", " ").splitlines() if i.startswith("RUN ") and "apt-get" in i]
    assert len(runs) == 1, rendered
    run = runs[0]
    assert run.index("apt-get update") < run.index("apt-get install") < run.index("rm -rf /var/lib/apt/lists/*")
    assert "curl jq" in run and "&&" in run
