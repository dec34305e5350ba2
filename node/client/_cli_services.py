"""Services and jobs: ``haddock call`` (through the node's gateway), ``deploy``, ``jobtypes``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from haddock.executor.jobspec import ManifestError, job_engine_image
from haddock.executor.quantity import parse_duration
from haddock.node.client._cli_common import (
    EXIT_NODE_FAILED,
    Connection,
    connected,
    fail,
    out_console,
    print_json,
    run_coro,
)
from haddock.node.client._cli_request import build_request
from haddock.node.client._jobs import deploy_job, job_source, load_manifest, say_not_applied, service_for_job
from haddock.node.client._services import call_gateway, read_body
from haddock.node.client.convert import validation_message


@connected
def call(
    target: Annotated[
        str,
        typer.Argument(metavar="ID_OR_SERVICE", help="an execution id, else a service name, else a job NAME[@VERSION]"),
    ],
    body: Annotated[str | None, typer.Argument(metavar="[BODY|@FILE]", help="request body (@- reads stdin)")] = None,
    path: Annotated[str | None, typer.Option("--path", help="path on the service [/; a job: /api/v1/perform]")] = None,
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
    verb = (method or ("POST" if data is not None else "")).upper()
    code = run_coro(
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


@connected
def deploy(
    job_dir: Annotated[Path, typer.Argument(metavar="[DIR]", help="the job's directory (job.yaml + source)")] = Path(),
    job_source_uri: Annotated[
        str | None, typer.Option("--job-source", help="the job's source as an input (http(s)://, s3://, file://)")
    ] = None,
    manifest_path: Annotated[Path | None, typer.Option("--manifest", help="job.yaml [DIR/job.yaml]")] = None,
    network: Annotated[str, typer.Option("--network", help="none or bridge (the gateway reaches it)")] = "bridge",
    env: Annotated[list[str] | None, typer.Option("-e", "--env", help="KEY=VALUE (repeatable)")] = None,
    execution_id: Annotated[str | None, typer.Option("--id", help="execution id [generated]")] = None,
    *,
    conn: Connection,
) -> None:
    """Build a job (job types) and run it as a service; print its execution id once it is ready.

    The gateway routes /pub/job/NAME/VERSION/ and /pub/job/NAME/latest/ to it; a running execution of the same
    job and version is stopped once the new one is ready (and kept when the new one fails)."""
    try:
        manifest = load_manifest(job_dir, manifest_path)
        request = build_request(
            job_engine_image(manifest.name),
            [],
            execution_id=execution_id,
            job_id=f"{manifest.name}-{manifest.version}".replace("+", "_")[:128],
            cpu=None,
            memory=None,
            disk=None,
            gpu=0,
            network=network,
            env=list(env or []),
            workdir=None,
            entrypoint=None,
            timeout=None,
            pull="never",
            limits={},
            service=service_for_job(manifest),
            sources_extra=[job_source(job_dir, job_source_uri)],
            job={"manifest": manifest},
        )
    except ManifestError as exc:
        fail(f"invalid manifest: {exc}", EXIT_NODE_FAILED)
    except ValidationError as exc:
        fail(validation_message(exc), EXIT_NODE_FAILED)
    except (ValueError, OSError) as exc:
        fail(f"invalid request: {exc}", EXIT_NODE_FAILED)
    say_not_applied(manifest)
    raise typer.Exit(run_coro(conn.call(lambda c: deploy_job(c, request)), EXIT_NODE_FAILED))


@connected
def jobtypes(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    *,
    conn: Connection,
) -> None:
    """The job types (plugins) the node builds jobs with."""
    found = run_coro(conn.call(lambda c: c.list_job_types()))
    if as_json:
        print_json(found)
        return
    table = Table("JOBTYPE", "VERSION", "BASE IMAGE", "FORM", "URL")
    for t in found:
        table.add_row(
            t["name"], t["version"], t["base_image"], "single" if t["single_template"] else "base+job", t["url"]
        )
    out_console().print(table)
