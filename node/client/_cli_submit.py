"""``haddock submit``: one execution per row of a tasks file."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from haddock.executor.publishers import PublisherSpec, S3PublisherSpec
from haddock.executor.request import RunCommandRequest
from haddock.node.client._cli_common import (
    Connection,
    connected,
    err_console,
    fail,
    out_console,
    print_json,
    run_coro,
    say,
)
from haddock.node.client._cli_request import build_request, job_args
from haddock.node.client._client import Finished, NodeClient, NodeError
from haddock.node.client._tasks import Task, load_tasks
from haddock.node.client.convert import validation_message


def _task_publishers(task: Task) -> list[PublisherSpec]:
    """S3 destinations of a row's outputs. The row's whole results dir (stdout, stderr, exitCode and
    each output under its name) is uploaded under ``<folder>/<execution_id>/``, where the folder is,
    for a file output, the one it would be in, and for a recursive output the prefix itself."""
    specs: dict[tuple[str, str], PublisherSpec] = {}
    for out in task.outputs:
        if not out.destination.startswith("s3://"):
            continue  # kept in the node's results dir
        bucket, _, key = out.destination.removeprefix("s3://").partition("/")
        key = key.split("?", 1)[0]
        folder = key.rstrip("/") if out.recursive else key.rpartition("/")[0]
        # per execution: rows sharing a folder must not overwrite each other's results
        prefix = f"{folder}/{{execution_id}}/" if folder else "{job_id}/{execution_id}/"
        specs.setdefault((bucket, prefix), S3PublisherSpec(bucket=bucket, key=prefix))
    return list(specs.values())


@connected
def submit(
    image: Annotated[str, typer.Argument(help="the image every task runs")],
    tasks_file: Annotated[Path, typer.Option("--tasks", help="TSV: a header of --env/--input/--output columns")],
    args: Annotated[list[str] | None, typer.Argument(help="the command (after --)")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="tasks running at once")] = 4,
    cpu: Annotated[str | None, typer.Option("--cpu")] = None,
    memory: Annotated[str | None, typer.Option("--memory")] = None,
    disk: Annotated[str | None, typer.Option("--disk")] = None,
    network: Annotated[str, typer.Option("--network")] = "none",
    timeout: Annotated[str | None, typer.Option("--timeout")] = None,
    pull: Annotated[str, typer.Option("--pull")] = "if-not-present",
    publishers: Annotated[list[str] | None, typer.Option("--publisher", help="for every task, as in run")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
    *,
    conn: Connection,
) -> None:
    """Run IMAGE once per row of a tasks file (hotsub style); exit 0 when every task succeeded."""
    argv = job_args(args)
    try:
        tasks = load_tasks(tasks_file)
        for task in tasks:
            for out in task.outputs:
                if out.destination.startswith("file:"):
                    raise ValueError(
                        f"{tasks_file} task {task.index}: output {out.name} goes to {out.destination}, but the node "
                        "does not write outside its data dir; use a relative name (kept in the results dir) or s3://"
                    )
        job_id = f"{tasks_file.stem}-{uuid.uuid4().hex[:8]}"
        requests = [
            build_request(
                image,
                argv,
                execution_id=None,
                job_id=job_id,
                cpu=cpu,
                memory=memory,
                disk=disk,
                gpu=0,
                network=network,
                env=[],
                workdir=None,
                entrypoint=None,
                timeout=timeout,
                pull=pull,
                limits={},
                publishers=publishers,
                env_extra=task.env,
                sources_extra=[i.source() for i in task.inputs],
                outputs_extra=[{"name": o.output_name, "path": o.collect_dir} for o in task.outputs],
                publishers_extra=_task_publishers(task),
            )
            for task in tasks
        ]
    except ValidationError as exc:
        fail(validation_message(exc))
    except ValueError as exc:  # TasksFileError, QuantityError, bad --publisher
        fail(str(exc))

    async def go(client: NodeClient) -> list[Finished | str]:
        gate = asyncio.Semaphore(concurrency)
        done: list[Finished | str] = ["" for _ in requests]
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=err_console,
            transient=False,
            disable=not sys.stderr.isatty(),
        )
        bar = progress.add_task("tasks", total=len(requests))

        async def one(i: int, request: RunCommandRequest) -> None:
            async with gate:
                try:
                    await client.start(request, queue=True)
                    done[i] = await client.wait(request.execution_id)
                except NodeError as exc:
                    done[i] = exc.message
            progress.advance(bar)
            if not sys.stderr.isatty():
                outcome = done[i]
                status = outcome.result.status.value if isinstance(outcome, Finished) else f"failed: {outcome}"
                say(f"task {i + 1}/{len(requests)} {request.execution_id}: {status}")

        with progress:
            await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        return done

    outcomes = run_coro(conn.call(go))
    rows = []
    for task, request, outcome in zip(tasks, requests, outcomes, strict=True):
        if isinstance(outcome, Finished):
            rows.append({"task": task.index, **outcome.as_json()})
        else:
            rows.append(
                {
                    "task": task.index,
                    "execution_id": request.execution_id,
                    "status": "refused",
                    "error_message": outcome,
                }
            )
    if as_json:
        print_json(rows)
    else:
        table = Table("TASK", "EXECUTION", "STATUS", "EXIT", "RESULTS", box=None)
        for row in rows:
            table.add_row(
                str(row["task"]),
                row["execution_id"],
                row["status"],
                str(row.get("exit_code", "")),
                row.get("results_dir") or row.get("error_message", ""),
            )
        out_console().print(table)
    raise typer.Exit(0 if all(r["status"] == "success" for r in rows) else 1)
