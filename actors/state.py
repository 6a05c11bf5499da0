"""StateActor: SQLite (WAL) for positions, strategy state, the write outbox/spool and
the quarantine of rejected points (the store itself: ``actors.backends.sqlite``).

Every drained mailbox batch runs in one worker-thread call and one transaction:
all writers waiting in that batch share a single commit (group commit), and the
commit is synchronous (``synchronous=FULL``) so an acknowledged write survives a
kill -9 of the process and a power cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from actors.backends.sqlite import SQLiteStore
from actors.runtime import Actor, Envelope, Request, fail, resolve
from hubdomain.errors import BackendUnavailable

R = TypeVar("R")


class StateOp(Request[R]):
    """A request the StateActor runs on the store, inside the batch's transaction."""

    __slots__ = ()

    def run(self, store: SQLiteStore) -> R:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Put(StateOp[None]):
    key: str
    value: bytes

    def run(self, store: SQLiteStore) -> None:
        store.put(self.key, self.value)


@dataclass(frozen=True, slots=True)
class Get(StateOp[bytes | None]):
    key: str

    def run(self, store: SQLiteStore) -> bytes | None:
        return store.get(self.key)


@dataclass(frozen=True, slots=True)
class OutboxAdd(StateOp[list[int]]):
    lines: Sequence[str]
    kind: str
    group: int = 1

    def run(self, store: SQLiteStore) -> list[int]:
        return store.outbox_add(self.lines, self.kind, self.group)


@dataclass(frozen=True, slots=True)
class OutboxBounds(StateOp[tuple[int, int]]):
    def run(self, store: SQLiteStore) -> tuple[int, int]:
        return store.outbox_bounds()


@dataclass(frozen=True, slots=True)
class OutboxDone(StateOp[None]):
    ids: Sequence[int]

    def run(self, store: SQLiteStore) -> None:
        store.outbox_done(self.ids)


@dataclass(frozen=True, slots=True)
class OutboxLoad(StateOp[list[tuple[int, list[str]]]]):
    after_id: int
    limit: int

    def run(self, store: SQLiteStore) -> list[tuple[int, list[str]]]:
        return store.outbox_load(self.after_id, self.limit)


@dataclass(frozen=True, slots=True)
class Quarantine(StateOp[None]):
    items: Sequence[tuple[str, str]]

    def run(self, store: SQLiteStore) -> None:
        store.quarantine(self.items)


@dataclass(frozen=True, slots=True)
class Quarantined(StateOp[list[tuple[str, str]]]):
    limit: int

    def run(self, store: SQLiteStore) -> list[tuple[str, str]]:
        return store.quarantined(self.limit)


@dataclass(frozen=True, slots=True)
class Prune(StateOp[dict[str, int]]):
    """Delete quarantined lines / outbox rows created before these wall-clock times
    (None: keep them); how many of each went."""

    quarantine_before: float | None
    outbox_before: float | None

    def run(self, store: SQLiteStore) -> dict[str, int]:
        return store.prune(self.quarantine_before, self.outbox_before)


@dataclass(frozen=True, slots=True)
class Counts(StateOp[dict[str, int]]):
    def run(self, store: SQLiteStore) -> dict[str, int]:
        return store.counts()


class StateActor(Actor):
    """Owns the SQLite store; one transaction (one fsync) per drained batch."""

    name = "state"

    def __init__(self, path: str, *, replays: bool = True) -> None:
        super().__init__(mailbox_size=10_000)
        # replays: this process writes to InfluxDB, so it takes over ended processes'
        # spools at start (one that does not would only hold them back)
        self.store = SQLiteStore(path, adopt=replays)
        self._limiter = CapacityLimiter(1)
        self.commits = 0

    # ---- what callers use ----

    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``; committed when it returns."""
        await self.ask(Put(key, value))

    async def get(self, key: str) -> bytes | None:
        return await self.ask(Get(key))

    async def outbox_add(self, lines: Sequence[str], kind: str, group: int = 1) -> list[int]:
        """Commit lines to the outbox, ``group`` lines to a row; the rows' ids, in
        order."""
        return await self.ask(OutboxAdd(lines, kind, group))

    async def outbox_bounds(self) -> tuple[int, int]:
        """(lines waiting, highest id) of this process's outbox."""
        return await self.ask(OutboxBounds())

    async def outbox_done(self, ids: Sequence[int]) -> None:
        """Forget delivered outbox lines (fire and forget: a line left behind is only
        written again, which InfluxDB takes as the same point)."""
        await self.tell(OutboxDone(ids))

    async def outbox_load(self, after_id: int, limit: int) -> list[tuple[int, list[str]]]:
        return await self.ask(OutboxLoad(after_id, limit))

    async def quarantine(self, items: Sequence[tuple[str, str]]) -> None:
        await self.ask(Quarantine(items))

    async def quarantined(self, limit: int) -> list[tuple[str, str]]:
        return await self.ask(Quarantined(limit))

    async def counts(self) -> dict[str, int]:
        return await self.ask(Counts())

    async def take_over_ended(self) -> tuple[int, int]:
        """Move the outbox rows of slots whose process has ended into this one's (see
        SQLiteStore.take_over_ended): (lines moved, this slot's highest outbox id). Runs
        between the mailbox's transactions, on the store's thread."""
        return await anyio.to_thread.run_sync(self.store.take_over_ended_now,
                                              limiter=self._limiter)

    async def prune(self, quarantine_before: float | None,
                    outbox_before: float | None) -> dict[str, int]:
        return await self.ask(Prune(quarantine_before, outbox_before))

    # ---- the actor ----

    async def setup(self) -> None:
        await anyio.to_thread.run_sync(self.store.open, limiter=self._limiter)

    async def teardown(self) -> None:
        await anyio.to_thread.run_sync(self.store.close, limiter=self._limiter)

    async def handle(self, batch: Sequence[Envelope]) -> None:
        ops = [envelope.message.run for envelope in batch]
        try:
            results = await anyio.to_thread.run_sync(
                self.store.run_batch, ops, limiter=self._limiter)
        except BackendUnavailable as exc:
            for envelope in batch:
                fail(envelope.future, exc)
            return
        self.commits += 1
        for envelope, result in zip(batch, results, strict=True):
            if isinstance(result, BackendUnavailable):
                fail(envelope.future, result)
            else:
                resolve(envelope.future, result)

    def statistics(self) -> dict[str, Any]:
        return {**super().statistics(), "commits": self.commits}
