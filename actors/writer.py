"""WriterActor: turns many tiny awaits into few large line-protocol POSTs.

Lines are batched by size (``influxdb.batch.size``) and linger
(``influxdb.batch.flush_interval``). A flush request resolves once every line
accepted before it has been written (or quarantined). Transient failures are
retried with capped, jittered backoff, lines staying in order; data InfluxDB
rejects is bisected so the good points land and only the bad ones are
quarantined in SQLite with the server's reason. Lines that carry an outbox id
(trades, or lines spooled at shutdown) are durable already and are deleted from
the outbox once written; the outbox is replayed first at start.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actors._influx import InfluxBackend, WriteRejected
from actors._runtime import Actor, Call, close_quietly, fail, resolve
from actors.state import StateActor
from hub.errors import BackendUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lines:
    """Lines to write; ``ids`` are their outbox rows when they are durable already."""

    lines: Sequence[str]
    ids: Sequence[int] | None = None


FLUSH = "flush"
_Entry = tuple[str, int | None]


class WriterActor(Actor):
    name = "writer"
    batch_limit = 4096

    def __init__(self, backend: InfluxBackend, state: StateActor, *, batch_size: int,
                 linger: float, give_up_after: float) -> None:
        super().__init__(mailbox_size=50_000)
        self.backend = backend
        self.state = state
        self.batch_size = batch_size
        self.linger = linger
        self.give_up_after = give_up_after
        self._buffer: deque[_Entry] = deque()
        self._accepted = 0  # lines taken into the buffer, ever
        self._completed = 0  # lines written or quarantined, ever
        self._waiters: list[tuple[int, asyncio.Future[Any]]] = []
        self._oldest_at: float | None = None
        self._retry_at: float | None = None
        self._failing_since: float | None = None
        self._closing = False
        self.points_written = 0
        self.posts = 0
        self.retries = 0
        self.quarantined = 0
        self.spooled = 0

    async def setup(self) -> None:
        await self.backend.connect()
        await self._load_outbox()

    async def teardown(self) -> None:
        await close_quietly(self.backend, "influxdb")

    async def _load_outbox(self) -> None:
        after = 0
        while rows := await self.state.call(("outbox_load", after, 10_000)):
            for row_id, line in rows:
                self._take(line, row_id)
            after = rows[-1][0]
        if self._buffer:
            log.info("replaying %d durable lines from the outbox", len(self._buffer))

    def _take(self, line: str, row_id: int | None) -> None:
        if not self._buffer:
            self._oldest_at = asyncio.get_running_loop().time()
        self._buffer.append((line, row_id))
        self._accepted += 1

    # ---- main loop ----
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._deadline(loop.time())
            batch: list[Call] | None
            try:
                async with asyncio.timeout_at(deadline):
                    batch = await self.mailbox.receive_batch(self.batch_limit)
            except TimeoutError:
                batch = None
            if batch == []:
                await self._final_flush()
                return
            if batch:
                self._inflight = batch
                self._absorb(batch)
                self._inflight = ()
            await self._post_due(loop.time())

    async def handle(self, batch: Sequence[Call]) -> None:  # pragma: no cover - run() is used
        self._absorb(batch)

    def _absorb(self, batch: Sequence[Call]) -> None:
        for call in batch:
            payload = call.payload
            if payload == FLUSH:
                if self._completed >= self._accepted:
                    resolve(call.future, None)
                elif call.future is not None:
                    self._waiters.append((self._accepted, call.future))
            else:
                ids = payload.ids
                for i, line in enumerate(payload.lines):
                    self._take(line, None if ids is None else ids[i])
                resolve(call.future, None)

    def _deadline(self, now: float) -> float | None:
        if not self._buffer:
            return None
        if self._retry_at is not None:
            return self._retry_at
        if self._waiters or len(self._buffer) >= self.batch_size:
            return now
        assert self._oldest_at is not None
        return self._oldest_at + self.linger

    async def _post_due(self, now: float) -> None:
        if not self._buffer or (self._retry_at is not None and now < self._retry_at):
            return
        linger_due = self._closing or (
            self._oldest_at is not None and now >= self._oldest_at + self.linger)
        while self._buffer and (
            len(self._buffer) >= self.batch_size or self._waiters or linger_due
        ):
            chunk = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            try:
                await self._write(chunk)
            except BackendUnavailable as exc:
                self._on_failure(exc)
                return
            for _ in chunk:
                self._buffer.popleft()
            self._completed += len(chunk)
            self._failing_since = self._retry_at = None
            self._wake_waiters()
        self._oldest_at = asyncio.get_running_loop().time() if self._buffer else None

    def _on_failure(self, exc: BackendUnavailable) -> None:
        now = asyncio.get_running_loop().time()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("influxdb write failed, %d lines kept for retry: %s",
                        len(self._buffer), exc)
        self.retries += 1
        streak = min(self.retries, 8)
        self._retry_at = now + min(5.0, 0.05 * 2 ** streak) * random.uniform(0.5, 1.0)
        if now - self._failing_since >= self.give_up_after:
            for _, future in self._waiters:
                fail(future, BackendUnavailable(
                    "influxdb", f"writes not confirmed for {now - self._failing_since:.1f}s "
                    f"({exc}); they are kept and retried"))
            self._waiters.clear()

    def _wake_waiters(self) -> None:
        still = []
        for target, future in self._waiters:
            if self._completed >= target:
                resolve(future, None)
            else:
                still.append((target, future))
        self._waiters = still

    async def _write(self, chunk: Sequence[_Entry]) -> None:
        """POST one chunk; on a data rejection, bisect to land the good lines."""
        try:
            await self.backend.write("\n".join(line for line, _ in chunk).encode())
        except WriteRejected as exc:
            if len(chunk) == 1:
                await self._quarantine(chunk[0], exc)
                return
            mid = len(chunk) // 2
            await self._write(chunk[:mid])
            await self._write(chunk[mid:])
            return
        self.posts += 1
        self.points_written += len(chunk)
        ids = [row_id for _, row_id in chunk if row_id is not None]
        if ids:
            await self.state.tell(("outbox_done", ids))

    async def _quarantine(self, entry: _Entry, exc: WriteRejected) -> None:
        line, row_id = entry
        log.error("influxdb rejected a point, quarantined: %s", exc.reason)
        await self.state.call(("quarantine", [(line, exc.reason)]))
        if row_id is not None:
            await self.state.tell(("outbox_done", [row_id]))
        self.quarantined += 1

    async def _final_flush(self) -> None:
        """On close: write what is buffered; if InfluxDB cannot take it, spool it to disk."""
        self._closing = True
        self._retry_at = None
        await self._post_due(asyncio.get_running_loop().time())
        if self._buffer:
            fresh = [line for line, row_id in self._buffer if row_id is None]
            if fresh:
                await self.state.call(("outbox_add", fresh, "spool"))
                self.spooled += len(fresh)
                log.warning("influxdb unavailable at close: %d lines spooled to SQLite", len(fresh))
            self._buffer.clear()
        error = BackendUnavailable("influxdb", "unavailable at close; writes spooled to SQLite")
        for _, future in self._waiters:
            fail(future, error)
        self._waiters.clear()

    def statistics(self) -> dict[str, Any]:
        return {
            **super().statistics(),
            "pending": len(self._buffer),
            "points_written": self.points_written,
            "posts": self.posts,
            "retries": self.retries,
            "quarantined": self.quarantined,
            "spooled": self.spooled,
        }
