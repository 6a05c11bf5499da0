"""The synchronous front door: every fire-and-forget write is validated and encoded here
into an :class:`Accepted` message (on the caller's thread, so bad input raises before
anything is queued), then delivered to the actors; and hot reads are answered here
from the near cache without crossing a mailbox. The Hub's coroutines and the Wolfinch
drop-in (which calls it from its callers' threads) both go through it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actors.cache import CacheService
from actors.cache.ops import RedisOp, op_push_candles, op_set, pick
from actors.state import StateActor
from actors.writer import WriterActor
from hubdomain import influxql as ql
from hubdomain import jsonbytes, keys
from hubdomain import lineproto as lp
from hubdomain import validate as v
from hubdomain.config import HubConfig
from hubdomain.errors import BackendUnavailable, ValidationError
from hubdomain.fieldtypes import FieldTypes
from hubdomain.records import Candle, Row, candle_row, candle_rows
from hubdomain.resample import resample

log = logging.getLogger(__name__)

# write_candle calls delivered together at most (fewer when the hot window is smaller:
# a window push publishes only the rows the window keeps)
RUN_CAP = 256
# rows of a write_candles_batch accepted between two turns of the loop: a 5,000-candle
# batch at once held the loop ~15 ms (the writer's next POST, and every other coroutine,
# waited behind it)
PIECE = 1000
# seconds get_candles trusts having found that the store holds nothing older than a
# short hot window (another process may load older history meanwhile)
BOTTOM_SECONDS = 60.0

_INDICATOR_TAGS = frozenset({"exchange", "product", "name"})
_METRIC_TAGS = frozenset({"name"})
# deliveries plus lines queued between two turns of the loop a producer that never
# waits gives the actors (256 writes of one line; a 1,000-candle batch each)
_TURN_EVERY = 512


@dataclass(slots=True)  # not frozen: built per write on the hot path
class Accepted:
    """A validated, encoded fire-and-forget write: InfluxDB lines and/or one cache op.

    Built synchronously (so bad input raises at the call, before anything is queued)
    and delivered to the actors afterwards; the Wolfinch drop-in builds it on the
    caller's thread and delivers it from the hub's loop.
    """

    lines: list[str]
    cache: RedisOp[Any] | None = None
    # 1-minute candles written: (exchange, product, rows) for the rollups
    candles: tuple[str, str, list[Row]] | None = None


class Intake:
    def __init__(self, config: HubConfig, field_types: FieldTypes, counters: dict[str, int],
                 check_open: Callable[[], None]) -> None:
        self.config = config
        # Redis Cluster: keys carry a hash tag per product (see hubdomain.keys)
        self.tagged = config.redis.cluster is not None
        # trading sessions: each product's market (gaps, rollup closes, bucket starts)
        self.markets = config.calendars()
        self.field_types = field_types
        self.counters = counters
        self._check_open = check_open
        self.cache: CacheService | None = None  # set when the hub starts
        self.writer: WriterActor | None = None
        self.state: StateActor | None = None  # the outbox, for influxdb.durable
        # the rollups of written candles (hub._streams), when streams are on
        self.rollups: Callable[[str, str, list[Row]], list[Accepted]] | None = None
        # (exchange, product, stream, rows) -> the tag of a publication of written
        # minutes being built (hub._streams: this process's own, handed over early)
        self.minutes_tag: Callable[[str, str, str, list[Row]], str] | None = None
        self._delivered = 0
        # write_candle's runs: candles accepted and not yet delivered, per product
        self._runs: dict[tuple[str, str], list[Row]] = {}
        self._run_rows = 0
        self._run_cap = min(RUN_CAP, config.performance.redis_hot_data_window)
        self._stream_length = config.streams.length  # (minutes: see PUBLISH_MANY)
        self._seal_scheduled = False
        self._loop_thread: int | None = None  # set when the hub starts
        # products whose store holds no candle older than their hot window's oldest (or,
        # no window, none at all), found by get_candles: (that oldest time or None, the
        # monotonic time the finding is trusted until)
        self._bottoms: dict[tuple[str, str], tuple[int | None, float]] = {}

    def check_open(self) -> None:
        """Raises HubClosed unless the hub is open."""
        self._check_open()

    def blocked_reason(self) -> str:
        """Why writes wait (InfluxDB and the spool behind), for a refusal's message."""
        return self.writer.blocked_reason() if self.writer is not None else "the hub is behind"

    @property
    def near_on(self) -> bool:
        return self.cache is not None and self.cache.near is not None

    def begin(self, accepted: Accepted) -> Accepted:
        """Read-your-writes in this process: from now until the cache op has run, the
        near cache holds nothing for the keys it writes. Synchronous, any thread."""
        if accepted.cache is not None and self.cache is not None:
            accepted.cache = self.cache.prepare(accepted.cache)
        return accepted

    async def deliver(self, accepted: Accepted, patient: bool = False) -> None:
        """Queue an accepted write on the actors (waits only for mailbox room).

        When the writer cannot take more (InfluxDB and the spool are both behind), wait
        at most ``influxdb.timeout``, then raise BackendUnavailable saying why; nothing
        of this write is queued then (the rollups of its candles follow them without
        waiting). ``patient``: the write was acknowledged already (the Wolfinch drop-in's
        channel), so it waits as long as it takes."""
        op = accepted.cache
        queued = False
        state = self.state if self.config.influxdb.durable else None
        durable = state is not None
        try:
            if accepted.lines and self.writer is not None:
                if state is not None:  # a POST's worth of lines to an outbox row
                    group = self.config.influxdb.batch.size
                    rows = await state.outbox_add(accepted.lines, "durable", group)
                    self.writer.write_durable(accepted.lines, rows, group)
                elif not self.writer.offer_lines(accepted.lines):  # full: wait for room
                    await self.writer.write(accepted.lines, within=None if patient
                                            else self.config.influxdb.timeout)
            if op is not None and self.cache is not None and not self.cache.offer(op):
                await self.cache.enqueue(op)
            queued = True
            if accepted.candles is not None and self.rollups is not None:
                # the rollups of candles accepted: they follow them without waiting (but
                # into the outbox, in durable mode)
                for extra in self.rollups(*accepted.candles):
                    if durable:
                        await self.deliver(extra, patient)
                    else:
                        self.deliver_now(extra)
            # a producer that never waits must not starve the actors: let the loop run
            # now and then, by the writes and lines queued since the last turn (a
            # loop of 1,000-candle batches takes a turn each call: the writer's next
            # POST starts while the producer parses its next batch)
            self._delivered += 1 + len(accepted.lines)
            if self._delivered >= _TURN_EVERY:
                self._delivered = 0
                await asyncio.sleep(0)
        finally:
            if not queued and op is not None and self.cache is not None:
                self.cache.abandon(op)

    # ---- write_candle's runs ----------------------------------------------------------
    #
    # A feed or a replay calls write_candle once a candle; each call delivered alone
    # costs a line batch, a window push, a rollup step and two mailbox hops. On the
    # loop's thread the hub validates the candle at once (bad input raises, nothing is
    # kept) and adds it to its product's run (minutes in a run never go back in time);
    # the runs are delivered together on the next turn of the loop, or at once when
    # they reach RUN_CAP rows, or before anything else this hub does (another write, a
    # read, flush, close), so order and read-your-writes are as if each call were
    # delivered alone.

    def start_runs(self) -> None:
        """The hub's loop runs on this thread: runs are kept and sealed here only."""
        self._loop_thread = threading.get_ident()

    def can_gather(self) -> bool:
        """A write_candle may join a run: not durable (acknowledged once on disk, one
        by one), the writer is not behind and the cache's mailbox has room (else the
        call takes the waiting path, one candle a message, which raises
        BackendUnavailable when the writer stays full: a mailbox bounds messages, and a
        run is hundreds of lines)."""
        if self.config.influxdb.durable:
            return False
        writer, cache = self.writer, self.cache
        return (writer is None or not writer.behind) and (cache is None or not cache.full)

    def gather_candle(self, exchange: object, product: object, timestamp: object,
                      open_price: object, high: object, low: object, close: object,
                      volume: object) -> bool | None:
        """Validate a candle and add it to its product's run. True: the runs are due now
        (the caller awaits :meth:`deliver_runs`); None: no run can take it now
        (:meth:`can_gather`), the caller delivers it alone."""
        runs = self._runs
        if not runs and not self.can_gather():  # (an open run: checked when it began)
            return None
        # names equal to an open run's were checked when it began
        if type(exchange) is str and type(product) is str:
            key = (exchange, product)
            run = runs.get(key)
        else:
            run = None
        if run is None:
            key = _names(exchange, product)
            lp.check_candle_names(*key)
        row = candle_row(timestamp, open_price, high, low, close, volume)
        if run is None:
            run = runs.get(key)
        if run is not None and row[0] < run[-1][0]:
            # back in time: the run so far goes first, so the rollups see the minutes in
            # the order they were written (a correction of a closed bucket is a revision)
            self.seal()
            run = None
        if run is None:
            run = self._runs[key] = []
            if not self._seal_scheduled:
                self._seal_scheduled = True
                asyncio.get_running_loop().call_soon(self._sealed_by_loop)
        run.append(row)
        self._run_rows += 1
        return self._run_rows >= self._run_cap

    async def deliver_runs(self) -> None:
        """The runs are due: deliver them now, then let the loop run. Never waits for
        mailbox room: a coroutine waiting here while others go on writing would let
        their candles (and their reads) overtake ones acknowledged before. A full
        mailbox takes them past its bound, by a run at most, and the next call finds
        the writer behind and waits on the one-by-one path."""
        self.seal()
        await asyncio.sleep(0)

    def seal(self) -> None:
        """Deliver the runs now (synchronous, on the loop's thread; elsewhere a no-op):
        before anything else the hub does, so it sees them, in order."""
        if self._runs and threading.get_ident() == self._loop_thread:
            for accepted in self._take_runs():
                self.deliver_now(accepted)

    def _sealed_by_loop(self) -> None:
        self._seal_scheduled = False
        try:
            self.seal()
        except Exception:  # a closed mailbox: nothing else would see it
            log.exception("candles accepted by write_candle could not be queued")

    def _take_runs(self) -> list[Accepted]:
        runs, self._runs, self._run_rows = self._runs, {}, 0
        out = []
        for (exchange, product), rows in runs.items():
            out.append(self.begin(Accepted(
                lp.candle_lines(exchange, product, rows),
                self._window_op(exchange, product, rows, None, True),
                (exchange, product, rows) if self.rollups is not None else None)))
        return out

    def deliver_now(self, accepted: Accepted) -> None:
        """:meth:`deliver` without waiting: a full mailbox takes it past its bound (a run
        joins only while both had room, so by at most the runs' rows; a batch's later
        pieces follow its first, which waited for room, so by at most the batch)."""
        if accepted.lines and self.writer is not None \
                and not self.writer.offer_lines(accepted.lines):
            self.writer.push_lines(accepted.lines)
        op = accepted.cache
        if op is not None and self.cache is not None and not self.cache.offer(op):
            self.cache.push(op)
        if accepted.candles is not None and self.rollups is not None:
            for extra in self.rollups(*accepted.candles):
                self.deliver_now(extra)

    # ---- the Wolfinch drop-in's generic Redis API (keys it names itself) --------------

    async def command(self, command: tuple[Any, ...], decode: Callable[[Any], Any]) -> Any:
        """One Redis command on a key the caller names; ``decode`` turns the reply into
        the answer. Raises BackendUnavailable (HubError when Redis refuses it, or the
        reply cannot be decoded)."""
        if self.cache is None:
            raise BackendUnavailable("redis", "disabled in the config (redis.enabled)")
        return await self.cache.perform(RedisOp((command,), lambda replies: decode(replies[0])))

    async def matching(self, pattern: str) -> list[str]:
        """Keys matching a Redis glob (SCAN, never KEYS)."""
        if self.cache is None:
            return []
        return [key async for key in self.cache.keys(pattern)]

    async def redis_info(self) -> dict[str, Any]:
        return {} if self.cache is None else await self.cache.info()

    # ---- encoders: each validates everything before it builds anything ---------------

    def cache_indicator(self, exchange: object, product: object, indicator: object,
                             period: object, value: Any, ttl: object = None) -> Accepted:
        *_, key = _indicator_key(exchange, product, indicator, period, self.tagged)
        data = jsonbytes.dumps(v.json_value(value, "value"))
        seconds = self.config.redis.ttl.indicators if ttl is None else v.positive_int(ttl, "ttl")
        return Accepted([], op_set(key, data, seconds, self.near_on))

    def write_indicator(self, exchange: object, product: object, indicator_name: object,
                             timestamp: object, value: object,
                             tags: Mapping[str, Any]) -> Accepted:
        exchange, product = _names(exchange, product)
        name = v.tag(indicator_name, "indicator_name")
        ts = v.timestamp(timestamp, "timestamp")
        number = v.number(value, "value")
        extra = _tags(tags, _INDICATOR_TAGS)
        line = lp.indicator(exchange, product, name, ts, number, extra)
        if "period" not in extra:
            return Accepted([line])
        key = keys.indicator(exchange, product, name, extra["period"], self.tagged)
        return Accepted([line], op_set(key, jsonbytes.dumps(number),
                                       self.config.redis.ttl.indicators, self.near_on))

    def write_candle(self, exchange: object, product: object, timestamp: object,
                          open_price: object, high: object, low: object, close: object,
                          volume: object) -> Accepted:
        exchange, product = _names(exchange, product)
        rows = [candle_row(timestamp, open_price, high, low, close, volume)]
        return Accepted(lp.candle_lines(exchange, product, rows),
                        self._window_op(exchange, product, rows, None, True),
                        (exchange, product, rows) if self.rollups is not None else None)

    def write_candles(self, exchange: object, product: object, candles: object,
                      window: bool = True) -> tuple[Accepted | None, int]:
        exchange, product = _names(exchange, product)
        rows = candle_rows(candles)
        return self._whole(exchange, product, rows, window), len(rows)

    def _whole(self, exchange: str, product: str, rows: list[Row],
               window: bool) -> Accepted | None:
        if not rows:
            return None
        return Accepted(lp.candle_lines(exchange, product, rows),
                        self._window_op(exchange, product, rows, None, True) if window else None,
                        (exchange, product, rows) if window and self.rollups is not None
                        else None)

    @staticmethod
    def checked_batch(exchange: object, product: object,
                      candles: object) -> tuple[str, str, list[Row]]:
        """The names and the rows of a batch, validated whole (bad input raises)."""
        exchange, product = _names(exchange, product)
        return exchange, product, candle_rows(candles)

    def row_pieces(self, exchange: str, product: str, rows: list[Row],
                   window: bool) -> Iterator[Accepted]:
        """``write_candles`` for a batch of checked rows (:meth:`checked_batch`), encoded
        a piece of PIECE rows at a time, for the caller to deliver with a turn of the
        loop between pieces. Only strictly ascending batches are cut (durable mode too
        takes a batch whole: one outbox commit); a piece pushes to the hot window only
        its rows among the batch's newest ``redis_hot_data_window``, the only ones the
        window keeps (and publishes) of a whole batch."""
        count = len(rows)
        if count <= PIECE or self.config.influxdb.durable \
                or any(rows[i][0] >= rows[i + 1][0] for i in range(count - 1)):
            whole = self._whole(exchange, product, rows, window)
            return iter(() if whole is None else (whole,))
        return self._pieces(exchange, product, rows, window)

    def _pieces(self, exchange: str, product: str, rows: list[Row],
                window: bool) -> Iterator[Accepted]:
        kept = len(rows) - self.config.performance.redis_hot_data_window
        rollups = window and self.rollups is not None
        for i in range(0, len(rows), PIECE):
            piece = rows[i:i + PIECE]
            newest = piece[max(0, kept - i):] if window else []
            # (the first piece pushing says how many older ones it withholds)
            withheld = max(0, kept) if newest and i <= kept else 0
            yield Accepted(lp.candle_lines(exchange, product, piece),
                           self._window_op(exchange, product, newest, None, True, withheld)
                           if newest else None,
                           (exchange, product, piece) if rollups else None)

    def cache_candles(self, exchange: object, product: object, candles: object,
                           max_candles: object = None) -> Accepted | None:
        exchange, product = _names(exchange, product)
        checked = candle_rows(candles)
        window = None if max_candles is None else v.positive_int(max_candles, "max_candles")
        if not checked or self.cache is None:
            return None
        return Accepted([], self._window_op(exchange, product, checked, window))

    def _window_op(self, exchange: str, product: str, rows: list[Row],
                   window: int | None, publish: bool = False,
                   withheld: int = 0) -> RedisOp[int]:
        """The hot-window push; ``publish``: written candles, also published on the
        product's stream when streams are on (``cache_candles`` only fills the window),
        ``withheld`` older ones written before them never pushed (subscribers are told,
        see PUBLISH_MANY)."""
        size = window or self.config.performance.redis_hot_data_window
        stream = keys.key("candlestream", exchange, product, tagged=self.tagged) \
            if publish and self.config.streams.enabled else None
        tag = self.minutes_tag(exchange, product, stream, rows) \
            if stream is not None and self.minutes_tag is not None else ""
        return op_push_candles(keys.candles(exchange, product, self.tagged), rows, size,
                               self.config.redis.ttl.candles, self.near_on, stream, "1m",
                               self._stream_length, tag, withheld)

    def write_metric(self, metric_name: object, value: object,
                          tags: Mapping[str, Any]) -> Accepted:
        name = v.tag(metric_name, "metric_name")
        number = v.number(value, "value")
        extra = _tags(tags, _METRIC_TAGS)
        return Accepted([lp.metric(name, number, extra, round(time.time(), 6))])

    def write_point(self, measurement: object, tags: object, fields: object,
                         timestamp: object) -> Accepted:
        name = v.measurement(measurement, "measurement")
        tag_values = _point_tags(tags)
        if fields is None or not isinstance(fields, Mapping):
            raise ValidationError("fields", "expected a mapping of field names to values")
        types = self.field_types
        values = {v.field_key(k, "fields"): types.value(name, str(k), val, "fields")
                  for k, val in fields.items() if val is not None}
        if not values:
            raise ValidationError("fields", "a point needs at least one field")
        ts = round(time.time(), 6) if timestamp is None else v.timestamp(timestamp, "timestamp")
        line = lp.any_point(name, tag_values, values, lp.seconds_to_ns(ts))
        types.claim([(name, values)], "fields")
        return Accepted([line])

    def points(self, points: list[lp.ParsedPoint]) -> Accepted:
        """Points read from a caller's line protocol (the drop-in's write_api): names
        checked, field types checked against InfluxDB's and each other, re-encoded."""
        lines = []
        for point in points:
            measurement = v.measurement(point.measurement, "record")
            tags = {_tag_key(k, "record"): v.tag(val, "record")
                    for k, val in point.tags.items()}
            fields = {v.field_key(k, "record"): val for k, val in point.fields.items()}
            if not fields:
                raise ValidationError("record", f"a point of {measurement!r} has no fields")
            ns = time.time_ns() if point.ns is None else point.ns
            lines.append(lp.any_point(measurement, tags, fields, ns))
        self.field_types.claim([(p.measurement, p.fields) for p in points], "record")
        return Accepted(lines)

    # ---- hot reads: the near cache's answers, synchronous, any thread ----------------

    def hot_indicator(self, exchange: object, product: object, indicator: object,
                       period: object) -> tuple[bool, Any]:
        """(True, value) when the near cache holds the indicator, else (False, None);
        synchronous, so the Wolfinch drop-in answers it on the caller's thread."""
        *_, key = _indicator_key(exchange, product, indicator, period, self.tagged)
        self._check_open()
        return (False, None) if self.cache is None else self.cache.held(key)

    def hot_newest(self, exchange: object, product: object, count: object
                    ) -> tuple[str, str, int, list[Candle] | None]:
        """Validated arguments of get_candles, and its answer when the near cache holds
        the product's hot window (synchronous, any thread)."""
        exchange, product = _names(exchange, product)
        number = v.positive_int(count, "count")
        self._check_open()
        window = self._held_window(exchange, product)
        if window is None or not self.whole(exchange, product, window, number):
            return exchange, product, number, None
        return exchange, product, number, list(window[-number:])

    def whole(self, exchange: str, product: str, window: Sequence[Candle], count: int
              ) -> bool:
        """Whether the hot window alone answers get_candles(count): it holds as many as
        asked (or a whole window's worth), or the store was found to hold nothing older
        than its oldest (a young product; the finding is trusted for BOTTOM_SECONDS).
        A window shorter than that (it expired after a pause longer than
        ``redis.ttl.candles``, or Redis lost it, and candles were written since) is
        completed from InfluxDB."""
        if len(window) >= min(count, self.config.performance.redis_hot_data_window):
            return True
        bottom = self._bottoms.get((exchange, product))
        return bottom is not None and time.monotonic() < bottom[1] and \
            bottom[0] == (window[0].timestamp if window else None)

    def found_bottom(self, exchange: str, product: str, oldest: int | None) -> None:
        """The store holds no candle older than ``oldest`` (None: none at all)."""
        if len(self._bottoms) >= 10_000:
            self._bottoms.clear()
        self._bottoms[(exchange, product)] = (oldest, time.monotonic() + BOTTOM_SECONDS)

    def _held_window(self, exchange: str, product: str) -> tuple[Candle, ...] | None:
        if self.cache is None:
            return None
        held, window = self.cache.held(keys.candles(exchange, product, self.tagged))
        return window if held else None

    def range_args(self, exchange: object, product: object, start_time: object,
                   end_time: object, limit: object) -> tuple[str, str, int | None, int | None,
                                                             int]:
        """Validated names, whole-second bounds and limit of a candle range query."""
        exchange, product = _names(exchange, product)
        start = v.optional_timestamp(start_time, "start_time")
        end = v.optional_timestamp(end_time, "end_time")
        count = v.positive_int(limit, "limit")
        lo = None if start is None else math.ceil(start)
        hi = None if end is None else math.floor(end)
        if lo is not None and hi is not None and hi < lo:
            raise ValidationError("end_time", "end_time is before start_time")
        return exchange, product, lo, hi, count

    def hot_query(self, exchange: object, product: object, start_time: object,
                   end_time: object, limit: object, interval: object
                   ) -> tuple[str, str, int | None, int | None, int, list[Candle] | None]:
        """Validated arguments of query_candles, and its answer when the near cache's hot
        window holds all of it (synchronous, any thread)."""
        exchange, product, lo, hi, count = self.range_args(exchange, product, start_time,
                                                           end_time, limit)
        span = None
        if interval is not None:
            if not isinstance(interval, str):
                raise ValidationError("interval", f"expected a string like '1h', got {interval!r}")
            span = ql.interval_seconds(interval)  # validates before anything runs
        self._check_open()
        window = self._held_window(exchange, product)
        if not window:
            hot = None
        elif span is None:
            hot = pick(window, lo, hi, count)
        else:
            hot = resample(window, span, lo, hi, count,
                           self.markets.shift(exchange, product))
        if hot is not None:
            self.counters["candle_window_hits"] += 1
        return exchange, product, lo, hi, count, hot


