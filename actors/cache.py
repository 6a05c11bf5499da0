"""CacheActor: every Redis command of the hub, auto-pipelined.

Whatever is waiting in the mailbox when the actor wakes goes out as ONE pipeline
(one round trip), so many concurrent strategies share round trips. Each request
is an :class:`RedisOp`: its commands plus how to turn their replies into a value.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from actors.backends.redis import (
    Command,
    CommandFailed,
    RedisBackend,
    RedisUnreachable,
    ScriptMissing,
    SlotsUnavailable,
)
from actors.near import NearCache
from actors.runtime import Actor, Call, cancel_and_wait, close_quietly, fail, resolve
from hubdomain.errors import BackendUnavailable
from hubdomain.keys import PREFIXES, glob_literal
from hubdomain.records import Candle

log = logging.getLogger(__name__)


# keys whose values the near cache holds (and Redis tracks for this hub)
NEAR_PREFIXES = ("indicator:", "candles:")


@dataclass(slots=True)  # not frozen: built per write on the hot path (5x cheaper)
class RedisOp:
    commands: tuple[Command, ...]
    decode: Callable[[list[Any]], Any] | None = None
    # keys this op writes: if it cannot run, they may be stale in Redis afterwards
    writes: tuple[str, ...] = ()
    # sent instead when Redis answers NOSCRIPT (EVAL for an EVALSHA)
    fallback: tuple[Command, ...] | None = None
    # fire-and-forget ops with the same merge key in one drained batch become one
    merge: tuple[str, int, int] | None = None
    items: tuple[Any, ...] = ()
    # the hub began a write of ``writes`` in the near cache: end it once this op ran
    near: bool = False
    # the key this op reads, and its answer while that key may be stale in Redis (a
    # write to it was refused): a miss, so the caller falls back instead
    reads: str | None = None
    miss: Any = None
    # run sets the whole value of ``writes``: once it succeeds they are current again
    replaces: bool = False
    # the cleaner's op: UNLINK the keys stale at the moment it runs (filled in handle)
    clean: bool = False


# The hot window is a sorted set scored by candle time. Its span [oldest, newest]
# is kept complete: a candle older than the oldest one held is not added (it would
# open a gap), a candle at an existing time replaces it (idempotent), then the set
# is trimmed to the window size and its TTL refreshed. Atomic, one round trip.
PUSH_CANDLES = """
local key = KEYS[1]
local window = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local lo = nil
if first[2] then lo = tonumber(first[2]) end
local added = 0
for i = 3, #ARGV, 2 do
  local ts = tonumber(ARGV[i])
  if lo == nil or ts >= lo then
    redis.call('ZREMRANGEBYSCORE', key, ARGV[i], ARGV[i])
    redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
    if lo == nil then lo = ts end
    added = added + 1
  end
end
if added > 0 then
  redis.call('ZREMRANGEBYRANK', key, 0, -window - 1)
  redis.call('EXPIRE', key, ttl)
