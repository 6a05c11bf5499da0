"""The writer's overflow: the SQLite outbox. Lines go there when InfluxDB stays away
(or memory is at its bound while it fails, or at a close during an outage), and are
replayed from there in id order, so each series keeps its order. A spool that cannot
take lines (a full disk, a read-only file) is not an error of the writer: it says so
and is tried again with backoff, the lines staying in memory meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from actors.backoff import Backoff
from actors.state import StateActor
from hubdomain.errors import BackendUnavailable

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, state: StateActor) -> None:
        self.state = state
        self.active = False  # later lines follow the outbox until it is replayed
        self.max_id = 0  # the highest outbox id the writer knows of
        self.posted = 0  # every outbox row up to this id is written
        self.inserts = 0  # inserts in flight
        self.error: str | None = None  # why the spool cannot take lines now
        self.retry_at = 0.0
        self._backoff = Backoff(first=0.5, cap=30.0)
        self.spooled = 0
        self.replayed = 0

    async def resume(self) -> int:
        """At (re)start: rows this process left in the outbox are replayed first.
        Returns how many wait."""
        count, max_id = await self.state.outbox_bounds()
        if count:
            self.active = True
            self.max_id = max(self.max_id, max_id)
        return count

    def knows(self, ids: Sequence[int]) -> None:
        """Durable lines (in the outbox already) the replay will find there."""
        self.max_id = max(self.max_id, max(ids))

    def may_try(self, now: float) -> bool:
        """False while a blocked spool waits for its next try."""
        return now >= self.retry_at

    async def insert(self, lines: list[str]) -> None:
        """Commit ``lines`` to the outbox. Raises BackendUnavailable (the spool is
        blocked then; see :meth:`blocked`)."""
        self.inserts += 1
        try:
            ids = await self.state.outbox_add(lines, "spool")
        finally:
            self.inserts -= 1
        if ids:
            self.max_id = max(self.max_id, ids[-1])
        before = self.spooled
        self.spooled += len(lines)
        if before // 100_000 != self.spooled // 100_000:
            log.warning("the SQLite spool has taken %d lines while InfluxDB is unavailable",
                        self.spooled)

    def blocked(self, exc: BackendUnavailable, now: float) -> None:
        if self.error is None:
            log.error("the SQLite spool cannot take lines (%s); they stay in memory (up to "
                      "influxdb.max_pending) and the spool is tried again", exc)
        self.error = str(exc)
        self.retry_at = now + self._backoff.next()

    def took(self) -> None:
        """An insert worked."""
        if self.error is not None:
            log.info("the SQLite spool takes lines again")
        self.error = None
        self._backoff.reset()

    async def page(self, limit: int) -> list[tuple[int, list[str]]]:
        """The next rows to replay (as many as hold ``limit`` lines), in id order."""
        return await self.state.outbox_load(self.posted, limit)

    def replayed_up_to(self, rows: list[tuple[int, list[str]]]) -> None:
        self.posted = rows[-1][0]
        self.replayed += sum(len(lines) for _, lines in rows)

    def drained(self) -> None:
        """Every row up to the highest id known is written (durable rows are committed
        before the writer hears of them): memory, newer than all of them, goes next."""
        self.posted = max(self.posted, self.max_id)
        self.active = False
        log.info("spool replayed; InfluxDB writes back to normal")
