"""The node's durable cluster state: ``<data_dir>/cluster.db`` (SQLite, apart from the execution store).

- ``executions``: each execution an orchestrator asked about — the translated request (or the reason it
  could not be), the bid, and where it is in the NCL exchange (asked, bid, accepted, rejected, cancelled);
- ``outbox``: every data message the node sends, numbered by the node (``Bacalhau-SeqNum``); a message
  has one row per (execution, kind) — ``bid`` or ``result`` — so writing it twice (a restarted waiter,
  a replayed AskForBid) keeps the first and its number;
- ``checkpoints``: the last inbound sequence number handled, and the last outbound one done with
  (acknowledged, or given up);
- ``abandoned``: outbound messages the node gave up on (the orchestrator refused them, or left them
  unanswered, ``max_send_attempts`` times or for ``send_give_up_after``), with the reason. Their numbers
  are not reused: the orchestrator sees a gap in the node's sequence, as it does for every event
  Bacalhau's own compute node does not turn into a message.

Messages are written to the outbox before they are sent, and the acknowledged checkpoint moves only
after the orchestrator acknowledges: after a reconnect or a restart, what was not acknowledged is sent
again, in order; what was is not. All calls run on one thread that owns the connection; every write
is one transaction committed with ``synchronous=FULL``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DB_FILENAME = "cluster.db"
INBOUND = "inbound"
OUTBOUND_ACKED = "outbound-acked"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS executions (
        execution_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        job_type TEXT NOT NULL,
        request_json TEXT,
        reason TEXT NOT NULL,
        bid INTEGER NOT NULL,
        state TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        execution_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        type TEXT NOT NULL,
        payload_json TEXT NOT NULL,
        event_time_ns INTEGER NOT NULL,
        UNIQUE (execution_id, kind)
    )""",
    "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS abandoned (
        seq INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL,
        type TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        at_ns INTEGER NOT NULL
    )""",
)


@dataclass(frozen=True)
class Tracked:
    execution_id: str
    job_id: str
    job_type: str
    request_json: str | None
    reason: str
    bid: bool
    state: str  # asked | accepted | rejected | cancelled


@dataclass(frozen=True)
class Outgoing:
    seq: int
    execution_id: str
    type: str
    payload: dict[str, Any]
    event_time_ns: int


@dataclass(frozen=True)
class Abandoned:
    seq: int
    execution_id: str
    type: str
    attempts: int
    reason: str
    at_ns: int


class Ledger:
    def __init__(self, conn: sqlite3.Connection, pool: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._pool = pool

    @classmethod
    async def open(cls, data_dir: Path) -> Ledger:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haddock-cluster-db")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for stmt in _SCHEMA:
                conn.execute(stmt)
            return conn

        conn = await asyncio.get_running_loop().run_in_executor(pool, connect)
        return cls(conn, pool)

    async def close(self) -> None:
        await self._run(lambda c: c.close())
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._pool, fn, self._conn))

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def tx(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out

        return await self._run(tx)

    # ------------------------------------------------------------ checkpoints

    async def checkpoint(self, name: str) -> int:
        row = await self._run(lambda c: c.execute("SELECT seq FROM checkpoints WHERE name = ?", (name,)).fetchone())
        return int(row[0]) if row else 0

    async def set_checkpoint(self, name: str, seq: int) -> None:
        """Move a checkpoint forward (never back)."""
        await self._tx(
            lambda c: c.execute(
                "INSERT INTO checkpoints (name, seq) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                (name, seq),
            )
        )

    async def give_up(self, out: Outgoing, attempts: int, reason: str, now_ns: int) -> None:
        """Record that ``out`` will not be sent again, and move the outbound checkpoint past it (one transaction)."""

        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR IGNORE INTO abandoned VALUES (?, ?, ?, ?, ?, ?)",
                (out.seq, out.execution_id, out.type, attempts, reason, now_ns),
            )
            c.execute(
                "INSERT INTO checkpoints (name, seq) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                (OUTBOUND_ACKED, out.seq),
            )

        await self._tx(tx)

    async def abandoned(self) -> list[Abandoned]:
        rows = await self._run(lambda c: c.execute("SELECT * FROM abandoned ORDER BY seq").fetchall())
        return [Abandoned(*r) for r in rows]

    # ------------------------------------------------------------ executions

    async def track(self, t: Tracked) -> bool:
        """Record an asked execution; False when it was known already (a replayed AskForBid)."""

        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO executions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (t.execution_id, t.job_id, t.job_type, t.request_json, t.reason, int(t.bid), t.state),
            )
            return cur.rowcount == 1

        return await self._tx(tx)

    async def get(self, execution_id: str) -> Tracked | None:
        row = await self._run(
            lambda c: c.execute("SELECT * FROM executions WHERE execution_id = ?", (execution_id,)).fetchone()
        )
        return None if row is None else Tracked(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])

    async def set_state(self, execution_id: str, state: str) -> None:
        await self._tx(
            lambda c: c.execute("UPDATE executions SET state = ? WHERE execution_id = ?", (state, execution_id))
        )

    async def accepted_unreported(self) -> list[Tracked]:
        """Accepted executions whose result is not in the outbox yet (their waiters start again)."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT * FROM executions e WHERE state = 'accepted' AND NOT EXISTS "
                "(SELECT 1 FROM outbox o WHERE o.execution_id = e.execution_id AND o.kind = 'result')"
            ).fetchall()
        )
        return [Tracked(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]

    # ------------------------------------------------------------ outbox

    async def enqueue(self, execution_id: str, kind: str, type_: str, payload: dict[str, Any], now_ns: int) -> bool:
        """Write a message to the outbox; False when this execution has one of this kind already."""

        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO outbox (execution_id, kind, type, payload_json, event_time_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                (execution_id, kind, type_, json.dumps(payload, separators=(",", ":")), now_ns),
            )
            return cur.rowcount == 1

        return await self._tx(tx)

    async def pending(self, after: int, limit: int = 256) -> list[Outgoing]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT seq, execution_id, type, payload_json, event_time_ns FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        )
        return [Outgoing(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    async def last_seq(self) -> int:
        row = await self._run(lambda c: c.execute("SELECT max(seq) FROM outbox").fetchone())
        return int(row[0] or 0)
