"""The execution store's database file: opening it (pragmas, checks), its schema and migrations, and the one
thread that owns its connection. Private to :mod:`haddock.node.store` (see its docstring for why it is built
so), which is the store's public face.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from haddock.executor.errors import ErrorCode, ExecutorError
from haddock.node import statstore

log = logging.getLogger("haddock.node.store")

DB_FILENAME = "haddock.db"
APPLICATION_ID = 0x48414444  # "HADD": marks the file as ours (PRAGMA application_id)
BUSY_TIMEOUT_MS = 5000

T = TypeVar("T")


class StoreError(ExecutorError):
    """The execution store cannot be used: unreadable, corrupt, from a newer haddock, or closed.

    The message names the database file.
    """

    code = ErrorCode.INTERNAL


def store_path(data_dir: Path) -> Path:
    """Where the node's execution store lives under its data dir."""
    return data_dir / DB_FILENAME


# ---------------------------------------------------------------------------
# Schema and migrations
# ---------------------------------------------------------------------------


def _migration_1(conn: sqlite3.Connection) -> None:
    """The initial schema: executions, their transitions and their events."""
    conn.execute(
        """
        CREATE TABLE executions (
            id            TEXT PRIMARY KEY,
            job_id        TEXT NOT NULL,
            state         TEXT NOT NULL,
            created_at    TEXT NOT NULL,
            started_at    TEXT,
            finished_at   TEXT,
            container_id  TEXT,
            request_json  TEXT NOT NULL,
            result_json   TEXT
        )
        """
    )
    conn.execute("CREATE INDEX executions_job_id ON executions (job_id)")
    conn.execute("CREATE INDEX executions_state ON executions (state)")
    conn.execute("CREATE INDEX executions_created_at ON executions (created_at)")
    conn.execute("CREATE INDEX executions_finished_at ON executions (finished_at)")
    conn.execute(
        """
        CREATE TABLE transitions (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,
            execution_id  TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
            from_state    TEXT,
            to_state      TEXT NOT NULL,
            at            TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX transitions_execution ON transitions (execution_id, seq)")
    conn.execute(
        """
        CREATE TABLE events (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,
            execution_id  TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
            kind          TEXT NOT NULL,
            event_json    TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX events_execution ON events (execution_id, seq)")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def _built_image(conn: sqlite3.Connection) -> None:
    """A job's built image (its content-hash tag), kept with its execution: restarts after a node restart
    make their containers from it."""
    conn.execute("ALTER TABLE executions ADD COLUMN built_image TEXT")


Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: Sequence[Migration] = (_migration_1, statstore.create_table, _built_image)
"""Migration ``i`` (0-based) takes the schema from version ``i`` to ``i + 1``. Only ever append."""

SCHEMA_VERSION = len(MIGRATIONS)


def _migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> None:
    """Bring the schema to ``len(migrations)``: each step and its version bump in one transaction."""
    target = len(migrations)
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id not in (0, APPLICATION_ID):
        raise StoreError(f"{path} is not a haddock execution store (application id {app_id:#x})")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > target:
        raise StoreError(
            f"{path} has schema version {version}, newer than this haddock knows ({target}); "
            "upgrade haddock or point it at another data dir"
        )
    if version == 0 and app_id == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchone()[0]
        if tables:
            raise StoreError(f"{path} is a SQLite database of another application, not a haddock execution store")
    while version < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < target:
                migrations[version](conn)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _connect(path: Path, migrations: Sequence[Migration]) -> sqlite3.Connection:
    """Open, configure and migrate; any failure is a StoreError naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the directory of the execution store {path}: {exc}") from exc
    if path.is_dir():
        raise StoreError(f"execution store {path} is a directory, not a database file")
    conn: sqlite3.Connection | None = None
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (Python's implicit transactions get in the way).
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"execution store {path}: cannot use WAL mode (journal mode is {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path, migrations)
        problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise StoreError(f"execution store {path} is corrupt: {problem}")
        return conn
    except StoreError:
        if conn is not None:
            conn.close()
        raise
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise StoreError(f"cannot open the execution store {path}: {exc}") from exc


# ---------------------------------------------------------------------------
# The connection and its thread
# ---------------------------------------------------------------------------


class Database:
    """The store's one connection, on its one thread: open, close, and run reads and writes there.

    :class:`~haddock.node.store.ExecutionStore` builds its queries on it.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, pool: ThreadPoolExecutor) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._pool = pool
        self._closing = False

    # ------------------------------------------------------------------ life cycle

    @classmethod
    async def open(cls, path: Path, *, migrations: Sequence[Migration] = MIGRATIONS) -> Self:
        """Open (creating it and its directory when missing) and migrate the store at ``path``.

        ``migrations`` is for tests; the node uses the default.
        """
        path = Path(path)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haddock-store")
        try:
            conn = await asyncio.wrap_future(pool.submit(_connect, path, migrations))
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(path, conn, pool)

    async def close(self) -> None:
        """Finish every write already called, then close the database. Idempotent."""
        if self._closing:
            return
        self._closing = True
        conn = self._conn

        def _close() -> None:
            if conn is None:
                return
            try:
                with contextlib.suppress(sqlite3.Error):  # only a hint to the query planner
                    conn.execute("PRAGMA optimize")
            finally:
                conn.close()

        try:
            # Queued behind every write called before close (the pool is FIFO).
            await asyncio.shield(asyncio.wrap_future(self._pool.submit(_close)))
        finally:
            self._conn = None
            self._pool.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._closing or self._conn is None:
            raise StoreError(f"execution store {self.path} is closed")
        conn = self._conn
        path = self.path

        def run() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"execution store {path}: {exc}") from exc

        return asyncio.wrap_future(self._pool.submit(run))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run ``fn`` in one write transaction; ``durable`` commits with synchronous=FULL.

        Shielded: a cancelled caller does not cancel the write.
        """

        def tx(conn: sqlite3.Connection) -> T:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return out
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

        future = self._submit(tx)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._log_orphaned_failure)
            raise

    def _log_orphaned_failure(self, future: asyncio.Future[Any]) -> None:
        """A write whose caller was cancelled has nobody to raise to: log its failure instead."""
        if future.cancelled() or future.exception() is None:
            return
        log.error("execution store %s: a write failed: %s", self.path, future.exception())
