"""Timeframes and rollups: 1-minute candles rolled up into 5m, 15m, 1h... without
look-ahead. Pure (no I/O), so the rules are unit-tested on their own.

A bucket of timeframe T starts at a multiple of T seconds since the Unix epoch (as
InfluxDB's ``GROUP BY time(T)`` aligns them, so a rollup equals the database's
resampling over the same candles), except that a timeframe of whole weeks starts on a
Monday at 00:00 UTC, as TradingView draws weeks (the epoch fell on a Thursday: the
hub asks InfluxDB for ``GROUP BY time(T, 4d)``, :func:`offset`). Every timeframe is
built from the 1-minute candles themselves (first open, max high, min low, last close,
the volumes summed in the order the database sums them): the same floats InfluxDB
computes, to the last bit; in memory, each from the largest smaller timeframe whose
buckets lie whole in its own (:func:`chains`).

:class:`Book` holds one product's open buckets and says when each one closes:

- its last part arrives (the 1m candle at 10:04 closes the 10:00 5m bucket), or
- a part of a later bucket arrives (the feed skipped the rest), or
- :meth:`Book.expire`: the wall clock is ``close_grace`` seconds past the bucket's end and
  the bucket is *live* (its newest part arrived within a minute plus ``close_grace`` of
  that part's end). A replay of history written faster than real time is never live,
  so the timer never cuts it into partial candles. For a product of a market with
  trading sessions (:mod:`hubdomain.markets`), the bucket's end is when the market
  closes for the rest of it, when that is sooner (a daily candle closes at the
  session's end).

A close is ``complete`` when every part of the bucket was seen here; an incomplete one
(a stalled feed, a restart mid-bucket, candles written by another process) is to be
recomputed from the stored 1-minute candles before it is published. A part that arrives
for a bucket already closed makes that bucket :class:`Late`: recomputed and republished
as a revision.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from hubdomain.errors import ValidationError
from hubdomain.markets import Market

Row = tuple[int, float, float, float, float, float]  # time, open, high, low, close, volume

_HIGH = operator.itemgetter(2)
_LOW = operator.itemgetter(3)
_VOLUME = operator.itemgetter(5)

BASE = "1m"
BASE_SECONDS = 60
DEFAULT_TIMEFRAMES = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")

_TF = re.compile(r"^([1-9][0-9]*)(m|h|d|w)$")
_UNIT = {"m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def seconds(timeframe: object, argument: str = "timeframe") -> int:
    """'5m' -> 300; a timeframe is a whole number of minutes, hours, days or weeks."""
    if not isinstance(timeframe, str):
        raise ValidationError(argument, f"expected a timeframe like '5m', got {timeframe!r}")
    match = _TF.match(timeframe)
    if match is None:
        raise ValidationError(
            argument, f"expected a timeframe like '1m', '5m', '1h', '1d', got {timeframe!r}")
    return int(match.group(1)) * _UNIT[match.group(2)]


WEEK = 604_800
_MONDAY = 4 * 86_400  # 1970-01-05, the first Monday after the epoch


def offset(span: int, shift: int = 0) -> int:
    """Where buckets of ``span`` seconds start, past the multiples of ``span`` since the
    epoch: on Mondays for whole weeks (1w, 2w, 7d), else nothing; ``shift`` seconds
    later for a market whose buckets start at its session's open (hubdomain.markets)."""
    return ((_MONDAY % span if span % WEEK == 0 else 0) + shift) % span


def bucket(ts: int, span: int, shift: int = 0) -> int:
    """Start of the bucket of ``span`` seconds holding ``ts`` (epoch-aligned; weeks from
    a Monday; ``shift``: see :func:`offset`)."""
    return ts - (ts - offset(span, shift)) % span


def aggregate(start: int, parts: Iterable[Row]) -> Row:
    """One candle at ``start`` from its minutes: first open, max high, min low, last
    close, and the volumes summed newest to oldest (see :func:`volume`)."""
    ordered = sorted(parts, key=lambda r: r[0])
    if not ordered:
        raise ValueError("a rollup needs at least one candle")
    return (start, ordered[0][1], max(r[2] for r in ordered), min(r[3] for r in ordered),
            ordered[-1][4], volume([r[5] for r in ordered]))


