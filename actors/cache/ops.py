"""What the hub asks of Redis, as data: :class:`RedisOp` (commands, how their replies
become an answer, which keys they read and write), the builders of every op the hub
sends, the hot-window script, and the window rule it keeps. Pure, so unit-tested
without Redis.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import orjson

from actors.backends.redis import Command
from actors.runtime import Envelope, Request
from hubdomain import jsonbytes, keys
from hubdomain.records import Candle, Row, make_candle

R = TypeVar("R")

# keys whose values the near cache holds (and Redis tracks for this hub)
NEAR_PREFIXES = ("indicator:", "candles:")


# the hub's Lua scripts by SHA1: an EVALSHA Redis does not know is sent again as EVAL
SCRIPTS: dict[str, str] = {}


def script_sha(text: str) -> str:
    """The SHA1 Redis knows ``text`` by (EVALSHA), registered for the fallback."""
    sha = hashlib.sha1(text.encode()).hexdigest()
    SCRIPTS[sha] = text
    return sha


# one window's part of a PUBLISH_MANY call: (window key, window size, TTL, timeframe,
# (time, member) pairs flattened, ascending, candles withheld: older ones written with
# them that the window does not keep, see PUBLISH_MANY)
Group = tuple[str, int, int, str, tuple[Any, ...], int]


@dataclass(slots=True)  # not frozen: built per write on the hot path (5x cheaper)
class RedisOp(Request[R]):
    """Redis commands sent in one pipeline with others, and how their replies become
    the answer (``decode``; None: the answer is None)."""

    commands: tuple[Command, ...]
    decode: Callable[[list[Any]], R] | None = None
    # keys this op writes: if it cannot run, they may be stale in Redis afterwards
    writes: tuple[str, ...] = ()
    # fire-and-forget ops with the same merge key in one drained batch become one
    # (window key, size, ttl, and the stream key, timeframe and length when it publishes)
    merge: tuple[str, int, int, str | None, str, int] | None = None
    items: tuple[Any, ...] = ()
    # a publishing op (PUBLISH_MANY): its stream, the stream's length, its groups and
    # its tag; adjacent fire-and-forget ones on the same stream in one batch become one
    # call (with the newest tag among them)
    publish: tuple[str, int, tuple[Group, ...], str] | None = None
    # the hub began a write of ``writes`` in the near cache: end it once this op ran
    near: bool = False
    # the key this op reads, and its answer while that key may be stale in Redis (a
    # write to it was refused) or holds what the hub cannot read: a miss, so the
    # caller falls back instead
    reads: str | None = None
    miss: Any = None
    # run sets the whole value of ``writes``: once it succeeds they are current again
    replaces: bool = False
    # the cleaner's op: UNLINK the keys stale at the moment it runs (filled in handle)
    clean: bool = False
    # a GET + PTTL of one key (``reads``): batched with others into one GET_VALUES call
    value_read: bool = False
    # a plain SET of one key: once it ran, the near cache may hold the value it set
    # (``ticket``: the near cache's sequence when the write began)
    own: bool = False
    ticket: int = 0

    @property
    def fallback(self) -> tuple[Command, ...] | None:
        """What is sent instead when Redis answers NOSCRIPT: each EVALSHA as the EVAL of
        its script (built only then, not for every op); None when no command is one."""
        if not any(c[0] == "EVALSHA" for c in self.commands):
            return None
        return tuple(("EVAL", SCRIPTS[c[1]], *c[2:]) if c[0] == "EVALSHA" else c
                     for c in self.commands)


# The hot window is a sorted set scored by candle time. Its span [oldest, newest]
# is kept complete: a candle older than the oldest one held is not added (it would
# open a gap), a candle at an existing time replaces it (idempotent), then the set
# is trimmed to the window size and its TTL refreshed. Atomic, one round trip. A candle
# newer than every one held (a feed's next minute) cannot replace one: those are added
# by one ZADD for many, the others one at a time, in order (what went before first).
# A group's candles for window ``key`` (ARGV[first..last], (time, member) pairs), all
# newer than the newest held (``hi``; nil: the window is empty) and strictly ascending:
# the common case (a feed's next minutes, a batch's newest). They go in by ZADDs of
# ARGV's own slices (1,000 candles each: Lua's unpack takes at most 8,000 values), no
# Lua table built a candle at a time (that was a quarter of the script's time,
# measured). True once they went in; false (nothing written): the rule is applied
# candle by candle.
IN_ORDER = """
local function in_order(key, first, last, hi)
  local prev = tonumber(ARGV[first])
  if hi ~= nil and prev <= hi then return false end
  for x = first + 2, last - 1, 2 do
    local ts = tonumber(ARGV[x])
    if ts <= prev then return false end
    prev = ts
  end
  for a = first, last, 2000 do
    redis.call('ZADD', key, unpack(ARGV, a, math.min(a + 1999, last)))
  end
  return true
