"""The node's capacity books and admission queue (node.capacity): pure asyncio, no engine."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haddock.executor.errors import ErrorCode, ExecutorError
from haddock.executor.quantity import GiB, MiB
from haddock.executor.request import Resources
from haddock.node.capacity import CapacityExhausted, CapacityManager, CapacitySnapshot, QueuePosition

pytestmark = pytest.mark.timeout(60)


async def settle() -> None:
    """Let woken waiters run."""
    for _ in range(5):
        await asyncio.sleep(0)


def millis(cores: float) -> int:
    return round(cores * 1000)


def place(mgr: CapacityManager, eid: str) -> int:
    pos = mgr.position(eid)
    assert pos is not None, f"{eid} is not queued"
    return pos.position


# ---------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------


async def test_thirty_half_cpu_jobs_on_two_cpus() -> None:
    cap = Resources(cpu=2)
    mgr = CapacityManager(cap)
    rng = random.Random(5)
    held = 0
    most = 0
    done: list[str] = []

    async def job(i: int) -> None:
        nonlocal held, most
        eid = f"exec-{i}"
        await mgr.acquire(eid, Resources(cpu=0.5), queue=True)
        held += 1
        most = max(most, held)
        snap = mgr.snapshot()
        assert millis(snap.allocated.cpu) <= 2000
        assert snap.running <= 4
        try:
            await asyncio.sleep(rng.uniform(0, 0.004))
        finally:
            held -= 1
            mgr.release(eid)
            mgr.release(eid)  # exactly once, whichever way it ends
        done.append(eid)

    await asyncio.wait_for(asyncio.gather(*(job(i) for i in range(30))), timeout=10)
    assert len(done) == 30
    assert most == 4
    assert mgr.snapshot() == CapacitySnapshot(
        capacity=cap,
        allocated=Resources(),
        queued=Resources(),
        free=cap,
        running=0,
        queued_count=0,
    )
    assert mgr.snapshot().allocated.cpu == 0.0


async def test_cpu_accounting_returns_exactly_to_zero() -> None:
    mgr = CapacityManager(Resources(cpu=1))
    ids = [f"e{i}" for i in range(10)]
    for eid in ids:
        await mgr.acquire(eid, Resources(cpu=0.1), queue=False)
    assert millis(mgr.snapshot().allocated.cpu) == 1000
    with pytest.raises(CapacityExhausted, match=r"^insufficient CPU: requested 100m, free 0 of 1$"):
        await mgr.acquire("one-more", Resources(cpu=0.1), queue=False)
    for eid in ids:
        mgr.release(eid)
    assert mgr.snapshot().allocated.cpu == 0.0
    assert mgr.snapshot().free.cpu == 1.0


# ---------------------------------------------------------------------------
# Ordering
# ---------------------------------------------------------------------------


async def _start(
    mgr: CapacityManager, eid: str, res: Resources, order: list[str], priority: int = 0
) -> asyncio.Task[None]:
    async def run() -> None:
        await mgr.acquire(eid, res, queue=True, priority=priority)
        order.append(eid)

    task = asyncio.create_task(run())
    await settle()
    return task


async def test_fifo_within_a_priority() -> None:
    mgr = CapacityManager(Resources(cpu=1))
    await mgr.acquire("blocker", Resources(cpu=1), queue=False)
    order: list[str] = []
    tasks = [await _start(mgr, f"w{i}", Resources(cpu=1), order) for i in range(5)]
    assert [place(mgr, f"w{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    prev = "blocker"
    for i in range(5):
        mgr.release(prev)
        await settle()
        assert order == [f"w{j}" for j in range(i + 1)]
        prev = f"w{i}"
    mgr.release(prev)
    await asyncio.gather(*tasks)
    assert mgr.snapshot().running == 0


async def test_higher_priority_first() -> None:
    mgr = CapacityManager(Resources(memory=1 * GiB))
    await mgr.acquire("blocker", Resources(memory=1 * GiB), queue=False)
    order: list[str] = []
    one = Resources(memory=1 * GiB)
    tasks = [
        await _start(mgr, "low-a", one, order, priority=0),
        await _start(mgr, "high-a", one, order, priority=5),
        await _start(mgr, "low-b", one, order, priority=0),
        await _start(mgr, "mid", one, order, priority=2),
        await _start(mgr, "high-b", one, order, priority=5),
    ]
    expected = ["high-a", "high-b", "mid", "low-a", "low-b"]
    assert [place(mgr, e) for e in expected] == [1, 2, 3, 4, 5]
    prev = "blocker"
    for eid in expected:
        mgr.release(prev)
        await settle()
        prev = eid
    mgr.release(prev)
    await asyncio.gather(*tasks)
    assert order == expected


async def test_no_overtaking_within_a_priority_but_higher_priority_goes_first() -> None:
    """Strict head-of-line: a small request does not backfill past a waiting big one of its priority."""
    mgr = CapacityManager(Resources(cpu=4))
    await mgr.acquire("a", Resources(cpu=3), queue=False)
    order: list[str] = []
    big = await _start(mgr, "big", Resources(cpu=2), order)
    # 1 CPU is free and this fits, but "big" waits ahead of it at the same priority.
    with pytest.raises(
        CapacityExhausted, match=r"^1 execution of equal or higher priority already waiting for capacity$"
    ):
        await mgr.acquire("small", Resources(cpu=1), queue=False)
    small = await _start(mgr, "small", Resources(cpu=1), order)
    assert mgr.position("small") == QueuePosition(2, "waiting for its turn: 1 execution queued ahead")
    # A higher priority newcomer that fits goes straight in.
    await mgr.acquire("urgent", Resources(cpu=1), queue=False, priority=1)
    assert mgr.holds("urgent")
    assert order == []
    mgr.release("a")
    await settle()
    assert order == ["big", "small"]  # 4 - 1 (urgent) = 3 free: big (2), then small (1), in order
    await asyncio.gather(big, small)
    assert order == ["big", "small"]
    assert mgr.snapshot().running == 3


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------


async def test_queue_full() -> None:
    mgr = CapacityManager(Resources(cpu=1), max_queued=10)
    await mgr.acquire("running", Resources(cpu=1), queue=False)
    order: list[str] = []
    tasks = [await _start(mgr, f"w{i}", Resources(cpu=1), order) for i in range(10)]
    with pytest.raises(CapacityExhausted) as info:
        await mgr.acquire("w10", Resources(cpu=1), queue=True)
    assert str(info.value) == "queue full: 10 executions waiting (max 10)"
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert isinstance(info.value, ExecutorError)
    assert not mgr.holds("w10") and mgr.position("w10") is None
    assert mgr.snapshot().queued_count == 10
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert mgr.snapshot().queued_count == 0


async def test_max_queued_zero_never_queues() -> None:
    mgr = CapacityManager(Resources(cpu=1), max_queued=0)
    await mgr.acquire("running", Resources(cpu=1), queue=False)
    with pytest.raises(CapacityExhausted, match=r"^queue full: 0 executions waiting \(max 0\)$"):
        await mgr.acquire("x", Resources(cpu=1), queue=True)


async def test_refused_with_the_reason_when_not_queueing() -> None:
    mgr = CapacityManager(Resources(cpu=8, memory=16 * GiB, disk=100 * GiB, gpu=2))
    await mgr.acquire("a", Resources(memory=16 * GiB - int(3.2 * GiB)), queue=False)
    with pytest.raises(CapacityExhausted) as info:
        await mgr.acquire("b", Resources(memory=8 * GiB), queue=False)
    assert str(info.value) == "insufficient memory: requested 8Gi, free 3.2Gi of 16Gi"
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert not mgr.holds("b")

    await mgr.acquire("c", Resources(cpu=7.5, disk=90 * GiB, gpu=1), queue=False)
    with pytest.raises(CapacityExhausted, match=r"^insufficient CPU: requested 1, free 500m of 8$"):
        await mgr.acquire("d", Resources(cpu=1), queue=False)
    with pytest.raises(CapacityExhausted, match=r"^insufficient disk: requested 20Gi, free 10Gi of 100Gi$"):
        await mgr.acquire("d", Resources(disk=20 * GiB), queue=False)
    with pytest.raises(CapacityExhausted, match=r"^insufficient GPUs: requested 2, free 1 of 2$"):
        await mgr.acquire("d", Resources(gpu=2), queue=False)
    # Nothing was taken by the refusals.
    snap = mgr.snapshot()
    assert snap.allocated == Resources(cpu=7.5, memory=16 * GiB - int(3.2 * GiB), disk=90 * GiB, gpu=1)
    assert snap.running == 2


async def test_never_fits_is_refused_at_once_even_when_queueing() -> None:
    mgr = CapacityManager(Resources(cpu=2, memory=16 * GiB))
    assert mgr.fits_ever(Resources(cpu=2, memory=16 * GiB)) is None
    assert mgr.fits_ever(Resources(memory=32 * GiB)) == (
        "insufficient memory: requested 32Gi, more than this node's capacity of 16Gi"
    )
    assert mgr.fits_ever(Resources(cpu=2.5)) == "insufficient CPU: requested 2500m, more than this node's capacity of 2"
    assert mgr.fits_ever(Resources(gpu=1)) == "insufficient GPUs: requested 1, this node has none"
    for res in (Resources(memory=32 * GiB), Resources(gpu=1)):
        with pytest.raises(CapacityExhausted, match=r"^insufficient"):
            await asyncio.wait_for(mgr.acquire("x", res, queue=True), timeout=1)
    assert mgr.position("x") is None
    assert mgr.snapshot().queued_count == 0


async def test_unknown_capacity_is_not_checked() -> None:
    mgr = CapacityManager(Resources())  # nothing known: cpu/memory/disk unchecked, no GPUs
    for i in range(5):
        await mgr.acquire(f"e{i}", Resources(cpu=1000, memory=64 * 1024 * GiB, disk=100 * GiB), queue=False)
    snap = mgr.snapshot()
    assert snap.running == 5
    assert snap.allocated.memory == 5 * 64 * 1024 * GiB  # more than one job's maximum: not validated
    assert snap.free == Resources()
    for i in range(5):
        mgr.release(f"e{i}")
    assert mgr.snapshot().allocated == Resources()


async def test_zero_request_holds_nothing() -> None:
    mgr = CapacityManager(Resources(cpu=1, memory=1 * GiB))
    await mgr.acquire("full", Resources(cpu=1, memory=1 * GiB), queue=False)
    await mgr.acquire("nothing", Resources(), queue=False)  # asks for nothing: fits a full node
    assert mgr.holds("nothing")
    assert mgr.snapshot().running == 2


async def test_duplicate_id_is_a_value_error() -> None:
    mgr = CapacityManager(Resources(cpu=1))
    await mgr.acquire("a", Resources(cpu=1), queue=False)
    with pytest.raises(ValueError, match="already holds"):
        await mgr.acquire("a", Resources(cpu=0.1), queue=False)
    task = asyncio.create_task(mgr.acquire("b", Resources(cpu=1), queue=True))
    await settle()
    with pytest.raises(ValueError, match="already holds or is waiting"):
        await mgr.acquire("b", Resources(cpu=1), queue=True)
    mgr.release("a")
    await task
    assert mgr.holds("b")
    mgr.release("b")
    # Once released, the id may acquire again.
    await mgr.acquire("a", Resources(cpu=1), queue=False)
    assert mgr.holds("a")


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_running"):
        CapacityManager(Resources(), max_running=0)
    with pytest.raises(ValueError, match="max_queued"):
        CapacityManager(Resources(), max_queued=-1)


# ---------------------------------------------------------------------------
# Cancel and release
# ---------------------------------------------------------------------------


async def test_cancel_while_queued_removes_it_and_the_next_is_admitted() -> None:
    mgr = CapacityManager(Resources(memory=10 * GiB))
    await mgr.acquire("a", Resources(memory=6 * GiB), queue=False)
    order: list[str] = []
    big = await _start(mgr, "big", Resources(memory=8 * GiB), order)
    small = await _start(mgr, "small", Resources(memory=4 * GiB), order)
    assert mgr.position("big") == QueuePosition(1, "waiting for memory: requested 8Gi, free 4Gi of 10Gi")
    assert mgr.position("small") == QueuePosition(2, "waiting for its turn: 1 execution queued ahead")
    assert mgr.snapshot().queued == Resources(memory=12 * GiB)
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    await asyncio.wait_for(small, timeout=5)  # the head is gone: small fits in the 4Gi left
    assert order == ["small"]
    assert mgr.position("big") is None and not mgr.holds("big")
    snap = mgr.snapshot()
    assert snap.queued_count == 0 and snap.queued == Resources()
    assert snap.allocated == Resources(memory=10 * GiB)


async def test_cancelled_id_may_queue_again_at_once() -> None:
    mgr = CapacityManager(Resources(cpu=1))
    await mgr.acquire("a", Resources(cpu=1), queue=False)
    first = asyncio.create_task(mgr.acquire("b", Resources(cpu=1), queue=True))
    await settle()
    second = asyncio.create_task(mgr.acquire("b", Resources(cpu=1), queue=True))
    first.cancel()  # second's acquire runs before first's cancellation handler does
    await settle()
    assert first.cancelled()
    assert mgr.position("b") == QueuePosition(1, "waiting for CPU: requested 1, free 0 of 1")
    mgr.release("a")
    await asyncio.wait_for(second, timeout=5)
    assert mgr.holds("b") and mgr.snapshot().queued_count == 0


async def test_timeout_while_queued_is_a_clean_cancel() -> None:
    mgr = CapacityManager(Resources(cpu=1))
    await mgr.acquire("a", Resources(cpu=1), queue=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(mgr.acquire("b", Resources(cpu=1), queue=True), timeout=0.01)
    assert mgr.snapshot().queued_count == 0
    mgr.release("a")
    assert mgr.snapshot().allocated == Resources()
    assert not mgr.holds("b")


async def test_cancel_right_after_being_granted_gives_it_back() -> None:
    """Granted by a release, cancelled before the task resumed: the grant is undone, not leaked."""
    mgr = CapacityManager(Resources(cpu=1))
    await mgr.acquire("a", Resources(cpu=1), queue=False)
    task = asyncio.create_task(mgr.acquire("b", Resources(cpu=1), queue=True))
    await settle()
    mgr.release("a")
    assert mgr.holds("b")  # granted atomically by the release
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not mgr.holds("b")
    assert mgr.snapshot().allocated == Resources()


async def test_release_twice_is_a_no_op() -> None:
    mgr = CapacityManager(Resources(cpu=2))
    await mgr.acquire("a", Resources(cpu=1), queue=False)
    await mgr.acquire("b", Resources(cpu=1), queue=False)
    mgr.release("a")
    mgr.release("a")
    mgr.release("never-seen")
    snap = mgr.snapshot()
    assert snap.allocated == Resources(cpu=1) and snap.running == 1
    assert mgr.holds("b") and not mgr.holds("a")
    mgr.release("b")
    mgr.release("b")
    assert mgr.snapshot().allocated == Resources()


async def test_release_of_a_queued_entry_withdraws_it() -> None:
    mgr = CapacityManager(Resources(cpu=1))
    await mgr.acquire("a", Resources(cpu=1), queue=False)
    task = asyncio.create_task(mgr.acquire("b", Resources(cpu=1), queue=True))
    await settle()
    mgr.release("b")
    with pytest.raises(CapacityExhausted, match=r"^execution 'b' was released while waiting for capacity$"):
        await task
    assert mgr.snapshot().queued_count == 0
    mgr.release("a")
    assert mgr.snapshot().allocated == Resources()


async def test_hold_releases_however_the_block_ends() -> None:
    mgr = CapacityManager(Resources(cpu=1))
    with pytest.raises(RuntimeError):
        async with mgr.hold("a", Resources(cpu=1), queue=False):
            assert mgr.holds("a")
            raise RuntimeError("boom")
    assert not mgr.holds("a")
    assert mgr.snapshot().allocated == Resources()


# ---------------------------------------------------------------------------
# Positions, the running cap, capacity changes
# ---------------------------------------------------------------------------


async def test_positions_and_reasons() -> None:
    mgr = CapacityManager(Resources(cpu=4, memory=16 * GiB), max_running=4)
    await mgr.acquire("m", Resources(memory=16 * GiB - int(3.2 * GiB)), queue=False)
    order: list[str] = []
    t1 = await _start(mgr, "mem", Resources(memory=8 * GiB), order)
    t2 = await _start(mgr, "cpu", Resources(cpu=1), order)
    assert mgr.position("mem") == QueuePosition(1, "waiting for memory: requested 8Gi, free 3.2Gi of 16Gi")
    assert mgr.position("cpu") == QueuePosition(2, "waiting for its turn: 1 execution queued ahead")
    assert mgr.position("m") is None  # held, not queued
    assert mgr.position("nobody") is None
    mgr.release("m")
    await asyncio.gather(t1, t2)
    assert order == ["mem", "cpu"]
    await mgr.acquire("x", Resources(), queue=False)
    await mgr.acquire("y", Resources(), queue=False)
    t3 = await _start(mgr, "slot", Resources(cpu=1), order)
    assert mgr.position("slot") == QueuePosition(1, "waiting for a slot: 4 executions running (max 4)")
    mgr.release("x")
    await t3
    assert order[-1] == "slot"


async def test_max_running_caps_regardless_of_resources() -> None:
    mgr = CapacityManager(Resources(cpu=64, memory=64 * GiB), max_running=2)
    await mgr.acquire("a", Resources(cpu=1, memory=64 * MiB), queue=False)
    await mgr.acquire("b", Resources(), queue=False)
    with pytest.raises(CapacityExhausted) as info:
        await mgr.acquire("c", Resources(cpu=1), queue=False)
    assert str(info.value) == "no free slot: 2 executions running (max 2)"
    order: list[str] = []
    task = await _start(mgr, "c", Resources(cpu=1), order)
    assert mgr.position("c") == QueuePosition(1, "waiting for a slot: 2 executions running (max 2)")
    mgr.release("b")
    await task
    assert order == ["c"] and mgr.snapshot().running == 2


async def test_set_capacity_growth_admits_waiting_ones() -> None:
    mgr = CapacityManager(Resources(cpu=1))
    await mgr.acquire("a", Resources(cpu=1), queue=False)
    order: list[str] = []
    tasks = [await _start(mgr, f"w{i}", Resources(cpu=1), order) for i in range(3)]
    mgr.set_capacity(Resources(cpu=3))
    await settle()
    assert order == ["w0", "w1"]
    assert mgr.position("w2") == QueuePosition(1, "waiting for CPU: requested 1, free 0 of 3")
    assert mgr.snapshot().capacity == Resources(cpu=3)
    mgr.release("a")
    await asyncio.gather(*tasks)
    assert order == ["w0", "w1", "w2"]


async def test_set_capacity_shrink_refuses_what_can_never_fit() -> None:
    mgr = CapacityManager(Resources(cpu=4))
    await mgr.acquire("a", Resources(cpu=4), queue=False)
    order: list[str] = []
    big = await _start(mgr, "big", Resources(cpu=3), order)
    small = await _start(mgr, "small", Resources(cpu=1), order)
    mgr.set_capacity(Resources(cpu=2))
    with pytest.raises(
        CapacityExhausted, match=r"^insufficient CPU: requested 3, more than this node's capacity of 2$"
    ):
        await big
    # Over-committed by the shrink: nothing is evicted, nothing more admitted until enough is released.
    snap = mgr.snapshot()
    assert snap.allocated == Resources(cpu=4) and snap.free == Resources()
    assert mgr.position("small") == QueuePosition(1, "waiting for CPU: requested 1, free 0 of 2")
    mgr.release("a")
    await small
    assert order == ["small"]


# ---------------------------------------------------------------------------
# Property: random acquire/release/cancel sequences keep the books straight
# ---------------------------------------------------------------------------

CAP = Resources(cpu=2, memory=4 * GiB, gpu=2)
MAX_RUNNING = 3

_request = st.builds(
    Resources,
    cpu=st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 1.0, 2.0]),
    memory=st.sampled_from([0, 64 * MiB, 1 * GiB, 3 * GiB]),
    gpu=st.integers(0, 2),
)
_op = st.one_of(
    st.tuples(st.just("acquire"), st.integers(0, 5), _request, st.booleans(), st.integers(0, 1)),
    st.tuples(st.just("release"), st.integers(0, 5)),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("release-then-cancel"), st.integers(0, 5)),
    st.tuples(st.just("tick")),
)


async def _run_ops(ops: list[tuple[object, ...]]) -> None:
    mgr = CapacityManager(CAP, max_running=MAX_RUNNING, max_queued=4)
    requests: dict[str, Resources] = {}
    priorities: dict[str, int] = {}
    tasks: dict[str, asyncio.Task[None]] = {}
    every: list[asyncio.Task[None]] = []

    def check() -> None:
        for eid, task in tasks.items():
            if task.done() and (task.cancelled() or task.exception() is not None):
                assert not mgr.holds(eid), f"{eid}'s acquire failed but it holds capacity"
        snap = mgr.snapshot()
        holders = [eid for eid in requests if mgr.holds(eid)]
        assert snap.running == len(holders) <= MAX_RUNNING
        total = (
            sum(millis(requests[e].cpu) for e in holders),
            sum(requests[e].memory for e in holders),
            sum(requests[e].gpu for e in holders),
        )
        assert (millis(snap.allocated.cpu), snap.allocated.memory, snap.allocated.gpu) == total
        assert total[0] <= millis(CAP.cpu) and total[1] <= CAP.memory and total[2] <= CAP.gpu
        queued = [e for e in requests if mgr.position(e) is not None]
        assert snap.queued_count == len(queued) <= 4
        assert not set(queued) & set(holders)
        positions = sorted(place(mgr, e) for e in queued)
        assert positions == list(range(1, len(queued) + 1))
        # Liveness: once settled, the head of the queue is waiting for something, never for its turn.
        for e in queued:
            pos = mgr.position(e)
            assert pos is not None
            if pos.position == 1:
                assert not pos.reason.startswith("waiting for its turn"), pos

    for op in ops:
        kind = op[0]
        if kind == "acquire":
            _, n, res, queue, prio = op
            eid = f"e{n}"
            assert isinstance(res, Resources) and isinstance(queue, bool) and isinstance(prio, int)
            if mgr.holds(eid) or mgr.position(eid) is not None:
                with pytest.raises(ValueError):
                    await mgr.acquire(eid, res, queue=queue, priority=prio)
                continue
            requests[eid] = res
            priorities[eid] = prio
            before = [e for e in requests if mgr.position(e) is not None]
            tasks[eid] = asyncio.create_task(mgr.acquire(eid, res, queue=queue, priority=prio))
            every.append(tasks[eid])
            await settle()
            if mgr.holds(eid):  # no overtaking: nobody of equal or higher priority was left waiting
                assert not [e for e in before if priorities[e] >= prio and mgr.position(e) is not None]
        elif kind == "release":
            mgr.release(f"e{op[1]}")
        elif kind == "cancel":
            task = tasks.get(f"e{op[1]}")
            if task is not None:
                task.cancel()
        elif kind == "release-then-cancel":
            # A release may grant a waiter that is cancelled before it resumes: the grant must be undone.
            mgr.release(f"e{op[1]}")
            for eid, task in tasks.items():
                if not task.done() and mgr.holds(eid):  # granted by that release, not yet resumed
                    task.cancel()
        await settle()
        check()

    for eid in list(requests):
        mgr.release(eid)
    await settle()
    for task in every:
        if not task.done():
            task.cancel()
    results = await asyncio.gather(*every, return_exceptions=True)
    for r in results:
        assert r is None or isinstance(r, CapacityExhausted | asyncio.CancelledError), r
    for eid in list(requests):
        mgr.release(eid)
    snap = mgr.snapshot()
    assert snap.allocated == Resources() and snap.queued == Resources()
    assert snap.running == 0 and snap.queued_count == 0
    assert snap.free == CAP


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, max_size=40))
def test_random_sequences_keep_the_invariants(ops: list[tuple[object, ...]]) -> None:
    asyncio.run(_run_ops(ops))
