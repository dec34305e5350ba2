"""The commands about executions and the node: ``logs``, ``wait``, ``cancel``, ``ls``, ``describe``, ``stats``,
``node info``.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Annotated

import typer
from rich.table import Table

from haddock.executor.quantity import format_bytes, format_cpu
from haddock.executor.records import ExecutionState
from haddock.executor.stats import Stat, StatsSummary, decimate
from haddock.executor.streams import LogQuery
from haddock.node.client._charts import render_stats_chart, stats_json, summary_line
from haddock.node.client._cli_common import (
    EXIT_NODE_FAILED,
    Connection,
    connected,
    fail,
    out_console,
    print_json,
    report,
    run_coro,
    stream_logs,
)
from haddock.node.client._client import NodeClient
from haddock.node.client._services import until_ready


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
    run_coro(conn.call(lambda c: stream_logs(c, execution_id, query)))


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
        raise typer.Exit(run_coro(conn.call(lambda c: until_ready(c, execution_id, print_id=False))))
    done = run_coro(conn.call(lambda c: c.wait(execution_id)))
    if as_json:
        print_json(done.as_json())
        raise typer.Exit(done.result.exit_code if done.result.exit_code is not None else EXIT_NODE_FAILED)
    raise typer.Exit(report(done))


@connected
def cancel(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC_ID")],
    *,
    conn: Connection,
) -> None:
    """Stop a running execution (graceful stop, then kill)."""
    done = run_coro(conn.call(lambda c: c.cancel(execution_id)))
    sys.stdout.write(f"{done.execution_id} {done.result.status.value}\n")


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
    rows = run_coro(conn.call(lambda c: c.list_executions(states, limit)))
    if as_json:
        print_json([{**r.__dict__, "state": r.state.value, "ports": list(r.ports)} for r in rows])
        return
    table = Table("EXECUTION", "JOB", "IMAGE", "STATE", "STATUS", "CREATED", "PORTS", box=None)
    for column in table.columns:
        column.overflow = "fold"
    for r in rows:
        table.add_row(r.execution_id, r.job_id, r.image, r.state.value, r.status, r.created_at, ", ".join(r.ports))
    out_console().print(table)


@connected
def describe(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC_ID")],
    *,
    conn: Connection,
) -> None:
    """Everything the node knows about an execution, as JSON."""
    print_json(run_coro(conn.call(lambda c: c.describe(execution_id))))


@connected
def node_info(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    *,
    conn: Connection,
) -> None:
    """The node's id, versions, capacity and what is in use."""
    info = run_coro(conn.call(lambda c: c.node_info()))
    if as_json:
        print_json(
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


async def _show_stats(client: NodeClient, execution_id: str, *, max_points: int, follow: bool, as_json: bool) -> None:
    samples: list[Stat] = []
    summary: StatsSummary | None = None
    tty = sys.stdout.isatty()
    width, height = shutil.get_terminal_size((100, 30)) if tty else (100, 30)
    width, height = max(40, width), max(16, min(height - 2, 40))

    def draw(live: bool) -> None:
        points = decimate(samples, max_points) if max_points else samples
        if as_json:
            print_json(stats_json(points, summary, execution_id))
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
    run_coro(
        conn.call(lambda c: _show_stats(c, execution_id, max_points=max_points, follow=follow, as_json=as_json)),
        EXIT_NODE_FAILED,
    )