end
"""

PUSH_CANDLES = IN_ORDER + """
local key = KEYS[1]
local window = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local lo = nil
if first[2] then lo = tonumber(first[2]) end
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local hi = nil
if last[2] then hi = tonumber(last[2]) end
local fresh = {}
local added = 0
local start = 3
if #ARGV >= 3 and in_order(key, 3, #ARGV, hi) then
  start = #ARGV + 1
  added = (#ARGV - 2) / 2
end
for i = start, #ARGV, 2 do
  local ts = tonumber(ARGV[i])
  if lo == nil or ts >= lo then
    if hi ~= nil and ts <= hi then
      if #fresh > 0 then redis.call('ZADD', key, unpack(fresh)); fresh = {} end
      redis.call('ZREMRANGEBYSCORE', key, ARGV[i], ARGV[i])
      redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
    else
      fresh[#fresh + 1] = ARGV[i]
      fresh[#fresh + 1] = ARGV[i + 1]
      if #fresh >= 1000 then redis.call('ZADD', key, unpack(fresh)); fresh = {} end
      hi = ts
    end
    if lo == nil then lo = ts end
    added = added + 1
  end
end
if #fresh > 0 then redis.call('ZADD', key, unpack(fresh)) end
if added > 0 then
  redis.call('ZREMRANGEBYRANK', key, 0, -window - 1)
  redis.call('EXPIRE', key, ttl)
end
return added
"""


# The same, publishing each candle a window takes on the product's stream (XADD, trimmed
# to about ARGV[1] entries) with its timeframe and whether it is newer than every one
# the window held ('r' 0) or not ('r' 1: a correction, or a hole filled late: a
# subscriber that took a later candle gets it as a revision); one or several windows of
# one product (a written minute; the rollups a write closed, smaller timeframes first).
# A candle older than the window's oldest stays out of the window (the rule above) and
# is still published, as a revision ('r' 1): a minute corrected, or a rollup
# recomputed, a day after it was written reaches subscribers as one corrected an hour
# after does. One script: a reader's snapshot
# (SNAPSHOT below) sees the window and the stream's last id of one moment, so warm-up
# from the window hands over to the stream without a duplicate or a hole. KEYS: the
# stream, then one window per group; ARGV: the stream's length, the publishing process's
# tag ('' for none), then per group its window size, TTL, timeframe, number of candles,
# number of candles withheld and (time, member) pairs. Candles withheld: written with
# these but older than the window keeps (a batch's oldest beyond its newest window
# size), so neither in the window nor on the stream; while somebody follows, an entry
# ('g': how many) says so before the group's candles, and a reader catches up from
# storage there rather than step over them (an entry that is no candle, with a number
# of its own: the next candle's number does not follow the last one taken). A tag goes
# into each entry the call adds ('o', written first): the process that wrote it knows
# its own publication when its reader reads it back (see actors.stream: the candles it
# handed its own subscribers at once). A rollup the window
# holds already, the same to the byte, is not published again: two processes writing one
# product's minutes both compute each rollup, and subscribers get it once (a 1-minute
# candle is always published: cache_candles fills that window without publishing). A
# candle newer than every one held cannot replace one nor be held already: its window
# member goes in with the other such by one ZADD (as PUSH_CANDLES does). KEYS[2] names the
# hub processes following the stream (see SNAPSHOT): while none does, the windows are
# written and nothing is published (a replay or a bulk load nobody follows costs Redis no
# stream entries, about a third of its work). Each entry's 'n' is its number in the
# stream (Redis' entries-added): a reader finding one missing knows Redis trimmed it
# before it was read. The candles of a group newer than every one held go out as ONE
# entry ('cs': a JSON array of the members) when there are several (a run of write_candle
# calls, a batch's newest): one XADD for Redis and one entry for each reading process to
# parse, instead of one per candle (a subscribing process had cost the writer a quarter of
# its rate). Each entry's 'k' counts the 1-minute candles ever published on the stream up
# to it, so the stream is trimmed by minutes, not entries (which hold 1 to 1,024
# candles): the entries published before the newest ARGV[1] minutes go (XTRIM MINID),
# once they are half as many again (amortized), so the stream keeps ARGV[1] to 1.5 x
# ARGV[1] minutes, plus an entry or two, with every rollup published after the oldest
# of them (the trim is checked against the oldest entry's count only).
# (Counting the rollups too let a trim keep the rollups of a run whose minutes it took:
# up to a third as many candles again, and fewer than ARGV[1] minutes were left.)
# The number of a stream's newest entry (its fields given): its 'n', or for an entry
# written before entries were numbered, Redis' count of entries added.
NUMBER_OF = """
local function field_of(fields, name)
  for x = #fields - 1, 1, -2 do
    if fields[x] == name then return tonumber(fields[x + 1]) end
  end
  return nil
end
local function number_of(stream, fields)
  local n = field_of(fields, 'n')
  if n ~= nil then return n end
  local info = redis.call('XINFO', 'STREAM', stream)
  for x = 1, #info, 2 do
    if info[x] == 'entries-added' then return info[x + 1] end
  end
  return 0
end
"""

PUBLISH_MANY = NUMBER_OF + IN_ORDER + """
local stream = KEYS[1]
local length = ARGV[1]
local tag = ARGV[2]
local function xadd(...)
  if tag == '' then return redis.call('XADD', stream, '*', ...) end
  return redis.call('XADD', stream, '*', 'o', tag, ...)
end
local now = redis.call('TIME')
local followed = redis.call('ZCOUNT', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000),
                            '+inf') > 0
local seq = 0
local total = 0
if followed then
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if newest[1] then
    seq = number_of(stream, newest[1][2])
    total = field_of(newest[1][2], 'k') or 0
  end
end
local i = 3
local added = 0
local older = 0
local function publish(timeframe, pack)
  seq = seq + 1
  if timeframe == '1m' then total = total + #pack end
  if #pack == 1 then
    xadd('t', timeframe, 'c', pack[1], 'r', 0, 'n', seq, 'k', total)
  else
    xadd('t', timeframe, 'cs', '[' .. table.concat(pack, ',') .. ']', 'r', 0, 'n', seq,
         'k', total)
  end
end
local function trim()
  local older = total - tonumber(length)  -- an entry with k <= this is not needed
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if not first[1] then return end
  local k = field_of(first[1][2], 'k')
  if k ~= nil and k > older - math.floor(tonumber(length) / 2) then return end
  local start = '-'
  while true do
    local page = redis.call('XRANGE', stream, start, '+', 'COUNT', 100)
    if #page == 0 then return end
    for _, entry in ipairs(page) do
      local ke = field_of(entry[2], 'k')
      if ke ~= nil and ke > older then
        redis.call('XTRIM', stream, 'MINID', entry[1])
        return
      end
    end
    start = '(' .. page[#page][1]
  end
end
for k = 3, #KEYS do
  local key = KEYS[k]
  local window = tonumber(ARGV[i])
  local ttl = tonumber(ARGV[i + 1])
  local timeframe = ARGV[i + 2]
  local n = tonumber(ARGV[i + 3])
  local withheld = tonumber(ARGV[i + 4])
  i = i + 5
  if followed and withheld > 0 then
    seq = seq + 1
    xadd('t', timeframe, 'g', withheld, 'n', seq, 'k', total)
  end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local lo = nil
  if first[2] then lo = tonumber(first[2]) end
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local hi = nil
  if last[2] then hi = tonumber(last[2]) end
  local fresh = {}
  local pack = {}
  local here = 0
  if n > 0 and in_order(key, i, i + 2 * n - 1, hi) then
    if followed then
      for x = i + 1, i + 2 * n - 1, 2 do pack[#pack + 1] = ARGV[x] end
    end
    here = n
    i = i + 2 * n
    n = 0
  end
  local function late(member)
    if #pack > 0 then publish(timeframe, pack); pack = {} end
    if followed then
      seq = seq + 1
      if timeframe == '1m' then total = total + 1 end
      xadd('t', timeframe, 'c', member, 'r', 1, 'n', seq, 'k', total)
      older = older + 1
    end
  end
  for j = 1, n do
    local ts = tonumber(ARGV[i])
    if lo ~= nil and ts < lo then
      late(ARGV[i + 1])
    else
      if hi ~= nil and ts <= hi then
        if #fresh > 0 then redis.call('ZADD', key, unpack(fresh)); fresh = {} end
        local same = false
        if timeframe ~= '1m' then
          local held = redis.call('ZRANGEBYSCORE', key, ARGV[i], ARGV[i])
          same = #held == 1 and held[1] == ARGV[i + 1]
        end
        if not same then
          redis.call('ZREMRANGEBYSCORE', key, ARGV[i], ARGV[i])
          redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
          late(ARGV[i + 1])
          here = here + 1
        end
      else
        fresh[#fresh + 1] = ARGV[i]
        fresh[#fresh + 1] = ARGV[i + 1]
        if #fresh >= 1000 then redis.call('ZADD', key, unpack(fresh)); fresh = {} end
        if followed then pack[#pack + 1] = ARGV[i + 1] end
        here = here + 1
        hi = ts
      end
      if lo == nil then lo = ts end
    end
    i = i + 2
  end
  if #fresh > 0 then redis.call('ZADD', key, unpack(fresh)) end
  if #pack > 0 then publish(timeframe, pack) end
  if here > 0 then
    redis.call('ZREMRANGEBYRANK', key, 0, -window - 1)
    redis.call('EXPIRE', key, ttl)
  end
  if (here > 0 or older > 0) and redis.call('TTL', stream) < ttl then
    redis.call('EXPIRE', stream, ttl)
  end
  added = added + here
end
if followed and added + older > 0 then trim() end
return added
"""
PUBLISH_MANY_SHA = script_sha(PUBLISH_MANY)


def op_publish_many(stream: str, length: int,
                    groups: Sequence[tuple[str, int, int, str, Sequence[Row]]],
                    near: bool = False, tag: str = "") -> RedisOp[int]:
    """Groups ``(window key, window size, ttl, timeframe, rows)`` published in one call
    (each group's newest ``window size`` rows, ascending, the older ones withheld);
    ``tag``: the publishing process's, put in each entry (see PUBLISH_MANY)."""
    parts: list[Group] = []
    for key, window, ttl, timeframe, rows in groups:
        ordered = rows if _ascending(rows) else sorted(rows, key=_time)
        kept = _newest(ordered, window)
        items: list[Any] = [None] * (2 * len(kept))
        items[::2] = [row[0] for row in kept]
        items[1::2] = encode_rows(kept)
        parts.append((key, window, ttl, timeframe, tuple(items), len(ordered) - len(kept)))
    return _publish(stream, length, tuple(parts), near, tag=tag)


def _publish(stream: str, length: int, groups: tuple[Group, ...], near: bool,
             merge: tuple[str, int, int, str | None, str, int] | None = None,
             items: tuple[Any, ...] = (), tag: str = "") -> RedisOp[int]:
    if len(groups) == 1:  # one window (every write): no loop, no lists
        key, window, ttl, timeframe, pairs, withheld = groups[0]
        head: tuple[Any, ...] = (3, stream, keys.followers(stream), key, length, tag,
                                 window, ttl, timeframe, len(pairs) // 2, withheld, *pairs)
        writes: tuple[str, ...] = (key, stream)
    else:
        windows: list[str] = []
        args: list[Any] = [length, tag]
        for key, window, ttl, timeframe, pairs, withheld in groups:
            windows.append(key)
            args += [window, ttl, timeframe, len(pairs) // 2, withheld, *pairs]
        head = (len(windows) + 2, stream, keys.followers(stream), *windows, *args)
        writes = (*dict.fromkeys(windows), stream)
    return RedisOp((("EVALSHA", PUBLISH_MANY_SHA, *head),), _first, writes,
                   merge=merge, items=items, near=near,
                   publish=(stream, length, groups, tag))


# A reader's starting point: the newest ARGV[1] candles of a window and the id of the
# stream's last entry ('0-0' when it has none), read at one moment; and from that
# moment on the stream is published to (the reader ARGV[2] follows it for ARGV[3] ms,
# renewed by RENEW). Then: whether that reader's presence had not lapsed, and the number
# of the stream's last entry (entries ever added; PUBLISH_MANY numbers the next ones).
SNAPSHOT = NUMBER_OF + """
local count = tonumber(ARGV[1])
local members = {}
if count > 0 then members = redis.call('ZRANGE', KEYS[1], -count, -1) end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local id = '0-0'
if last[1] then id = last[1][1] end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local until_ = redis.call('ZSCORE', KEYS[3], ARGV[2])
local was = 0
if until_ and tonumber(until_) >= ms then was = 1 end
redis.call('ZADD', KEYS[3], ms + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
local number = 0
if last[1] then number = number_of(KEYS[2], last[1][2]) end
return {members, id, oldest, was, number}
"""

# A reader's presence renewed (KEYS[1]: the followers' set; ARGV: the reader's id, how
# long it holds, ms). 1: it had not lapsed; 0: it had (or was never there), so writes may
# have left entries out since, and its followers catch up from storage. Lapsed readers of
# other processes are dropped.
RENEW = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local until_ = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ms)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
if until_ and tonumber(until_) >= ms then return 1 end
return 0
"""


def encode_candle(c: Candle | Row) -> bytes:
    """A window member: [timestamp, open, high, low, close, volume] as compact JSON."""
    if isinstance(c, Candle):
        return jsonbytes.dumps((c.timestamp, c.open, c.high, c.low, c.close, c.volume))
    return jsonbytes.dumps(c)


def encode_rows(rows: Sequence[Row]) -> list[bytes]:
    """:func:`encode_candle` of each checked row, the same bytes, from one orjson call
    (a run of write_candle calls, a batch): the array of arrays split between rows
    (numbers hold no bracket), each member a bytes object of its own size."""
    if len(rows) < 2:
        return [jsonbytes.dumps(row) for row in rows]
    return orjson.dumps(rows)[1:-1].replace(b"],[", b"]\n[").split(b"\n")


def decode_candle(raw: bytes) -> Candle:
    ts, o, h, low, c, vol = orjson.loads(raw)
    return make_candle(int(ts), float(o), float(h), float(low), float(c), float(vol))


def _first(results: list[Any]) -> Any:
    return results[0]


# ---- op builders: pure, so they are unit-tested without Redis ----

def op_barrier() -> RedisOp[None]:
    """A PING through the mailbox: returns once every op queued before it has run
    (for work done outside the mailbox, like SCAN)."""
    return RedisOp((("PING",),))


def op_get(key: str) -> RedisOp[bytes | None]:
    """The raw value (the Wolfinch drop-in's own keys)."""
    return RedisOp((("GET", key),), _first, reads=key)


class Held(NamedTuple):
    """A JSON value read from Redis: decoded, as stored, and its milliseconds left.
    (A tuple: built once per cold read, at a third of a frozen dataclass's cost.)"""

    value: Any
    raw: bytes
    pttl: int


def _held(results: list[Any]) -> Held | None:
    raw, pttl = results
    return None if raw is None else Held(orjson.loads(raw), raw, pttl)


def op_get_value(key: str) -> RedisOp[Held | None]:
    """A JSON value with the milliseconds the key has left (for the near cache's
    expiry); None when absent. A value that is not JSON is a miss (see CacheActor)."""
    return RedisOp((("GET", key), ("PTTL", key)), _held, reads=key, value_read=True)


# Many value reads in one drained batch are one script call: one reply to parse instead
# of two per key (measured here: 100 keys 0.21 ms against 0.89 ms as 200 commands). A
# key of another type answers its own error in its place (pcall), the others are read.
GET_VALUES = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    out[2 * i - 1] = value
    out[2 * i] = 0
  else
    out[2 * i - 1] = value
    out[2 * i] = redis.call('PTTL', key)
  end
end
return out
"""
GET_VALUES_AT_LEAST = 8  # fewer: the plain commands are as cheap


def op_get_mapping(key: str) -> RedisOp[dict[str, Any] | None]:
    """A JSON object (a position, a strategy's state); None when absent. Anything else
    stored there is a miss."""
    def decode(results: list[Any]) -> dict[str, Any] | None:
        if results[0] is None:
            return None
        value = orjson.loads(results[0])
        if not isinstance(value, dict):
            raise TypeError(f"expected a JSON object, got {type(value).__name__}")
        return value
    return RedisOp((("GET", key),), decode, reads=key)


def op_set(key: str, value: bytes, ttl: int, near: bool = False) -> RedisOp[None]:
    return RedisOp((("SET", key, value, "EX", ttl),), writes=(key,), near=near,
                   replaces=True, own=True)


def op_fill(key: str, value: bytes, ttl: int) -> RedisOp[None]:
    """A read-through fill: set only if absent, so a value read before a concurrent
    write never overwrites what that write set."""
    return RedisOp((("SET", key, value, "EX", ttl, "NX"),), writes=(key,))


def op_clean() -> RedisOp[Any]:
    """Delete the keys stale in Redis (writes it refused), in order with the writes:
    a write queued after it that succeeds is never deleted by it."""
    return RedisOp((("PING",),), _first, clean=True)


def op_unlink(keys: Sequence[str]) -> RedisOp[int]:
    return RedisOp((("UNLINK", *keys),), _first)


def op_forget(keys: Sequence[str]) -> RedisOp[int]:
    """UNLINK ``keys`` as a write of them: when Redis cannot take it now, they are
    deleted before it serves again (the keys of a skipped write are)."""
    return RedisOp((("UNLINK", *keys),), _first, writes=tuple(keys))


PUSH_CANDLES_SHA = script_sha(PUSH_CANDLES)


def op_push_candles(key: str, rows: Sequence[Row], window: int, ttl: int,
                    near: bool = False, stream: str | None = None, timeframe: str = "1m",
                    length: int = 0, tag: str = "", withheld: int = 0) -> RedisOp[int]:
    """Push checked candle rows into a hot window (the newest ``window`` matter); with
    ``stream``, each one the window takes is also published there (PUBLISH_MANY, with
    the publishing process's ``tag``), and the older ones, with ``withheld`` more
    written before them and never pushed (a batch's older pieces), are said to be
    withheld."""
    ordered = rows if _ascending(rows) else sorted(rows, key=_time)
    kept = _newest(ordered, window)
    args: list[Any] = [None] * (2 * len(kept))
    args[::2] = [row[0] for row in kept]
    args[1::2] = encode_rows(kept)
    return _push(key, window, ttl, tuple(args), near, stream, timeframe, length, tag,
                 withheld + len(ordered) - len(kept))


def _time(row: Row) -> int:
    return row[0]


def _newest(ordered: Sequence[Row], window: int) -> Sequence[Row]:
    """What a window push sends of rows ascending by time: all of them when one script
    call takes them (``MERGE_CAP``, or the window's size if larger), else the rows of the
    ``window`` newest distinct times, every version of each (the rest are withheld).
    Cut by times, not rows: the window is trimmed to its size in times, and a cut that
    kept fewer (a bucket published, then again as a revision, in one call) left older
    members beside the new ones with the withheld ones missing between them, a hole in
    the window that warm-ups and reads took for whole. Kept whole when few, so a
    revision of an old time among newer candles (a rollup recomputed late) is published
    rather than withheld."""
    if len(ordered) <= max(window, MERGE_CAP):
        return ordered
    distinct, previous = 0, None
    for i in range(len(ordered) - 1, -1, -1):
        ts = ordered[i][0]
        if ts != previous:
            distinct += 1
            if distinct > window:
                return ordered[i + 1:]
            previous = ts
    return ordered


def _ascending(rows: Sequence[Row]) -> bool:
    if len(rows) < 2:  # write_candle's one row: no generator to start
        return True
    return all(rows[i][0] <= rows[i + 1][0] for i in range(len(rows) - 1))


def _push(key: str, window: int, ttl: int, items: tuple[Any, ...],
          near: bool = False, stream: str | None = None, timeframe: str = "1m",
          length: int = 0, tag: str = "", withheld: int = 0) -> RedisOp[int]:
    if stream is not None:
        return _publish(stream, length, ((key, window, ttl, timeframe, items, withheld),),
                        near, (key, window, ttl, stream, timeframe, length), items, tag)
    return RedisOp((("EVALSHA", PUSH_CANDLES_SHA, 1, key, window, ttl, *items),), _first,
                   (key,), merge=(key, window, ttl, None, "", 0), items=items, near=near)


# Candles one merged script call takes at most: a call holds Redis for its whole run
# (a few µs a candle), and a writer far ahead of Redis must not make every other
# client wait a long one (200 ms were measured for 50,000 merged minutes).
MERGE_CAP = 1024


def coalesce(batch: Sequence[Envelope]) -> list[Envelope]:
    """Merge fire-and-forget window pushes to the same key into one script call (up to
    MERGE_CAP candles each). Candles keep their order (a later write of the same time
    still wins)."""
    groups: dict[tuple[str, int, int, str | None, str, int], list[RedisOp[Any]]] = {}
    sizes: dict[tuple[str, int, int, str | None, str, int], int] = {}
    merged: dict[int, list[RedisOp[Any]]] = {}  # position in out -> its group
    out: list[Envelope] = []
    for call in batch:
        op: RedisOp[Any] = call.message
        if op.merge is None or call.future is not None:
            out.append(call)
            continue
        group = groups.get(op.merge)
        if group is None or sizes[op.merge] + len(op.items) > 2 * MERGE_CAP:
            groups[op.merge] = merged[len(out)] = [op]
            sizes[op.merge] = len(op.items)
            out.append(call)
        else:
            group.append(op)
            sizes[op.merge] += len(op.items)
    for i, call in enumerate(out):
        op = call.message
        group = merged.get(i)
        if group is not None and len(group) > 1:
            assert op.merge is not None
            key, window, ttl, stream, timeframe, length = op.merge
            out[i] = Envelope(_push(key, window, ttl, _merged_items(group), op.near, stream,
                                    timeframe, length, _newest_tag(group),
                                    _withheld(group)), None)
    return _join_publications(out)


def _withheld(ops: Sequence[RedisOp[Any]]) -> int:
    """The candles withheld by window pushes joined into one call (see PUBLISH_MANY)."""
    return sum(g[5] for op in ops if op.publish is not None for g in op.publish[2])


def _newest_tag(ops: Sequence[RedisOp[Any]]) -> str:
    """The tag of publications joined into one call: the newest given (tags number a
    process's publications in order, and the call's entries confirm them all)."""
    return next((op.publish[3] for op in reversed(ops)
                 if op.publish is not None and op.publish[3]), "")


def _merged_items(group: Sequence[RedisOp[Any]]) -> tuple[Any, ...]:
    """The (time, member) pairs of window pushes, flattened in the order they were
    written (each push's own pairs ascending): the call does what the pushes one after
    another would. A feed's pushes, each after the one before, make one ascending run
    (taken by one ZADD); a late minute pushed after newer ones stays after them, and is
    published as the revision it is. (Sorted by time, it went out inside the run as a
    new candle, and a subscriber in this process, handed the newer ones already as they
    were written, dropped it: a repaired minute it never got.)"""
    return tuple(itertools.chain.from_iterable(op.items for op in group if op.items))


def _join_publications(batch: list[Envelope]) -> list[Envelope]:
    """Adjacent fire-and-forget publications on one stream as one PUBLISH_MANY call, in
    their order: a minute and the rollups it closes are queued together, and so reach a
    stream reader in one XREAD reply rather than one after the other."""
    out: list[Envelope] = []
    run: list[RedisOp[Any]] = []  # publications to join, the first at out[-1]
    size = 0  # their candles

    def close_run() -> None:
        if len(run) > 1:
            first = run[0]
            assert first.publish is not None
            stream, length, _, _ = first.publish
            groups = tuple(g for op in run if op.publish for g in op.publish[2])
            out[-1] = Envelope(_publish(stream, length, groups, first.near,
                                        tag=_newest_tag(run)), None)
        run.clear()

    for call in batch:
        op: RedisOp[Any] = call.message
        if call.future is None and op.publish is not None:
            candles = sum(len(g[4]) for g in op.publish[2]) // 2
            if run and run[0].publish is not None and size + candles <= MERGE_CAP \
                    and run[0].publish[:2] == op.publish[:2] and run[0].near == op.near:
                run.append(op)
                size += candles
                continue
            close_run()
            out.append(call)
            run.append(op)
            size = candles
            continue
        close_run()
        out.append(call)
    close_run()
    return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a stream reader starts from: the newest candles of a window (ascending),
    the window's oldest time, and the stream's last id, all of one moment."""

    candles: list[Candle]
    oldest: int | None
    last_id: bytes
    # the reader's presence had not lapsed: entries since its last renewal were published
    followed: bool = True
    number: int = 0  # the stream's entries so far: the last one's number


SNAPSHOT_SHA = script_sha(SNAPSHOT)
RENEW_SHA = script_sha(RENEW)


def op_snapshot(window_key: str, stream_key: str, count: int, reader: str,
                presence_ms: int) -> RedisOp[Snapshot]:
    """A reader's starting point; from then on ``reader`` follows the stream for
    ``presence_ms`` (renewed by :func:`command_renew`)."""
    def decode(results: list[Any]) -> Snapshot:
        members, last_id, oldest, followed, number = results[0]
        return Snapshot([decode_candle(m) for m in members],
                        decode_candle(oldest[0]).timestamp if oldest else None,
                        last_id if isinstance(last_id, bytes) else str(last_id).encode(),
                        followed == 1, int(number))
    head = (3, window_key, stream_key, keys.followers(stream_key), count, reader, presence_ms)
    return RedisOp((("EVALSHA", SNAPSHOT_SHA, *head),), decode)


def command_renew(stream_key: str, reader: str, presence_ms: int) -> tuple[Any, ...]:
    """RENEW as a command for a pipeline (EVAL: a reader sends it seldom, and a script
    cache flushed meanwhile must not fail it)."""
    return ("EVAL", RENEW, 1, keys.followers(stream_key), reader, presence_ms)


def op_window_oldest(key: str) -> RedisOp[int | None]:
    """The time of the oldest candle the hot window holds; None when it holds none."""
    def decode(results: list[Any]) -> int | None:
        return decode_candle(results[0][0]).timestamp if results[0] else None
    return RedisOp((("ZRANGE", key, 0, 0),), decode, reads=key, miss=None)


def op_newest_candles(key: str, count: int) -> RedisOp[list[Candle]]:
    def decode(results: list[Any]) -> list[Candle]:
        return [decode_candle(m) for m in results[0]]
    return RedisOp((("ZRANGE", key, -count, -1),), decode, reads=key, miss=[])


@dataclass(frozen=True, slots=True)
class WindowAnswer:
    candles: list[Candle]  # ascending by time
    oldest: int | None  # oldest time held in the window, None when empty


def op_window_all(key: str) -> RedisOp[tuple[tuple[Candle, ...], int]]:
    """The whole hot window, ascending and decoded, with the milliseconds it has left."""
    def decode(results: list[Any]) -> tuple[tuple[Candle, ...], int]:
        return tuple(decode_candle(m) for m in results[0]), results[1]
    return RedisOp((("ZRANGE", key, 0, -1), ("PTTL", key)), decode, reads=key,
                   miss=((), -2))


def op_window_range(key: str, start: int | None, end: int | None,
                    limit: int) -> RedisOp[WindowAnswer]:
    """The newest ``limit`` candles in [start, end], plus the window's oldest time."""
    hi = "+inf" if end is None else end
    lo = "-inf" if start is None else start

    def decode(results: list[Any]) -> WindowAnswer:
        oldest = decode_candle(results[1][0]).timestamp if results[1] else None
        return WindowAnswer([decode_candle(m) for m in reversed(results[0])], oldest)

    return RedisOp(
        (
            ("ZRANGE", key, hi, lo, "BYSCORE", "REV", "LIMIT", 0, limit),
            ("ZRANGE", key, 0, 0),
        ),
        decode,
        reads=key,
        miss=WindowAnswer([], None),
    )


def op_trim_window(keys: Sequence[str], start_ts: float, stop_ts: float) -> RedisOp[None]:
    return RedisOp(tuple(("ZREMRANGEBYSCORE", k, start_ts, stop_ts) for k in keys),
                   writes=tuple(keys))




# ---- the window rule (what PUSH_CANDLES keeps true) ----

def covers(found: int, oldest: int, start: int | None, limit: int) -> bool:
    """Whether a hot window answers a query: its span [oldest, newest] is complete, so
    it does when it holds ``limit`` candles in range, or the range starts inside it."""
    return found >= limit or (start is not None and start >= oldest)


def pick(window: Sequence[Candle], lo: int | None, hi: int | None,
         limit: int) -> list[Candle] | None:
    """The newest ``limit`` candles of ``window`` (ascending) in [lo, hi], or None
    when the window does not cover the query."""
    if not window:
        return None
    times = [c.timestamp for c in window]
    first = 0 if lo is None else bisect.bisect_left(times, lo)
    last = len(times) if hi is None else bisect.bisect_right(times, hi)
    picked = window[max(first, last - limit):last]
    if not covers(len(picked), times[0], lo, limit):
        return None
    return list(picked)
