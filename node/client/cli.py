"""The ``haddock`` commands that talk to a node: run, bid, submit, logs, wait, cancel, ls, describe, stats,
node info.

The top-level app (``haddock.node.cli``) adds ``serve``; nothing here loads the daemon. Every command
takes the connection options (``--node``, ``--token``, ``--tls-ca``, ``--tls-cert``, ``--tls-key``),
declared once in :func:`connected`. Errors are one clear line on stderr, never a traceback.
``haddock run`` exits with the job's exit code, or 125 when the node could not run it (like ``docker run``).
Every command exits 125 when the request is invalid or the node refuses it (INVALID_ARGUMENT,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ALREADY_EXISTS), and 1 for other failures (not found, unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn
from rich.table import Table

from haddock.executor.models import (
    EventKind,
    ExecutionState,
    LogQuery,
    ResultStatus,
    RunCommandRequest,
    StreamType,
)
from haddock.executor.publishers import PublisherSpec, S3PublisherSpec, parse_publisher
from haddock.executor.quantity import QuantityError, format_bytes, format_cpu, parse_bytes, parse_duration
from haddock.executor.sources import InputSource, parse_input
from haddock.executor.stats import Stat, StatsSummary, decimate
from haddock.node.client._charts import render_stats_chart, stats_json, summary_line
from haddock.node.client._client import DEFAULT_NODE, ClientTls, Finished, NodeClient, NodeError
from haddock.node.client._services import build_service, call_gateway, read_body, until_ready
from haddock.node.client._tasks import Task, load_tasks
from haddock.node.client.convert import state_from_pb, validation_message

EXIT_NODE_FAILED = 125
"""The node could not or would not run it, or the request is invalid."""
EXIT_FAILED = 1
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
_SVC = "Service options"

app = typer.Typer(
    help="Talk to a haddock node.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="About the node itself.", no_args_is_help=True)
app.add_typer(node_app, name="node")

err_console = Console(stderr=True)
T = TypeVar("T")


@dataclass(frozen=True)
class Connection:
    """Where the node is and how to reach it: what the connection options say."""

    node: str = DEFAULT_NODE
    token: str | None = None
    tls: ClientTls | None = None

    def client(self) -> NodeClient:
        return NodeClient(self.node, token=self.token, tls=self.tls)

    async def call(self, fn: Callable[[NodeClient], Awaitable[T]]) -> T:
        """``fn`` with a client, closed afterwards."""
        async with self.client() as client:
            return await fn(client)


_KW = inspect.Parameter.KEYWORD_ONLY
_CONNECTION_OPTIONS = [
    inspect.Parameter(
        "node",
        _KW,
        default=DEFAULT_NODE,
        annotation=Annotated[
            str,
            typer.Option("--node", envvar="HADDOCK_NODE", help="the node's address HOST:PORT", show_default=True),
        ],
    ),
    inspect.Parameter(
        "token",
        _KW,
        default=None,
        annotation=Annotated[
            str | None, typer.Option("--token", envvar="HADDOCK_TOKEN", help="bearer token", show_default=False)
        ],
    ),
    inspect.Parameter(
        "tls_ca",
        _KW,
        default=None,
        annotation=Annotated[
            Path | None, typer.Option("--tls-ca", envvar="HADDOCK_TLS_CA", help="CA of the node's cert (TLS)")
        ],
    ),
    inspect.Parameter(
        "tls_cert",
        _KW,
        default=None,
        annotation=Annotated[
            Path | None, typer.Option("--tls-cert", envvar="HADDOCK_TLS_CERT", help="client certificate (mTLS)")
        ],
    ),
    inspect.Parameter(
        "tls_key",
        _KW,
        default=None,
        annotation=Annotated[
            Path | None, typer.Option("--tls-key", envvar="HADDOCK_TLS_KEY", help="client key (mTLS)")
        ],
    ),
]


def connected(fn: Callable[..., T]) -> Callable[..., T]:
    """A command that talks to a node: Typer sees the connection options (declared only here) in place
    of the command's ``conn: Connection`` parameter, which receives them."""
    sig = inspect.signature(fn, eval_str=True)
    own = [p for name, p in sig.parameters.items() if name != "conn"]

    @functools.wraps(fn)
    def command(
        *args: Any,
        node: str,
        token: str | None,
        tls_ca: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        **kwargs: Any,
    ) -> T:
        tls = ClientTls(ca=tls_ca, cert=tls_cert, key=tls_key) if (tls_ca or tls_cert or tls_key) else None
        return fn(*args, conn=Connection(node, token, tls), **kwargs)

    command.__signature__ = sig.replace(parameters=[*own, *_CONNECTION_OPTIONS])  # type: ignore[attr-defined]
    return command


