"""When an execution is a timeout: one rule, whatever wins the race between a job's exit and its deadline.

The deadline is the node's (``started + timeout`` by its clock). It passed when the node had not seen the
container exit by then; the node then stops the container. The status is TIMEOUT if the deadline passed
and the job did not end with exit code 0; a job that exits 0 completed its work and is a success even if it
was finishing as the deadline passed (its exit crossed the stop signal) or answered the stop signal by
exiting 0. So a timeout never carries exit code 0, and a success always does.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from haddock.executor.docker import DockerExecutor
from haddock.executor.driver import ExitStatus
from haddock.executor.records import EventKind, ResultStatus
from haddock.executor.settle import decide_status
from tests.conftest import RequestFactory

outcomes = st.builds(
    ExitStatus,
    exit_code=st.one_of(st.none(), st.sampled_from([0, 1, 2, 10, 125, 126, 127, 137, 143]), st.integers(0, 255)),
    oom_killed=st.booleans(),
    error=st.sampled_from(["", "the engine restarted"]),
    capture_error=st.sampled_from(["", "output lost"]),
)
stop_reasons = st.sampled_from([None, "cancel", "timeout", "output-cap", "unhealthy", "unready"])


@given(stop_reason=stop_reasons, timed_out=st.booleans(), cap=st.sampled_from(["", "past the cap"]), outcome=outcomes)
def test_a_timeout_never_has_exit_code_0_and_a_success_always_has(
    stop_reason: str | None, timed_out: bool, cap: str, outcome: ExitStatus
) -> None:
    status = decide_status(stop_reason, cap, outcome, timed_out=timed_out)
    if status is ResultStatus.TIMEOUT:
        assert outcome.exit_code != 0
    if status is ResultStatus.SUCCESS:
        assert outcome.exit_code == 0 and not outcome.error
    if stop_reason == "cancel":
        assert status is ResultStatus.CANCELLED
    elif (timed_out or stop_reason == "timeout") and outcome.exit_code != 0:
        # The deadline passed before the exit was seen: a timeout, even when the stop found the container
        # gone (its own non-zero exit crossed the signal).
        assert status is ResultStatus.TIMEOUT


async def test_a_job_that_answers_its_timeouts_stop_signal_with_exit_0_is_a_success(
    executor: DockerExecutor, make_request: RequestFactory
) -> None:
    # What a job that finishes just as its deadline passes looks like, made deterministic: the node's stop
    # signal finds it running, and it ends with 0 (here: it handles the signal and exits 0).
    req = make_request("trap 'echo finishing; exit 0' TERM; echo started; sleep 60 & wait $!", timeout=1)
    result = await executor.run(req)
    assert result.status is ResultStatus.SUCCESS, result
    assert result.exit_code == 0 and result.stdout == "started\nfinishing\n"
    assert result.error_message == ""
    kinds = [e.kind for e in executor.events(req.execution_id)]
    assert EventKind.TIMED_OUT in kinds  # the record says the deadline passed and the node stopped it


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
