"""Timeframes and rollups: 1-minute candles rolled up into 5m, 15m, 1h... without
look-ahead. Pure (no I/O), so the rules are unit-tested on their own.

A bucket of timeframe T starts at a multiple of T seconds since the Unix epoch (as
InfluxDB's ``GROUP BY time(T)`` aligns them, so a rollup equals the database's
resampling over the same candles). Every timeframe is built from the 1-minute
candles themselves (first open, max high, min low, last close, the volumes summed in the
order the database sums them): the same floats InfluxDB computes, to the last bit.

:class:`Book` holds one product's open buckets and says when each one closes:

- its last part arrives (the 1m candle at 10:04 closes the 10:00 5m bucket), or
- a part of a later bucket arrives (the feed skipped the rest), or
- :meth:`Book.expire`: the wall clock is ``close_grace`` seconds past the bucket's end and
  the bucket is *live* (its newest part arrived within a minute plus ``close_grace`` of
  that part's end). A replay of history written faster than real time is never live,
  so the timer never cuts it into partial candles.

A close is ``complete`` when every part of the bucket was seen here; an incomplete one
(a stalled feed, a restart mid-bucket, candles written by another process) is to be
recomputed from the stored 1-minute candles before it is published. A part that arrives
for a bucket already closed makes that bucket :class:`Late`: recomputed and republished
as a revision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hubdomain.errors import ValidationError

Row = tuple[int, float, float, float, float, float]  # time, open, high, low, close, volume

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


def bucket(ts: int, span: int) -> int:
    """Start of the bucket of ``span`` seconds holding ``ts`` (epoch-aligned)."""
    return ts - ts % span


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
    total = 0.0
    for value in reversed(ascending):
        total += value
    return total


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
        source = max((s for s in ordered[:i] if spans[tf] % spans[s] == 0),
                     key=spans.__getitem__)
        out.append((tf, spans[tf], source))
    return out


@dataclass(frozen=True, slots=True)
class Closed:
    """Bucket ``start`` of ``timeframe`` closed. ``row``: its candle from the minutes
    seen here; ``complete``: every minute was seen once, in order (else recompute it
    from the stored minutes before publishing)."""

    timeframe: str
    start: int
    row: Row
    complete: bool


@dataclass(frozen=True, slots=True)
class Late:
    """A part arrived for bucket ``start`` of ``timeframe`` after it closed: recompute
    from storage and republish (a revision)."""

    timeframe: str
    start: int


Event = Closed | Late


@dataclass(slots=True)
class _Open:
    start: int
    first: int  # time of the first minute seen
    last: int  # time of the last minute seen
    open: float
    high: float
    low: float
    close: float
    volumes: list[float]  # the minutes' volumes, oldest first
    minutes: int = 1
    whole: bool = True  # minutes came once each, in time order
    live: bool = False

    def row(self) -> Row:
        return (self.start, self.open, self.high, self.low, self.close, volume(self.volumes))


@dataclass(slots=True)
class _Level:
    timeframe: str
    span: int
    open: _Open | None = None
    closed_before: int | None = None  # buckets starting before this are closed


class Book:
    """One product's open buckets, for every rollup timeframe. Each timeframe is fed
    the 1-minute candles directly, so its volume is the same float sum, in the same
    order, as the database's ``sum("volume")`` over those minutes (:func:`volume`)."""

    def __init__(self, timeframes: Sequence[str], close_grace: float) -> None:
        self.close_grace = close_grace
        self.levels = [_Level(tf, span) for tf, span, _ in plan(timeframes)]

    def add(self, row: Row, now: float) -> list[Event]:
        """A closed 1-minute candle: the buckets it closes, smaller timeframes first,
        and the closed buckets it arrived too late for."""
        events: list[Event] = []
        ts, o, h, low, c, vol = row
        live = now - (ts + BASE_SECONDS) <= BASE_SECONDS + self.close_grace
        for level in self.levels:
            start = ts - ts % level.span
            current = level.open
            if current is None:
                if level.closed_before is not None and start < level.closed_before:
                    events.append(Late(level.timeframe, start))
                    continue
            elif start < current.start:
                events.append(Late(level.timeframe, start))
                continue
            elif start > current.start:
                self._close(level, events)
                current = None
            if current is None:
                current = level.open = _Open(start, ts, ts, o, h, low, c, [vol])
                current.whole = ts == start  # began mid-bucket: earlier minutes elsewhere
            elif ts > current.last:
                current.last = ts
                current.high = max(current.high, h)
                current.low = min(current.low, low)
                current.close = c
                current.volumes.append(vol)
                current.minutes += 1
            else:  # a minute again, or out of order: the stored minutes decide
                current.whole = False
                current.high = max(current.high, h)
                current.low = min(current.low, low)
                if ts < current.first:
                    current.first, current.open = ts, o
            current.live = live
            if ts + BASE_SECONDS >= start + level.span:  # its last minute
                self._close(level, events)
        return events

    def _close(self, level: _Level, events: list[Event]) -> None:
        current = level.open
        assert current is not None
        level.open = None
        level.closed_before = current.start + level.span
        complete = current.whole and current.minutes * BASE_SECONDS == level.span
        events.append(Closed(level.timeframe, current.start, current.row(), complete))

    def expire(self, now: float) -> list[Event]:
        """Close the live buckets whose end is ``close_grace`` seconds past (a stalled
        feed); smaller timeframes first."""
        events: list[Event] = []
        for level in self.levels:
            current = level.open
            if (current is not None and current.live
                    and now >= current.start + level.span + self.close_grace):
                self._close(level, events)
        return events

    def pending(self) -> int:
        """Open buckets (for the stats)."""
        return sum(1 for level in self.levels if level.open is not None)