def say(message: str) -> None:
    """One line on stderr, never wrapped."""
    sys.stderr.write(f"haddock: {message}\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_NODE_FAILED) -> NoReturn:
    """One line on stderr and exit: by default 125, for an invalid request."""
    say(message)
    raise typer.Exit(code)


def _run(coro: Coroutine[Any, Any, T], error_exit: int = EXIT_FAILED) -> T:
    """Run a coroutine; turn every expected error into one line on stderr. A refusal or an invalid request
    exits 125, other failures ``error_exit``."""
    try:
        return asyncio.run(coro)
    except NodeError as exc:
        fail(f"error: {exc.message} ({exc.code.name})", EXIT_NODE_FAILED if exc.code in _REFUSALS else error_exit)
    except ValidationError as exc:
        fail(validation_message(exc))
    except (QuantityError, ValueError) as exc:
        fail(f"error: {exc}")
    except OSError as exc:
        fail(f"error: {exc}", error_exit)


def out_console() -> Console:
    """Tables on stdout: fitted to a terminal, never cut when piped into another program."""
    return Console() if sys.stdout.isatty() else Console(width=100_000, no_color=True)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- run


def _job_args(args: list[str] | None) -> list[str]:
    """The job's arguments: in `IMAGE -- ARGS` options end at IMAGE, so the separator arrives as an argument."""
    argv = list(args or [])
    return argv[1:] if argv[:1] == ["--"] else argv


def _parse_env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            value = os.environ.get(name, "")
        env[name] = value
    return env


def build_request(
    image: str,
    args: list[str],
    *,
    execution_id: str | None,
    job_id: str | None,
    cpu: str | None,
    memory: str | None,
    disk: str | None,
    gpu: int,
    network: str,
    env: list[str],
    workdir: str | None,
    entrypoint: str | None,
    timeout: str | None,
    pull: str,
    limits: dict[str, str | None],
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    publishers: list[str] | None = None,
    env_extra: dict[str, str] | None = None,
    sources_extra: list[InputSource] | None = None,
    outputs_extra: list[dict[str, str]] | None = None,
    publishers_extra: list[PublisherSpec] | None = None,
    service: dict[str, Any] | None = None,
) -> RunCommandRequest:
    exec_id = execution_id or f"e-{uuid.uuid4().hex[:16]}"
    sources = [parse_input(spec) for spec in inputs or []] + list(sources_extra or [])
    results = []
    for spec in outputs or []:
        name, sep, path = spec.partition(":")
        if not sep or not name or not path:
            raise ValueError(f"output {spec!r} must be NAME:PATH, e.g. results:/outputs")
        results.append({"name": name, "path": path})
    return RunCommandRequest.model_validate(
        {
            "job_id": job_id or exec_id,
            "execution_id": exec_id,
            "engine": {
                "image": image,
                "parameters": args,
                "entrypoint": [entrypoint] if entrypoint else None,
                "env": {**_parse_env(env), **(env_extra or {})},
                "working_dir": workdir,
                "pull_policy": pull,
            },
            "resources": {"cpu": cpu or 0, "memory": memory or 0, "disk": disk or 0, "gpu": gpu},
            "network": {"mode": network},
            "output_limits": {k: parse_bytes(v) for k, v in limits.items() if v is not None},
            "timeout": parse_duration(timeout) if timeout else None,
            "input_sources": sources,
            "outputs": results + list(outputs_extra or []),
            "publishers": [parse_publisher(p) for p in publishers or []] + list(publishers_extra or []),
            **({"kind": "service", "service": service} if service is not None else {}),
        }
    )


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


async def _stream_logs(client: NodeClient, execution_id: str, query: LogQuery) -> int | None:
    """Copy the execution's output to our stdout/stderr; return the last next_offset."""
    last: int | None = None
    out, err = sys.stdout.buffer, sys.stderr.buffer
    async for chunk in client.logs(execution_id, query):
        target = out if chunk.stream is StreamType.STDOUT else err
        target.write(chunk.data)
        target.flush()
        last = chunk.next_offset
    return last


def _report(done: Finished) -> int:
    """Say what went wrong (if anything) and choose the exit code."""
    r = done.result
    if r.exit_code is None:
        say(r.error_message or r.status.value)
        return EXIT_NODE_FAILED
    if r.status in (ResultStatus.TIMEOUT, ResultStatus.KILLED, ResultStatus.CANCELLED):
        say(r.error_message)
    return r.exit_code


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
                await _stream_logs(client, exec_id, LogQuery(follow=True))
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
            _print_json(done.as_json())
            return done.result.exit_code if done.result.exit_code is not None else EXIT_NODE_FAILED
        return _report(done)


@app.command(context_settings={"allow_interspersed_args": False})
@connected
def run(
    image: Annotated[str, typer.Argument(help="the image to run")],
    args: Annotated[list[str] | None, typer.Argument(help="arguments (after --)")] = None,
    execution_id: Annotated[str | None, typer.Option("--id", help="execution id [generated]")] = None,
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

    With --service, a long-running service: --detach returns once it is ready, --no-wait once accepted."""
    try:
        argv = _job_args(args)
        spec = None
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
        )
    except ValidationError as exc:
        fail(validation_message(exc), EXIT_NODE_FAILED)
    except ValueError as exc:  # QuantityError and malformed -i/-o/--port
        fail(f"invalid request: {exc}", EXIT_NODE_FAILED)
    code = _run(
        _run_job(conn.client, request, detach, as_json, queue, priority, no_wait),
        EXIT_NODE_FAILED,
    )
    raise typer.Exit(code)


@app.command(context_settings={"allow_interspersed_args": False})
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
    argv = _job_args(args)
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

    yes, reason = _run(conn.call(ask))
    if as_json:
        _print_json({"should_bid": yes, "reason": reason})
    else:
        sys.stdout.write(f"{'yes' if yes else 'no'}: {reason}\n")
    raise typer.Exit(0 if yes else 1)


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


@app.command(context_settings={"allow_interspersed_args": False})
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
    argv = _job_args(args)
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

    outcomes = _run(conn.call(go))
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
        _print_json(rows)
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


# ---------------------------------------------------------------------------- other commands


@app.command()
@connected
def logs(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC_ID")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="keep streaming until the execution ends")] = False,
    tail: Annotated[int | None, typer.Option("--tail", help="start with the last N lines", min=0)] = None,
    since: Annotated[int | None, typer.Option("--since", help="resume at this log offset", min=0)] = None,
    *,
    conn: Connection,
) -> None:
    """Print an execution's stdout and stderr (to our stdout and stderr)."""
    query = LogQuery(follow=follow, offset=since, tail_lines=tail)
    _run(conn.call(lambda c: _stream_logs(c, execution_id, query)))


@app.command()
@connected
def wait(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC_ID")],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    ready: Annotated[
        bool, typer.Option("--ready", help="a service: wait until it is ready (exit 0), or has ended (exit 1)")
    ] = False,
    *,
    conn: Connection,
) -> None:
    """Wait for an execution to end; exit with its exit code. With --ready, for a service to be ready."""
    if ready:
        raise typer.Exit(_run(conn.call(lambda c: until_ready(c, execution_id, print_id=False))))
    done = _run(conn.call(lambda c: c.wait(execution_id)))
    if as_json:
        _print_json(done.as_json())
        raise typer.Exit(done.result.exit_code if done.result.exit_code is not None else EXIT_NODE_FAILED)
    raise typer.Exit(_report(done))


@app.command()
@connected
def call(
    target: Annotated[str, typer.Argument(metavar="ID_OR_SERVICE", help="an execution id, else a service name")],
    body: Annotated[str | None, typer.Argument(metavar="[BODY|@FILE]", help="request body (@- reads stdin)")] = None,
    path: Annotated[str, typer.Option("--path", help="path on the service")] = "/",
    method: Annotated[str | None, typer.Option("--method", "-X", help="[GET; POST with a body]")] = None,
    headers: Annotated[list[str] | None, typer.Option("-H", "--header", help="NAME: VALUE (repeatable)")] = None,
    gateway: Annotated[
        str | None, typer.Option("--gateway", envvar="HADDOCK_GATEWAY", help="HOST:PORT [the node's gateway]")
    ] = None,
    timeout: Annotated[str | None, typer.Option("--timeout", help="e.g. 30s [none]")] = None,
    *,
    conn: Connection,
) -> None:
    """Send an HTTP request to a service through the node's gateway; print the response body.

    Exit 0 for a 2xx answer, else 1 with the status and body on stderr."""
    try:
        data = read_body(body)
        sent: dict[str, str] = {}
        for header in headers or []:
            key, sep, value = header.partition(":")
            if not sep or not key.strip():
                raise ValueError(f"header {header!r} must be NAME: VALUE")
            sent[key.strip()] = value.strip()
        seconds = parse_duration(timeout) if timeout else None
    except (ValueError, OSError) as exc:
        fail(f"error: {exc}")
    verb = (method or ("POST" if data is not None else "GET")).upper()
    code = _run(
        conn.call(
            lambda c: call_gateway(
                c,
                target,
                gateway=gateway,
                token=conn.token,
                path=path,
                method=verb,
                body=data,
                headers=sent,
                timeout=seconds,
            )
        )
    )
    raise typer.Exit(code)


@app.command()
@connected
def cancel(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC_ID")],
    *,
    conn: Connection,
) -> None:
    """Stop a running execution (graceful stop, then kill)."""
    done = _run(conn.call(lambda c: c.cancel(execution_id)))
    sys.stdout.write(f"{done.execution_id} {done.result.status.value}\n")


@app.command("ls")
@connected
def list_executions(
    state: Annotated[list[str] | None, typer.Option("--state", help="only this state (repeatable)")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    *,
    conn: Connection,
) -> None:
    """List executions, newest first."""
    try:
        states = {ExecutionState(s) for s in state or []}
    except ValueError:
        fail(f"--state must be one of: {', '.join(s.value for s in ExecutionState)}")
    rows = _run(conn.call(lambda c: c.list_executions(states, limit)))
    if as_json:
        _print_json([{**r.__dict__, "state": r.state.value, "ports": list(r.ports)} for r in rows])
        return
    table = Table("EXECUTION", "JOB", "IMAGE", "STATE", "STATUS", "CREATED", "PORTS", box=None)
    for column in table.columns:
        column.overflow = "fold"
    for r in rows:
        table.add_row(r.execution_id, r.job_id, r.image, r.state.value, r.status, r.created_at, ", ".join(r.ports))
    out_console().print(table)


@app.command()
@connected
def describe(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC_ID")],
    *,
    conn: Connection,
) -> None:
    """Everything the node knows about an execution, as JSON."""
    _print_json(_run(conn.call(lambda c: c.describe(execution_id))))


@node_app.command("info")
@connected
def node_info(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    *,
    conn: Connection,
) -> None:
    """The node's id, versions, capacity and what is in use."""
    info = _run(conn.call(lambda c: c.node_info()))
    if as_json:
        _print_json(
            {
                "node_id": info.node_id,
                "version": info.version,
                "engine_version": info.engine_version,
                "capacity": info.capacity.model_dump(),
                "allocated": info.allocated.model_dump(),
                "queued": info.queued.model_dump(),
                "free": info.free.model_dump(),
                "running_executions": info.running,
                "queued_executions": info.queued_count,
                "port_range": list(info.port_range),
                "ports_in_use": info.ports_in_use,
                "gateway_address": info.gateway_address,
                "services": [
                    {
                        "execution_id": svc.execution_id,
                        "name": svc.name,
                        "state": svc.state.value,
                        "ports": [p.model_dump() for p in svc.ports],
                    }
                    for svc in info.services
                ],
            }
        )
        return
    console = out_console()
    console.print(f"node {info.node_id}  haddock {info.version}  docker {info.engine_version}")
    table = Table("", "CPU", "MEMORY", "DISK", "GPU", box=None)
    for name, r in (
        ("capacity", info.capacity),
        ("allocated", info.allocated),
        ("queued", info.queued),
        ("free", info.free),
    ):
        table.add_row(name, format_cpu(r.cpu), format_bytes(r.memory), format_bytes(r.disk), str(r.gpu))
    console.print(table)
    console.print(f"running {info.running}, queued {info.queued_count}")
    low, high = info.port_range
    gateway = f", gateway {info.gateway_address}" if info.gateway_address else ", no gateway"
    console.print(f"service ports {low}-{high}: {info.ports_in_use} in use{gateway}")
    if info.services:
        services = Table("SERVICE", "NAME", "STATE", "PORTS", box=None)
        for svc in info.services:
            ports = ", ".join(f"{p.name} {p.host_ip}:{p.host_port}->{p.container_port}/{p.protocol}" for p in svc.ports)
            services.add_row(svc.execution_id, svc.name, svc.state.value, ports)
        console.print(services)


# ---------------------------------------------------------------------------- stats


async def _show_stats(client: NodeClient, execution_id: str, *, max_points: int, follow: bool, as_json: bool) -> None:
    samples: list[Stat] = []
    summary: StatsSummary | None = None
    tty = sys.stdout.isatty()
    width, height = shutil.get_terminal_size((100, 30)) if tty else (100, 30)
    width, height = max(40, width), max(16, min(height - 2, 40))

    def draw(live: bool) -> None:
        points = decimate(samples, max_points) if max_points else samples
        if as_json:
            _print_json(stats_json(points, summary, execution_id))
            return
        chart = render_stats_chart(points, summary, width=width, height=height - 1, color=tty)
        if live and tty:
            sys.stdout.write("\x1b[H\x1b[2J")
        sys.stdout.write(chart + "\n" + summary_line(summary) + ("  (running)" if live else "") + "\n")
        sys.stdout.flush()

    last_draw = 0.0
    async for update in client.stats(execution_id, max_points=0 if follow else max_points, follow=follow):
        samples.extend(update.samples)
        summary = update.summary
        if follow and not as_json and time.monotonic() - last_draw >= 1.0 and update.running:
            draw(True)
            last_draw = time.monotonic()
    draw(False)


@app.command()
@connected
def stats(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC_ID")],
    max_points: Annotated[
        int, typer.Option("--max-points", min=1, help="down-sample to at most N points (time windows)")
    ] = 120,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="redraw as new samples come, until it ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the (down-sampled) samples and summary")] = False,
    *,
    conn: Connection,
) -> None:
    """An execution's CPU and memory over time, as a chart in the terminal (or JSON)."""
    _run(
        conn.call(lambda c: _show_stats(c, execution_id, max_points=max_points, follow=follow, as_json=as_json)),
        EXIT_NODE_FAILED,
    )
