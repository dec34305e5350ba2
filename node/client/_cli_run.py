"""``haddock run`` (an image, a service, or a job with its payload) and ``haddock bid``: start, follow the pull,
the queue and the output, exit with the job's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

from haddock.executor.jobspec import ManifestError, job_engine_image
from haddock.executor.quantity import QuantityError
from haddock.executor.records import EventKind, ExecutionState
from haddock.executor.request import RunCommandRequest
from haddock.executor.sources import InputSource
from haddock.executor.streams import LogQuery
from haddock.node.client._cli_common import (
    EXIT_NODE_FAILED,
    Connection,
    connected,
    err_console,
    fail,
    print_json,
    report,
    run_coro,
    say,
    stream_logs,
)
from haddock.node.client._cli_request import build_request, job_args
from haddock.node.client._client import NodeClient, NodeError
from haddock.node.client._jobs import job_source, load_manifest, say_not_applied
from haddock.node.client._services import build_service, until_ready
from haddock.node.client.convert import state_from_pb, validation_message

_SVC = "Service options"
_JOB = "Job type options"


class PullProgress:
    """A rich progress bar per image layer while the node pulls; only on a terminal."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err_console, transient=True
        )
        self.tasks: dict[str, TaskID] = {}

    async def follow(self, client: NodeClient, execution_id: str) -> None:
        with self.progress:
            async for event in client.watch(execution_id):
                if event.kind is EventKind.PULL_PROGRESS:
                    layer = event.details.get("layer")
                    if not layer:
                        continue
                    total = event.details.get("total")
                    current = event.details.get("current")
                    if layer not in self.tasks:
                        self.tasks[layer] = self.progress.add_task(f"{layer} {event.message}", total=None)
                    self.progress.update(
                        self.tasks[layer],
                        description=f"{layer} {event.message}",
                        total=float(total) if total else None,
                        completed=float(current) if current else None,
                    )
                elif event.kind in (EventKind.STARTED, EventKind.FAILED) or event.kind is EventKind.IMAGE_READY:
                    return


QUEUE_POLL_SECONDS = 2.0


async def _say_while_queued(client: NodeClient, execution_id: str) -> None:
    """While the execution waits in the node's queue: its position and why it waits, on stderr, when they
    change. Returns once it is admitted (or ended)."""
    said: tuple[int, str] | None = None
    while True:
        try:
            msg = await client.get_execution(execution_id)
        except NodeError:
            return
        if state_from_pb(msg.state) is not ExecutionState.QUEUED or not msg.queue_position:
            return
        now = (msg.queue_position, msg.queue_reason)
        if now != said:
            say(f"{execution_id} is queued: position {msg.queue_position} ({msg.queue_reason})")
            said = now
        await asyncio.sleep(QUEUE_POLL_SECONDS)


async def _run_job(
    make_client: Callable[[], NodeClient],
    request: RunCommandRequest,
    detach: bool,
    as_json: bool,
    queue: bool = True,
    priority: int = 0,
    no_wait: bool = False,
) -> int:
    async with make_client() as client:
        started = await client.start(request, queue=queue, priority=priority)
        exec_id = started.execution_id
        if detach and request.is_service and not no_wait:
            return await until_ready(client, exec_id, print_id=True)
        if detach or no_wait:
            sys.stdout.write(exec_id + "\n")
            return 0
        progress: asyncio.Task[None] | None = None
        if sys.stderr.isatty() and not as_json:
            progress = asyncio.create_task(PullProgress().follow(client, exec_id))
        queued = asyncio.create_task(_say_while_queued(client, exec_id))
        loop = asyncio.get_running_loop()
        cancel_task: list[asyncio.Task[Any]] = []

        def on_interrupt() -> None:
            if not cancel_task:
                say(f"cancelling {exec_id} (Ctrl-C again to stop waiting; the execution goes on)")
                cancel_task.append(asyncio.create_task(client.cancel(exec_id)))
            else:
                for task in asyncio.all_tasks(loop):
                    task.cancel()

        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            if not as_json:
                await stream_logs(client, exec_id, LogQuery(follow=True))
            done = await client.wait(exec_id)
        finally:
            queued.cancel()
            with contextlib.suppress(asyncio.CancelledError, NodeError):
                await queued
            if progress is not None:
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError, NodeError):
                    await progress
        if as_json:
            print_json(done.as_json())
            return done.result.exit_code if done.result.exit_code is not None else EXIT_NODE_FAILED
        if request.job is not None and request.job.batch:
            # The job's answer is its result's stdout (the log holds what it printed, on stderr).
            sys.stdout.write(done.result.stdout)
            sys.stdout.flush()
            if done.result.stdout_truncated:
                say(f"(the answer is cut at the return limit; all of it: {done.results_dir}/stdout)")
        return report(done)


