"""CacheActor: every Redis command of the hub, auto-pipelined.

Whatever is waiting in the mailbox when the actor wakes goes out as ONE pipeline
(one round trip), so many concurrent strategies share round trips. Each request
is an :class:`RedisOp`: its commands plus how to turn their replies into a value.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from actors._redis import Command, CommandFailed, RedisBackend
from actors._runtime import Actor, Call, close_quietly, fail, resolve
from hub._records import Candle
from hub.errors import BackendUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RedisOp:
    commands: tuple[Command, ...]
    decode: Callable[[list[Any]], Any] | None = None


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

def op_get(key: str) -> RedisOp:
    return RedisOp((("GET", key),), _first)


def op_set(key: str, value: bytes, ttl: int) -> RedisOp:
    return RedisOp((("SET", key, value, "EX", ttl),))


def op_unlink(keys: Sequence[str]) -> RedisOp:
    return RedisOp((("UNLINK", *keys),), _first)


def op_push_candles(key: str, candles: Sequence[Candle], window: int, ttl: int) -> RedisOp:
    args: list[Any] = []
    for c in sorted(candles, key=lambda c: c.timestamp):
        args += [c.timestamp, encode_candle(c)]
    return RedisOp((("EVAL", PUSH_CANDLES, 1, key, window, ttl, *args),), _first)


def op_newest_candles(key: str, count: int) -> RedisOp:
    def decode(results: list[Any]) -> list[Candle]:
        return [decode_candle(m) for m in results[0]]
    return RedisOp((("ZRANGE", key, -count, -1),), decode)


@dataclass(frozen=True, slots=True)
class WindowAnswer:
    candles: list[Candle]  # newest first
    oldest: int | None  # oldest time held in the window, None when empty


def op_window_range(key: str, start: int | None, end: int | None, limit: int) -> RedisOp:
    """The newest ``limit`` candles in [start, end], plus the window's oldest time."""
    hi = "+inf" if end is None else end
    lo = "-inf" if start is None else start

    def decode(results: list[Any]) -> WindowAnswer:
        oldest = decode_candle(results[1][0]).timestamp if results[1] else None
        return WindowAnswer([decode_candle(m) for m in results[0]], oldest)

    return RedisOp(
        (
            ("ZRANGE", key, hi, lo, "BYSCORE", "REV", "LIMIT", 0, limit),
            ("ZRANGE", key, 0, 0),
        ),
        decode,
    )


def op_trim_window(keys: Sequence[str], start_ts: float, stop_ts: float) -> RedisOp:
    return RedisOp(tuple(("ZREMRANGEBYSCORE", k, start_ts, stop_ts) for k in keys))


class CacheActor(Actor):
    """Owns the Redis connection pool; one pipeline per drained mailbox batch."""

    name = "cache"
    batch_limit = 1024

    def __init__(self, backend: RedisBackend) -> None:
        super().__init__(mailbox_size=20_000)
        self.backend = backend
        self.round_trips = 0
        self.commands = 0
        self.skipped = 0  # fire-and-forget writes Redis could not take

    async def setup(self) -> None:
        await self.backend.connect()

    async def teardown(self) -> None:
        await close_quietly(self.backend, "redis")

    async def handle(self, batch: Sequence[Call]) -> None:
        commands: list[Command] = []
        for call in batch:
            commands.extend(call.payload.commands)
        try:
            results = await self.backend.pipeline(commands)
        except BackendUnavailable as exc:
            for call in batch:
                self._fail(call, exc)
            return
        self.round_trips += 1
        self.commands += len(commands)
        pos = 0
        for call in batch:
            op: RedisOp = call.payload
            mine = results[pos:pos + len(op.commands)]
            pos += len(op.commands)
            error = next((r for r in mine if isinstance(r, CommandFailed)), None)
            if error is not None:
                self._fail(call, error)
            elif op.decode is None:
                resolve(call.future, None)
            else:
                try:
                    resolve(call.future, op.decode(mine))
                except (ValueError, TypeError, IndexError) as exc:  # a foreign value in our key
                    fail(call.future, CommandFailed(f"unexpected value in Redis: {exc}"))

    def _fail(self, call: Call, exc: Exception) -> None:
        if call.future is None:
            self.skipped += 1
            log.debug("redis write skipped: %s", exc)
        else:
            fail(call.future, exc)

    async def scan(self, match: str) -> AsyncIterator[bytes]:
        """SCAN (never KEYS) on the actor's pool; iteration is cursor-based and non-blocking."""
        async for key in self.backend.scan(match):
            yield key

    async def info(self) -> dict[str, Any]:
        return await self.backend.info()

    def statistics(self) -> dict[str, Any]:
        return {**super().statistics(), "round_trips": self.round_trips,
                "commands": self.commands, "skipped": self.skipped}
