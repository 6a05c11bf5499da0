"""Candles handed to this process's subscribers as they are published (actors.stream,
"Early delivery"), under random interleavings: the process's publications of minutes
and rollups queue for Redis (a refused write's minute never does), Redis runs them in
order (some publish nothing: the window held the same bytes),
the reader reads the stream back in pieces, subscriptions start between (a snapshot
queued behind the publications before it, with more sealed while it runs), and the
subscribers take what is there whenever they run. Whatever the order, each subscriber
gets every candle of its timeframe the stream holds after its snapshot, in order, once,
and nothing else but candles handed to it early (the reader's XREAD is replaced by the
test feeding the ring; the subscriber's loop is Streams.follow's rule: a candle not
newer than the last one delivered is dropped). And a rollup goes early only once every
minute published here before it went early too or was read back (a subscriber of both
never gets a rollup before the minute closing it)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.stream import Follower, StreamReader

KEY = "candlestream:x:p"
SPANS = {"1m": 60, "5m": 300, "15m": 900}
ROLLUPS = ["5m", "15m"]


class _NeverReads:
    async def read_streams(self, positions: Any, count: int, block_ms: int) -> Any:
        await asyncio.Event().wait()


def _row(ts: int) -> tuple[int, float, float, float, float, float]:
    return (ts, 1.0, 2.0, 0.5, 1.5, 1.0)


class _World:
    def __init__(self) -> None:
        self.reader = StreamReader(_NeverReads(), 10_000)  # type: ignore[arg-type]
        self.next_ts = dict.fromkeys(SPANS, 0)
        self.pending: list[tuple[str, dict[str, int]]] = []  # queued for Redis
        self.stream: list[tuple[bytes, list[bytes], str, int]] = []  # id, fields, tf, ts
        self.read = 0  # stream entries the reader has read back
        # per subscriber: its follower, timeframe, snapshot (stream length), delivered
        self.subs: list[tuple[Follower, str, int, list[int]]] = []
        self.offers: list[tuple[str, int]] = []  # candles handed over early, in order
        self.minute_publications: list[int] = []  # queued ones, numbered
        self.minutes_early: set[int] = set()  # those handed over early
        self.offers_before: list[int] = []  # per subscriber: offers made before it

    def publish(self, timeframes: list[str], early: bool) -> None:
        groups = {}
        for tf in timeframes:
            groups[tf] = self.next_ts[tf]
            self.next_ts[tf] += SPANS[tf]
        ring = self.reader.rings.get(KEY)
        offered = ring.early_next if ring is not None else 0
        tag = self.reader.publishing(KEY, {tf: [_row(ts)] for tf, ts in groups.items()},
                                     early)
        if ring is not None:
            new = [(e.candle.timeframe, e.candle.timestamp)
                   for seq, _, e in ring.early if seq >= offered]
            if new:  # a rollup goes early only behind every minute published before it
                read = ring.own_read.get("1m", 0)
                assert all(j in self.minutes_early or j <= read
                           for j in self.minute_publications), "a rollup before its minute"
            self.offers += new
        self.pending.append((tag, groups))

    def minute(self, queued: bool) -> None:
        """A publication of one new minute built, then queued (or refused: never)."""
        ts = self.next_ts["1m"]
        self.next_ts["1m"] += 60
        tag, publication = self.reader.minutes(KEY)
        if not queued:
            return
        if tag:
            self.minute_publications.append(int(tag.rsplit("-", 1)[1]))
        if publication is not None:
            ring = self.reader.rings[KEY]
            offered = ring.early_next
            self.reader.offer_minutes(KEY, publication, [_row(ts)])
            self.minutes_early.add(publication)
            self.offers += [(e.candle.timeframe, e.candle.timestamp)
                            for seq, _, e in ring.early if seq >= offered]
        self.pending.append((tag, {"1m": ts}))

    def redis_runs(self, publishes: bool) -> None:
        if not self.pending:
            return
        tag, groups = self.pending.pop(0)
        if not publishes:  # the window held the same bytes: no entry
            return
        for tf, ts in groups.items():
            n = len(self.stream) + 1
            fields = [b"t", tf.encode(), b"c", f"[{ts},1.0,2.0,0.5,1.5,1.0]".encode(),
                      b"r", b"0", b"n", str(n).encode(), b"k", b"0"]
            if tag:
                fields = [b"o", tag.encode(), *fields]
            self.stream.append((f"{n}-0".encode(), fields, tf, ts))

    def reader_reads(self, count: int) -> None:
        got = self.stream[self.read:self.read + count]
        if got:
            self.read += len(got)
            self.reader.rings[KEY].append([(i, f) for i, f, _, _ in got])

    def subscribe(self, timeframe: str, sealed_meanwhile: int) -> None:
        self.reader.expect(KEY)
        while self.pending:  # queued before the snapshot: they run first
            self.redis_runs(True)
        at = len(self.stream)
        for _ in range(sealed_meanwhile):  # sealed while it runs: tagged, after it
            if timeframe == "1m":
                self.minute(True)
            else:
                self.publish([timeframe], True)
        self.reader.expected(KEY)
        last_id = self.stream[at - 1][0] if at else b"0-0"
        if KEY not in self.reader.rings:  # a ring reads on from the snapshot
            self.read = at
        self.subs.append((self.reader.follow(KEY, last_id, at), timeframe, at, []))
        self.offers_before.append(len(self.offers))

    async def take(self) -> None:
        for follower, tf, _, delivered in self.subs:
            while True:
                task = asyncio.ensure_future(follower.take())
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    break
                entries = task.result()
                assert entries is not None, "lost continuity"
                for entry in entries:
                    c = entry.candle
                    if c.timeframe == tf and (not delivered or c.timestamp > delivered[-1]):
                        delivered.append(c.timestamp)


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("publish"), st.lists(st.sampled_from(ROLLUPS), min_size=1,
                                           max_size=2, unique=True), st.booleans()),
    st.tuples(st.just("minute"), st.integers(0, 9)),
    st.tuples(st.just("redis"), st.integers(0, 9)),
    st.tuples(st.just("read"), st.integers(1, 4)),
    st.tuples(st.just("subscribe"), st.sampled_from(list(SPANS)), st.integers(0, 2)),
    st.just(("take",))), max_size=60)


@settings(max_examples=600, deadline=None)
@given(ACTIONS)
def test_no_interleaving_makes_a_subscriber_miss_a_candle_or_get_one_twice(
        actions: list[Any]) -> None:
    async def run() -> _World:
        world = _World()
        world.subscribe("5m", 0)
        world.subscribe("1m", 0)
        try:
            for action in actions:
                if action[0] == "publish":
                    world.publish(action[1], action[2])
                elif action[0] == "minute":
                    world.minute(action[1] > 0)  # one in ten refused: never queued
                elif action[0] == "redis":
                    world.redis_runs(action[1] > 0)  # one in ten publishes nothing
                elif action[0] == "read":
                    world.reader_reads(action[1])
                elif action[0] == "subscribe":
                    world.subscribe(action[1], action[2])
                else:
                    await world.take()
            while world.pending:
                world.redis_runs(True)
            world.reader_reads(len(world.stream))
            await world.take()
            return world
        finally:
            await world.reader.close()

    world = asyncio.run(run())
    for k, (_, tf, at, delivered) in enumerate(world.subs):
        on_stream = [ts for _, _, t, ts in world.stream[at:] if t == tf]
        # ascending, once each (the rule drops anything not newer)
        assert delivered == sorted(set(delivered))
        # no hole: every candle of its timeframe the stream holds after its snapshot
        assert set(on_stream) <= set(delivered), (tf, at, on_stream, delivered)
        # nothing else but candles handed over early once it followed (one published
        # before is history: the stream before its snapshot, or after it, unread)
        extra = {(tf, ts) for ts in set(delivered) - set(on_stream)}
        assert extra <= set(world.offers[world.offers_before[k]:]), (extra, k)
