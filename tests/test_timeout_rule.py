"""When an execution is a timeout: decided by WHEN its container ended, on the engine's own clock.

A job whose stop the node sent for its deadline is a TIMEOUT when the engine says the container finished at
or after ``started + timeout`` (both times from the engine's inspect, one clock), whatever its exit code: a
job that answers the stop signal by exiting 0 was cut off, not completed. One that finished before that
instant exited by itself (its exit crossed the stop signal) and is judged by its exit code, a success with 0.
Without the engine's times (the container gone) the node's flag decides: its deadline passed first, TIMEOUT.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from haddock.executor.docker import DockerExecutor
from haddock.executor.driver import ExitStatus
from haddock.executor.records import EventKind, ResultStatus
from haddock.executor.settle import decide_status
from tests.conftest import RequestFactory

STARTED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

outcomes = st.builds(
    ExitStatus,
    exit_code=st.one_of(st.none(), st.sampled_from([0, 1, 2, 10, 125, 126, 127, 137, 143]), st.integers(0, 255)),
    oom_killed=st.booleans(),
    error=st.sampled_from(["", "the engine restarted"]),
    capture_error=st.sampled_from(["", "output lost"]),
    started_at=st.one_of(st.none(), st.just(STARTED)),
    finished_at=st.one_of(st.none(), st.integers(0, 3_000_000).map(lambda us: STARTED + timedelta(microseconds=us))),
)
stop_reasons = st.sampled_from([None, "cancel", "timeout", "output-cap", "unhealthy", "unready"])
timeouts = st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.0]))


@given(
    stop_reason=stop_reasons,
    timed_out=st.booleans(),
    cap=st.sampled_from(["", "past the cap"]),
    outcome=outcomes,
    timeout=timeouts,
)
def test_a_timeout_is_decided_by_when_the_container_ended_on_the_engines_clock(
    stop_reason: str | None, timed_out: bool, cap: str, outcome: ExitStatus, timeout: float | None
) -> None:
    status = decide_status(stop_reason, cap, outcome, timed_out=timed_out, timeout=timeout)
    stopped_for_deadline = timed_out or stop_reason == "timeout"
    known = timeout is not None and outcome.started_at is not None and outcome.finished_at is not None
    at_deadline = not known or (
        outcome.finished_at is not None
        and outcome.started_at is not None
        and timeout is not None
        and outcome.finished_at >= outcome.started_at + timedelta(seconds=timeout)
    )
    if stop_reason == "cancel":
        assert status is ResultStatus.CANCELLED
    elif stopped_for_deadline and at_deadline:
        # Ended at/after its deadline (or the engine cannot say, and the node saw the deadline pass first):
        # a timeout, whatever the exit code, 0 included.
        assert status is ResultStatus.TIMEOUT
    else:
        # Not stopped for its deadline, or it ended before it by itself: judged as if the node had not stopped it.
        assert status is not ResultStatus.TIMEOUT
        assert status is decide_status(None, cap, outcome)
    if status is ResultStatus.SUCCESS:
        assert outcome.exit_code == 0 and not outcome.error


def test_a_job_exiting_0_just_before_its_deadline_is_a_success() -> None:
    # Its exit crossed the node's stop signal: the node saw the deadline pass first, the engine says it ended
    # 10 ms before it. It completed.
    just_before = ExitStatus(exit_code=0, started_at=STARTED, finished_at=STARTED + timedelta(seconds=0.99))
    for reason in (None, "timeout"):
        assert decide_status(reason, "", just_before, timed_out=True, timeout=1) is ResultStatus.SUCCESS
    failed = ExitStatus(exit_code=3, started_at=STARTED, finished_at=STARTED + timedelta(seconds=0.99))
    assert decide_status("timeout", "", failed, timed_out=True, timeout=1) is ResultStatus.ERROR
    at_deadline = ExitStatus(exit_code=0, started_at=STARTED, finished_at=STARTED + timedelta(seconds=1))
    assert decide_status("timeout", "", at_deadline, timed_out=True, timeout=1) is ResultStatus.TIMEOUT
    # The engine's times unknown (the container gone): the node's flag decides.
    assert decide_status(None, "", ExitStatus(exit_code=0), timed_out=True, timeout=1) is ResultStatus.TIMEOUT


async def test_a_job_that_answers_its_timeouts_stop_signal_with_exit_0_is_a_timeout(
    executor: DockerExecutor, make_request: RequestFactory
) -> None:
    # A shell's trap 'exit 0' TERM, a server's graceful shutdown: cut off at its deadline, not completed.
    req = make_request("trap 'echo finishing; exit 0' TERM; echo started; sleep 60 & wait $!", timeout=1)
    result = await executor.run(req)
    assert result.status is ResultStatus.TIMEOUT, result
    assert result.exit_code == 0 and result.stdout == "started\nfinishing\n"
    assert "exceeded its timeout of 1s" in result.error_message
    events = executor.events(req.execution_id)
    assert EventKind.TIMED_OUT in [e.kind for e in events]
    exited = next(e for e in events if e.kind is EventKind.EXITED)
    ran = datetime.fromisoformat(exited.details["finished_at"]) - datetime.fromisoformat(exited.details["started_at"])
    assert ran >= timedelta(seconds=1)  # the engine's clock: it ended at/after its deadline


async def test_a_service_that_answers_its_timeouts_stop_signal_with_exit_0_is_a_timeout(
    executor: DockerExecutor, make_request: RequestFactory
) -> None:
    # A service never completes: its timeout ends it as a timeout, whatever its exit code.
    req = make_request(
        "trap 'exit 0' TERM; sleep 60 & wait $!",
        timeout=1,
        kind="service",
        service={"restart": {"policy": "always", "max_restarts": 3, "backoff_initial": "50ms"}},
    )
    result = await executor.run(req)
    assert result.status is ResultStatus.TIMEOUT, result
    assert result.exit_code == 0
    assert [e.kind for e in executor.events(req.execution_id)].count(EventKind.STARTED) == 1  # not restarted
