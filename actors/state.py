"""StateActor: SQLite (WAL) for positions, strategy state, the write outbox/spool and
the quarantine of rejected points.

Every drained mailbox batch runs in one worker-thread call and one transaction:
all writers waiting in that batch share a single commit (group commit), and the
commit is synchronous (``synchronous=FULL``) so an acknowledged write survives a
kill -9 of the process and a power cut.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter

from actors._runtime import Actor, Call, fail, resolve
from hub.errors import BackendUnavailable

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL, kind TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL, reason TEXT NOT NULL,
    created_at REAL NOT NULL);
"""


class SQLiteStore:
    """Synchronous store; only ever used from one thread at a time (the actor's)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock: Any = None

    def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db

    def _take_lock(self) -> None:
        """One hub process per SQLite file: its spool must never be replayed by another."""
        lock = open(self.path + ".lock", "a+")  # held until close()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "?"
            lock.close()
            raise BackendUnavailable(
                "sqlite", f"{self.path} is in use by another hub process (pid {owner}); "
                "give each process its own sqlite.path") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store is not open"
        return self._db

    def run_batch(self, ops: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ops in one transaction; an op's exception is returned in its slot."""
        db = self.db
        results: list[Any] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                handler: Callable[..., Any] = getattr(self, "op_" + op[0])
                try:
                    db.execute("SAVEPOINT op")
                    results.append(handler(*op[1:]))
                    db.execute("RELEASE op")
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    results.append(exc)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results

    # ---- ops (called inside run_batch) ----
    def op_put(self, key: str, value: bytes) -> None:
        self.db.execute(
            "INSERT INTO state(key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
            (key, value, time.time()),
        )

    def op_get(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def op_outbox_add(self, lines: Sequence[str], kind: str) -> list[int]:
        now = time.time()
        ids = []
        for line in lines:
            cur = self.db.execute(
                "INSERT INTO outbox(line, kind, created_at) VALUES (?, ?, ?)", (line, kind, now)
            )
            ids.append(int(cur.lastrowid or 0))
        return ids

    def op_outbox_bounds(self) -> tuple[int, int]:
        count, max_id = self.db.execute("SELECT count(*), max(id) FROM outbox").fetchone()
        return int(count), int(max_id or 0)

    def op_outbox_done(self, ids: Sequence[int]) -> None:
        self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def op_outbox_load(self, after_id: int, limit: int) -> list[tuple[int, str]]:
        rows = self.db.execute(
            "SELECT id, line FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def op_quarantine(self, items: Sequence[tuple[str, str]]) -> None:
        now = time.time()
        self.db.executemany(
            "INSERT INTO quarantine(line, reason, created_at) VALUES (?, ?, ?)",
            [(line, reason, now) for line, reason in items],
        )

    def op_quarantined(self, limit: int) -> list[tuple[str, str]]:
        rows = self.db.execute(
            "SELECT line, reason FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def op_counts(self) -> dict[str, int]:
        outbox = self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        quarantined = self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        return {"outbox": int(outbox), "quarantined": int(quarantined)}


class StateActor(Actor):
    """Owns the SQLite store; one transaction (one fsync) per drained batch."""

    name = "state"

    def __init__(self, path: str) -> None:
        super().__init__(mailbox_size=10_000)
        self.store = SQLiteStore(path)
        self._limiter = CapacityLimiter(1)
        self.commits = 0

    async def setup(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.store.open, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            raise BackendUnavailable("sqlite", f"cannot open {self.store.path}: {exc}") from exc

    async def teardown(self) -> None:
        await anyio.to_thread.run_sync(self.store.close, limiter=self._limiter)

    async def handle(self, batch: Sequence[Call]) -> None:
        ops = [call.payload for call in batch]
        try:
            results = await anyio.to_thread.run_sync(
                self.store.run_batch, ops, limiter=self._limiter
            )
        except sqlite3.Error as exc:
            error = BackendUnavailable("sqlite", f"{type(exc).__name__}: {exc}")
            for call in batch:
                fail(call.future, error)
            return
        self.commits += 1
        for call, result in zip(batch, results, strict=True):
            if isinstance(result, sqlite3.Error):
                fail(call.future, BackendUnavailable("sqlite", str(result)))
            else:
                resolve(call.future, result)

    def statistics(self) -> dict[str, Any]:
        return {**super().statistics(), "commits": self.commits}
