"""Small interface fixes: exit codes of the client commands, a command that is not in the image."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from haddock.executor.docker.engine import explain_exec_failure, explain_init_exit
from haddock.executor.records import ResultStatus
from haddock.executor.request import RunCommandRequest
from haddock.node.client import NodeClient
from haddock.node.server import RunningServer, start_server
from tests.conftest import BUSYBOX, node_settings
from tests.test_cli import haddock, no_traceback


async def test_every_client_command_exits_125_on_a_refusal_or_an_invalid_request(node_server: RunningServer) -> None:
    node = node_server.address
    for args in (
        ("bid", "--memory", "lots", BUSYBOX),  # invalid here
        ("bid", "--cpu", "0.001", BUSYBOX),  # invalid at the node (below the engine's minimum)
        ("bid", "UPPER/x"),
        ("run", "--cpu", "0.001", BUSYBOX, "--", "true"),
        ("run", "--max-stdout-return", "1Ti", BUSYBOX, "--", "true"),
        ("run", "--network", "host", BUSYBOX, "--", "true"),  # refused by the node's policy
        ("ls", "--state", "sleeping"),
    ):
        done = await haddock(*args, node=node)
        assert done.code == 125, (args, done)
        no_traceback(done)
    no = await haddock("bid", "--cpu", "512", BUSYBOX, node=node)
    assert no.code == 1 and no.stdout.startswith("no: ")  # a plain "no" stays 1


@pytest.mark.parametrize("init", [True, False])
async def test_a_command_not_in_the_image_says_so(tmp_path: Path, node_id: str, busybox_image: str, init: bool) -> None:
    settings = node_settings(tmp_path, node_id)
    settings = settings.model_copy(update={"docker": settings.docker.model_copy(update={"init": init})})
    running = await start_server(settings)
    try:
        async with NodeClient(running.address) as client:
            req = RunCommandRequest.model_validate(
                {
                    "job_id": "nf",
                    "execution_id": f"nf-{uuid.uuid4().hex[:8]}",
                    "engine": {"image": BUSYBOX, "parameters": ["foo", "--bar"]},
                }
            )
            done = await client.run(req)
        assert done.result.status is ResultStatus.ERROR
        assert done.result.error_message.startswith("executable 'foo' not found in the image"), done.result
        assert (done.result.exit_code == 127) is init
        # and `haddock run` says it on stderr, not only the init's own line
        cli = await haddock("run", BUSYBOX, "--", "foo", node=running.address)
        assert "executable 'foo' not found in the image" in cli.stderr, cli
        assert cli.code == (127 if init else 125), cli
        assert "Traceback" not in cli.stderr, cli
    finally:
        await running.stop(1)


def test_exec_failures_in_words() -> None:
    runc = (
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container "
        'process: exec: "foo": executable file not found in $PATH: unknown'
    )
    assert explain_exec_failure(runc) == "executable 'foo' not found in the image"
    assert explain_exec_failure('exec: "/x/y": stat /x/y: no such file or directory: unknown') == (
        "executable '/x/y' not found in the image"
    )
    assert explain_exec_failure("no such image") is None
    assert explain_init_exit(127, b"[FATAL tini (7)] exec foo failed: No such file or directory\nmore") == (
        "executable 'foo' not found in the image"
    )
    assert explain_init_exit(1, b"[FATAL tini (7)] exec foo failed: No such file or directory\n") is None
    assert explain_init_exit(127, b"sh: foo: not found\n") is None
