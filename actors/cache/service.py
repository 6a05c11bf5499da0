"""CacheService: the one room for cache policy. The facade asks it for values, hot
windows and states, hands it writes, and has it forget keys; nothing else touches the
CacheActor or the near cache.

- Hot reads: the near cache answers synchronously (any thread) what it holds.
- Reads: near cache, else Redis through the CacheActor (within ``redis.timeout``),
  the answer held in the near cache under a ticket taken before the read was sent.
  A value the hub cannot read is a miss (the actor deletes it).
- Writes: a write of a key the near cache holds is *begun* when the hub accepts it
  (the near cache holds nothing for it until it has run), then queued.
- Read-through fills are ``SET ... NX``: a value read before a concurrent write never
  overwrites what that write set.
- SCAN (never KEYS) runs page by page through the actor's mailbox, behind the writes
  queued before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from actors.backends.redis import ScanCursor
from actors.cache.actor import CacheActor
from actors.cache.near import lifetime
from actors.cache.ops import (
    NEAR_PREFIXES,
    RedisOp,
    covers,
    op_barrier,
    op_fill,
    op_get_mapping,
    op_get_value,
    op_newest_candles,
    op_set,
    op_trim_window,
    op_unlink,
    op_window_all,
    op_window_oldest,
    op_window_range,
    pick,
)
from hubdomain.errors import BackendUnavailable, HubError
from hubdomain.keys import PREFIXES, glob_literal
from hubdomain.records import Candle

log = logging.getLogger(__name__)
R = TypeVar("R")

MISS: Any = object()  # a lookup Redis answered without a value
_PAGE = 500  # keys per UNLINK


class CacheService:
    def __init__(self, actor: CacheActor, timeout: float) -> None:
        self.actor = actor
        self.near = actor.near
        self.timeout = timeout
        self.reads_failed = 0  # reads Redis could not answer (the caller fell back)

    # ---- writes ---------------------------------------------------------------------

    def prepare(self, op: RedisOp[Any]) -> RedisOp[Any]:
        """Before a write is queued (synchronous, any thread): from now until it has
        run, the near cache holds nothing for the keys it writes, so this process never
        reads an older value than one it wrote."""
        near = self.near
        if near is None or not op.writes:
            return op
        if not op.near:
            if not op.writes[0].startswith(NEAR_PREFIXES):
                return op
            op = replace(op, near=True)
        own = None
        if op.own:
            _, _, raw, _, ttl = op.commands[0]
            own = (raw, ttl)
        op.ticket = near.begin_write(op.writes, own=own)
        return op

    def abandon(self, op: RedisOp[Any]) -> None:
        """A prepared write that was not queued after all."""
        if op.near and self.near is not None:
            if op.own:
                self.near.own_failed(op.writes[0])
            self.near.end_write(op.writes)

    def offer(self, op: RedisOp[Any]) -> bool:
        """Queue a prepared write if the mailbox has room now (never waits)."""
        return self.actor.offer(op)

    def push(self, op: RedisOp[Any]) -> None:
        """Queue a prepared write now, past the mailbox's bound when it is full (an
        acknowledged write delivered where nothing can wait)."""
        self.actor.tell_past_bound(op)

    @property
    def full(self) -> bool:
        """The mailbox has no room now (a write would wait)."""
        return self.actor.mailbox.full

    async def enqueue(self, op: RedisOp[Any]) -> None:
        """Queue a prepared write without waiting for Redis (reads queue behind it, so
        they see it). A write Redis cannot take is counted as skipped, never raised."""
        await self.actor.enqueue(op)

    async def put(self, key: str, data: bytes, ttl: int) -> None:
        """Cache ``data`` under ``key`` for ``ttl`` seconds (fire and forget)."""
        await self.enqueue(self.prepare(op_set(key, data, ttl)))

    async def fill(self, key: str, data: bytes, ttl: int, *, wait: bool = True) -> None:
        """A read-through fill: set unless a write got there first; done when it returns
        (``wait``), or only queued (the hub's own reads queue behind it either way).
        Best effort: the answer stands without it (Redis away, full, read-only, the hub
        closing)."""
        try:
            if wait:
                await self.perform(op_fill(key, data, ttl))
            else:
                await self.enqueue(op_fill(key, data, ttl))
        except HubError as exc:
            log.debug("read-through fill skipped: %s", exc)

    # ---- reads ----------------------------------------------------------------------

    def held(self, key: str) -> tuple[bool, Any]:
        """(True, value) when the near cache holds ``key`` (synchronous, any thread)."""
        if self.near is None:
            return False, None
        return self.near.get(key)

    def holds(self, key: str) -> bool:
        """Whether the near cache holds ``key`` (a probe: no hit or miss counted)."""
        return self.near is not None and self.near.holds(key)

    async def perform(self, op: RedisOp[R]) -> R:
        """Run one op within ``redis.timeout``. Raises BackendUnavailable (and
        CommandFailed when Redis refuses a command)."""
        try:
            answer: R = await self.actor.ask_within(op, self.timeout)
        except TimeoutError:
            raise BackendUnavailable("redis", f"no reply within {self.timeout}s") from None
        return answer

    async def _read(self, op: RedisOp[R]) -> R | None:
        """The answer, or None when Redis cannot answer now (for ops whose answer is
        never None)."""
        try:
            return await self.perform(op)
        except HubError as exc:  # unavailable, or a command Redis refused
            self._failed(exc)
            return None

    def _failed(self, exc: HubError) -> None:
        self.reads_failed += 1
        log.debug("redis read failed, falling back: %s", exc)

    async def value(self, key: str, looked: bool = False) -> tuple[bool, Any]:
        """``(answered, value)``: the JSON value under ``key``, or MISS when Redis
        answered without one; ``answered`` is False when Redis could not answer.
        ``looked``: the caller found the near cache without it just now."""
        if not looked:
            held, value = self.held(key)
            if held:
                return True, value
        ticket = 0
        if self.near is not None:
            self.near.missed()
            ticket = self.near.ticket()
        op = op_get_value(key)
        try:
            answered, found = await self.actor.read_now(op)
            if not answered:
                found = await self.perform(op)
        except HubError as exc:
            self._failed(exc)
            return False, MISS
        if found is None:
            return True, MISS
        if self.near is not None:
            self.near.put(key, found.raw, lifetime(found.pttl), ticket, found.value)
        return True, found.value

    async def mapping(self, key: str) -> tuple[bool, dict[str, Any] | None]:
        """``(answered, state)``: the JSON object under ``key`` (None when absent)."""
        try:
            return True, await self.perform(op_get_mapping(key))
        except HubError as exc:
            self._failed(exc)
            return False, None

    async def window(self, key: str) -> tuple[Candle, ...] | None:
        """The whole hot window, ascending: held in-process until a write to it, by
        anyone, invalidates it. None when Redis cannot answer."""
        held, window = self.held(key)
        if held:
            return tuple(window)
        ticket = 0
        if self.near is not None:
            self.near.missed()
            ticket = self.near.ticket()
        read = await self._read(op_window_all(key))
        if read is None:
            return None
        candles, pttl = read
        if self.near is not None and candles:
            self.near.put(key, b"", lifetime(pttl), ticket, value=candles)
        return candles

    async def window_range(self, key: str, lo: int | None, hi: int | None,
                           limit: int, *, hold: bool = True) -> list[Candle] | None:
        """The newest ``limit`` candles in [lo, hi] when the hot window covers the
        query, else None. ``hold=False``: read just those from Redis, without reading
        the whole window into the near cache (a few candles, wanted once)."""
        if self.near is not None and hold:
            window = await self.window(key)
            return pick(window, lo, hi, limit) if window else None
        answer = await self._read(op_window_range(key, lo, hi, limit))
        if answer is None or answer.oldest is None \
                or not covers(len(answer.candles), answer.oldest, lo, limit):
            return None
        return answer.candles

    async def window_oldest(self, key: str) -> int | None:
        """The time of the hot window's oldest candle; None when it holds none, or Redis
        cannot answer."""
        held, window = self.held(key)
        if held:
            return window[0].timestamp if window else None
        return await self._read(op_window_oldest(key))

    async def newest(self, key: str, count: int) -> list[Candle] | None:
        """The newest ``count`` candles of the hot window; None when Redis cannot
        answer."""
        if self.near is not None:
            window = await self.window(key)
            return None if window is None else list(window[-count:])
        return await self._read(op_newest_candles(key, count))

    # ---- keys -----------------------------------------------------------------------

    async def barrier(self) -> None:
        """Returns once every op queued before it has run."""
        await self.perform(op_barrier())

    async def keys(self, pattern: str) -> AsyncIterator[str]:
        """Keys matching a Redis glob (SCAN page by page, never KEYS)."""
        cursor: ScanCursor | None = None
        while True:
            async with asyncio.timeout(self.timeout):
                cursor, page = await self.actor.scan_page(pattern, cursor)
            for key in page:
                yield key
            if cursor is None:
                return

    async def unlink(self, keys: Sequence[str]) -> int:
        """Delete ``keys`` (and whatever the near cache holds of them); how many were."""
        if self.near is not None:
            self.near.invalidate(keys)
        removed = 0
        for i in range(0, len(keys), _PAGE):
            count: int = await self.perform(op_unlink(keys[i:i + _PAGE]))
            removed += count
        return removed

    async def clear(self, pattern: str) -> int:
        """Delete every key matching a Redis glob, after the writes queued before the
        call; returns how many were removed."""
        await self.barrier()
        if self.near is not None:
            self.near.clear()
        removed = 0
        batch: list[str] = []
        async for key in self.keys(pattern):
            batch.append(key)
            if len(batch) >= _PAGE:
                removed += await self.unlink(batch)
                batch = []
        return removed + (await self.unlink(batch) if batch else 0)

    async def clear_all(self) -> int:
        """Delete every hub key (SCAN + UNLINK, never KEYS)."""
        return sum([await self.clear(glob_literal(prefix) + "*") for prefix in PREFIXES])

    async def trim_windows(self, keys: Sequence[str], start: float, stop: float) -> None:
        """Drop the candles in [start, stop] from these hot windows."""
        if self.near is not None:  # not only when Redis' own message arrives
            self.near.invalidate(keys)
        for i in range(0, len(keys), _PAGE):
            await self.perform(op_trim_window(keys[i:i + _PAGE], start, stop))

    # ---- stats ----------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """Redis' INFO; raises BackendUnavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self.actor.info()
        except TimeoutError:
            raise BackendUnavailable("redis", f"no reply within {self.timeout}s") from None

    @property
    def skipped(self) -> int:
        return self.actor.skipped
