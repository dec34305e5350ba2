"""``haddock``: run the node, and talk to one.

This module is the console script's app. It holds ``serve``, which loads the daemon inside the command
only; every other command comes from the requester side (:mod:`haddock.node.client.cli`), so that
``haddock logs`` and ``haddock --help`` never import docker-py, boto3 or the node's store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from haddock.node.client import DEFAULT_NODE
from haddock.node.client.cli import app as client_app
from haddock.node.client.cli import fail

app = typer.Typer(
    name="haddock",
    help="A compute node that runs jobs as Docker containers, and the tools to talk to it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", help="TOML configuration file")] = None,
    listen: Annotated[str | None, typer.Option("--listen", help=f"HOST:PORT to listen on [{DEFAULT_NODE}]")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="where results and logs live")] = None,
    node_id: Annotated[str | None, typer.Option("--node-id", help="this node's id [hostname]")] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="require this bearer token from clients")
    ] = None,
    log_format: Annotated[str | None, typer.Option("--log-format", help="text or json")] = None,
    orchestrator: Annotated[
        list[str] | None,
        typer.Option("--orchestrator", help="join a Bacalhau network: its NATS URL, nats://HOST:PORT (repeatable)"),
    ] = None,
) -> None:
    """Run the node in the foreground until SIGTERM or Ctrl-C."""
    from haddock.node.client import validation_message
    from haddock.node.config import load_settings
    from haddock.node.logconfig import configure_logging
    from haddock.node.server import serve as serve_node
    from haddock.node.telemetry import setup_telemetry

    try:
        settings = load_settings(
            config,
            listen=listen,
            data_dir=data_dir,
            node_id=node_id,
            auth_token_file=token_file,
            log_format=log_format,
        )
        if orchestrator:  # replaces [cluster] orchestrators; the table's other keys stay as configured
            from haddock.node.cluster.config import ClusterSettings

            urls = ClusterSettings(orchestrators=orchestrator).orchestrators
            settings.cluster = settings.cluster.model_copy(update={"orchestrators": urls})
    except ValidationError as exc:
        fail("invalid configuration: " + validation_message(exc).removeprefix("invalid request: "), 1)
    except ValueError as exc:
        fail(f"invalid configuration: {exc}", 1)
    configure_logging(settings.log_level, settings.log_format.value)
    try:
        telemetry = setup_telemetry(settings)
    except RuntimeError as exc:
        fail(str(exc), 1)
    try:
        asyncio.run(serve_node(settings))
    except RuntimeError as exc:
        fail(str(exc), 1)
    finally:
        telemetry.shutdown()


# The requester's commands (run, logs, ..., node info) join ours as they are.
app.registered_commands += client_app.registered_commands
app.registered_groups += client_app.registered_groups


def main() -> None:  # pragma: no cover - console script entry
    app()
