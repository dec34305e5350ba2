"""What every ``haddock`` client command shares: the connection options (declared once, in
:func:`connected`), exit codes, one-line errors, output to the terminal or a pipe.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from pydantic import ValidationError
from rich.console import Console

from haddock.executor.quantity import QuantityError
from haddock.executor.streams import LogQuery, StreamType
from haddock.node.client._client import DEFAULT_NODE, ClientTls, Finished, NodeClient, NodeError
from haddock.node.client.convert import validation_message

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


def run_coro(coro: Coroutine[Any, Any, T], error_exit: int = EXIT_FAILED) -> T:
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


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


async def stream_logs(client: NodeClient, execution_id: str, query: LogQuery) -> int | None:
    """Copy the execution's output to our stdout/stderr; return the last next_offset."""
    last: int | None = None
    out, err = sys.stdout.buffer, sys.stderr.buffer
    async for chunk in client.logs(execution_id, query):
        target = out if chunk.stream is StreamType.STDOUT else err
        target.write(chunk.data)
        target.flush()
        last = chunk.next_offset
    return last


def report(done: Finished) -> int:
    """Say what went wrong (if anything) and choose the exit code."""
    r = done.result
    if r.exit_code is None:
        say(r.error_message or r.status.value)
        return EXIT_NODE_FAILED
    # anything the node says beyond restating the exit code (a timeout, an OOM kill, an executable not found in
    # the image, output lost to a full log space) is for the user, on stderr
    if r.error_message and r.error_message != f"the job exited with code {r.exit_code}":
        say(r.error_message)
    return r.exit_code
