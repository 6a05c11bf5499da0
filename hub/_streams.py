"""Live candles: the rollups of the 1-minute candles this process writes, the stream
each product's closed candles are published on, and ``Hub.candles`` (warm-up from
storage, then live, with no duplicate and no hole at the hand-over).

Publishing. A 1-minute candle written with ``write_candle`` / ``write_candles_batch``
goes into its hot window and onto the product's Redis stream in one script call
(``PUBLISH_MANY``). The same call here feeds the product's rollup :class:`Book`; a
bucket it closes is published the same way (its own hot window, the stream, and the
``candle_rollup`` measurement) right after, in the same delivery, so lower timeframes
precede higher ones. A bucket closed without every minute seen here, or a minute that
arrives after its bucket closed, is recomputed from the stored minutes first, in order,
per product: a revision is published as such. New minutes written here, and complete
buckets they close, also go to this process's own subscribers at once, where they cannot
overtake one of its own (``StreamReader.publishing`` and ``minutes``).

Following. A subscriber takes a snapshot (the newest ``warmup`` candles of the window
and the stream's last id, atomically), yields it (older history from InfluxDB when the
window holds fewer), then yields the stream's entries after that id. Candles are
delivered by time: an entry not newer than the last one delivered is a revision or
nothing. A subscriber that fell behind the process's buffer catches up from storage.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from actors.backends.influx import rows as result_rows
from actors.backoff import Backoff
from actors.cache import CacheService
from actors.cache.ops import Snapshot, op_publish_many, op_push_candles, op_snapshot
from actors.query import Query
from actors.stream import Entry, Follower, StreamReader, parse_id
from hub._intake import Accepted, Intake
from hubdomain import influxql as ql
from hubdomain import keys
from hubdomain import lineproto as lp
from hubdomain import timeframes as tfs
from hubdomain import validate as v
from hubdomain.config import HubConfig
from hubdomain.errors import BackendUnavailable, HubClosed, ValidationError
from hubdomain.records import Candle, LiveCandle, Row, make_live_candle

log = logging.getLogger(__name__)

# A subscription's hand-over time when nothing was stored: every candle is after it
# (InfluxDB's earliest time, 1677-09-21).
_NOTHING = -9_223_372_036
_CATCH_UP_LIMIT = 100_000  # candles read from storage to close a subscriber's hole
_RECOMPUTED_TOGETHER = 1000  # buckets one read from storage may span (recomputes)
_WARM_MINUTES = 100_000  # minutes a rollup window filled from storage may cover
_TURN = 256  # candles a subscriber takes from a burst before it lets the loop run
Product = tuple[str, str]


class Streams:
    """The hub's live-candle part (see the module's text)."""

    def __init__(self, config: HubConfig, intake: Intake, cache: CacheService | None,
                 reader: StreamReader | None, *,
                 flush: Callable[[], Awaitable[None]],
                 influx: Callable[[Query], Awaitable[list[dict[str, Any]]]] | None,
                 history: Callable[[str, str, int | None, int | None, int, str | None],
                                   Awaitable[list[Candle]]]) -> None:
        self.config = config
        self.settings = config.streams
        self.intake = intake
        self.cache = cache
        self.reader = reader
        self._flush = flush
        self._influx = influx
        # (exchange, product, lo, hi, limit, interval or None) -> stored candles
        self._history = history
        self.spans = {tf: tfs.seconds(tf) for tf in self.settings.timeframes}
        self._stream_length = self.settings.length  # (minutes: see PUBLISH_MANY)
        self.books: dict[Product, tfs.Book] = {}
        self.markets = intake.markets  # trading sessions: when a bucket is over
        self.newest: dict[Product, int] = {}  # newest minute written here, per product
        # per product: a publication of written minutes being built whose new minutes
        # may go to this process's subscribers once it is queued (its rows, its number)
        self._early_minutes: dict[Product, tuple[list[Row], int]] = {}
        # per product and timeframe: closes waiting behind a recompute (a timeframe's
        # candles are published in order; other timeframes do not wait)
        self._pending: dict[tuple[str, str, str], deque[tfs.Event]] = {}
        self._workers: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        # per product: the newest stored minute being asked for (subscriptions starting
        # on an empty window)
        self._newest_asked: dict[Product, _Question] = {}
        # catch-ups in flight, shared by subscribers at the same place
        self._catch_ups: dict[tuple[str, str, str, int | None],
                              asyncio.Future[tuple[list[Candle], bytes, int | None]]] = {}
        self.counters = dict.fromkeys(("rollups_published", "rollups_recomputed",
                                       "late_minutes", "rollup_failures", "catch_ups",
                                       "catch_ups_unconfirmed",
                                       "catch_ups_without_revisions"), 0)

    @property
    def publishing(self) -> bool:
        return self.settings.enabled and self.cache is not None

    # ---- publishing --------------------------------------------------------------

    def stream_key(self, exchange: str, product: str) -> str:
        return keys.key("candlestream", exchange, product, tagged=self.intake.tagged)

    def window_key(self, exchange: str, product: str, timeframe: str) -> str:
        if timeframe == tfs.BASE:
            return keys.candles(exchange, product, self.intake.tagged)
        return keys.key("candles", exchange, product, timeframe, tagged=self.intake.tagged)

    def minutes_tag(self, exchange: str, product: str, stream: str, rows: list[Row]) -> str:
        """The tag of a publication of written minutes being built (``Intake``); whether
        its new minutes go to this process's subscribers once it is queued (in
        :meth:`feed`) is decided now (see ``StreamReader.minutes``)."""
        if self.reader is None:
            return ""
        tag, publication = self.reader.minutes(stream)
        key = (exchange, product)
        if publication is not None and not self.config.influxdb.durable:
            self._early_minutes[key] = (rows, publication)
        else:
            self._early_minutes.pop(key, None)
        return tag

    def feed(self, exchange: str, product: str, rows: list[Row]) -> list[Accepted]:
        """1-minute candles just accepted (queued): the new ones to this process's
        subscribers when they may go early, and the rollups they close, to deliver
        now."""
        key = (exchange, product)
        held = self._early_minutes.pop(key, None) if self._early_minutes else None
        if held is not None and held[0] is rows and key in self.newest:
            # minutes newer than any written here before (a rewrite comes by the stream,
            # as the revision it is), in order
            after = self.newest[key]
            fresh = [row for row in rows if row[0] > after]
            if fresh and self.reader is not None and \
                    all(a[0] < b[0] for a, b in itertools.pairwise(fresh)):
                self.reader.offer_minutes(self.stream_key(exchange, product), held[1], fresh)
        book = self.books.get(key)
        if book is None:
            book = self.books[key] = tfs.Book(self.settings.timeframes, self.settings.close_grace,
                                              self.markets.get(exchange, product))
            self.newest[key] = rows[0][0]
        if len(rows) == 1:
            events = book.add(rows[0], time.time())
        else:
            times = [row[0] for row in rows]
            if not all(map(operator.le, times, times[1:])):
                rows = sorted(rows, key=operator.itemgetter(0))
                times.sort()
            events = book.add_many(rows, time.time(), times)
        if rows[-1][0] > self.newest[key]:
            self.newest[key] = rows[-1][0]
        return self._handle(key, events) if events else []

    async def expire(self, now: float | None = None) -> int:
        """Close the live buckets of stalled feeds (the maintenance actor's job)."""
        self.intake.seal()  # minutes accepted and not yet delivered close their buckets
        when = time.time() if now is None else now
        closed = 0
        for key, book in list(self.books.items()):
            events = book.expire(when)
            closed += len(events)
            for accepted in self._handle(key, events):
                await self.intake.deliver(accepted)
        return closed

    def _handle(self, key: Product, events: list[tfs.Event]) -> list[Accepted]:
        if not self._pending:  # no close waits behind a recompute: the complete ones go
            ready = [(e.timeframe, e.row) for e in events
                     if type(e) is tfs.Closed and e.complete]
            if len(ready) == len(events):
                return self._accepted(key, ready, early=True)
        ready = []
        for event in events:
            where = (key[0], key[1], event.timeframe)
            queue = self._pending.get(where)
            if queue is None and isinstance(event, tfs.Closed) and event.complete:
                ready.append((event.timeframe, event.row))
                continue
            if isinstance(event, tfs.Late):
                self.counters["late_minutes"] += 1
            if queue is None:
                queue = self._pending[where] = deque()
                self._workers[where] = asyncio.get_running_loop().create_task(
                    self._work(key, where, queue),
                    name=f"rollups {key[0]}:{key[1]} {event.timeframe}")
            queue.append(event)
        return self._accepted(key, ready, early=True) if ready else []

    def _accepted(self, key: Product, ready: list[tuple[str, Row]],
                  early: bool = False) -> list[Accepted]:
        """One delivery for them all: the rollup lines, and one script call putting each
        timeframe's rows (in order, smaller timeframes first) into its hot window and onto
        the stream. ``early``: closes of complete buckets, handed to this process's
        subscribers at once where nothing of theirs can be overtaken (see
        ``actors.stream``; not in durable mode, where a rollup is acknowledged once its
        line is on disk)."""
        grouped: dict[str, list[Row]] = {}
        for timeframe, row in ready:
            grouped.setdefault(timeframe, []).append(row)
        self.counters["rollups_published"] += len(ready)
        exchange, product = key
        order = sorted(grouped, key=self.spans.__getitem__)
        op = None
        if self.publishing:
            stream = self.stream_key(exchange, product)
            tag = self.reader.publishing(
                stream, {timeframe: grouped[timeframe] for timeframe in order},
                early and not self.config.influxdb.durable) \
                if self.reader is not None else ""
            op = op_publish_many(
                stream, self._stream_length,
                [(self.window_key(exchange, product, timeframe),
                  self.config.performance.redis_hot_data_window,
                  self.config.redis.ttl.candles + self.spans[timeframe], timeframe,
                  grouped[timeframe]) for timeframe in order],
                self.intake.near_on, tag)
        lines: list[str] = []
        if self.intake.writer is not None and self.settings.store_rollups:
            for timeframe in order:
                lines += lp.rollup_lines(exchange, product, timeframe, grouped[timeframe])
        return [self.intake.begin(Accepted(lines, op))]

    async def warm(self, exchange: str, product: str) -> tuple[int, int]:
        """A product's empty hot windows filled from storage (the 1-minute one with the
        newest minutes, each rollup's by :meth:`warm_window`), then every timeframe's
        window read into the near cache. Returns (windows filled, windows held)."""
        if self.cache is None:
            return 0, 0
        cache = self.cache
        key = self.window_key(exchange, product, tfs.BASE)
        minutes = await cache.window(key)
        filled = 0
        if not minutes and self._influx is not None and \
                await self._warm_minutes(exchange, product):
            filled, minutes = 1, await cache.window(key)
        newest = minutes[-1].timestamp if minutes else None  # the newest stored minute

        async def rollup(timeframe: str) -> tuple[int, int]:
            key = self.window_key(exchange, product, timeframe)
            found = await cache.window(key)
            if not found and await self.warm_window(exchange, product, timeframe, newest):
                return 1, bool(await cache.window(key))
            return 0, bool(found)

        # (at once: influxd resamples each timeframe's range on a core of its own)
        done = await asyncio.gather(*(rollup(timeframe) for timeframe in self.spans
                                      if timeframe != tfs.BASE))
        return (filled + sum(f for f, _ in done),
                bool(minutes) + sum(h for _, h in done))

    async def _warm_minutes(self, exchange: str, product: str) -> int:
        """The 1-minute window filled with the newest stored minutes; how many."""
        size = self.config.performance.redis_hot_data_window
        stored = await self._history(exchange, product, None, None, size, None)
        accepted = self.intake.cache_candles(exchange, product, stored) if stored else None
        if accepted is None:
            return 0
        await self.intake.deliver(self.intake.begin(accepted))
        return len(stored)

    async def warm_window(self, exchange: str, product: str, timeframe: str,
                          newest: int | None = None) -> int:
        """Fill a rollup timeframe's hot window from the stored minutes (the maintenance
        actor's warm job, for a window found empty: history loaded without rollups, a
        Redis that lost its data, a window that expired): its newest closed buckets, the
        same candles the rollups would have put there (InfluxDB's resampling, which they
        equal), never the bucket still open, and as many as ``_WARM_MINUTES`` minutes
        make (a window of a thousand days would have influxd resample everything stored;
        a deeper warm-up resamples the rest as before). Nothing goes on the stream
        (nothing new closed). A window a writer filled meanwhile keeps what it holds: the
        push takes no candle older than the window's oldest. ``newest``: the newest
        stored minute's time, when known. Returns the candles put."""
        if not self.publishing or self._influx is None or timeframe == tfs.BASE:
            return 0  # (with streams off no rollup keeps such a window up to date)
        span = self.spans[timeframe]
        # buckets starting before it are closed
        bound = await self._closed_bound(exchange, product, timeframe) if newest is None \
            else self._over_before(exchange, product, newest, span)
        if bound is None:
            return 0
        size = self.config.performance.redis_hot_data_window
        count = min(size, max(1, _WARM_MINUTES * tfs.BASE_SECONDS // span))
        stored = await self._stored(exchange, product, timeframe, bound - count * span,
                                    bound - 1, count)
        if not stored:
            return 0
        op = op_push_candles(self.window_key(exchange, product, timeframe),
                             [_row(c) for c in stored], size,
                             self.config.redis.ttl.candles + self.spans[timeframe],
                             self.intake.near_on)
        await self.intake.deliver(self.intake.begin(Accepted([], op)))
        return len(stored)

    async def _work(self, key: Product, where: tuple[str, str, str],
                    queue: deque[tfs.Event]) -> None:
        """Recompute and publish, in order, what could not be published at once: the
        events at the head of the queue (up to ``_RECOMPUTED_TOGETHER`` buckets apart)
        in one delivery, the buckets to recompute (closed without every minute, or
        found late) from one read of the stored minutes, the complete closes between
        them as they are."""
        try:
            while queue:
                span = self.spans[where[2]]
                run: list[tfs.Event] = []
                lo = hi = queue[0].start
                for queued in queue:
                    lo, hi = min(lo, queued.start), max(hi, queued.start)
                    if hi - lo >= _RECOMPUTED_TOGETHER * span:
                        break
                    run.append(queued)
                again = [e.start for e in run
                         if not (isinstance(e, tfs.Closed) and e.complete)]
                rows = await self._recompute(key, where[2], again) if again else {}
                self.counters["rollups_recomputed"] += len(again)
                ready: list[tuple[str, Row]] = []
                done: set[int] = set()
                for e in run:
                    if isinstance(e, tfs.Closed) and e.complete:
                        ready.append((e.timeframe, e.row))
                    elif e.start in rows and e.start not in done:
                        done.add(e.start)  # (one bucket found late twice: once)
                        ready.append((e.timeframe, rows[e.start]))
                if ready:
                    for accepted in self._accepted(key, ready):
                        await self.intake.deliver(accepted)
                for _ in run:
                    queue.popleft()
        except (HubClosed, asyncio.CancelledError):
            raise
        except Exception:
            self.counters["rollup_failures"] += len(queue)
            log.exception("rollups of %s:%s %s could not be recomputed; %d dropped",
                          key[0], key[1], where[2], len(queue))
        finally:
            if self._pending.get(where) is queue:
                del self._pending[where]
                self._workers.pop(where, None)

    async def _recompute(self, key: Product, timeframe: str,
                         starts: list[int]) -> dict[int, Row]:
        """The rollups of buckets ``starts`` from the stored minutes, in one read (the
        hot window when it reaches back that far, else InfluxDB's resampling after a
        flush: the same floats, newest minute first); a bucket with no stored minute
        has none."""
        exchange, product = key
        span = self.spans[timeframe]
        shift = self.markets.shift(exchange, product)
        lo, hi = min(starts), max(starts) + span - 1
        wanted = set(starts)
        if self.cache is not None:
            minutes = await self.cache.window_range(self.window_key(exchange, product, tfs.BASE),
                                                    lo, hi, (hi + 1 - lo) // 60, hold=False)
            if minutes is not None:
                parts: dict[int, list[Row]] = {}
                for c in minutes:
                    start = tfs.bucket(c.timestamp, span, shift)
                    if start in wanted:
                        parts.setdefault(start, []).append(_row(c))
                return {start: tfs.aggregate(start, rows) for start, rows in parts.items()}
        if self._influx is None:
            return {}
        await self._flush()
        results = await self._influx(Query(ql.select_candles_resampled(
            exchange, product, lo, hi, (hi + 1 - lo) // span, timeframe,
            self.config.influxdb.rp_for("candle"), shift)))
        out: dict[int, Row] = {}
        for r in (r for result in results for r in result_rows(result)):
            start = int(r["time"])
            if start in wanted and r.get("open") is not None:
                out[start] = (start, float(r["open"]), float(r["high"]), float(r["low"]),
                              float(r["close"]), float(r["volume"]))
        return out

    async def recomputed(self) -> None:
        """Wait until the recomputes queued so far are published (the workers running
        now: each publishes its whole queue, what joins it meanwhile too)."""
        workers = list(self._workers.values())
        if workers:
            await asyncio.wait(workers)

    async def settle(self) -> None:
        """Wait until every recompute queued so far is published (tests, close)."""
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    async def close(self) -> None:
        """Publish the recomputes queued, then stop reading the streams (even when the
        wait was cut short: a reader left running would reconnect to a closed client)."""
        try:
            await self.settle()
        finally:
            if self.reader is not None:
                await self.reader.close()

    # ---- following -------------------------------------------------------------------

    def check(self, exchange: object, product: object, timeframe: object,
              warmup: object) -> tuple[str, str, str, int]:
        ex, pr = v.tag(exchange, "exchange"), v.tag(product, "product")
        if timeframe not in self.spans:
            raise ValidationError("timeframe", f"expected one of streams.timeframes "
                                               f"{list(self.spans)}, got {timeframe!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValidationError("warmup", f"expected a whole number >= 0, got {warmup!r}")
        return ex, pr, str(timeframe), warmup

    async def follow(self, exchange: str, product: str, timeframe: str,
                     warmup: int) -> AsyncGenerator[LiveCandle, None]:
        if not self.settings.enabled:
            raise BackendUnavailable("streams", "disabled in the config (streams.enabled)")
        if self.cache is None or self.reader is None:
            raise BackendUnavailable("redis", "candle streams need Redis (redis.enabled)")
        stream_key = self.stream_key(exchange, product)
        snap, since = await self._start(exchange, product, timeframe, max(warmup, 1))
        follower = self.reader.follow(stream_key, snap.last_id, snap.number)
        try:
            history = snap.candles[-warmup:] if warmup else []
            if len(history) < warmup:
                before = history[0].timestamp if history else await self._closed_bound(
                    exchange, product, timeframe)
                if history:  # (older ones another process wrote are stored first)
                    await self._posted(exchange, product, history[0].timestamp)
                if before is not None:
                    history = await self._stored(exchange, product, timeframe, None,
                                                 before - 1, warmup - len(history)) + history
            # the newest candle delivered, or before the first the hand-over time: an
            # entry not newer (a correction, a hole filled late) is a revision
            last = since
            for candle in history:
                last = candle.timestamp
                yield _live(candle, timeframe, False)
            while True:
                entries = await follower.take()
                if entries is None:  # fell behind the buffer, or Redis was lost a moment
                    missed, at, number = await self._catch_up_patiently(
                        follower, exchange, product, timeframe, last)
                    # the candles after its last from storage; corrections of ones it
                    # took, published meanwhile, from the ring's list of revisions
                    revised = follower.revisions(parse_id(at))
                    follower.restart(parse_id(at), number)
                    if revised is None:
                        self.counters["catch_ups_without_revisions"] += 1
                    else:
                        for candle in _revisions(revised, timeframe, last):
                            yield candle
                    for k, candle in enumerate(missed, 1):
                        if k % _TURN == 0:
                            await asyncio.sleep(0)  # (as below)
                        last = candle.timestamp
                        yield _live(candle, timeframe, False)
                    continue
                for piece in range(0, len(entries), _TURN):
                    if piece:
                        # a burst (a packed entry holds up to 1,024 candles): let the loop
                        # run now and then, so a thousand subscribers taking it one after
                        # another never hold it for long (the reader's XREAD timed out
                        # behind them, and every subscriber then caught up from storage)
                        await asyncio.sleep(0)
                    for entry in entries[piece:piece + _TURN]:
                        candle = entry.candle
                        if candle.timeframe != timeframe:
                            continue
                        if last is None or candle.timestamp > last:
                            last = candle.timestamp
                            yield candle if not candle.revision else _live(
                                candle, timeframe, False)
                        elif candle.revision:
                            yield candle
        finally:
            follower.close()

    async def _snapshot(self, exchange: str, product: str, timeframe: str,
                        count: int) -> Snapshot:
        """A subscription's starting point: the newest ``count`` candles of the window
        and the stream's last id, this process's reader following the stream from
        then on (its presence set)."""
        assert self.cache is not None and self.reader is not None
        stream_key = self.stream_key(exchange, product)
        # (this process's rollups published from here on are tagged: see actors.stream)
        self.reader.expect(stream_key)
        try:
            snap = await self.cache.perform(op_snapshot(
                self.window_key(exchange, product, timeframe), stream_key, count,
                self.reader.id, self.reader.presence_ms))
        finally:
            self.reader.expected(stream_key)
        if not snap.followed:  # this process's other subscribers there lost continuity
            self.reader.lapsed(stream_key)
        return snap

    async def _start(self, exchange: str, product: str, timeframe: str,
                     count: int) -> tuple[Snapshot, int | None]:
        """The snapshot a subscription starts from, and its hand-over time: every
        candle closed before it is at or before that time (the window's newest, or with
        an empty window the newest stored in InfluxDB; ``_NOTHING`` when nothing is
        stored). A subscriber that falls behind before it took a candle catches up from
        there, not from the window's oldest. None: InfluxDB could not say (the catch-up
        then takes what the window holds)."""
        snap = await self._snapshot(exchange, product, timeframe, count)
        if snap.candles:
            return snap, snap.candles[-1].timestamp
        if self._influx is None:
            return snap, _NOTHING
        try:
            newest = await self._newest_stored(exchange, product)
        except BackendUnavailable as exc:
            log.debug("subscribing to %s:%s %s: no stored time to start from: %s",
                      exchange, product, timeframe, exc)
            return snap, None
        # asked again after InfluxDB answered: a candle published before this snapshot
        # is in its window, or (the window still empty) was stored before the answer
        snap = await self._snapshot(exchange, product, timeframe, count)
        if snap.candles:
            return snap, snap.candles[-1].timestamp
        if newest is None:
            return snap, _NOTHING
        if timeframe == tfs.BASE:
            return snap, newest
        span = self.spans[timeframe]
        return snap, self._over_before(exchange, product, newest, span) - span

    async def _newest_stored(self, exchange: str, product: str) -> int | None:
        """The newest stored minute's time (None: none is), asked after the call began
        (this process's own minutes flushed first): subscriptions starting together
        share one question, never one that had begun before they called."""
        key = (exchange, product)
        question = self._newest_asked.get(key)
        if question is None or question.begun:
            question = self._newest_asked[key] = _Question()

            async def ask(question: _Question) -> int | None:
                question.begun = True
                try:
                    await self._flush()
                    newest = await self._history(exchange, product, None, None, 1, None)
                finally:
                    if self._newest_asked.get(key) is question:
                        del self._newest_asked[key]
                return newest[-1].timestamp if newest else None
            question.answer = asyncio.ensure_future(ask(question))
            # (its callers may all be gone by the time it fails: nothing to report then)
            question.answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        assert question.answer is not None
        return await asyncio.shield(question.answer)

    async def _closed_bound(self, exchange: str, product: str,
                            timeframe: str) -> int | None:
        """With an empty window: the end of the newest bucket known closed (the minute
        after the newest stored one lies beyond it); None when nothing is stored."""
        if timeframe == tfs.BASE:
            return (1 << 62) // 10 ** 9  # every stored minute is closed
        newest = await self._history(exchange, product, None, None, 1, None)
        if not newest:
            return None
        return self._over_before(exchange, product, newest[-1].timestamp, self.spans[timeframe])

    def _over_before(self, exchange: str, product: str, newest: int, span: int) -> int:
        """Buckets of ``span`` starting before this are over, the newest stored minute
        starting at ``newest``: the bucket after that minute's, and that minute's own
        too once its market closed for the rest of it (``close_grace`` seconds ago, as
        the rollups' timer closes it)."""
        after = newest + tfs.BASE_SECONDS
        market = self.markets.get(exchange, product)
        bound = tfs.bucket(after, span, market.shift if market is not None else 0)
        if market is not None and bound < after and time.time() >= market.bucket_over(
                after, bound + span) + self.settings.close_grace:
            bound += span
        return bound

    async def _stored(self, exchange: str, product: str, timeframe: str, lo: int | None,
                      hi: int | None, limit: int) -> list[Candle]:
        if limit <= 0:
            return []
        await self._flush()
        interval = None if timeframe == tfs.BASE else timeframe
        return await self._history(exchange, product, lo, hi, limit, interval)

    async def _catch_up_patiently(self, follower: Follower, exchange: str, product: str,
                                  timeframe: str, last: int | None
                                  ) -> tuple[list[Candle], bytes, int | None]:
        """``_catch_up``, retried (capped backoff) while a backend cannot answer: the
        subscriber waits out an outage and goes on without a hole."""
        backoff = Backoff(first=0.05, cap=2.0)
        while True:
            if follower.ring.closed:
                raise HubClosed("the hub closed this stream")
            try:
                return await self._catch_up_shared(exchange, product, timeframe, last)
            except BackendUnavailable as exc:
                log.debug("catching up %s:%s %s waits: %s", exchange, product, timeframe, exc)
                await backoff.sleep()

    async def _catch_up_shared(self, exchange: str, product: str, timeframe: str,
                               last: int | None) -> tuple[list[Candle], bytes, int | None]:
        """``_catch_up``, one read for every subscriber at the same place: after a
        reconnect, a thousand subscribers of one product read storage once."""
        where = (exchange, product, timeframe, last)
        flight = self._catch_ups.get(where)
        if flight is None:
            flight = asyncio.ensure_future(self._catch_up(exchange, product, timeframe, last))
            self._catch_ups[where] = flight
            flight.add_done_callback(lambda _: self._catch_ups.pop(where, None))
        return await asyncio.shield(flight)

    async def _catch_up(self, exchange: str, product: str, timeframe: str,
                        last: int | None) -> tuple[list[Candle], bytes, int | None]:
        """The stored candles after ``last`` (None: the window's, InfluxDB unable to
        say where the subscription began), and the stream id (and entry number) they
        reach."""
        snap = await self._snapshot(exchange, product, timeframe,
                                    self.config.performance.redis_hot_data_window)
        fresh = [c for c in snap.candles if last is None or c.timestamp > last]
        if last is None:
            self.counters["catch_ups"] += 1
            return fresh, snap.last_id, snap.number
        top = snap.oldest - 1 if snap.oldest is not None else await self._closed_bound(
            exchange, product, timeframe)
        if top is not None and (snap.oldest is None or snap.oldest > last + 1):
            if snap.oldest is None:
                top -= 1
            else:
                await self._posted(exchange, product, snap.oldest)
            older = await self._stored(exchange, product, timeframe,
                                       None if last == _NOTHING else last + 1, top,
                                       _CATCH_UP_LIMIT)
            fresh = [c for c in older if c.timestamp > last] + fresh
        self.counters["catch_ups"] += 1
        return fresh, snap.last_id, snap.number

    async def _posted(self, exchange: str, product: str, at: int) -> None:
        """Wait until InfluxDB holds a minute at or after ``at`` (the oldest candle in
        the hot window): the minutes a catch-up reads from InfluxDB are older, and
        another process's writer may not have posted them yet (it posts every
        ``influxdb.batch.flush_interval``). A writer posts its lines in the order it
        accepted them, so once a later minute is there, the older ones are too. Waits
        at most ``flush_interval + influxdb.timeout``; past that (the writer gone, or
        InfluxDB failing), goes on with what is stored, counted in
        ``catch_ups_unconfirmed`` and logged."""
        if self._influx is None:
            return
        influx = self.config.influxdb
        query = Query(ql.select_candles(exchange, product, at, None, 1,
                                        influx.rp_for("candle")))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + influx.batch.flush_interval + influx.timeout
        backoff = Backoff(first=0.01, cap=max(0.01, influx.batch.flush_interval / 4))
        while not _candles_in(await self._influx(query)):
            if loop.time() >= deadline:
                self.counters["catch_ups_unconfirmed"] += 1
                log.warning("catching up %s:%s: InfluxDB holds no minute from %d on after "
                            "%.1fs; going on with what it has (minutes older than the hot "
                            "window may be missing)", exchange, product, at,
                            influx.batch.flush_interval + influx.timeout)
                return
            await backoff.sleep()

    def statistics(self) -> dict[str, Any]:
        return {**self.counters,
                "products": len(self.books),
                "open_buckets": sum(b.pending() for b in self.books.values()),
                "recomputes_queued": sum(len(q) for q in self._pending.values()),
                **(self.reader.statistics() if self.reader is not None else {})}


class _Question:
    """A question to storage several callers share while it has not begun."""

    __slots__ = ("answer", "begun")

    def __init__(self) -> None:
        self.answer: asyncio.Future[int | None] | None = None
        self.begun = False


def _row(c: Candle) -> Row:
    return (c.timestamp, c.open, c.high, c.low, c.close, c.volume)


def _revisions(entries: list[Entry], timeframe: str, last: int | None) -> list[LiveCandle]:
    """Of revisions published while a subscriber was behind, those of ``timeframe``
    at or before ``last`` (the newer ones its catch-up read from storage), the latest of
    each time, in time order (none when it took none: ``last`` None)."""
    latest: dict[int, LiveCandle] = {}
    for entry in entries:
        candle = entry.candle
        if last is not None and candle.timeframe == timeframe and candle.timestamp <= last:
            latest[candle.timestamp] = candle
    return [latest[ts] for ts in sorted(latest)]


def _live(c: Candle, timeframe: str, revision: bool) -> LiveCandle:
    return make_live_candle(c.timestamp, c.open, c.high, c.low, c.close, c.volume,
                            timeframe, revision)



def _candles_in(results: list[dict[str, Any]]) -> bool:
    return any(result_rows(result) for result in results)
