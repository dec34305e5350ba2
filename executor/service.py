"""A service's life, whatever the engine: probes, states, and the node's restarts. Part of the runner.

A service is an execution meant to keep running. Once its container runs it is ``starting``; it is
``ready`` while its readiness probe passes (the gateway routes to it), ``unhealthy`` when the probe fails
past its threshold, ``stopping`` once cancelled. When its container ends, its restart policy decides:
a new container (attempt n+1, after an exponential backoff; state ``restarting``), or the end. Restarts
are the node's, never the engine's (the engine's own restart policy would cut the node's output capture):
each attempt is a new container, its output appended to the same log after a marker line. A liveness
probe failing past its threshold stops the container, which then restarts under its policy; a service
that never becomes ready within its readiness start period ends in error with the probe's last failure.

Every transition is an event with its reason. After a node restart a running service is taken back (its
probes start again, its ports are the ones in its request); one whose container vanished is restarted
under its policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from haddock.executor.driver import ContainerHandle, ExitStatus
from haddock.executor.errors import ExecutorError
from haddock.executor.jobrun import deployment_timestamp, restore_job
from haddock.executor.prepare import prepare_image
from haddock.executor.probes import Prober
from haddock.executor.quantity import format_bytes, format_duration
from haddock.executor.records import EventKind, ExecutionRecord, ExecutionState, ResultStatus, utcnow
from haddock.executor.request import InputVolume
from haddock.executor.servicespec import HttpProbe, RestartPolicy, ServiceSpec
from haddock.executor.settle import decide_status
from haddock.executor.streams import StreamType
from haddock.executor.supervise import supervise

if TYPE_CHECKING:
    from haddock.executor._execution import Execution
    from haddock.executor.runner import Runner

__all__ = ["attempt_output_base", "attempts", "resume_service", "run_service"]

log = logging.getLogger(__name__)

IMAGE_HEALTH_INTERVAL = 0.5  # how often the engine's health status of an image HEALTHCHECK is read

Outcome = tuple[ExitStatus, ResultStatus | None]


def attempts(record: ExecutionRecord) -> int:
    """How many containers the execution has started (a service: 1 + its restarts)."""
    return sum(1 for e in record.events if e.kind is EventKind.STARTED)


def attempt_output_base(record: ExecutionRecord) -> dict[StreamType, int]:
    """Bytes per stream in the log before the current attempt's container started (its own output follows)."""
    for event in reversed(record.events):
        if event.kind is EventKind.STARTED:
            try:
                return {
                    StreamType.STDOUT: int(event.details.get("stdout_base", 0)),
                    StreamType.STDERR: int(event.details.get("stderr_base", 0)),
                }
            except (TypeError, ValueError):
                break
    return {StreamType.STDOUT: 0, StreamType.STDERR: 0}


async def run_service(
    runner: Runner, execution: Execution, handle: ContainerHandle, *, volumes: list[InputVolume], stop_signal: str
) -> Outcome:
    """A started service until it ends: probes, restarts, the outcome of its last attempt."""
    return await _Service(runner, execution, volumes=volumes, stop_signal=stop_signal, attempt=1).run(handle)


async def resume_service(runner: Runner, execution: Execution) -> Outcome:
    """A service a previous life of the node left running: reattach (capture, probes), or restart it under
    its policy when its container ended or vanished meanwhile."""
    record = execution.record
    service = _Service(runner, execution, volumes=None, stop_signal=None, attempt=max(1, attempts(record)))
    resumed = await runner.driver.resume(record, execution.writer)
    if resumed is None:  # the node went down while preparing it: nothing of it ran, prepare it again
        if execution.writer is None:  # pragma: no cover - a complete log means a container ran
            return ExitStatus(error="the service's container was not found when the node restarted"), None
        runner._set_state(record, ExecutionState.PREPARING)
        return await runner._prepare_and_run(execution)
    if isinstance(resumed, ExitStatus):
        return await service.run(None, ended=resumed)
    execution.handle = resumed
    record.container_id = resumed.container_id
    if not resumed.running:
        outcome = await resumed.finish()
        runner._emit_exit(record, outcome)
        return await service.run(resumed, ended=outcome)
    return await service.run(resumed, recovered=True)


@dataclasses.dataclass
class _Health:
    failure: str = ""  # why the node stopped the container (liveness, never ready)


