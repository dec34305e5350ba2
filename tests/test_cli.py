"""The `haddock` command line, run as a real process against a real node."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from haddock.node.server import RunningServer
from tests.conftest import BUSYBOX

HADDOCK = str(Path(sys.executable).parent / "haddock")


@dataclass
class Done:
    code: int
    out: bytes
    err: bytes

    @property
    def stdout(self) -> str:
        return self.out.decode()

    @property
    def stderr(self) -> str:
        return self.err.decode()


async def haddock(*args: str, node: str | None = None, limit: float = 120) -> Done:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADDOCK_")}
    if node is not None:
        env["HADDOCK_NODE"] = node
    proc = await asyncio.create_subprocess_exec(
        HADDOCK, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return Done(proc.returncode, out, err)


def no_traceback(done: Done) -> None:
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_run_streams_and_exits_with_job_code(node_server: RunningServer) -> None:
    done = await haddock(
        "run", "--node", node_server.address, BUSYBOX, "--", "sh", "-c", "echo out; echo err >&2; exit 7"
    )
    assert done.code == 7
    assert done.out == b"out\n"
    assert done.err == b"err\n"


async def test_run_json(node_server: RunningServer) -> None:
    done = await haddock(
        "run",
        "--json",
        "--id",
        "cli-json-1",
        "--memory",
        "64Mi",
        "--cpu",
        "500m",
        "--timeout",
        "30s",
        "-e",
        "GREETING=hello",
        BUSYBOX,
        "--",
        "sh",
        "-c",
        'echo "$GREETING"; echo e >&2; exit 3',
        node=node_server.address,
    )
    assert done.code == 3
    data = json.loads(done.out)
    assert set(data) == {
        "execution_id",
        "status",
        "exit_code",
        "stdout",
        "stdout_truncated",
        "stdout_file_truncated",
        "stderr",
        "stderr_truncated",
        "stderr_file_truncated",
        "error_message",
        "results_dir",
        "published",
        "publish_errors",
        "stats",  # the resource summary (issue 11)
    }
    # null when the job ended before its first sample; else the limit it ran under
    assert data["stats"] is None or data["stats"]["memory_limit_bytes"] == 64 * 1024 * 1024
    assert data["execution_id"] == "cli-json-1"
    assert data["status"] == "error" and data["exit_code"] == 3
    assert data["stdout"] == "hello\n" and data["stderr"] == "e\n"
    assert Path(data["results_dir"], "exitCode").read_text() == "3"


async def test_detach_logs_wait_describe_ls_cancel_info(node_server: RunningServer) -> None:
    node = node_server.address
    started = await haddock(
        "run", "--detach", BUSYBOX, "--", "sh", "-c", "echo a; echo b >&2; sleep 0.5; exit 4", node=node
    )
    assert started.code == 0
    exec_id = started.stdout.strip()
    assert exec_id
    logs = await haddock("logs", "-f", exec_id, node=node)
    assert logs.code == 0 and logs.out == b"a\n" and logs.err == b"b\n"
    waited = await haddock("wait", exec_id, node=node)
    assert waited.code == 4
    waited_json = await haddock("wait", "--json", exec_id, node=node)
    assert json.loads(waited_json.out)["exit_code"] == 4
    lines = await haddock("run", "-d", BUSYBOX, "--", "sh", "-c", "for i in 1 2 3; do echo l$i; done", node=node)
    await haddock("wait", lines.stdout.strip(), node=node)
    tail = await haddock("logs", "--tail", "2", lines.stdout.strip(), node=node)
    assert tail.out == b"l2\nl3\n"
    described = json.loads((await haddock("describe", exec_id, node=node)).out)
    assert described["execution_id"] == exec_id and described["state"] == "EXECUTION_STATE_FAILED"
    listing = await haddock("ls", "--json", "--state", "failed", node=node)
    assert exec_id in [r["execution_id"] for r in json.loads(listing.out)]
    table = await haddock("ls", node=node)
    assert exec_id in table.stdout
    info = json.loads((await haddock("node", "info", "--json", node=node)).out)
    assert info["node_id"] == node_server.node.settings.node_id and info["capacity"]["cpu"] >= 1
    assert (await haddock("node", "info", node=node)).code == 0

    long = await haddock("run", "-d", BUSYBOX, "--", "sh", "-c", "sleep 60 & wait $!", node=node)
    long_id = long.stdout.strip()
    cancelled = await haddock("cancel", long_id, node=node)
    assert cancelled.code == 0 and cancelled.stdout.strip() == f"{long_id} cancelled"
    again = await haddock("cancel", long_id, node=node)
    assert again.code == 125  # the node refuses (FAILED_PRECONDITION): issue 10 made every refusal 125
    no_traceback(again)
    assert "already complete" in again.stderr


async def test_errors_are_one_line(node_server: RunningServer) -> None:
    node = node_server.address
    missing = await haddock("wait", "no-such-exec", node=node)
    assert missing.code == 1
    no_traceback(missing)
    assert "not found" in missing.stderr

    bad_memory = await haddock("run", "--memory", "lots", BUSYBOX, "--", "true", node=node)
    assert bad_memory.code == 125
    no_traceback(bad_memory)
    assert "lots" in bad_memory.stderr

    bad_env = await haddock("run", "-e", "HADDOCK_X=1", BUSYBOX, node=node)
    assert bad_env.code == 125
    no_traceback(bad_env)
    assert "reserved" in bad_env.stderr

    not_run = await haddock("run", "--pull", "never", "haddock-test/absent:1", node=node)
    assert not_run.code == 125
    no_traceback(not_run)
    assert "not present" in not_run.stderr

    unreachable = await haddock("ls", node="127.0.0.1:1")
    assert unreachable.code == 1
    no_traceback(unreachable)
    assert "127.0.0.1:1" in unreachable.stderr


async def test_timeout_reported(node_server: RunningServer) -> None:
    done = await haddock(
        "run",
        "--timeout",
        "1s",
        BUSYBOX,
        "--",
        "sh",
        "-c",
        "trap 'echo bye; exit 143' TERM; sleep 30 & wait $!",
        node=node_server.address,
    )
    assert done.code == 143
    assert done.out == b"bye\n"
    assert "timeout of 1s" in done.stderr


async def test_serve_rejects_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "haddock.toml"
    bad.write_text('listen = "nowhere"\n')
    done = await haddock("serve", "--config", str(bad))
    assert done.code == 1
    no_traceback(done)
    assert "listen" in done.stderr
    missing = await haddock("serve", "--config", str(tmp_path / "absent.toml"))
    assert missing.code == 1 and "does not exist" in missing.stderr
