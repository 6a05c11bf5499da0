"""The writer's POSTs: one per retention policy, data InfluxDB rejects (400, 413) bisected
until the bad points are isolated and quarantined with the server's reason (once the
whole chunk is through: a chunk sent again after a failure half-way does not quarantine
a point twice), and the retry clock (capped jittered backoff, at least the server's
Retry-After).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from actors.backends.influx import InfluxBackend, Unavailable, WriteRejected
from actors.backoff import Backoff
from actors.writer.accumulator import Chunk, Entry
from hubdomain.errors import BackendUnavailable

log = logging.getLogger(__name__)


class Sender:
    def __init__(self, backend: InfluxBackend, *,
                 rp_for: Callable[[str], str | None] | None,
                 written: Callable[[list[int]], Awaitable[None]],
                 quarantine: Callable[[Entry, str], Awaitable[None]]) -> None:
        self.backend = backend
        self.rp_for = rp_for  # measurement -> retention policy, when they have their own
        self._written = written  # outbox rows now in InfluxDB
        self._quarantine = quarantine
        self.failing_since: float | None = None
        self.retry_at = 0.0
        self.last_error = ""
        self._backoff = Backoff(first=0.1, cap=5.0)
        self.posts = 0
        self.points_written = 0
        self.retries = 0
        self.quarantined = 0

    async def post(self, chunk: Chunk, now: Callable[[], float]) -> bool:
        """Write ``chunk``; False when InfluxDB could not take it (try after
        ``retry_at``). Rejected points are quarantined, not retried."""
        rejected: list[tuple[Entry, str]] = []
        try:
            await self._write(chunk, rejected)
        except BackendUnavailable as exc:
            # (points rejected meanwhile are rejected again when the chunk is sent again:
            # quarantined then, once)
            self._failed(exc, now())
            return False
        for entry, reason in rejected:
            log.error("InfluxDB rejected a point; quarantined in SQLite: %s", reason)
            await self._quarantine(entry, reason)
            self.quarantined += 1
        if self.failing_since is not None:
            log.info("InfluxDB writes recovered after %.1fs", now() - self.failing_since)
        self.failing_since = None
        self._backoff.reset()
        return True

    def _failed(self, exc: BackendUnavailable, now: float) -> None:
        self.last_error = str(exc)
        if self.failing_since is None:
            self.failing_since = now
            log.warning("InfluxDB write failed; lines are kept and retried: %s", exc)
        self.retries += 1
        hint = exc.retry_after if isinstance(exc, Unavailable) else None
        self.retry_at = now + max(self._backoff.next(), hint or 0.0)

    async def _write(self, chunk: Chunk, rejected: list[tuple[Entry, str]]) -> None:
        """POST ``chunk``; the points InfluxDB rejects go into ``rejected``, with why."""
        if self.rp_for is None:
            await self._write_to(chunk, None, rejected)
            return
        groups: dict[str | None, list[int]] = {}
        for i, line in enumerate(chunk.lines):  # a series stays in one group, in order
            groups.setdefault(self.rp_for(line.split(",", 1)[0]), []).append(i)
        if len(groups) == 1:
            ((rp, _),) = groups.items()
            await self._write_to(chunk, rp, rejected)
            return
        for rp, positions in groups.items():
            await self._write_to(chunk.pick(positions), rp, rejected)

    async def _write_to(self, chunk: Chunk, rp: str | None,
                        rejected: list[tuple[Entry, str]]) -> None:
        try:
            await self.backend.write("\n".join(chunk.lines).encode(), rp)
        except WriteRejected as exc:
            if len(chunk) == 1:
                rejected.append((chunk.entry(0), exc.reason))
                return
            mid = len(chunk) // 2
            await self._write_to(chunk[:mid], rp, rejected)
            await self._write_to(chunk[mid:], rp, rejected)
            return
        self.posts += 1
        self.points_written += len(chunk)
        # rows whose last line is written (their other lines went out before: in this
        # chunk, or in an earlier one)
        ids = chunk.written_rows()
        if ids:
            await self._written(ids)
