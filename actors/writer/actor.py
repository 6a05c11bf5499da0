"""WriterActor: turns many tiny awaits into few large line-protocol POSTs, and never
loses a line it accepted. Its parts: the accumulator (memory, batches, flushes), the
sender (POSTs, bisection, retry clock) and the spool (the SQLite outbox).

Two loops share the actor's state: the *intake* drains the mailbox, the *sender
loop* POSTs. So ``await write_candle`` only waits for mailbox room, never for InfluxDB.

- Intake: every accepted line goes into the accumulator at once, before anything
  else happens, so a crash of the actor's tasks never loses it (the accumulator
  belongs to the actor object, which the supervisor restarts).
- Memory mode (normal): lines wait in memory, batched by size
  (``influxdb.batch.size``) and linger (``influxdb.batch.flush_interval``).
- Backpressure: while more than ``influxdb.max_pending`` lines wait in memory, the
  intake pauses (the mailbox fills, producers wait for room and, past
  ``influxdb.timeout``, get BackendUnavailable saying why).
- Spool mode: once InfluxDB has failed for ``influxdb.spool_after`` seconds, or it
  fails while more than ``influxdb.max_pending`` lines wait, or it is down at close,
  memory is moved to the SQLite outbox (inserted first, then dropped from memory) and
  later lines follow it there; the sender loop replays the outbox in id order
  (per-series order is kept) and goes back to memory mode once it is empty. A hub that
  starts with a non-empty outbox (a crash, or a close during an outage) starts in
  spool mode.
- Lines that carry an outbox id (trades) are durable already; their row is
  deleted once written.
- Outbox rows of processes that ended before writing them, moved into this process's
  outbox (``taken_over``), are replayed the spool's way, behind what memory holds.

A flush resolves once every line accepted before it is written (or quarantined);
it fails with BackendUnavailable after ``influxdb.timeout`` seconds of continuous
failure (the lines are kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.backends.influx import InfluxBackend
from actors.heap import Trimmer
from actors.runtime import Actor, Envelope, Request, close_quietly
from actors.state import StateActor
from actors.writer.accumulator import Accumulator, Chunk, Entry
from actors.writer.sender import Sender
from actors.writer.spool import Spool
from hubdomain.errors import BackendUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lines:
    """Lines to write; ``rows`` are their outbox rows when they are durable already,
    ``group`` lines to a row."""

    lines: Sequence[str]
    rows: Sequence[int] | None = None
    group: int = 1


@dataclass(frozen=True, slots=True)
class TakenOver:
    """Outbox rows that processes which ended left were moved into this process's
    outbox, up to id ``max_id``: replayed from there (the spool's way)."""

    max_id: int


@dataclass(frozen=True, slots=True)
class Flush(Request[None]):
    """Answered once every line accepted before it is written (or quarantined)."""


class WriterActor(Actor):
    name = "writer"
    batch_limit = 4096

    def __init__(self, backend: InfluxBackend, state: StateActor, *, batch_size: int,
                 linger: float, give_up_after: float, spool_after: float = 5.0,
                 max_pending: int = 200_000,
                 rp_for: Callable[[str], str | None] | None = None) -> None:
        super().__init__(mailbox_size=50_000)
        self.backend = backend
        self.give_up_after = give_up_after
        self.spool_after = spool_after
        self.memory = Accumulator(batch_size, linger, max_pending)
        self.spool = Spool(state)
        self.sender = Sender(backend, rp_for=rp_for, written=state.outbox_done,
                             quarantine=self._quarantine)
        self.state = state
        self._absorbed: Sequence[Envelope] = ()  # the last batch taken into memory
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._room = asyncio.Event()  # set by the sender loop when memory shrinks
        self.heap = Trimmer()  # gives a burst's freed memory back once it is written

    # ---- what callers use -----------------------------------------------------------

    async def write(self, lines: Sequence[str], *, within: float | None = None) -> None:
        """Queue lines (acknowledged once queued). When the writer can keep no more
        (InfluxDB and the spool both behind) wait at most ``within`` seconds, then
        raise BackendUnavailable saying why; None: wait as long as it takes."""
        if within is None or not self.mailbox.full:
            await self.tell(Lines(lines))
            return
        try:
            async with asyncio.timeout(within):
                await self.tell(Lines(lines))
        except TimeoutError:
            raise BackendUnavailable(
                "influxdb", f"the write cannot be kept now: {self.blocked_reason()}") from None

    @property
    def behind(self) -> bool:
        """Lines wait for room: the mailbox is full, or memory holds ``max_pending``
        lines (InfluxDB and the spool are slower than the producers; the intake
        pauses)."""
        return self.mailbox.full or self.memory.full

    def offer_lines(self, lines: Sequence[str]) -> bool:
        """Queue lines if the mailbox has room now (never waits); False otherwise."""
        return super().offer(Lines(lines))

    def push_lines(self, lines: Sequence[str]) -> None:
        """Queue lines now, past the mailbox's bound when it is full: for lines that were
        acknowledged already (a run of write_candle calls delivered by a loop callback,
        which cannot wait; a run is a few hundred lines at most)."""
        super().tell_past_bound(Lines(lines))

    def write_durable(self, lines: Sequence[str], rows: Sequence[int], group: int = 1
                      ) -> None:
        """Queue lines that are in the outbox already (rows ``rows``, ``group`` lines to
        a row): never waits, a full writer must not hold up a write safe on disk."""
        self.tell_past_bound(Lines(lines, rows, group))

    async def flush(self) -> None:
        """Return once every line accepted before the call is written. Queued past the
        bound: a flush waits for the lines, not for room."""
        await self.ask(Flush(), past_bound=True)

    def taken_over(self, max_id: int) -> None:
        """Rows up to ``max_id`` were moved into this process's outbox (by
        StateActor.take_over_ended): replay them, behind what memory holds."""
        self.tell_past_bound(TakenOver(max_id))

    @property
    def failing(self) -> bool:
        """True while InfluxDB writes are failing (reads should not wait on a flush)."""
        return self.sender.failing_since is not None

    def blocked_reason(self) -> str:
        """Why writes are waiting (for the error a producer gets when it waits too long)."""
        parts = [f"{len(self.memory)} lines wait in memory"]
        if self.sender.failing_since is not None:
            parts.append(f"InfluxDB is unavailable ({self.sender.last_error})")
        if self.spool.error is not None:
            parts.append(f"the SQLite spool cannot take them ({self.spool.error})")
        return "; ".join(parts)

    # ---- lifecycle ------------------------------------------------------------------

    async def setup(self) -> None:
        await self.backend.connect()
        count = await self.spool.resume()
        if count:  # lines still in memory (a restart after a crash) follow the outbox
            log.warning("%d lines waiting in the SQLite spool; replaying them first", count)

    async def teardown(self) -> None:
        await self.heap.close(pending=False)
        await close_quietly(self.backend, "influxdb")

    async def run(self) -> None:
        self._stop.clear()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._send_loop(), name="writer-sender")
            try:
                await super().run()
            finally:
                # mailbox closed and drained: the sender writes (or spools) what is left
                self._stop.set()
                self._wake.set()
        # closed during an outage: what they waited for is on disk
        self.memory.fail_flushes(BackendUnavailable(
            "influxdb", "unavailable at close; writes are in the SQLite spool and replayed "
                        "at the next start"))

    # ---- intake ---------------------------------------------------------------------

    async def handle(self, batch: Sequence[Envelope]) -> None:
        self._absorb(batch)  # first: accepted lines are the actor's from here on
        while self.memory.full and not self._stop.is_set() and not self.mailbox.closed:
            # InfluxDB and the spool are slower than the producers: backpressure
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            closing = asyncio.ensure_future(self.mailbox.closing.wait())
            try:
                await asyncio.wait((room, closing), return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()
                closing.cancel()

    def fail_inflight(self, exc: BaseException) -> None:
        """A crash (or the close) between draining a batch and taking it in: keep its
        lines all the same, they were acknowledged."""
        if self._inflight and self._inflight is not self._absorbed:
            self._absorb(self._inflight)
        super().fail_inflight(exc)

    def _absorb(self, batch: Sequence[Envelope]) -> None:
        """Take a drained batch into memory, synchronously (nothing can fail half-way)."""
        self._absorbed = batch
        now = asyncio.get_running_loop().time()
        for envelope in batch:
            message = envelope.message
            if isinstance(message, Flush):
                if envelope.future is not None:
                    self.memory.wait_for(self.spool.max_id, envelope.future)
                continue
            if isinstance(message, TakenOver):  # replayed from the outbox, in id order
                self.spool.knows((message.max_id,))
                self.spool.active = True
                continue
            rows, group = message.rows, message.group
            if self.spool.active and rows:  # durable lines: in the outbox already, replayed
                self.spool.knows(rows)
                continue
            if not rows or rows[0] > self.spool.posted:  # none written yet
                self.memory.extend(message.lines, now, rows or None, group)
                continue
            for k, row_id in enumerate(rows):
                if row_id > self.spool.posted:  # (the rows before: written from the spool)
                    self.memory.extend(message.lines[k * group:(k + 1) * group], now,
                                       (row_id,), group)
        self.memory.wake(self.spool.posted)
        self._wake.set()

    # ---- sender loop ----------------------------------------------------------------

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        memory, spool, sender = self.memory, self.spool, self.sender
        while True:
            if spool.active:
                if len(memory) and spool.may_try(loop.time()):
                    await self._spill("while the spool is replayed")  # behind the outbox
                    continue
                if not await self._send_spool_page():
                    return
                continue
            if not len(memory):
                memory.wake(spool.posted)
                if self._stop.is_set():
                    return
                await self._wait(self._wake, None)
                continue
            now = loop.time()
            if now < sender.retry_at and not self._stop.is_set():
                await self._wait(self._stop, sender.retry_at)
                continue
            if not memory.due(now, self._stop.is_set()):
                await self._wait(self._wake, memory.deadline)
                continue
            if sender.failing_since is not None and memory.full and spool.may_try(now):
                await self._spill(f"InfluxDB fails with {len(memory)} lines waiting")
                continue
            chunk = memory.chunk()
            if await self._post(chunk):
                memory.drop(len(chunk), loop.time())
                self._room.set()
                memory.wake(spool.posted)
                self.heap.count(len(chunk), idle=not len(memory))
            elif self._stop.is_set():
                if not await self._spill("InfluxDB is unavailable at close"):
                    log.error("closing while InfluxDB is unavailable and the SQLite spool "
                              "cannot take them: %d accepted lines are lost (%s)",
                              len(memory), spool.error)
                    return
            elif (now - (sender.failing_since or now) >= self.spool_after
                  and spool.may_try(now)):
                await self._spill(f"InfluxDB has failed for {self.spool_after:g}s")

    async def _post(self, chunk: Chunk) -> bool:
        """POST ``chunk``; a failure lasting ``influxdb.timeout`` fails waiting flushes."""
        loop = asyncio.get_running_loop()
        if await self.sender.post(chunk, loop.time):
            return True
        failing_since = self.sender.failing_since
        if failing_since is not None and self.memory.flushing \
                and loop.time() - failing_since >= self.give_up_after:
            self.memory.fail_flushes(BackendUnavailable(
                "influxdb", f"writes not confirmed for {loop.time() - failing_since:.1f}s "
                f"({self.sender.last_error}); they are kept and retried"))
        return False

    async def _send_spool_page(self) -> bool:
        """Write the next page of the outbox; False when the sender should stop."""
        spool = self.spool
        rows = await spool.page(self.memory.batch_size)
        if not rows:
            if spool.inserts:
                await self._wait(self._wake, None)
                return True
            spool.drained()
            self.memory.wake(spool.posted)
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self.sender.retry_at:
            if self._stop.is_set():
                return False  # closing during an outage: the rows stay on disk
            await self._wait(self._stop, self.sender.retry_at)
            return True
        lines: list[str] = []
        ids: list[int | None] = []
        for row_id, row_lines in rows:  # a row's id on its last line (see Entry)
            lines += row_lines
            ids += [-row_id] * (len(row_lines) - 1)
            ids.append(row_id)
        if await self._post(Chunk(lines, ids)):
            spool.replayed_up_to(rows)
            self.memory.wake(spool.posted)
            return True
        return not self._stop.is_set()

    async def _spill(self, reason: str) -> bool:
        """Move what memory holds now to the outbox and spool from here on (sender loop
        only). The lines are inserted before they leave memory; when the spool cannot
        take them, they stay, and the spool is tried again later. True when moved."""
        memory, spool = self.memory, self.spool
        loop = asyncio.get_running_loop()
        snapshot = memory.snapshot()
        rows = snapshot.rows
        fresh = snapshot.lines if rows is None else [
            line for line, row_id in zip(snapshot.lines, rows, strict=True) if row_id is None]
        if not spool.active:
            log.warning("%s: %d lines go to the SQLite spool until it answers", reason,
                        len(snapshot))
        try:
            if fresh:
                await spool.insert(fresh)
        except BackendUnavailable as exc:
            spool.blocked(exc, loop.time())
            return False
        finally:
            self._wake.set()
        spool.took()
        durable = [] if rows is None else [abs(row_id) for row_id in rows if row_id is not None]
        if durable:
            spool.knows(durable)
        done_before = memory.done
        memory.drop(len(snapshot), loop.time())  # lines that came meanwhile stay, behind
        spool.active = True
        memory.moved_to_spool(done_before, spool.max_id)
        self._room.set()
        memory.wake(spool.posted)
        return True

    async def _quarantine(self, entry: Entry, reason: str) -> None:
        line, row_id = entry
        await self.state.quarantine([(line, reason)])
        if row_id is not None and row_id > 0:  # the last line of its row
            await self.state.outbox_done([row_id])

    async def _wait(self, event: asyncio.Event, deadline: float | None) -> None:
        if event is self._wake:
            self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await event.wait()

    def statistics(self) -> dict[str, Any]:
        sender, spool = self.sender, self.spool
        return {
            **super().statistics(),
            "pending": len(self.memory),
            "spooling": spool.active,
            "points_written": sender.points_written,
            "posts": sender.posts,
            "retries": sender.retries,
            "quarantined": sender.quarantined,
            "spooled": spool.spooled,
            "replayed": spool.replayed,
            "spool_error": spool.error,
            "heap_trims": self.heap.trims,
        }