end
return added
"""


def encode_candle(c: Candle) -> bytes:
    return orjson.dumps([c.timestamp, c.open, c.high, c.low, c.close, c.volume])


def decode_candle(raw: bytes) -> Candle:
    ts, o, h, low, c, vol = orjson.loads(raw)
    return Candle(int(ts), float(o), float(h), float(low), float(c), float(vol))


def _first(results: list[Any]) -> Any:
    return results[0]


# ---- op builders: pure, so they are unit-tested without Redis ----

def op_barrier() -> RedisOp:
    """A PING through the mailbox: returns once every op queued before it has run
    (for work done outside the mailbox, like SCAN)."""
    return RedisOp((("PING",),))


def op_get(key: str) -> RedisOp:
    return RedisOp((("GET", key),), _first, reads=key)


def op_get_pttl(key: str) -> RedisOp:
    """GET with the milliseconds the key has left (for the near cache's expiry)."""
    return RedisOp((("GET", key), ("PTTL", key)), lambda r: (r[0], r[1]), reads=key,
                   miss=(None, -2))


def op_set(key: str, value: bytes, ttl: int, near: bool = False) -> RedisOp:
    return RedisOp((("SET", key, value, "EX", ttl),), writes=(key,), near=near,
                   replaces=True)


def op_fill(key: str, value: bytes, ttl: int) -> RedisOp:
    """A read-through fill: set only if absent, so a value read before a concurrent
    write never overwrites what that write set."""
    return RedisOp((("SET", key, value, "EX", ttl, "NX"),), writes=(key,))


def op_clean() -> RedisOp:
    """Delete the keys stale in Redis (writes it refused), in order with the writes:
    a write queued after it that succeeds is never deleted by it."""
    return RedisOp((("PING",),), _first, clean=True)


def op_unlink(keys: Sequence[str]) -> RedisOp:
    return RedisOp((("UNLINK", *keys),), _first)


PUSH_CANDLES_SHA = hashlib.sha1(PUSH_CANDLES.encode()).hexdigest()


def op_push_candles(key: str, candles: Sequence[Candle], window: int, ttl: int,
                    near: bool = False) -> RedisOp:
    ordered = candles if len(candles) == 1 else sorted(candles, key=lambda c: c.timestamp)
    args: list[Any] = []
    for c in ordered:
        args += [c.timestamp, encode_candle(c)]
    return _push(key, window, ttl, tuple(args), near)


def _push(key: str, window: int, ttl: int, items: tuple[Any, ...],
          near: bool = False) -> RedisOp:
    return RedisOp((("EVALSHA", PUSH_CANDLES_SHA, 1, key, window, ttl, *items),), _first,
                   (key,), fallback=(("EVAL", PUSH_CANDLES, 1, key, window, ttl, *items),),
                   merge=(key, window, ttl), items=items, near=near)


def coalesce(batch: Sequence[Call]) -> list[Call]:
    """Merge fire-and-forget window pushes to the same key into one script call.
    Candles keep their order (a later write of the same time still wins)."""
    groups: dict[tuple[str, int, int], list[RedisOp]] = {}
    out: list[Call] = []
    for call in batch:
        op: RedisOp = call.payload
        if op.merge is None or call.future is not None:
            out.append(call)
            continue
        group = groups.get(op.merge)
        if group is None:
            groups[op.merge] = [op]
            out.append(call)
        else:
            group.append(op)
    for i, call in enumerate(out):
        op = call.payload
        group = groups.get(op.merge) if op.merge is not None and call.future is None else None
        if group is not None and len(group) > 1:
            pairs = [(g.items[j], g.items[j + 1]) for g in group
                     for j in range(0, len(g.items), 2)]
            pairs.sort(key=lambda p: p[0])  # stable: same-time candles keep their order
            assert op.merge is not None
            key, window, ttl = op.merge
            out[i] = Call(_push(key, window, ttl, tuple(x for p in pairs for x in p)), None)
    return out


def op_newest_candles(key: str, count: int) -> RedisOp:
    def decode(results: list[Any]) -> list[Candle]:
        return [decode_candle(m) for m in results[0]]
    return RedisOp((("ZRANGE", key, -count, -1),), decode, reads=key, miss=[])


@dataclass(frozen=True, slots=True)
class WindowAnswer:
    members: list[bytes]  # newest first, still encoded: decoded only if the window answers
    oldest: int | None  # oldest time held in the window, None when empty

    def candles(self) -> list[Candle]:
        """Ascending by time."""
        return [decode_candle(m) for m in reversed(self.members)]


def op_window_all(key: str) -> RedisOp:
    """The whole hot window, ascending and decoded, with the milliseconds it has left."""
    def decode(results: list[Any]) -> tuple[tuple[Candle, ...], int]:
        return tuple(decode_candle(m) for m in results[0]), results[1]
    return RedisOp((("ZRANGE", key, 0, -1), ("PTTL", key)), decode, reads=key,
                   miss=((), -2))


def op_window_range(key: str, start: int | None, end: int | None, limit: int) -> RedisOp:
    """The newest ``limit`` candles in [start, end], plus the window's oldest time."""
    hi = "+inf" if end is None else end
    lo = "-inf" if start is None else start

    def decode(results: list[Any]) -> WindowAnswer:
        oldest = decode_candle(results[1][0]).timestamp if results[1] else None
        return WindowAnswer(results[0], oldest)

    return RedisOp(
        (
            ("ZRANGE", key, hi, lo, "BYSCORE", "REV", "LIMIT", 0, limit),
            ("ZRANGE", key, 0, 0),
        ),
        decode,
        reads=key,
        miss=WindowAnswer([], None),
    )


def op_trim_window(keys: Sequence[str], start_ts: float, stop_ts: float) -> RedisOp:
    return RedisOp(tuple(("ZREMRANGEBYSCORE", k, start_ts, stop_ts) for k in keys),
                   writes=tuple(keys))


class CacheActor(Actor):
    """Owns the Redis connection pool; one pipeline per drained mailbox batch.

    When Redis stops answering, the actor fails calls at once instead of letting
    each wait for a timeout (callers fall back to InfluxDB / SQLite), reconnects
    in the background with capped backoff, and before it serves again deletes
    every key whose write it had to skip, so nothing stale is read afterwards.
    """

    name = "cache"
    batch_limit = 1024
    max_dirty = 100_000

    def __init__(self, backend: RedisBackend, near: NearCache | None = None) -> None:
        super().__init__(mailbox_size=20_000)
        self.backend = backend
        # indicator values, read without a mailbox; only if the backend can track keys
        self.near = near if hasattr(backend, "invalidations") else None
        self._listener: asyncio.Task[None] | None = None
        self.round_trips = 0
        self.commands = 0
        self.skipped = 0  # writes Redis could not take
        self.reconnects = 0
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        self._dirty_overflow = False
        self._cleaner: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self._down_since is None

    def fail_inflight(self, exc: BaseException) -> None:
        """A crash while ops ran: Redis may hold half of them. Their keys count as
        skipped writes, deleted before the cache serves again."""
        for call in self._inflight:
            op: RedisOp = call.payload
            if op.writes:
                self._dirty.update(op.writes)
        super().fail_inflight(exc)

    async def setup(self) -> None:
        try:
            await self.backend.connect()
            if self._dirty or self._dirty_overflow:  # restarted after a crash
                await self._forget_skipped()
        except RedisUnreachable as exc:
            log.warning("Redis not reachable (%s); serving from InfluxDB/SQLite until it is",
                        exc)
            self._mark_down()
        cluster: Any = self.backend  # a Redis Cluster backend tells about topology
        if self.near is not None and hasattr(cluster, "on_masters_changed"):
            cluster.on_masters_changed = self._masters_changed
            cluster.on_untracked_keys = self.near.invalidate
        if self.near is not None and self._listener is None:
            self._listener = asyncio.create_task(self._listen(self.near),
                                                 name="redis-invalidations")

    def _masters_changed(self) -> None:
        """A Redis Cluster master this hub does not track yet may answer reads: hold
        nothing (and refuse reads in flight) until the listener tracks every master."""
        if self.near is not None:
            self.near.enabled = False
            self.near.clear()

    async def _listen(self, near: NearCache) -> None:
        """Apply Redis' invalidations to the near cache; reconnect when the link drops.
        While it is down the near cache is empty and disabled: nothing is missed."""
        delay = 0.05
        track: Any = self.backend.invalidations  # type: ignore[attr-defined]
        while True:
            try:
                async for keys in track(NEAR_PREFIXES):
                    if keys is None:
                        near.clear()
                    elif keys:
                        near.invalidate(keys)
                    else:  # tracking is on from here
                        near.clear()
                        near.enabled = True
                        delay = 0.05
            except BackendUnavailable as exc:
                log.debug("invalidation link down: %s", exc)
            except Exception as exc:  # never let the listener die
                log.warning("invalidation link failed: %r", exc)
            near.enabled = False
            near.clear()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 2.0)

    async def teardown(self) -> None:
        if self._listener is not None:
            await cancel_and_wait(self._listener)
            self._listener = None
        if self._cleaner is not None:
            await cancel_and_wait(self._cleaner)
            self._cleaner = None
        if self._probe is not None:
            await cancel_and_wait(self._probe)
            self._probe = None
        await close_quietly(self.backend, "redis")

    async def handle(self, batch: Sequence[Call]) -> None:
        try:
            if self._down_since is not None:
                error = BackendUnavailable("redis", "unreachable; reconnecting in the background")
                for call in batch:
                    self._fail(call, error)
                return
            for call in batch:
                if call.payload.clean:  # the keys stale now, deleted before what follows
                    stale = tuple(itertools.islice(self._dirty, 1000))
                    call.payload.items = stale
                    call.payload.commands = (("UNLINK", *stale),) if stale else (("PING",),)
            await self._execute(coalesce(batch), fallback=False)
        finally:
            if self.near is not None:  # run or given up: the near cache may hold them again
                ended = [key for call in batch if call.payload.near
                         for key in call.payload.writes]
                if ended:
                    self.near.end_write(ended)

    async def _execute(self, batch: Sequence[Call], fallback: bool) -> None:
        commands: list[Command] = []
        for call in batch:
            op: RedisOp = call.payload
            commands.extend(op.fallback if fallback and op.fallback else op.commands)
        try:
            results = await self.backend.pipeline(commands)
        except BackendUnavailable as exc:
            for call in batch:
                self._fail(call, exc)
            self._mark_down()
            return
        self.round_trips += 1
        self.commands += len(commands)
        pos = 0
        retry: list[Call] = []
        for call in batch:
            op = call.payload
            mine = results[pos:pos + len(op.commands)]
            pos += len(op.commands)
            # a command's error, or (Redis Cluster) its master being down
            failed = next((r for r in mine if isinstance(r, (CommandFailed, BackendUnavailable))),
                          None)
            if isinstance(failed, ScriptMissing) and not fallback and op.fallback:
                retry.append(call)  # a restarted or flushed Redis lost the script: send it
            elif failed is not None:
                self._fail(call, failed)
                continue
            if op.reads is not None and op.reads in self._dirty:
                # a write to it was refused (and not since replaced, nor the key deleted,
                # by an op before this one): Redis holds a stale value; answer a miss
                resolve(call.future, op.miss)
                continue
            if self._dirty:
                if op.clean:
                    self._dirty.difference_update(op.items)
                    if self.near is not None:
                        self.near.invalidate(op.items)
                elif op.replaces:
                    self._dirty.difference_update(op.writes)
            if op.decode is None:
                resolve(call.future, None)
            else:
                try:
                    resolve(call.future, op.decode(mine))
                except (ValueError, TypeError, IndexError) as exc:  # a foreign value in our key
                    fail(call.future, CommandFailed(f"unexpected value in Redis: {exc}"))
        if retry:
            await self._execute(retry, fallback=True)

    def _fail(self, call: Call, exc: Exception) -> None:
        op: RedisOp = call.payload
        # (a cluster backend forgets a down master's keys itself before serving them again)
        if op.writes and not isinstance(exc, SlotsUnavailable):
            if len(self._dirty) + len(op.writes) > self.max_dirty:
                self._dirty_overflow = True
            else:
                self._dirty.update(op.writes)
            if isinstance(exc, CommandFailed) and self._cleaner is None:
                # Redis answers but refused the write (OOM, READONLY): the old value would
                # be read; delete it as soon as Redis lets us
                self._cleaner = asyncio.create_task(self._clean(), name="redis-stale-keys")
        if call.future is None:
            self.skipped += 1
            log.debug("redis write skipped: %s", exc)
        else:
            fail(call.future, exc)

    def _mark_down(self) -> None:
        if self._down_since is not None:
            return
        self._down_since = asyncio.get_running_loop().time()
        if self.near is not None:
            self.near.clear()
        log.warning("Redis unavailable; reads fall back, cache writes are skipped")
        self._probe = asyncio.create_task(self._reconnect(), name="redis-reconnect")

    async def _reconnect(self) -> None:
        delay = 0.05
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 2.0)
            try:
                await self.backend.connect()
                await self._forget_skipped()
            except BackendUnavailable as exc:
                log.debug("redis still unavailable: %s", exc)
                continue
            assert self._down_since is not None
            log.info("Redis is back after %.1fs",
                     asyncio.get_running_loop().time() - self._down_since)
            self._down_since = None
            self.reconnects += 1
            self._probe = None
            return

    async def _clean(self) -> None:
        """Delete the keys whose writes Redis refused while it kept answering (UNLINK is
        allowed under OOM; a READONLY replica refuses it until it is a master again).
        The UNLINK goes through the mailbox, in order with the writes."""
        delay = 0.05
        try:
            while (self._dirty and not self._dirty_overflow and self._down_since is None
                   and self.down is None):
                try:
                    await self.call(op_clean(), past_bound=True)
                except (CommandFailed, BackendUnavailable) as exc:
                    if self._down_since is not None or self.down is not None:
                        return  # the reconnect, or the restart, deletes them
                    log.debug("stale keys not deleted yet: %s", exc)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 2.0)
        finally:
            self._cleaner = None

    async def _forget_skipped(self) -> None:
        """Delete what may be stale: keys whose writes were skipped while Redis was away
        (every hub key when a failover may have happened)."""
        if self._dirty_overflow or getattr(self.backend, "forget_all_on_reconnect", False):
            for prefix in PREFIXES:
                batch: list[str] = []
                async for raw in self.backend.scan(glob_literal(prefix) + "*"):
                    batch.append(raw.decode())
                    if len(batch) >= 1000:
                        await self.backend.pipeline([("UNLINK", *batch)])
                        batch = []
                if batch:
                    await self.backend.pipeline([("UNLINK", *batch)])
        else:
            keys = list(self._dirty)
            for i in range(0, len(keys), 1000):
                await self.backend.pipeline([("UNLINK", *keys[i:i + 1000])])
        self._dirty.clear()
        self._dirty_overflow = False

    async def scan(self, match: str) -> AsyncIterator[bytes]:
        """SCAN (never KEYS) on the actor's pool; iteration is cursor-based and non-blocking."""
        if self._down_since is not None:
            raise BackendUnavailable("redis", "unreachable; reconnecting in the background")
        async for key in self.backend.scan(match):
            yield key

    async def info(self) -> dict[str, Any]:
        if self._down_since is not None:
            raise BackendUnavailable("redis", "unreachable; reconnecting in the background")
        return await self.backend.info()

    def statistics(self) -> dict[str, Any]:
        return {**super().statistics(), "round_trips": self.round_trips,
                "commands": self.commands, "skipped": self.skipped,
                "available": self.available, "reconnects": self.reconnects,
                "stale_keys_pending": len(self._dirty),
                # Redis Cluster: slots of a master that is down (served again once replaced)
                "unavailable_slots": getattr(self.backend, "unavailable_slots", 0),
                "near_cache": self.near.statistics() if self.near is not None else None}
