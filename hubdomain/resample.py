"""``query_candles(interval=...)`` answered from a hot window of 1-minute candles, as
InfluxDB answers it (pure, so the rules are unit-tested on their own).

InfluxDB's ``GROUP BY time(span) fill(none)`` over ``WHERE time >= lo AND time <= hi``
labels each bucket by its epoch-aligned start (a week's: its Monday, the offset the hub
asks for, :func:`hubdomain.timeframes.offset`) and puts in it only the minutes inside
[lo, hi] (a bucket cut by ``lo`` holds just the minutes from ``lo`` on); buckets with
no minute are left out; the newest ``limit`` are answered. Open, high, low, close and
volume are those of :func:`hubdomain.timeframes.aggregate`: the same floats, to the last
bit (the volumes added in the order InfluxDB adds them).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from hubdomain.records import Candle
from hubdomain.timeframes import bucket, volume


def resample(window: Sequence[Candle], span: int, lo: int | None, hi: int | None,
             limit: int, shift: int = 0) -> list[Candle] | None:
    """The newest ``limit`` buckets of ``span`` seconds of minutes in [lo, hi],
    ascending, from ``window`` (ascending, one candle per time, holding every stored
    candle from its oldest to its newest, and nothing stored is newer: what a hot window
    is); ``shift``: buckets from a market's open (hubdomain.timeframes.offset). None
    when an answered bucket may hold a minute older than the window's oldest,
    or fewer than ``limit`` buckets were found and older minutes in range may exist."""
    if not window:
        return None
    times = [c.timestamp for c in window]
    first = 0 if lo is None else bisect.bisect_left(times, lo)
    end = len(times) if hi is None else bisect.bisect_right(times, hi)
    out: list[Candle] = []
    start = None
    while end > first and len(out) < limit:
        newest = times[end - 1]
        start = bucket(newest, span, shift)
        begin = max(first, bisect.bisect_left(times, start, first, end))
        part = window[begin:end]
        out.append(Candle(start, part[0].open, max(c.high for c in part),
                          min(c.low for c in part), part[-1].close,
                          volume([c.volume for c in part])))
        end = begin
    oldest = times[0]
    if len(out) == limit and start is not None:
        # the oldest bucket answered needs its minutes from max(start, lo) on
        needed_from = start if lo is None else max(start, lo)
        if needed_from < oldest:
            return None
    elif lo is None or lo < oldest:  # fewer: older minutes in range may be stored
        return None
    out.reverse()
    return out