@connected
def run(
    image: Annotated[str | None, typer.Argument(help="the image to run (not with --job)")] = None,
    args: Annotated[list[str] | None, typer.Argument(help="arguments (after --)")] = None,
    execution_id: Annotated[str | None, typer.Option("--id", help="execution id [generated]")] = None,
    job_dir: Annotated[
        Path | None, typer.Option("--job", help="a job's directory (job.yaml + source)", rich_help_panel=_JOB)
    ] = None,
    job_source_uri: Annotated[
        str | None,
        typer.Option(
            "--job-source", help="the job's source as an input (http(s)://, s3://, file://)", rich_help_panel=_JOB
        ),
    ] = None,
    manifest_path: Annotated[
        Path | None, typer.Option("--manifest", help="job.yaml [DIR/job.yaml]", rich_help_panel=_JOB)
    ] = None,
    payload: Annotated[
        str | None, typer.Option("--payload", help="JSON posted to /api/v1/perform", rich_help_panel=_JOB)
    ] = None,
    payload_file: Annotated[
        Path | None, typer.Option("--payload-file", help="the payload from a file", rich_help_panel=_JOB)
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="job id [the execution id]")] = None,
    cpu: Annotated[str | None, typer.Option("--cpu", help="CPU cores, e.g. 0.5 or 500m")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="memory limit, e.g. 64Mi")] = None,
    disk: Annotated[str | None, typer.Option("--disk", help="disk, e.g. 1Gi")] = None,
    gpu: Annotated[int, typer.Option("--gpu", help="GPUs")] = 0,
    network: Annotated[
        str | None, typer.Option("--network", help="none, bridge or host [none; bridge for a service with ports]")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("-e", "--env", help="KEY=VALUE (repeatable)")] = None,
    workdir: Annotated[str | None, typer.Option("-w", "--workdir", help="working directory in the container")] = None,
    entrypoint: Annotated[str | None, typer.Option("--entrypoint", help="override the image's entrypoint")] = None,
    timeout: Annotated[str | None, typer.Option("--timeout", help="e.g. 30s, 5m")] = None,
    pull: Annotated[str, typer.Option("--pull", help="always, if-not-present or never")] = "if-not-present",
    inputs: Annotated[
        list[str] | None,
        typer.Option("-i", "--input", help="SOURCE:TARGET[:ro|:rw] (file://, http(s)://, s3://, data:), repeatable"),
    ] = None,
    outputs: Annotated[
        list[str] | None, typer.Option("-o", "--output", help="NAME:PATH, a directory the job writes; repeatable")
    ] = None,
    publishers: Annotated[
        list[str] | None,
        typer.Option("--publisher", help="local, local+archive or s3://bucket/prefix/ (repeatable)"),
    ] = None,
    max_stdout_file: Annotated[str | None, typer.Option("--max-stdout-file", help="e.g. 1Gi")] = None,
    max_stdout_return: Annotated[str | None, typer.Option("--max-stdout-return", help="e.g. 2Ki")] = None,
    max_stderr_file: Annotated[str | None, typer.Option("--max-stderr-file")] = None,
    max_stderr_return: Annotated[str | None, typer.Option("--max-stderr-return")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="print the execution id and return")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON at the end")] = False,
    queue: Annotated[
        bool, typer.Option("--queue/--no-queue", help="wait for capacity, or be refused when the node is full")
    ] = True,
    priority: Annotated[int, typer.Option("--priority", help="higher runs first among queued executions")] = 0,
    service: Annotated[
        bool, typer.Option("--service", help="a long-running service (ports, probes, restarts)", rich_help_panel=_SVC)
    ] = False,
    ports: Annotated[
        list[str] | None,
        typer.Option("--port", help="[NAME=]CONTAINER_PORT[:HOST_PORT] (repeatable)", rich_help_panel=_SVC),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="service name (gateway /svc/NAME/)", rich_help_panel=_SVC)
    ] = None,
    ready_path: Annotated[
        str | None, typer.Option("--ready-path", help="readiness probe: HTTP GET path", rich_help_panel=_SVC)
    ] = None,
    live_path: Annotated[
        str | None, typer.Option("--live-path", help="liveness probe: HTTP GET path", rich_help_panel=_SVC)
    ] = None,
    probe_port: Annotated[
        str | None, typer.Option("--probe-port", help="port name the probes use [the first]", rich_help_panel=_SVC)
    ] = None,
    probe_interval: Annotated[str | None, typer.Option("--probe-interval", help="[10s]", rich_help_panel=_SVC)] = None,
    probe_timeout: Annotated[str | None, typer.Option("--probe-timeout", help="[1s]", rich_help_panel=_SVC)] = None,
    probe_threshold: Annotated[
        int | None, typer.Option("--probe-threshold", help="failures in a row [3]", rich_help_panel=_SVC)
    ] = None,
    start_period: Annotated[
        str | None, typer.Option("--start-period", help="ready within this [60s]", rich_help_panel=_SVC)
    ] = None,
    healthcheck: Annotated[
        bool, typer.Option("--healthcheck", help="use the image's own HEALTHCHECK", rich_help_panel=_SVC)
    ] = False,
    restart: Annotated[
        str | None, typer.Option("--restart", help="never, on-failure or always [on-failure]", rich_help_panel=_SVC)
    ] = None,
    max_restarts: Annotated[int | None, typer.Option("--max-restarts", help="[3]", rich_help_panel=_SVC)] = None,
    backoff: Annotated[
        str | None, typer.Option("--backoff", help="first restart delay [1s]", rich_help_panel=_SVC)
    ] = None,
    backoff_max: Annotated[str | None, typer.Option("--backoff-max", help="[30s]", rich_help_panel=_SVC)] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="print the execution id once accepted (a service: not ready yet)")
    ] = False,
    *,
    conn: Connection,
) -> None:
    """Run IMAGE on the node, stream its output, exit with its exit code.

    With --service, a long-running service: --detach returns once it is ready, --no-wait once accepted.
    With --job DIR --payload JSON: build the job (job types), post the payload once, its answer is the stdout."""
    try:
        argv = job_args(args)
        spec = None
        job: dict[str, Any] | None = None
        sources_extra: list[InputSource] = []
        if job_dir is not None or job_source_uri is not None or manifest_path is not None:
            if image is not None:
                raise ValueError("give an IMAGE or --job, not both")
            if payload is not None and payload_file is not None:
                raise ValueError("give --payload or --payload-file, not both")
            text = payload_file.read_text() if payload_file is not None else payload
            manifest = load_manifest(job_dir, manifest_path)
            job = {"manifest": manifest, "payload": text if text is not None else "{}"}
            sources_extra.append(job_source(job_dir, job_source_uri))
            image = job_engine_image(manifest.name)
        elif image is None:
            raise ValueError("give the IMAGE to run, or --job DIR")
        if service or ports or name or ready_path or live_path or healthcheck:
            spec = build_service(
                name=name,
                ports=list(ports or []),
                ready_path=ready_path,
                live_path=live_path,
                probe_port=probe_port,
                probe_interval=probe_interval,
                probe_timeout=probe_timeout,
                probe_threshold=probe_threshold,
                start_period=start_period,
                healthcheck=healthcheck,
                restart=restart,
                max_restarts=max_restarts,
                backoff=backoff,
                backoff_max=backoff_max,
            )
        if network is None:
            network = "bridge" if spec is not None and spec["ports"] else "none"
        request = build_request(
            image,
            argv,
            execution_id=execution_id,
            job_id=job_id,
            cpu=cpu,
            memory=memory,
            disk=disk,
            gpu=gpu,
            network=network,
            env=list(env or []),
            workdir=workdir,
            entrypoint=entrypoint,
            timeout=timeout,
            pull=pull,
            limits={
                "max_stdout_file_length": max_stdout_file,
                "max_stdout_return_length": max_stdout_return,
                "max_stderr_file_length": max_stderr_file,
                "max_stderr_return_length": max_stderr_return,
            },
            inputs=inputs,
            outputs=outputs,
            publishers=publishers,
            service=spec,
            sources_extra=sources_extra,
            job=job,
        )
    except ManifestError as exc:
        fail(f"invalid manifest: {exc}", EXIT_NODE_FAILED)
    except ValidationError as exc:
        fail(validation_message(exc), EXIT_NODE_FAILED)
    except (ValueError, OSError) as exc:  # QuantityError and malformed -i/-o/--port
        fail(f"invalid request: {exc}", EXIT_NODE_FAILED)
    if request.job is not None:
        say_not_applied(request.job.manifest)
    code = run_coro(
        _run_job(conn.client, request, detach, as_json, queue, priority, no_wait),
        EXIT_NODE_FAILED,
    )
    raise typer.Exit(code)