def volume(ascending: list[float]) -> float:
    """A bucket's volume: its minutes' volumes (oldest first) added newest to oldest,
    the order InfluxDB adds them for ``query_candles(interval=...)``, whose query reads
    newest first (``ORDER BY time DESC``): float addition depends on the order, and
    the rollups equal the database's resampling to the last bit."""
    if _SUM_ADDS_IN_ORDER:
        return sum(reversed(ascending), 0.0)
    return functools.reduce(operator.add, reversed(ascending), 0.0)


# sum() of floats adds them one by one, in order, in C (4x the speed of reduce) up to
# Python 3.11; from 3.12 on it compensates the rounding: another float
_SUM_ADDS_IN_ORDER = sys.version_info < (3, 12)


def plan(timeframes: Sequence[str]) -> list[tuple[str, int, str]]:
    """(timeframe, seconds, largest smaller timeframe dividing it) for each rollup,
    smallest first. Checks that every timeframe is whole minutes and that 1m is listed."""
    spans = {}
    for tf in timeframes:
        spans[tf] = seconds(tf, "streams.timeframes")
        if spans[tf] % BASE_SECONDS:
            raise ValidationError("streams.timeframes", f"{tf!r} is not whole minutes")
    if BASE not in spans:
        raise ValidationError("streams.timeframes", "the list must hold '1m' (what the others "
                                                    "are built from)")
    if len(set(spans.values())) != len(spans):
        raise ValidationError("streams.timeframes", "two names for the same timeframe")
    ordered = sorted(spans, key=spans.__getitem__)
    out = []
    for i, tf in enumerate(ordered[1:], 1):
        # a smaller timeframe whose buckets fit whole in this one's (a week's from
        # Monday hold whole days, not whole 2-day buckets since the epoch)
        source = max((s for s in ordered[:i] if spans[tf] % spans[s] == 0
                      and (offset(spans[tf]) - offset(spans[s])) % spans[s] == 0),
                     key=spans.__getitem__)
        out.append((tf, spans[tf], source))
    return out


class Closed(NamedTuple):
    """Bucket ``start`` of ``timeframe`` closed. ``row``: its candle from the minutes
    seen here; ``complete``: every minute was seen once, in order (else recompute it
    from the stored minutes before publishing)."""

    timeframe: str
    start: int
    row: Row
    complete: bool


class Late(NamedTuple):
    """A minute arrived for bucket ``start`` of ``timeframe`` after it closed:
    recompute from storage and republish (a revision)."""

    timeframe: str
    start: int


Event = Closed | Late


@dataclass(slots=True)
class _Open:
    start: int
    first: int  # time of the first minute in it
    last: int  # time of the last minute in it
    open: float
    high: float
    low: float
    close: float
    volumes: list[float]  # the minutes' volumes, oldest first
    minutes: int
    whole: bool  # every minute came once, in order, from its bucket's start
    live: bool = False

    def row(self) -> Row:
        return (self.start, self.open, self.high, self.low, self.close, volume(self.volumes))


@dataclass(slots=True)
class _Level:
    timeframe: str
    span: int
    offset: int  # where its buckets start past multiples of span (Mondays for weeks)
    open: _Open | None = None
    closed_before: int | None = None  # buckets starting before this are closed


def _once(events: list[Event]) -> list[Event]:
    """Each bucket found late once (many late minutes of one bucket: one recompute)."""
    seen: set[Late] = set()
    out: list[Event] = []
    for event in events:
        if isinstance(event, Late):
            if event in seen:
                continue
            seen.add(event)
        out.append(event)
    return out


def _nests(small: _Level, large: _Level) -> bool:
    """Every bucket of ``small`` lies whole in one of ``large``."""
    return large.span % small.span == 0 and (large.offset - small.offset) % small.span == 0


