"""`haddock run -i/-o/--publisher` and `haddock submit --tasks` as real processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from haddock.node.server import start_server
from tests.conftest import BUSYBOX, node_settings
from tests.storage.conftest import Handler, HttpServer
from tests.test_cli import haddock


def served(body: bytes) -> Any:
    def route(h: Handler) -> None:
        h.reply(200, body, headers={"ETag": '"e"'})

    return route


async def test_run_with_inputs_outputs_and_publisher(
    tmp_path: Path, node_id: str, busybox_image: str, http_server: HttpServer
) -> None:
    running = await start_server(node_settings(tmp_path, node_id))
    try:
        url = http_server.add(served(b"remote\n"), "r.txt")
        done = await haddock(
            "run",
            "--json",
            "-i",
            f"{url}:/in/r.txt",
            "-i",
            "data:,inline%0A:/in/i.txt",
            "-o",
            "res:/res",
            "--publisher",
            "local+archive",
            BUSYBOX,
            "--",
            "sh",
            "-c",
            "cat /in/r.txt /in/i.txt > /res/both.txt",
            node=running.address,
        )
        assert done.code == 0, done.stderr
        data = json.loads(done.out)
        assert Path(data["results_dir"], "res", "both.txt").read_text() == "remote\ninline\n"
        assert data["published"] == [data["results_dir"]]
        bad = await haddock("run", "-i", "ftp://x/y:/in", BUSYBOX, node=running.address)
        assert bad.code == 125 and "not a supported input source" in bad.stderr
        bad = await haddock("run", "-o", "../escape:/out", BUSYBOX, node=running.address)
        assert bad.code == 125 and "single path segment" in bad.stderr
    finally:
        await running.stop(1)


async def test_submit_tasks_file(tmp_path: Path, node_id: str, busybox_image: str, http_server: HttpServer) -> None:
    running = await start_server(node_settings(tmp_path, node_id))
    try:
        urls = [http_server.add(served(f"input {i}\n".encode()), f"in{i}.txt") for i in range(3)]
        tasks = tmp_path / "tasks.tsv"
        tasks.write_text(
            "--env GREETING\t--input DATA\t--output-recursive OUT\n"
            + "".join(f"hello {i}\t{urls[i]}\tresults-{i}\n" for i in range(3))
        )
        done = await haddock(
            "submit",
            "--tasks",
            str(tasks),
            "--concurrency",
            "2",
            "--json",
            BUSYBOX,
            "--",
            "sh",
            "-c",
            'cat "$DATA"; echo "$GREETING" > "$OUT/greeting.txt"',
            node=running.address,
        )
        assert done.code == 0, done.stderr
        rows = json.loads(done.out)
        assert [r["task"] for r in rows] == [1, 2, 3]
        for i, row in enumerate(rows):
            assert row["status"] == "success"
            assert row["stdout"] == f"input {i}\n"
            assert Path(row["results_dir"], "out-out", "greeting.txt").read_text() == f"hello {i}\n"
        broken = tmp_path / "broken.tsv"
        broken.write_text("--input DATA\nftp://nope\n")
        bad = await haddock("submit", "--tasks", str(broken), BUSYBOX, node=running.address)
        assert bad.code == 125 and "broken.tsv line 2" in bad.stderr  # an invalid request (issue 10)
    finally:
        await running.stop(1)