class _Service:
    def __init__(
        self,
        runner: Runner,
        execution: Execution,
        *,
        volumes: list[InputVolume] | None,
        stop_signal: str | None,
        attempt: int,
    ) -> None:
        self.runner = runner
        self.execution = execution
        self.record = execution.record
        assert self.record.request.service is not None
        self.spec: ServiceSpec = self.record.request.service
        self.volumes = volumes
        self.stop_signal = stop_signal
        self.attempt = attempt
        self.prober = Prober(self.spec)
        # A job's /live must report the deployment timestamp the node gave it (Racetrack's contract).
        self.deployment_timestamp = deployment_timestamp(execution) if self.record.request.job is not None else None
        self._stopping = False  # the node is stopping the current container: its probes decide nothing more

    # ------------------------------------------------------------------ the loop

    async def run(
        self, handle: ContainerHandle | None, *, ended: ExitStatus | None = None, recovered: bool = False
    ) -> Outcome:
        try:
            while True:
                failure = ""
                if ended is None:
                    assert handle is not None
                    outcome, failure = await self._supervise(handle, recovered=recovered)
                    recovered = False
                else:
                    outcome, ended = ended, None
                verdict = self._verdict(handle, outcome, failure)
                if verdict is not None:
                    return await self._end(handle, verdict)
                why = failure or _describe_exit(self.record, outcome)
                handle = await self._restart(handle, why)
                if handle is None:
                    return outcome, ResultStatus.CANCELLED
        finally:
            await self.prober.close()

    async def _end(self, handle: ContainerHandle | None, verdict: Outcome) -> Outcome:
        """The service ends: its status decided now, its last container removed before the result is
        settled, so that its host ports are free on the host when the node gives them back."""
        outcome, status = verdict
        if status is None:
            stop_reason = handle.stop_reason if handle is not None else None
            status = decide_status(
                stop_reason, self.execution.output_cap_message, outcome, timed_out=self.execution.timed_out
            )
        if handle is not None and not self.execution.leave_container:
            self.execution.handle = None
            try:
                if await handle.remove():
                    self.runner._emit(self.record, EventKind.CLEANED_UP, "container removed")
            except Exception as exc:
                self.execution.handle = handle  # the runner's clean-up tries again
                log.warning("could not remove container %s: %s", handle.container_id, exc)
        return outcome, status

    def _verdict(self, handle: ContainerHandle | None, outcome: ExitStatus, failure: str) -> Outcome | None:
        """How the service ends after its container did, or None to restart it."""
        reason = handle.stop_reason if handle is not None else None
        if self.execution.cancel_event.is_set() or reason in ("cancel", "output-cap"):
            return outcome, None
        if self.execution.timed_out or reason == "timeout":
            # A service does not complete: its timeout ends it as a timeout, even when it answers the stop with 0.
            return outcome, ResultStatus.TIMEOUT
        if reason == "unready":
            return dataclasses.replace(outcome, error=f"the service {failure}"), None
        failed = bool(failure) or outcome.oom_killed or bool(outcome.error) or outcome.exit_code != 0
        why = failure or _describe_exit(self.record, outcome)
        restart = self.spec.restart
        if restart.policy is RestartPolicy.NEVER or (restart.policy is RestartPolicy.ON_FAILURE and not failed):
            if failure or outcome.error:
                return dataclasses.replace(outcome, error=f"the service {why}"), None
            if not failed:  # a service is meant to keep running: ending by itself, even with 0, is a failure
                error = f"the service {why}; its restart policy '{restart.policy.value}' does not restart it"
                return dataclasses.replace(outcome, error=error), ResultStatus.ERROR
            return outcome, None
        restarts = self.attempt - 1
        if restarts >= restart.max_restarts:
            times = "time" if restarts == 1 else "times"
            return dataclasses.replace(
                outcome,
                error=f"the service {why}; it was restarted {restarts} {times}, its limit "
                f"(max_restarts {restart.max_restarts})",
            ), None
        return None

    async def _supervise(self, handle: ContainerHandle, *, recovered: bool) -> tuple[ExitStatus, str]:
        health = _Health()
        self._stopping = False
        watcher = asyncio.create_task(self._watch(handle, health, recovered=recovered))
        try:
            outcome = await supervise(self.runner, self.execution, handle, self._time_left())
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        return outcome, health.failure

    def _time_left(self) -> float | None:
        timeout = self.record.request.timeout
        if timeout is None:
            return None
        started = self.record.started_at or self.record.created_at
        return max(0.0, timeout - (utcnow() - started).total_seconds())

    async def _restart(self, handle: ContainerHandle | None, why: str) -> ContainerHandle | None:
        """Replace the ended container with a new one after the backoff; None when cancelled meanwhile."""
        runner, record, execution = self.runner, self.record, self.execution
        number = self.attempt  # this restart's number (restarts so far + 1)
        delay = self.spec.restart.backoff(number - 1)
        runner._set_state(record, ExecutionState.RESTARTING, reason=why)
        runner._emit(
            record,
            EventKind.RESTARTING,
            f"restarting the service in {format_duration(delay)} (restart {number} of at most "
            f"{self.spec.restart.max_restarts}): {why}",
            attempt=number + 1,
            reason=why,
            backoff_seconds=delay,
        )
        if handle is not None:
            execution.handle = None  # between containers: a cancel is not "too late"
            try:
                execution.writer = await handle.take_log()  # the log goes on with the next attempt
            except Exception as exc:
                log.warning("could not take the log of %s back: %s", record.execution_id, exc)
                execution.writer = None
            try:
                await handle.remove()
            except Exception as exc:
                log.warning("could not remove container %s: %s", handle.container_id, exc)
        elif execution.writer is None:  # taken back after a restart of the node, its container gone
            try:
                execution.writer = await asyncio.to_thread(
                    runner.logs.open_append, record.execution_id, runner.config.log_cap(record.request)
                )
            except Exception as exc:
                log.warning("could not reopen the log of %s: %s", record.execution_id, exc)
        if await _cancelled_within(execution.cancel_event, delay):
            return None
        if self.stop_signal is None:  # taken back after a restart of the node: image and inputs again
            if record.request.job is None:
                self.stop_signal = await prepare_image(runner.driver, record, execution.cancel_event, runner._emit)
            self.volumes = []
            if record.request.input_sources and runner._input_preparer is not None:
                await runner._prepare_inputs(execution, runner._input_preparer)
                assert execution.prepared_inputs is not None
                self.volumes = execution.prepared_inputs.volumes
            if record.request.job is not None:  # a job's: the image its build made, kept with the execution
                execution.run_request, self.stop_signal = await restore_job(runner, execution)
        if execution.cancel_event.is_set():
            return None
        writer = execution.writer
        if writer is None:
            raise ExecutorError("the service could not be restarted: its log could not be reopened")
        assert self.stop_signal is not None
        self.attempt = number + 1
        marker = f"--- haddock: restart {number}, attempt {self.attempt}: {why} ---\n".encode()
        writer.write(StreamType.STDOUT, marker)
        writer.write(StreamType.STDERR, marker)
        base = writer.bytes_written
        new = await runner.driver.create(
            execution.run_request or record.request,  # a job's: its built image
            self.volumes or [],
            writer,
            stop_signal=self.stop_signal,
            attempt=self.attempt,
        )
        execution.handle = new
        record.container_id = new.container_id
        if execution.cancel_event.is_set():
            return None
        await new.start()
        runner._set_state(record, ExecutionState.STARTING, reason=f"attempt {self.attempt} started")
        runner._emit(
            record,
            EventKind.STARTED,
            f"container started (attempt {self.attempt})",
            container_id=new.container_id,
            attempt=self.attempt,
            stdout_base=base[StreamType.STDOUT],
            stderr_base=base[StreamType.STDERR],
        )
        return new

    # ------------------------------------------------------------------ probes and states

    def _to(self, state: ExecutionState, reason: str) -> None:
        if self._stopping or self.execution.cancel_event.is_set():
            return
        if self.record.state is state or self.record.state.terminal:
            return
        self.runner._set_state(self.record, state, reason=reason)

    def _probe_failed(self, kind: str, detail: str, failures: int) -> None:
        self.runner._emit(
            self.record,
            EventKind.PROBE_FAILED,
            f"{kind} probe failed ({failures} in a row): {detail}",
            probe=kind,
            reason=detail,
            failures=failures,
        )

    async def _watch(self, handle: ContainerHandle, health: _Health, *, recovered: bool) -> None:
        """The container's probes and the states they decide, until the attempt ends or a cancel comes."""
        loops: list[Any] = []
        if self.spec.image_healthcheck:
            loops.append(self._image_loop(handle, health))
        else:
            if self.spec.readiness is not None:
                loops.append(self._readiness_loop(handle, health, self.spec.readiness, recovered=recovered))
            else:
                self._to(ExecutionState.READY, "started (the service has no readiness probe)")
            if self.spec.liveness is not None:
                loops.append(self._liveness_loop(handle, health, self.spec.liveness))
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            await self.execution.cancel_event.wait()
            if not self.record.state.terminal:
                self.runner._set_state(self.record, ExecutionState.STOPPING, reason="cancellation requested")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop(self, handle: ContainerHandle, reason: str) -> None:
        self._stopping = True
        with contextlib.suppress(Exception):
            await handle.stop(reason, grace=self.runner._stop_grace())

    async def _readiness_loop(
        self, handle: ContainerHandle, health: _Health, probe: HttpProbe, *, recovered: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ever_ready = recovered and self.record.state in (ExecutionState.READY, ExecutionState.UNHEALTHY)
        failures = 0
        while True:
            result = await self.prober.http(probe)
            if result.ok:
                failures = 0
                ever_ready = True
                self._to(ExecutionState.READY, f"readiness probe passed: {result.detail}")
            else:
                failures += 1
                if not ever_ready:
                    if probe.start_period and loop.time() - started >= probe.start_period:
                        health.failure = (
                            f"did not become ready within its start period of {format_duration(probe.start_period)}; "
                            f"last readiness probe: {result.detail}"
                        )
                        self._probe_failed("readiness", result.detail, failures)
                        await self._stop(handle, "unready")
                        return
                elif failures == probe.failure_threshold:
                    self._probe_failed("readiness", result.detail, failures)
                    self._to(ExecutionState.UNHEALTHY, f"readiness probe failed {failures} times: {result.detail}")
            await asyncio.sleep(probe.interval)

    async def _liveness_loop(self, handle: ContainerHandle, health: _Health, probe: HttpProbe) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        failures = 0
        while True:
            result = await self.prober.http(probe, deployment_timestamp=self.deployment_timestamp)
            if result.ok:
                failures = 0
            elif loop.time() - started >= probe.start_period:
                failures += 1
                if failures >= probe.failure_threshold:
                    health.failure = f"failed its liveness probe {failures} times: {result.detail}"
                    self._probe_failed("liveness", result.detail, failures)
                    self._to(ExecutionState.UNHEALTHY, health.failure)
                    await self._stop(handle, "unhealthy")
                    return
            await asyncio.sleep(probe.interval)

    async def _image_loop(self, handle: ContainerHandle, health: _Health) -> None:
        """The engine's health status of the image's HEALTHCHECK: ``healthy`` makes the service ready, ``unhealthy``
        (the check failed its retries, counted by the engine) stops the container, which restarts under its
        policy. A container without a health status twice in a row has no HEALTHCHECK: the service ends in
        error, it would never become ready."""
        missing = 0
        while True:
            result = await self.prober.image(handle)
            if result is not None and result.final:
                missing += 1
                if missing >= 2:
                    health.failure = f"cannot be probed as it asks (image_healthcheck): {result.detail}"
                    self._probe_failed("healthcheck", result.detail, missing)
                    await self._stop(handle, "unready")
                    return
            elif result is not None:
                missing = 0
                if result.ok:
                    self._to(ExecutionState.READY, result.detail)
                else:
                    health.failure = f"is unhealthy: {result.detail}"
                    self._probe_failed("healthcheck", result.detail, 1)
                    self._to(ExecutionState.UNHEALTHY, result.detail)
                    await self._stop(handle, "unhealthy")
                    return
            await asyncio.sleep(IMAGE_HEALTH_INTERVAL)


def _describe_exit(record: ExecutionRecord, outcome: ExitStatus) -> str:
    if outcome.error:
        return outcome.error
    if outcome.oom_killed:
        memory = record.request.resources.memory
        limit = format_bytes(memory) if memory else "the node's memory"
        return f"ran out of memory (its limit is {limit})"
    return f"exited with code {outcome.exit_code}"


async def _cancelled_within(cancelled: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(cancelled.wait(), seconds)
        return True
    except TimeoutError:
        return cancelled.is_set()
