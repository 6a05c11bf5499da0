"""The rollup rules written the plain way: every timeframe fed each minute directly.
``hubdomain.timeframes.Book`` must agree with it on every event (tests/test_rollup_rules.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hubdomain.timeframes import BASE_SECONDS, Closed, Event, Late, Row, plan, volume

MONDAY = 4 * 86_400  # 1970-01-05 00:00 UTC, the first Monday after the epoch


def _start(ts: int, span: int) -> int:
    """Weeks begin on Mondays (as TradingView draws them), the rest at multiples of
    their length since the epoch (as InfluxDB's GROUP BY time() aligns them)."""
    if span % (7 * 86_400) == 0:
        return ts - (ts - MONDAY) % span
    return ts - ts % span


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


class ReferenceBook:
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
            start = _start(ts, level.span)
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
                # began past its first minute: earlier minutes are elsewhere (or missing)
                current.whole = ts - start < BASE_SECONDS
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
            if ts >= current.last:  # live: as its newest minute arrived
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
        # (a minute written twice counts twice: more minutes than the span is not whole)
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
