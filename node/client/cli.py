"""The ``haddock`` commands that talk to a node: run, bid, submit, logs, wait, cancel, ls, describe, stats,
node info.

The top-level app (``haddock.node.cli``) adds ``serve``; nothing here loads the daemon. Every command
takes the connection options (``--node``, ``--token``, ``--tls-ca``, ``--tls-cert``, ``--tls-key``),
declared once in :func:`~haddock.node.client._cli_common.connected`. Errors are one clear line on stderr,
never a traceback.
``haddock run`` exits with the job's exit code, or 125 when the node could not run it (like ``docker run``).
Every command exits 125 when the request is invalid or the node refuses it (INVALID_ARGUMENT,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ALREADY_EXISTS), and 1 for other failures (not found, unreachable).

This module is the table of commands, in the order ``haddock --help`` lists them; each family lives in its
own module: ``_cli_run`` (run, bid), ``_cli_submit`` (submit), ``_cli_services`` (call, deploy, jobtypes),
``_cli_inspect`` (logs, wait, cancel, ls, describe, stats, node info); what they share in ``_cli_common``
(connection options, exit codes, errors, output) and ``_cli_request`` (the request from the options).
"""

from __future__ import annotations

import typer

from haddock.node.client._cli_common import fail
from haddock.node.client._cli_inspect import cancel, describe, list_executions, logs, node_info, stats, wait
from haddock.node.client._cli_run import bid, run
from haddock.node.client._cli_services import call, deploy, jobtypes
from haddock.node.client._cli_submit import submit

__all__ = ["app", "fail", "node_app"]

app = typer.Typer(
    help="Talk to a haddock node.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="About the node itself.", no_args_is_help=True)
app.add_typer(node_app, name="node")

_ARGS_AFTER_IMAGE = {"allow_interspersed_args": False}  # `IMAGE -- ARGS`: options end at IMAGE

app.command(context_settings=_ARGS_AFTER_IMAGE)(run)
app.command(context_settings=_ARGS_AFTER_IMAGE)(bid)
app.command(context_settings=_ARGS_AFTER_IMAGE)(submit)
app.command()(logs)
app.command()(wait)
app.command()(call)
app.command()(deploy)
app.command()(jobtypes)
app.command()(cancel)
app.command("ls")(list_executions)
app.command()(describe)
node_app.command("info")(node_info)
app.command()(stats)