def chains(timeframes: Sequence[str]) -> list[list[str]]:
    """The rollup timeframes as chains, each fed by the one before it (the first by the
    minutes): a timeframe goes after the largest last timeframe of a chain whose buckets
    fit whole in its own, else starts a chain of its own. The usual timeframes (5m, 15m,
    30m, 1h, 4h, 1d) are one chain; 3m beside 5m, or 3d beside 1w, are not."""
    return [[level.timeframe for level in chain] for chain in _chains(timeframes)]


def _chains(timeframes: Sequence[str], shift: int = 0) -> list[list[_Level]]:
    out: list[list[_Level]] = []
    for tf, span, _ in plan(timeframes):
        level = _Level(tf, span, offset(span, shift))
        fits = [chain for chain in out if _nests(chain[-1], level)]
        if fits:
            max(fits, key=lambda chain: chain[-1].span).append(level)
        else:
            out.append([level])
    return out


class Book:
    """One product's open buckets, for every rollup timeframe: one :class:`_Chain` per
    chain of timeframes (:func:`chains`; the usual ones make one), each fed every minute.
    Their events are merged by the time the buckets end (smaller timeframes first at the
    same end), each chain's own order kept."""

    def __init__(self, timeframes: Sequence[str], close_grace: float,
                 market: Market | None = None) -> None:
        self.close_grace = close_grace
        self.chains = [_Chain(levels, close_grace, market)
                       for levels in _chains(timeframes, market.shift if market else 0)]
        self._one = self.chains[0] if len(self.chains) == 1 else None
        self._spans = {level.timeframe: level.span
                       for chain in self.chains for level in chain.levels}

    def add(self, row: Row, now: float) -> list[Event]:
        """A closed 1-minute candle: the buckets it closes, smaller timeframes first,
        and the closed buckets it arrived too late for."""
        if self._one is not None:
            return self._one.add(row, now)
        return self._merged([chain.add(row, now) for chain in self.chains])

    def add_many(self, rows: Sequence[Row], now: float,
                 times: list[int] | None = None) -> list[Event]:
        """``add`` for each of many minutes (``times``: their times, when the caller
        has them): the same events."""
        if self._one is not None:
            return self._one.add_many(rows, now, times)
        if times is None and self.chains:
            times = [row[0] for row in rows]
        return self._merged([chain.add_many(rows, now, times) for chain in self.chains])

    def expire(self, now: float) -> list[Event]:
        """Close the live buckets whose end is ``close_grace`` seconds past (a stalled
        feed); smaller timeframes first."""
        if self._one is not None:
            return self._one.expire(now)
        return self._merged([chain.expire(now) for chain in self.chains])

    def pending(self) -> int:
        """Open buckets (for the stats)."""
        return sum(chain.pending() for chain in self.chains)

    def _merged(self, parts: list[list[Event]]) -> list[Event]:
        """The chains' events by the time their buckets end, smaller timeframes first
        at one end. A chain's own list is not in that order when it finds buckets late
        (a late minute's larger bucket before its smaller one), so the lists are sorted
        together rather than merged; the sort is stable, so events ending together keep
        their chain's order."""
        spans = self._spans

        def end(event: Event) -> tuple[int, int]:
            span = spans[event.timeframe]
            return event.start + span, span
        return sorted(itertools.chain.from_iterable(parts), key=end)


