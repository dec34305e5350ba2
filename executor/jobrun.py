"""Jobs built from source with a job type (``request.job``): the build before the run, and the batch mode.
Part of the runner.

Before the run: the inputs are prepared first (the job's source is one of them), then the job builder
makes the image (build output into the execution's log, each step a ``building`` event; build time is
not the job's: its timeout starts with the container), and the container runs the built image with the
manifest's runtime environment and ``JOB_DEPLOYMENT_TIMESTAMP``.

A batch run (``job.payload`` set): once the wrapper's ``/ready`` answers 200, the payload is posted once to
``/api/v1/perform``; the answer's body becomes the results' ``stdout`` and what the job printed its
``stderr``; the container is then stopped. Success for a 2xx answer, error with the HTTP status and the
job's error text otherwise; a job that ends before answering is an error with its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from haddock.executor.driver import ContainerHandle, ExitStatus
from haddock.executor.errors import ExecutorError, InvalidSpec
from haddock.executor.jobspec import JOB_PORT, JOB_SOURCE_TARGET, not_applied_message
from haddock.executor.protocol import BuildOutput, JobBuilder
from haddock.executor.records import EventKind, ResultStatus, epoch_ms
from haddock.executor.request import EngineSpec, PullPolicy, RunCommandRequest
from haddock.executor.streams import StreamType

if TYPE_CHECKING:  # aiohttp is loaded by the first batch job, not by every node
    import aiohttp

    from haddock.executor._execution import Execution
    from haddock.executor.runner import Runner

__all__ = ["BatchAnswer", "build_job", "note_not_applied", "run_batch"]

log = logging.getLogger(__name__)

READY_POLL_SECONDS = 0.2
MAX_ANSWER_BYTES = 64 * 1024 * 1024
BATCH_STOP_REASON = "batch-done"


@dataclass(frozen=True)
class BatchAnswer:
    status_code: int
    body: bytes


def deployment_timestamp(execution: Execution) -> int:
    """The timestamp the node gives this deployment (``JOB_DEPLOYMENT_TIMESTAMP``): when it was accepted, in
    milliseconds since the Unix epoch. Racetrack's contract asks for an integer timestamp that tells
    deployments apart (a wrapper only echoes it in ``/live``); whole seconds would not tell apart two deploys
    accepted in the same second, and no two executions of a node share a millisecond (``accepted_now``)."""
    return epoch_ms(execution.record.created_at)


def note_not_applied(runner: Runner, execution: Execution) -> None:
    """The manifest's fields that only Racetrack's cluster applies (``git``, ``replicas``…): accepted, and said
    so once on the execution."""
    record = execution.record
    assert record.request.job is not None
    fields = record.request.job.manifest.not_applied
    if fields:
        runner._emit(record, EventKind.NOT_APPLIED, not_applied_message(fields), fields=",".join(fields))


async def build_job(runner: Runner, execution: Execution, builder: JobBuilder | None) -> tuple[RunCommandRequest, str]:
    """After the inputs are prepared: the job's image, and the request the container is made from (the built
    image, the runtime environment). Raises ExecutorError when the build fails."""
    record = execution.record
    request = record.request
    job = request.job
    assert job is not None
    if builder is None:
        raise InvalidSpec("this node has no job types configured")
    prepared = execution.prepared_inputs
    source = next((v.source for v in prepared.volumes if v.target == JOB_SOURCE_TARGET), None) if prepared else None
    if source is None:
        raise ExecutorError("the job's source was not prepared")
    manifest = job.manifest
    runner._emit(
        record, EventKind.BUILDING, f"making the image of job {manifest.name} {manifest.version} ({manifest.jobtype})"
    )
    writer = execution.writer

    def on_output(out: BuildOutput) -> None:
        if writer is not None and not writer.closed:
            writer.write(StreamType.STDERR, (out.line + "\n").encode(errors="replace"))
        if out.step is not None:
            runner._emit(
                record,
                EventKind.BUILDING,
                f"step {out.step}/{out.steps}: {out.instruction}",
                step=out.step,
                steps=out.steps,
                instruction=out.instruction,
            )

    built = await builder.build(request, source, on_output)
    record.built_image = built.image  # kept with the execution (the store, from the event): restarts use it
    runner._emit(
        record,
        EventKind.BUILT,
        f"image {built.image} {'built' if built.built else 'present (nothing to build)'}",
        image=built.image,
        built=built.built,
        jobtype=built.jobtype,
    )
    return job_run_request(execution, built.image), built.stop_signal


def job_run_request(execution: Execution, image: str) -> RunCommandRequest:
    """The request a job's container is made from: its built image, the manifest's runtime environment, the
    requester's, and the node's ``JOB_DEPLOYMENT_TIMESTAMP`` (which nothing overrides: the liveness probe
    checks it)."""
    request = execution.record.request
    assert request.job is not None
    env = {**request.job.manifest.runtime_env, **request.engine.env}
    env["JOB_DEPLOYMENT_TIMESTAMP"] = str(deployment_timestamp(execution))
    engine = EngineSpec(image=image, env=env, working_dir=request.engine.working_dir, pull_policy=PullPolicy.NEVER)
    return request.model_copy(update={"engine": engine})


async def restore_job(runner: Runner, execution: Execution) -> tuple[RunCommandRequest, str]:
    """A job's container again after the node restarted (its inputs prepared again): from the image its
    build made, kept with the execution; built again when that is not known or no longer on the engine."""
    record = execution.record
    image = record.built_image
    if image is not None:
        run_request = job_run_request(execution, image)
        try:
            ready = await runner.driver.prepare_image(run_request, lambda _: None)
        except Exception as exc:  # whatever the driver says: the image is not there to run
            log.warning("the built image %s of %s is gone (%s); building it again", image, record.execution_id, exc)
        else:
            runner._emit(
                record,
                EventKind.IMAGE_READY,
                f"image {image} present (built before the node restarted)",
                image_id=ready.image_id,
                pulled=False,
            )
            return run_request, ready.stop_signal
    return await build_job(runner, execution, runner.job_builder)


async def _wait_ready(session: aiohttp.ClientSession, base: str) -> None:
    import aiohttp

    while True:
        try:
            async with session.get(f"{base}/ready", timeout=aiohttp.ClientTimeout(total=2.0)) as answer:
                if answer.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(READY_POLL_SECONDS)


async def _interact(runner: Runner, execution: Execution, handle: ContainerHandle, payload: str) -> BatchAnswer:
    """Wait for the wrapper to be ready, post the payload once, stop the container; the answer (an
    ``answered`` event before the container's ``exited``)."""
    import aiohttp

    address = await handle.address()
    if address is None:
        raise ExecutorError("the job's container has no address the node can reach")
    host = f"[{address}]" if ":" in address else address
    base = f"http://{host}:{JOB_PORT}"
    async with aiohttp.ClientSession(trust_env=False) as session:
        await _wait_ready(session, base)
        async with session.post(
            f"{base}/api/v1/perform",
            data=payload.encode(),
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=None, connect=10.0),
        ) as answer:
            body = b""
            async for chunk in answer.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise ExecutorError(f"the job's answer is larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
            status = answer.status
    runner._emit(
        execution.record,
        EventKind.ANSWERED,
        f"the job answered HTTP {status} ({len(body)} bytes); stopping its container",
        http_status=status,
        bytes=len(body),
    )
    await handle.stop(BATCH_STOP_REASON, grace=runner._stop_grace())
    return BatchAnswer(status, body)


async def run_batch(
    runner: Runner, execution: Execution, handle: ContainerHandle
) -> tuple[ExitStatus, ResultStatus | None]:
    """A started job container in batch mode: its answer to the payload, under the job's timeout, cancel
    and output cap (``supervise``)."""
    from haddock.executor.supervise import supervise

    record = execution.record
    request = record.request
    assert request.job is not None and request.job.payload is not None
    interaction = asyncio.create_task(_interact(runner, execution, handle, request.job.payload))
    try:
        outcome = await supervise(runner, execution, handle, request.timeout)
    finally:
        if not interaction.done():
            interaction.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(interaction, return_exceptions=True)
    if handle.stop_reason not in (None, BATCH_STOP_REASON) or execution.output_cap_message or execution.timed_out:
        return outcome, None  # cancelled, timed out, over its output cap: decided as for any execution
    if interaction.cancelled() or interaction.exception() is not None:
        exc = interaction.exception() if not interaction.cancelled() else None
        if isinstance(exc, ExecutorError):
            why = str(exc)
        elif exc is not None:
            why = f"the node could not talk to the job: {runner.driver.describe_failure(exc)}"
        else:
            why = f"the job exited with code {outcome.exit_code} before answering"
        return ExitStatus(
            exit_code=outcome.exit_code if outcome.exit_code else 1,
            oom_killed=outcome.oom_killed,
            error="" if outcome.oom_killed else why,
            capture_error=outcome.capture_error,
        ), None if outcome.oom_killed else ResultStatus.ERROR
    answer = interaction.result()
    execution.stdout_body = answer.body
    ok = 200 <= answer.status_code < 300
    text = answer.body.decode(errors="replace").strip()
    if len(text) > 1000:
        text = text[:1000] + "…"
    return ExitStatus(
        exit_code=0 if ok else 1,
        error="" if ok else f"the job answered HTTP {answer.status_code}: {text}",
        capture_error=outcome.capture_error,
        stdout_bytes=len(answer.body),
    ), ResultStatus.SUCCESS if ok else ResultStatus.ERROR
