"""The writer's memory: accepted lines in order, batched by size and linger, and the
flushes waiting on them (the part of a producer aiokafka calls its accumulator).

Synchronous and clock-free (the caller passes ``now``), so it is tested on its own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, repeat

from actors.runtime import fail, resolve

# a line, and its outbox row when it is durable already (a trade, or influxdb.durable):
# None for a line only in memory; the row's id on the last line of its row (the row is
# deleted once that line is written: the lines before it went out first); minus the
# row's id on the others (durable, but the row stays until its last line is written)
Entry = tuple[str, int | None]


@dataclass(slots=True)
class Waiter:
    """A flush: done once the outbox is written up to ``spool`` and memory up to ``mem``
    (sequence numbers of accepted memory lines)."""

    spool: int
    mem: int
    future: asyncio.Future[None]


class Accumulator:
    def __init__(self, batch_size: int, linger: float, max_pending: int) -> None:
        self.batch_size = batch_size
        self.linger = linger
        self.max_pending = max_pending
        self._entries: deque[Entry] = deque()
        self.accepted = 0  # memory lines ever accepted
        self.done = 0  # memory lines ever written, quarantined or moved to the spool
        self.oldest_at: float | None = None  # when the oldest waiting line came in
        self._waiters: list[Waiter] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        """As many lines wait as ``max_pending`` allows: the intake pauses."""
        return len(self._entries) >= self.max_pending

    def add(self, line: str, row_id: int | None, now: float) -> None:
        self._entries.append((line, row_id))
        self.accepted += 1
        if self.oldest_at is None:
            self.oldest_at = now

    def extend(self, lines: Sequence[str], now: float,
               rows: Sequence[int] | None = None, group: int = 1) -> None:
        """Many lines at once (a batch write), with their outbox rows when durable
        (``group`` lines to a row, the last row may hold fewer)."""
        if rows is None:
            self._entries.extend(zip(lines, repeat(None), strict=False))
        elif group == 1:
            self._entries.extend(zip(lines, rows, strict=True))
        else:
            for k, row_id in enumerate(rows):
                part = lines[k * group:(k + 1) * group]
                self._entries.extend(zip(part[:-1], repeat(-row_id), strict=False))
                self._entries.append((part[-1], row_id))
        self.accepted += len(lines)
        if self.oldest_at is None and lines:
            self.oldest_at = now

    def due(self, now: float, closing: bool) -> bool:
        """A POST should go now: a full batch, a flush or the close waiting, memory at
        its bound, or the oldest line has lingered long enough."""
        return bool(self._entries) and (
            len(self._entries) >= self.batch_size or closing or bool(self._waiters)
            or self.full or self.oldest_at is None or now >= self.oldest_at + self.linger)

    @property
    def deadline(self) -> float | None:
        """When the oldest line has lingered long enough."""
        return None if self.oldest_at is None else self.oldest_at + self.linger

    def chunk(self) -> list[Entry]:
        """The next batch, oldest first (they stay until :meth:`drop`)."""
        return list(islice(self._entries, self.batch_size))

    def snapshot(self) -> list[Entry]:
        return list(self._entries)

    def drop(self, count: int, now: float) -> None:
        """The oldest ``count`` lines are written (or quarantined, or spooled)."""
        for _ in range(count):
            self._entries.popleft()
        self.done += count
        self.oldest_at = now if self._entries else None

    # ---- flushes ----

    @property
    def flushing(self) -> bool:
        return bool(self._waiters)

    def wait_for(self, spool_mark: int, future: asyncio.Future[None]) -> None:
        """``future`` resolves once everything accepted so far is written."""
        self._waiters.append(Waiter(spool_mark, self.accepted, future))

    def moved_to_spool(self, done_before: int, spool_mark: int) -> None:
        """Memory lines up to now went to the outbox (its rows reach ``spool_mark``):
        flushes that waited on them wait on the outbox instead."""
        for waiter in self._waiters:
            if waiter.mem > done_before:
                waiter.spool = max(waiter.spool, spool_mark)

    def wake(self, spool_posted: int) -> None:
        """Resolve the flushes whose lines are all written."""
        still = []
        for waiter in self._waiters:
            if (spool_posted >= waiter.spool and self.done >= waiter.mem) \
                    or waiter.future.done():
                resolve(waiter.future, None)
            else:
                still.append(waiter)
        self._waiters = still

    def fail_flushes(self, error: BaseException) -> None:
        for waiter in self._waiters:
            fail(waiter.future, error)
        self._waiters.clear()
