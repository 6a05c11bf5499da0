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


class Chunk:
    """Lines in order and, when any of them is durable, the outbox row of each (as in
    :data:`Entry`); ``rows`` None: none is. Memory keeps lines as they came, not a
    tuple a line: at hundreds of thousands of lines a second the tuples cost as much as
    the rest of the writer's bookkeeping, and every one lived until its POST, for the
    collector to walk again and again."""

    __slots__ = ("lines", "rows")

    def __init__(self, lines: list[str], rows: list[int | None] | None = None) -> None:
        if rows is not None and len(rows) != len(lines):
            raise ValueError("a row (or None) for each line")
        self.lines = lines
        self.rows = rows

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> Chunk:
        return cls([line for line, _ in entries], [row for _, row in entries])

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, part: slice) -> Chunk:
        return Chunk(self.lines[part], None if self.rows is None else self.rows[part])

    def pick(self, positions: Sequence[int]) -> Chunk:
        """The lines at ``positions`` (ascending), with their rows."""
        lines = [self.lines[i] for i in positions]
        return Chunk(lines, None if self.rows is None else [self.rows[i] for i in positions])

    def entry(self, index: int) -> Entry:
        return self.lines[index], None if self.rows is None else self.rows[index]

    def entries(self) -> list[Entry]:
        return list(zip(self.lines, self.rows or repeat(None), strict=False))

    def written_rows(self) -> list[int]:
        """The outbox rows whose last line is in this chunk (deleted once it is written)."""
        if self.rows is None:
            return []
        return [row_id for row_id in self.rows if row_id is not None and row_id > 0]


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
        # the lines, and beside them each one's outbox row (see Entry)
        self._lines: deque[str] = deque()
        self._rows: deque[int | None] = deque()
        self._durable = 0  # lines held with an outbox row
        self.accepted = 0  # memory lines ever accepted
        self.done = 0  # memory lines ever written, quarantined or moved to the spool
        self.oldest_at: float | None = None  # when the oldest waiting line came in
        self._waiters: list[Waiter] = []

    def __len__(self) -> int:
        return len(self._lines)

    @property
    def full(self) -> bool:
        """As many lines wait as ``max_pending`` allows: the intake pauses."""
        return len(self._lines) >= self.max_pending

    def add(self, line: str, row_id: int | None, now: float) -> None:
        self._lines.append(line)
        self._rows.append(row_id)
        if row_id is not None:
            self._durable += 1
        self.accepted += 1
        if self.oldest_at is None:
            self.oldest_at = now

    def extend(self, lines: Sequence[str], now: float,
               rows: Sequence[int] | None = None, group: int = 1) -> None:
        """Many lines at once (a batch write), with their outbox rows when durable
        (``group`` lines to a row, the last row may hold fewer)."""
        if rows is None:
            self._lines.extend(lines)
            self._rows.extend(repeat(None, len(lines)))
        elif group == 1:
            if len(rows) != len(lines):
                raise ValueError("a row for each line")
            self._lines.extend(lines)
            self._rows.extend(rows)
            self._durable += len(lines)
        else:
            if len(rows) != -(-len(lines) // group):
                raise ValueError(f"a row for each {group} lines")
            for k, row_id in enumerate(rows):
                part = lines[k * group:(k + 1) * group]
                self._lines.extend(part)
                self._rows.extend(repeat(-row_id, len(part) - 1))
                self._rows.append(row_id)
                self._durable += len(part)
        self.accepted += len(lines)
        if self.oldest_at is None and lines:
            self.oldest_at = now

    def due(self, now: float, closing: bool) -> bool:
        """A POST should go now: a full batch, a flush or the close waiting, memory at
        its bound, or the oldest line has lingered long enough."""
        return bool(self._lines) and (
            len(self._lines) >= self.batch_size or closing or bool(self._waiters)
            or self.full or self.oldest_at is None or now >= self.oldest_at + self.linger)

    @property
    def deadline(self) -> float | None:
        """When the oldest line has lingered long enough."""
        return None if self.oldest_at is None else self.oldest_at + self.linger

    def chunk(self) -> Chunk:
        """The next batch, oldest first (they stay until :meth:`drop`)."""
        return self._first(self.batch_size)

    def snapshot(self) -> Chunk:
        return self._first(len(self._lines))

    def _first(self, count: int) -> Chunk:
        return Chunk(list(islice(self._lines, count)),
                     list(islice(self._rows, count)) if self._durable else None)

    def drop(self, count: int, now: float) -> None:
        """The oldest ``count`` lines are written (or quarantined, or spooled)."""
        lines, rows = self._lines, self._rows
        if self._durable:
            for _ in range(count):
                lines.popleft()
                if rows.popleft() is not None:
                    self._durable -= 1
        else:
            for _ in range(count):
                lines.popleft()
                rows.popleft()
        self.done += count
        self.oldest_at = now if lines else None

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