@connected
def bid(
    image: Annotated[str, typer.Argument(help="the image the job would run")],
    args: Annotated[list[str] | None, typer.Argument(help="arguments (after --)")] = None,
    cpu: Annotated[str | None, typer.Option("--cpu", help="CPU cores, e.g. 0.5 or 500m")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="memory limit, e.g. 64Mi")] = None,
    disk: Annotated[str | None, typer.Option("--disk", help="disk, e.g. 1Gi")] = None,
    gpu: Annotated[int, typer.Option("--gpu", help="GPUs")] = 0,
    network: Annotated[str, typer.Option("--network", help="none, bridge or host")] = "none",
    timeout: Annotated[str | None, typer.Option("--timeout", help="e.g. 30s, 5m")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as JSON")] = False,
    *,
    conn: Connection,
) -> None:
    """Ask the node whether it would take a job, and why. Exit 0 for yes, 1 for no, 125 for an invalid request."""
    argv = job_args(args)
    try:
        request = build_request(
            image,
            argv,
            execution_id=None,
            job_id=None,
            cpu=cpu,
            memory=memory,
            disk=disk,
            gpu=gpu,
            network=network,
            env=[],
            workdir=None,
            entrypoint=None,
            timeout=timeout,
            pull="if-not-present",
            limits={},
        )
    except ValidationError as exc:
        fail(validation_message(exc))
    except QuantityError as exc:
        fail(f"invalid request: {exc}")

    async def ask(client: NodeClient) -> tuple[bool, str]:
        semantic = await client.should_bid(request)
        if not semantic.should_bid:
            return False, semantic.reason
        usage = await client.should_bid_based_on_usage(request)
        return usage.should_bid, usage.reason

    yes, reason = run_coro(conn.call(ask))
    if as_json:
        print_json({"should_bid": yes, "reason": reason})
    else:
        sys.stdout.write(f"{'yes' if yes else 'no'}: {reason}\n")
    raise typer.Exit(0 if yes else 1)