class _Chain:
    """Open buckets of a chain of timeframes, each one's buckets whole in the next's.

    Minutes go into the smallest timeframe; each bucket that closes goes, whole, into
    the next timeframe up (its minutes' volumes with it, so every timeframe's volume is
    the same float sum, in the same order, as the database's ``sum("volume")`` over its
    minutes, :func:`volume`). A minute in order touches one timeframe; a bucket opening
    tells the larger timeframes the time, which closes theirs when it is past them."""

    def __init__(self, levels: list[_Level], close_grace: float,
                 market: Market | None = None) -> None:
        self.close_grace = close_grace
        self.levels = levels
        self.market = market
        self._closes: dict[tuple[int, int], int] = {}  # (after, end) -> market.close_of

    # ---- minutes in ---------------------------------------------------------------

    def add(self, row: Row, now: float) -> list[Event]:
        """A closed 1-minute candle: the buckets it closes, smaller timeframes first,
        and the closed buckets it arrived too late for."""
        events: list[Event] = []
        if not self.levels:
            return events
        ts = row[0]
        base = self.levels[0]
        current = base.open
        if current is not None and current.start <= ts < current.start + base.span:
            if ts > current.last:
                current.last = ts
                if row[2] > current.high:
                    current.high = row[2]
                if row[3] < current.low:
                    current.low = row[3]
                current.close = row[4]
                current.volumes.append(row[5])
                current.minutes += 1
                current.live = now - (ts + BASE_SECONDS) <= BASE_SECONDS + self.close_grace
            else:
                self._again(current, row, now)
            if ts + BASE_SECONDS >= current.start + base.span:
                self._close(0, events)
            return events
        return self._minutes([row], now, events)

    def add_many(self, rows: Sequence[Row], now: float,
                 times: list[int] | None = None) -> list[Event]:
        """``add`` for each of many minutes (``times``: their times, when the caller
        has them): the same events. Strictly ascending minutes go a bucket at a time
        (one slice found by bisection, aggregated at C speed)."""
        if not self.levels:  # streams.timeframes: [1m] alone, nothing to roll up
            return []
        if times is None:
            times = [row[0] for row in rows]
        if len(rows) < 8 or not all(map(operator.lt, times, times[1:])):
            events: list[Event] = []
            for row in rows:
                events += self.add(row, now)
            return events
        return self._minutes(rows, now, [], times)

    def _minutes(self, rows: Sequence[Row], now: float, events: list[Event],
                 times: list[int] | None = None) -> list[Event]:
        """Minutes ascending (one, or a batch), by buckets of the smallest timeframe."""
        if times is None:
            times = [row[0] for row in rows]
        base = self.levels[0]
        span, shift = base.span, base.offset
        grace = BASE_SECONDS + self.close_grace
        i, count = 0, len(rows)
        while i < count:
            ts = times[i]
            start = ts - (ts - shift) % span
            current = base.open
            if (current is not None and start < current.start) or (current is None and (
                    base.closed_before is not None and start < base.closed_before)):
                self._late(rows[i], now, events)
                i += 1
                continue
            j = i + 1 if count == 1 else bisect.bisect_left(times, start + span, i)
            part = rows[i:j]
            high = max(map(_HIGH, part))
            low = min(map(_LOW, part))
            newest = times[j - 1]
            if current is not None and current.start == start:
                if ts <= current.last:
                    for row in part:
                        self._again(current, row, now)
                else:
                    current.last = times[j - 1]
                    if high > current.high:
                        current.high = high
                    if low < current.low:
                        current.low = low
                    current.close = part[-1][4]
                    current.volumes.extend(map(_VOLUME, part))
                    current.minutes += j - i
                    current.live = now - (newest + BASE_SECONDS) <= grace
            else:
                if current is not None:
                    self._close(0, events)
                self._reach(ts, events)
                current = base.open = _Open(start, ts, times[j - 1], part[0][1], high, low,
                                            part[-1][4], list(map(_VOLUME, part)), j - i,
                                            ts - start < BASE_SECONDS)
                current.live = now - (newest + BASE_SECONDS) <= grace
            if newest + BASE_SECONDS >= start + span:
                self._close(0, events)
            i = j
        return _once(events)

    def _again(self, current: _Open, row: Row, now: float) -> None:
        """A minute the open bucket already holds, or one older than its newest: the
        stored minutes decide (recomputed at close). The newest written again says
        again whether the bucket is live."""
        current.whole = False
        current.high = max(current.high, row[2])
        current.low = min(current.low, row[3])
        if row[0] < current.first:
            current.first, current.open = row[0], row[1]
        elif row[0] >= current.last:
            current.last, current.close = row[0], row[4]
            current.live = now - (row[0] + BASE_SECONDS) <= BASE_SECONDS + self.close_grace

    def _late(self, row: Row, now: float, events: list[Event]) -> None:
        """A minute older than the smallest timeframe's open bucket: each timeframe
        whose bucket of it closed is Late; an open one holding it is recomputed."""
        ts = row[0]
        for level in self.levels:
            start = ts - (ts - level.offset) % level.span
            current = level.open
            if current is not None and current.start == start:
                self._again(current, row, now)
            elif (current is not None and start < current.start) or (
                    level.closed_before is not None and start < level.closed_before):
                events.append(Late(level.timeframe, start))

    # ---- buckets up the chain --------------------------------------------------------

    def _reach(self, ts: int, events: list[Event]) -> None:
        """Minute ``ts`` opened a bucket of the smallest timeframe: a larger timeframe's
        bucket that ends by then is closed, and one whose bucket of ``ts`` is over
        already (the timer closed it) is Late."""
        for index in range(1, len(self.levels)):
            level = self.levels[index]
            start = ts - (ts - level.offset) % level.span
            current = level.open
            if current is not None:
                if current.start == start:
                    continue
                if current.start < start:
                    self._close(index, events)
            if level.closed_before is None or level.closed_before < start:
                level.closed_before = start  # the buckets before this one are over
            elif start < level.closed_before:
                events.append(Late(level.timeframe, start))

    def _close(self, index: int, events: list[Event]) -> None:
        level = self.levels[index]
        current = level.open
        assert current is not None
        level.open = None
        level.closed_before = current.start + level.span
        complete = current.whole and current.minutes * BASE_SECONDS == level.span
        events.append(Closed(level.timeframe, current.start,
                             (current.start, current.open, current.high, current.low,
                              current.close, volume(current.volumes)), complete))
        if index + 1 < len(self.levels):
            self._part(index + 1, current, complete, events)

    def _part(self, index: int, part: _Open, complete: bool, events: list[Event]) -> None:
        """A bucket closed one timeframe down goes into this one."""
        level = self.levels[index]
        span = level.span
        start = part.start - (part.start - level.offset) % span
        current = level.open
        if current is not None and start > current.start:
            self._close(index, events)
            current = None
        if current is None:
            if level.closed_before is not None and start < level.closed_before:
                events.append(Late(level.timeframe, start))
                return
            # (the part is closed for good: its list of volumes is taken over as it is)
            current = level.open = _Open(start, part.first, part.last, part.open, part.high,
                                         part.low, part.close, part.volumes,
                                         part.minutes, complete and part.start == start)
        elif start < current.start:
            events.append(Late(level.timeframe, start))
            return
        else:
            if part.first <= current.last:
                current.whole = False
            if part.last > current.last:  # (max() and min() as comparisons: faster)
                current.last = part.last
            if part.high > current.high:
                current.high = part.high
            if part.low < current.low:
                current.low = part.low
            current.close = part.close
            current.volumes.extend(part.volumes)
            current.minutes += part.minutes
            current.whole = current.whole and complete
        current.live = part.live
        below = self.levels[index - 1].span
        if part.start + below >= start + span:  # its last part
            self._close(index, events)

    def expire(self, now: float) -> list[Event]:
        """Close the live buckets whose end is ``close_grace`` seconds past (a stalled
        feed); smaller timeframes first."""
        # a bucket is live as its newest minute arrived, and that minute may still sit
        # in an open bucket further down (the lowest one still open)
        events: list[Event] = []
        newest: _Open | None = None
        for index, level in enumerate(self.levels):
            current = level.open
            if current is None:
                continue
            inside = newest is not None and \
                current.start <= newest.start < current.start + level.span
            live = newest.live if inside and newest is not None else current.live
            end = current.start + level.span
            if live and (now >= end + self.close_grace or (
                    self.market is not None and now >= self._market_close(
                        (newest.last if inside and newest is not None else current.last)
                        + BASE_SECONDS, end) + self.close_grace)):
                self._close(index, events)
            elif newest is None:
                newest = current
        return events

    def _market_close(self, after: int, end: int) -> int:
        """When the market closes for the rest of a bucket ending at ``end`` whose
        newest minute ended at ``after`` (``end`` when it is open till then)."""
        assert self.market is not None
        key = (after, end)
        found = self._closes.get(key)
        if found is None:
            if len(self._closes) >= 64:
                self._closes.clear()
            found = self._closes[key] = self.market.bucket_over(after, end)
        return found

    def pending(self) -> int:
        """Open buckets (for the stats)."""
        return sum(1 for level in self.levels if level.open is not None)
