"""The node's redeploy decisions (node/redeploy.py) and the deploy's token, without building a job: which
executions are older is a strict order, a stop that fails otherwise than by an ended execution still lets the
new one record its ``deployed`` event, each execution gets its own ``JOB_DEPLOYMENT_TIMESTAMP``, and the
CLI's wait for ``deployed`` is bounded. The stand-in below is the node's bookkeeping only (no engine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from haddock.executor.errors import ExecutionAlreadyComplete
from haddock.executor.records import (
    EventKind,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionState,
    accepted_now,
    epoch_ms,
)
from haddock.executor.request import RunCommandRequest
from haddock.node.redeploy import Redeploys
from tests.test_job_services import job_service
from tests.test_jobtypes import JOBS

JOB = JOBS / "adder-python"


def _record(created_at: datetime | None = None) -> ExecutionRecord:
    record = ExecutionRecord(request=job_service(JOB), state=ExecutionState.READY)
    if created_at is not None:
        record.created_at = created_at
    return record


class _Node:
    """What Redeploys reads and calls on the node: its live records, cancel, note."""

    def __init__(self, records: list[ExecutionRecord], failing: dict[str, Exception] | None = None) -> None:
        self._records = {r.execution_id: r for r in records}
        self.failing = failing or {}
        self.cancelled: list[str] = []
        self.notes: list[tuple[str, EventKind, str, dict[str, Any]]] = []
        self.executor = self

    def live_record(self, execution_id: str) -> ExecutionRecord | None:
        return self._records.get(execution_id)

    def records(self) -> list[ExecutionRecord]:
        return list(self._records.values())

    async def cancel(self, execution_id: str, *, reason: str = "") -> None:
        if execution_id in self.failing:
            raise self.failing[execution_id]
        self.cancelled.append(execution_id)

    def note(self, execution_id: str, kind: EventKind, message: str, **details: Any) -> None:
        self.notes.append((execution_id, kind, message, details))


def _redeploys(node: _Node) -> Redeploys:
    return Redeploys(cast("Any", node))


def test_two_executions_accepted_at_the_same_instant_are_in_a_strict_order() -> None:
    same = datetime(2026, 11, 30, 20, 0, 0, tzinfo=UTC)
    a, b = _record(same), _record(same)
    redeploys = _redeploys(_Node([a, b]))
    older_than_a, older_than_b = redeploys.older(a.execution_id), redeploys.older(b.execution_id)
    # Exactly one is the older: the newer replaces it, never both each other.
    assert sorted([older_than_a, older_than_b]) == [[], [min(a.execution_id, b.execution_id)]]
    assert redeploys.older(max(a.execution_id, b.execution_id)) == [min(a.execution_id, b.execution_id)]


async def test_a_stop_that_fails_still_records_deployed_with_what_was_not_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, ended, old, new = _record(), _record(), _record(), _record()
    node = _Node(
        [broken, ended, old, new],
        failing={
            broken.execution_id: RuntimeError("the engine did not answer"),
            ended.execution_id: ExecutionAlreadyComplete(ended.execution_id, "completed"),
        },
    )
    with caplog.at_level(logging.ERROR, logger="haddock.node.redeploy"):
        await _redeploys(node)._replace(new.execution_id)
    assert node.cancelled == [old.execution_id]
    [(exec_id, kind, message, details)] = node.notes
    assert (exec_id, kind) == (new.execution_id, EventKind.DEPLOYED)
    assert details == {"replaced": old.execution_id, "not_stopped": broken.execution_id}
    assert f"could not stop {broken.execution_id} (RuntimeError: the engine did not answer)" in message, message
    assert ended.execution_id not in message  # it ended by itself: nothing to say
    assert any(broken.execution_id in r.getMessage() for r in caplog.records), caplog.text


def test_each_execution_gets_its_own_deployment_timestamp() -> None:
    """Accepted back to back (the same second, likely the same millisecond): distinct tokens, each an integer
    timestamp in milliseconds of when it was accepted."""
    from haddock.executor.jobrun import deployment_timestamp

    class _Execution:
        def __init__(self, record: ExecutionRecord) -> None:
            self.record = record

    before = epoch_ms(datetime.now(UTC))
    records = [_record() for _ in range(50)]
    tokens = [deployment_timestamp(cast("Any", _Execution(r))) for r in records]
    assert len(set(tokens)) == len(tokens), tokens
    assert all(before <= t < before + 60_000 for t in tokens), tokens
    assert tokens == sorted(tokens)
    assert [epoch_ms(r.created_at) for r in records] == tokens
    assert epoch_ms(accepted_now()) > tokens[-1]


class _Client:
    """A node that makes the deploy ready and then never records ``deployed``."""

    def __init__(self) -> None:
        self.started: RunCommandRequest | None = None

    async def start(self, request: RunCommandRequest) -> Any:
        self.started = request
        return type("Started", (), {"execution_id": request.execution_id})()

    async def wait_ready(self, exec_id: str) -> Any:
        return type("Ready", (), {"ready": True, "state": ExecutionState.READY, "message": ""})()

    async def watch(self, exec_id: str) -> AsyncIterator[ExecutionEvent]:
        await asyncio.Event().wait()
        yield ExecutionEvent(execution_id=exec_id, kind=EventKind.DEPLOYED, message="never")  # pragma: no cover


async def test_the_deploys_wait_for_deployed_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    from haddock.node.client._jobs import deploy_job

    request = job_service(JOB)
    code = await asyncio.wait_for(deploy_job(cast("Any", _Client()), request, deployed_timeout=0.2), 10)
    assert code == 1
    err = capsys.readouterr().err
    assert f"{request.execution_id} is ready, but the node recorded no `deployed` event within 0.2s" in err, err
