"""Resource samples in the execution store (``node/store.py``): the table, and the SQL that runs on the
store's thread.

Samples belong to their execution (``ON DELETE CASCADE``: pruned with its record) and are bounded per
execution: past ``max_samples`` the oldest ones are merged with :func:`haddock.executor.stats.decimate`
(averaged in time windows; each merged point says how many raw samples it stands for), never dropped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from haddock.executor.stats import Stat, decimate

__all__ = ["create_table", "insert", "select"]


def create_table(conn: sqlite3.Connection) -> None:
    """Migration: the ``stats`` table."""
    conn.execute(
        """
        CREATE TABLE stats (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,
            execution_id  TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
            at            TEXT NOT NULL,
            stat_json     TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX stats_execution ON stats (execution_id, at, seq)")


def _at(stat: Stat) -> str:
    return stat.time.isoformat(timespec="microseconds")


def insert(conn: sqlite3.Connection, batch: Mapping[str, Sequence[Stat]], max_samples: int) -> list[str]:
    """Append each execution's samples, merging its oldest when past ``max_samples``. Returns the ids of
    executions that are not (yet) in the store: their samples were not written."""
    missing: list[str] = []
    for execution_id, stats in batch.items():
        if conn.execute("SELECT 1 FROM executions WHERE id = ?", (execution_id,)).fetchone() is None:
            missing.append(execution_id)
            continue
        conn.executemany(
            "INSERT INTO stats (execution_id, at, stat_json) VALUES (?, ?, ?)",
            [(execution_id, _at(s), s.model_dump_json()) for s in stats],
        )
        count = conn.execute("SELECT count(*) FROM stats WHERE execution_id = ?", (execution_id,)).fetchone()[0]
        if count > max_samples:
            _compact(conn, execution_id, count, max_samples)
    return missing


def _compact(conn: sqlite3.Connection, execution_id: str, count: int, max_samples: int) -> None:
    """The oldest ``count - max_samples // 2`` points become at most ``max_samples // 4``: the execution is
    left with at most three quarters of its bound, its whole time span, and every raw sample counted."""
    rows = conn.execute(
        "SELECT seq, stat_json FROM stats WHERE execution_id = ? ORDER BY at, seq LIMIT ?",
        (execution_id, count - max_samples // 2),
    ).fetchall()
    merged = decimate([Stat.model_validate_json(r[1]) for r in rows], max(1, max_samples // 4))
    conn.executemany("DELETE FROM stats WHERE seq = ?", [(r[0],) for r in rows])
    conn.executemany(
        "INSERT INTO stats (execution_id, at, stat_json) VALUES (?, ?, ?)",
        [(execution_id, _at(s), s.model_dump_json()) for s in merged],
    )


def select(conn: sqlite3.Connection, execution_id: str) -> list[Stat]:
    """The execution's samples in time order."""
    rows = conn.execute(
        "SELECT stat_json FROM stats WHERE execution_id = ? ORDER BY at, seq", (execution_id,)
    ).fetchall()
    return [Stat.model_validate_json(r[0]) for r in rows]