def _names(exchange: object, product: object) -> tuple[str, str]:
    return v.tag(exchange, "exchange"), v.tag(product, "product")


def _tags(tags: Mapping[str, object], reserved: frozenset[str]) -> dict[str, str]:
    out = {}
    for key, value in tags.items():
        name = v.tag(key, "tags")
        if name in reserved or name == "time":
            raise ValidationError(key, f"{name!r} is set by the hub and cannot be a tag")
        out[name] = v.tag(value, key)
    return out


def _point_tags(tags: object) -> dict[str, str]:
    """write_point's tags: names to strings or numbers; None values are left out."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValidationError("tags", "expected a mapping of tag names to values")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if value is None:
            continue
        name = _tag_key(key, "tags")
        out[name] = v.tag_value(value, name)
    return out


def _tag_key(key: object, argument: str) -> str:
    name = v.tag(key, argument)
    if name == "time":
        raise ValidationError(argument, "'time' cannot be a tag key (InfluxDB refuses it)")
    return name


def _indicator_key(exchange: object, product: object, indicator: object,
                   period: object, tagged: bool) -> tuple[str, str, str, str, str]:
    """Validated names and the Redis key, remembered: a strategy asks for the same few
    indicators over and over, and the hot read should cost a dict lookup."""
    try:
        return _indicator_key_cached(exchange, product, indicator, period, tagged)
    except TypeError:  # unhashable: validate uncached, which raises ValidationError
        return _indicator_key_uncached(exchange, product, indicator, period, tagged)


def _indicator_key_uncached(exchange: object, product: object, indicator: object,
                            period: object, tagged: bool) -> tuple[str, str, str, str, str]:
    ex, pr = v.tag(exchange, "exchange"), v.tag(product, "product")
    name, per = v.tag(indicator, "indicator"), v.tag(period, "period")
    return ex, pr, name, per, keys.indicator(ex, pr, name, per, tagged)


# typed: period 1 and True must not share an entry (True is refused)
_indicator_key_cached = functools.lru_cache(maxsize=65_536, typed=True)(
    _indicator_key_uncached)
