"""WriterActor: turns many tiny awaits into few large line-protocol POSTs, and never
loses a line it accepted.

Two loops share the actor's state: the *intake* drains the mailbox, the *sender*
POSTs. So ``await write_candle`` only waits for mailbox room, never for InfluxDB.

- Intake: every accepted line goes into the actor's memory at once, before anything
  else happens, so a crash of the actor's tasks never loses it (the memory belongs
  to the actor object, which the supervisor restarts).
- Memory mode (normal): lines wait in memory, batched by size
  (``influxdb.batch.size``) and linger (``influxdb.batch.flush_interval``).
- Backpressure: while more than ``influxdb.max_pending`` lines wait in memory, the
  intake pauses (the mailbox fills, producers wait for room and, past
  ``influxdb.timeout``, get BackendUnavailable saying why).
- Spool mode: once InfluxDB has failed for ``influxdb.spool_after`` seconds, or it
  fails while more than ``influxdb.max_pending`` lines wait, or it is down at close,
  memory is moved to the SQLite outbox (inserted first, then dropped from memory) and
  later lines follow it there; the sender replays the outbox in id order (per-series
  order is kept) and goes back to memory mode once it is empty. A hub that starts
  with a non-empty outbox (a crash, or a close during an outage) starts in spool mode.
- A spool that cannot take lines (a full disk, a read-only file) is not a crash: the
  lines stay in memory, the spool is tried again with backoff, and InfluxDB too.
- Transient failures (connection refused, timeouts, 5xx, 429, auth) are retried
  with capped, jittered exponential backoff, at least the server's Retry-After.
- Data InfluxDB rejects (400, 413) is bisected so the good points land and only
  the bad ones are quarantined in SQLite with the server's reason.
- Lines that carry an outbox id (trades) are durable already; their row is
  deleted once written.

A flush request resolves once every line accepted before it is written (or
quarantined); it fails with BackendUnavailable after ``influxdb.timeout`` seconds
of continuous failure (the lines are kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.backends.influx import InfluxBackend, WriteRejected
from actors.runtime import Actor, Call, close_quietly, fail, resolve
from actors.state import StateActor
from hubdomain.errors import BackendUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lines:
    """Lines to write; ``ids`` are their outbox rows when they are durable already."""

    lines: Sequence[str]
    ids: Sequence[int] | None = None


FLUSH = "flush"
_Entry = tuple[str, int | None]


@dataclass(slots=True)
class _Waiter:
    """A flush: done once the outbox is written up to ``spool`` and memory up to ``mem``."""

    spool: int
    mem: int
    future: asyncio.Future[Any]


class WriterActor(Actor):
    name = "writer"
    batch_limit = 4096

    def __init__(self, backend: InfluxBackend, state: StateActor, *, batch_size: int,
                 linger: float, give_up_after: float, spool_after: float = 5.0,
                 max_pending: int = 200_000,
                 rp_for: Callable[[str], str | None] | None = None) -> None:
        super().__init__(mailbox_size=50_000)
        self.backend = backend
        self.state = state
        self.batch_size = batch_size
        self.linger = linger
        self.give_up_after = give_up_after
        self.spool_after = spool_after
        self.max_pending = max_pending
        self.rp_for = rp_for  # measurement -> retention policy, when they have their own
        self._memory: deque[_Entry] = deque()
        self._mem_accepted = 0  # memory lines ever accepted (sequence numbers)
        self._mem_done = 0  # memory lines ever written or quarantined
        self._oldest_at: float | None = None
        self._spooling = False
        self._spool_max_id = 0  # highest outbox id this writer knows of
        self._spool_posted = 0  # every outbox row up to this id is written
        self._spool_inserts = 0  # spool inserts in flight
        self._spool_error: str | None = None  # why the spool cannot take lines now
        self._spool_retry_at = 0.0
        self._spool_streak = 0
        self._last_error = ""
        self._waiters: list[_Waiter] = []
        self._absorbed: Sequence[Call] = ()  # the last batch taken into memory
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._room = asyncio.Event()  # set by the sender when memory shrinks or it fails
        self._failing_since: float | None = None
        self._streak = 0
        self._retry_at = 0.0
        self.points_written = 0
        self.posts = 0
        self.retries = 0
        self.quarantined = 0
        self.spooled = 0
        self.replayed = 0

    # ---- lifecycle ----------------------------------------------------------------

    async def setup(self) -> None:
        await self.backend.connect()
        count, max_id = await self.state.call(("outbox_bounds",))
        if count:  # lines still in memory (a restart after a crash) follow the outbox
            self._spooling = True
            self._spool_max_id = max(self._spool_max_id, max_id)
            log.warning("%d lines waiting in the SQLite spool; replaying them first", count)

    async def teardown(self) -> None:
        await close_quietly(self.backend, "influxdb")

    async def handle(self, batch: Sequence[Call]) -> None:
        self._absorb(batch)  # first: accepted lines are the actor's from here on
        while (len(self._memory) >= self.max_pending and not self._stop.is_set()
               and not self.mailbox.closed):
            # InfluxDB and the spool are slower than the producers: backpressure
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            closing = asyncio.ensure_future(self.mailbox.closing.wait())
            try:
                await asyncio.wait((room, closing), return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()
                closing.cancel()

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
        if self._waiters:  # closed during an outage: what they waited for is on disk
            error = BackendUnavailable("influxdb", "unavailable at close; writes are in the "
                                       "SQLite spool and replayed at the next start")
            for waiter in self._waiters:
                fail(waiter.future, error)
            self._waiters.clear()

    @property
    def failing(self) -> bool:
        """True while InfluxDB writes are failing (reads should not wait on a flush)."""
        return self._failing_since is not None

    def blocked_reason(self) -> str:
        """Why writes are waiting (for the error a producer gets when it waits too long)."""
        parts = [f"{len(self._memory)} lines wait in memory"]
        if self._failing_since is not None:
            parts.append(f"InfluxDB is unavailable ({self._last_error})")
        if self._spool_error is not None:
            parts.append(f"the SQLite spool cannot take them ({self._spool_error})")
        return "; ".join(parts)

    # ---- intake -------------------------------------------------------------------

    def fail_inflight(self, exc: BaseException) -> None:
        """A crash (or the close) between draining a batch and taking it in: keep its
        lines all the same, they were acknowledged."""
        if self._inflight and self._inflight is not self._absorbed:
            self._absorb(self._inflight)
        super().fail_inflight(exc)

    def _absorb(self, batch: Sequence[Call]) -> None:
        """Take a drained batch into memory, synchronously (nothing can fail half-way)."""
        self._absorbed = batch
        for call in batch:
            payload = call.payload
            if payload == FLUSH:
                if call.future is not None:
                    self._waiters.append(_Waiter(self._spool_max_id, self._mem_accepted,
                                                 call.future))
                continue
            ids = payload.ids
            if self._spooling and ids:  # durable lines: in the outbox already, replayed
                self._spool_max_id = max(self._spool_max_id, max(ids))
                continue
            for i, line in enumerate(payload.lines):
                row_id = None if ids is None else ids[i]
                if row_id is not None and row_id <= self._spool_posted:
                    continue  # written from the spool already
                self._memory.append((line, row_id))
                self._mem_accepted += 1
            if self._oldest_at is None and self._memory:
                self._oldest_at = asyncio.get_running_loop().time()
        self._wake_waiters()
        self._wake.set()

    async def _spool_insert(self, lines: list[str]) -> None:
        self._spool_inserts += 1
        try:
            ids: list[int] = await self.state.call(("outbox_add", lines, "spool"))
        finally:
            self._spool_inserts -= 1
            self._wake.set()
        if ids:
            self._spool_max_id = max(self._spool_max_id, ids[-1])
        before = self.spooled
        self.spooled += len(lines)
        if before // 100_000 != self.spooled // 100_000:
            log.warning("the SQLite spool has taken %d lines while InfluxDB is unavailable",
                        self.spooled)

    # ---- sender -------------------------------------------------------------------

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._spooling:
                if self._memory and loop.time() >= self._spool_retry_at:
                    await self._spill("while the spool is replayed")  # behind the outbox
                    continue
                if not await self._send_spool_page():
                    return
                continue
            if not self._memory:
                self._wake_waiters()
                if self._stop.is_set():
                    return
                await self._wait(self._wake, None)
                continue
            now = loop.time()
            if now < self._retry_at and not self._stop.is_set():
                await self._wait(self._stop, self._retry_at)
                continue
            assert self._oldest_at is not None
            due = (len(self._memory) >= self.batch_size or self._stop.is_set()
                   or bool(self._waiters) or len(self._memory) >= self.max_pending
                   or now >= self._oldest_at + self.linger)
            if not due:
                await self._wait(self._wake, self._oldest_at + self.linger)
                continue
            failing = self._failing_since is not None
            if (failing and len(self._memory) >= self.max_pending
                    and now >= self._spool_retry_at):
                await self._spill(f"InfluxDB fails with {len(self._memory)} lines waiting")
                continue
            chunk = [self._memory[i] for i in range(min(self.batch_size, len(self._memory)))]
            if await self._post(chunk):
                for _ in chunk:
                    self._memory.popleft()
                self._mem_done += len(chunk)
                self._oldest_at = loop.time() if self._memory else None
                self._room.set()
                self._wake_waiters()
            elif self._stop.is_set():
                if not await self._spill("InfluxDB is unavailable at close"):
                    log.error("closing while InfluxDB is unavailable and the SQLite spool "
                              "cannot take them: %d accepted lines are lost (%s)",
                              len(self._memory), self._spool_error)
                    return
            elif (now - (self._failing_since or now) >= self.spool_after
                  and now >= self._spool_retry_at):
                await self._spill(f"InfluxDB has failed for {self.spool_after:g}s")

    async def _send_spool_page(self) -> bool:
        """Write the next page of the outbox; False when the sender should stop."""
        rows: list[tuple[int, str]] = await self.state.call(
            ("outbox_load", self._spool_posted, self.batch_size))
        if not rows:
            if self._spool_inserts:
                await self._wait(self._wake, None)
                return True
            # every row up to the highest id known is written (durable rows are committed
            # before the writer hears of them): memory, newer than all of them, goes next
            self._spool_posted = max(self._spool_posted, self._spool_max_id)
            self._spooling = False
            log.info("spool replayed; InfluxDB writes back to normal")
            self._wake_waiters()
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            if self._stop.is_set():
                return False  # closing during an outage: the rows stay on disk
            await self._wait(self._stop, self._retry_at)
            return True
        if await self._post([(line, row_id) for row_id, line in rows]):
            self._spool_posted = rows[-1][0]
            self.replayed += len(rows)
            self._wake_waiters()
            return True
        return not self._stop.is_set()

    async def _spill(self, reason: str) -> bool:
        """Move what memory holds now to the outbox and spool from here on (sender only).
        The lines are inserted before they leave memory; when the spool cannot take
        them, they stay, and the spool is tried again later. True when moved."""
        snapshot = list(self._memory)
        fresh = [line for line, row_id in snapshot if row_id is None]
        if not self._spooling:
            log.warning("%s: %d lines go to the SQLite spool until it answers", reason,
                        len(snapshot))
        try:
            if fresh:
                await self._spool_insert(fresh)
        except BackendUnavailable as exc:
            self._spool_blocked(exc)
            return False
        if self._spool_error is not None:
            log.info("the SQLite spool takes lines again")
        self._spool_error, self._spool_streak = None, 0
        for _, row_id in snapshot:
            if row_id is not None:
                self._spool_max_id = max(self._spool_max_id, row_id)
        before = self._mem_done
        for _ in snapshot:  # lines that arrived meanwhile stay, behind these
            self._memory.popleft()
        self._mem_done += len(snapshot)
        self._oldest_at = asyncio.get_running_loop().time() if self._memory else None
        self._spooling = True
        for waiter in self._waiters:  # what they waited for in memory is in the outbox
            if waiter.mem > before:
                waiter.spool = max(waiter.spool, self._spool_max_id)
        self._room.set()
        self._wake_waiters()
        return True

    def _spool_blocked(self, exc: BackendUnavailable) -> None:
        now = asyncio.get_running_loop().time()
        if self._spool_error is None:
            log.error("the SQLite spool cannot take lines (%s); they stay in memory (up to "
                      "influxdb.max_pending) and the spool is tried again", exc)
        self._spool_error = str(exc)
        self._spool_streak = min(self._spool_streak + 1, 8)
        self._spool_retry_at = now + min(30.0, 0.25 * 2 ** self._spool_streak)

    async def _wait(self, event: asyncio.Event, deadline: float | None) -> None:
        if event is self._wake:
            self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await event.wait()

    async def _post(self, chunk: Sequence[_Entry]) -> bool:
        try:
            await self._write(chunk)
        except BackendUnavailable as exc:
            self._on_failure(exc)
            return False
        if self._failing_since is not None:
            log.info("InfluxDB writes recovered after %.1fs",
                     asyncio.get_running_loop().time() - self._failing_since)
        self._failing_since = None
        self._streak = 0
        return True

    def _on_failure(self, exc: BackendUnavailable) -> None:
        self._last_error = str(exc)
        now = asyncio.get_running_loop().time()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("InfluxDB write failed; lines are kept and retried: %s", exc)
        self.retries += 1
        self._streak = min(self._streak + 1, 10)
        delay = min(5.0, 0.05 * 2 ** self._streak) * random.uniform(0.5, 1.0)
        hint = getattr(exc, "retry_after", None)
        self._retry_at = now + max(delay, hint or 0.0)
        if now - self._failing_since >= self.give_up_after and self._waiters:
            error = BackendUnavailable(
                "influxdb", f"writes not confirmed for {now - self._failing_since:.1f}s "
                f"({exc}); they are kept and retried")
            for waiter in self._waiters:
                fail(waiter.future, error)
            self._waiters.clear()

    def _wake_waiters(self) -> None:
        still = []
        for waiter in self._waiters:
            done = self._spool_posted >= waiter.spool and self._mem_done >= waiter.mem
            if done or waiter.future.done():
                resolve(waiter.future, None)
            else:
                still.append(waiter)
        self._waiters = still

    async def _write(self, chunk: Sequence[_Entry]) -> None:
        """POST one chunk (one POST per retention policy when measurements have their
        own); on a data rejection, bisect to land the good lines."""
        if self.rp_for is None:
            await self._write_to(chunk, None)
            return
        groups: dict[str | None, list[_Entry]] = {}
        for entry in chunk:  # a series stays in one group, in order
            groups.setdefault(self.rp_for(entry[0].split(",", 1)[0]), []).append(entry)
        for rp, entries in groups.items():
            await self._write_to(entries, rp)

    async def _write_to(self, chunk: Sequence[_Entry], rp: str | None) -> None:
        try:
            await self.backend.write("\n".join(line for line, _ in chunk).encode(), rp)
        except WriteRejected as exc:
            if len(chunk) == 1:
                await self._quarantine(chunk[0], exc)
                return
            mid = len(chunk) // 2
            await self._write_to(chunk[:mid], rp)
            await self._write_to(chunk[mid:], rp)
            return
        self.posts += 1
        self.points_written += len(chunk)
        ids = [row_id for _, row_id in chunk if row_id is not None]
        if ids:
            await self.state.tell(("outbox_done", ids))

    async def _quarantine(self, entry: _Entry, exc: WriteRejected) -> None:
        line, row_id = entry
        log.error("InfluxDB rejected a point; quarantined in SQLite: %s", exc.reason)
        await self.state.call(("quarantine", [(line, exc.reason)]))
        if row_id is not None:
            await self.state.tell(("outbox_done", [row_id]))
        self.quarantined += 1

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "pending": len(self._memory),
            "spooling": self._spooling,
            "points_written": self.points_written,
            "posts": self.posts,
            "retries": self.retries,
            "quarantined": self.quarantined,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "spool_error": self._spool_error,
        }
