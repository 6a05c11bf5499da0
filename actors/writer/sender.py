"""The writer's POSTs: one per retention policy, data InfluxDB rejects (400, 413) bisected
until the bad points are isolated and quarantined with the server's reason, and the
retry clock (capped jittered backoff, at least the server's Retry-After).
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
        try:
            await self._write(chunk)
        except BackendUnavailable as exc:
            self._failed(exc, now())
            return False
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

    async def _write(self, chunk: Chunk) -> None:
        if self.rp_for is None:
            await self._write_to(chunk, None)
            return
        groups: dict[str | None, list[int]] = {}
        for i, line in enumerate(chunk.lines):  # a series stays in one group, in order
            groups.setdefault(self.rp_for(line.split(",", 1)[0]), []).append(i)
        if len(groups) == 1:
            ((rp, _),) = groups.items()
            await self._write_to(chunk, rp)
            return
        for rp, positions in groups.items():
            await self._write_to(chunk.pick(positions), rp)

    async def _write_to(self, chunk: Chunk, rp: str | None) -> None:
        try:
            await self.backend.write("\n".join(chunk.lines).encode(), rp)
        except WriteRejected as exc:
            if len(chunk) == 1:
                log.error("InfluxDB rejected a point; quarantined in SQLite: %s", exc.reason)
                await self._quarantine(chunk.entry(0), exc.reason)
                self.quarantined += 1
                return
            mid = len(chunk) // 2
            await self._write_to(chunk[:mid], rp)
            await self._write_to(chunk[mid:], rp)
            return
        self.posts += 1
        self.points_written += len(chunk)
        # rows whose last line is written (their other lines went out before: in this
        # chunk, or in an earlier one)
        ids = chunk.written_rows()
        if ids:
            await self._written(ids)
