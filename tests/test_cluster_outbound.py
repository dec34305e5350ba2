"""The outbound data plane's give-up clock, against a real nats-server on 127.0.0.1 and a bare responder
standing in for the orchestrator: time while the node had no session counts nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from haddock.node.cluster import messages as m
from haddock.node.cluster.config import ClusterSettings
from haddock.node.cluster.ledger import OUTBOUND_ACKED, Ledger
from haddock.node.cluster.outbound import Outbound, SessionOver
from tests.support.natsserver import NatsServer

NODE = "n-outbound"


@pytest.fixture
async def nats_url(tmp_path: Path) -> AsyncIterator[str]:
    server = NatsServer(log_path=tmp_path / "nats.log")
    await server.start()
    yield server.url
    await server.stop()


async def outbound(tmp_path: Path, url: str) -> Outbound:
    settings = ClusterSettings.model_validate(
        {
            "orchestrators": [url],
            "max_send_attempts": 100,
            "send_give_up_after": "1s",
            "reconnect_min": 0.05,
            "reconnect_max": 0.1,
            "request_timeout": 1,
        }
    )
    ledger = await Ledger.open(tmp_path)
    await ledger.enqueue("e-1", "result", "RunResult", {"ExecutionID": "e-1"}, time.time_ns())
    out = Outbound(settings, ledger, NODE, asyncio.Event())
    await out.load()
    return out


async def test_time_without_a_session_does_not_count_toward_giving_up(tmp_path: Path, nats_url: str) -> None:
    """Refused once just before the session ends, then an outage longer than send_give_up_after: after the
    next handshake the message is sent again (refused once more, then acknowledged), not given up."""
    nc, orch = await nats.connect(nats_url), await nats.connect(nats_url)
    out = await outbound(tmp_path, nats_url)
    answered: list[str] = []
    over = False

    async def respond(msg: Msg) -> None:
        nonlocal over
        if len(answered) < 2:
            answered.append("refused")
            over = len(answered) == 1  # the first refusal is the session's last answer
            await msg.respond(json.dumps({"error": "busy"}).encode())
        else:
            answered.append("acked")
            await msg.respond(b"{}")

    await orch.subscribe(m.subject_out(NODE), cb=respond)
    try:
        with pytest.raises(SessionOver):
            await asyncio.wait_for(out.dispatch(nc, lambda: over), 5)
        await asyncio.sleep(1.3)  # no session: longer than send_give_up_after
        await out.adopt(0)
        over = False
        dispatch = asyncio.create_task(out.dispatch(nc, lambda: over))
        for _ in range(100):
            if out.acked == 1:
                break
            await asyncio.sleep(0.05)
        dispatch.cancel()
        await asyncio.gather(dispatch, return_exceptions=True)
        assert answered == ["refused", "refused", "acked"]
        assert await out.ledger.abandoned() == []
        assert await out.ledger.checkpoint(OUTBOUND_ACKED) == 1
    finally:
        await out.ledger.close()
        await nc.close()
        await orch.close()


async def test_a_message_the_handshake_skips_leaves_no_failure_count(tmp_path: Path, nats_url: str) -> None:
    nc, orch = await nats.connect(nats_url), await nats.connect(nats_url)
    out = await outbound(tmp_path, nats_url)
    over = False

    async def refuse(msg: Msg) -> None:
        nonlocal over
        over = True
        await msg.respond(json.dumps({"error": "busy"}).encode())

    await orch.subscribe(m.subject_out(NODE), cb=refuse)
    try:
        with pytest.raises(SessionOver):
            await asyncio.wait_for(out.dispatch(nc, lambda: over), 5)
        assert 1 in out._failures
        await out.adopt(1)  # the orchestrator processed it after all
        assert out.acked == 1 and out._failures == {}
    finally:
        await out.ledger.close()
        await nc.close()
        await orch.close()
