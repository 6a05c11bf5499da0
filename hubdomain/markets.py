"""Trading sessions: when a market is open (config ``markets``). Pure (no I/O).

A product with no market in the config trades around the clock (a crypto exchange), as
before. A market names its exchanges (and, optionally, only some of their products), a
time zone, the hours of a trading day in local time, the weekdays it trades, its
holidays, and days of their own (an early close, a special evening session). Hours are
``"HH:MM-HH:MM"``; an end at or before the start ends the next day (a session opening in
the evening, as futures and forex trade), ``"00:00-24:00"`` is a whole day. Local times
become UTC through the zone's rules (``zoneinfo``), daylight saving time included, so a
session at 09:30 New York time opens at 13:30 or 14:30 UTC as the date says.

What the hub does with it: :meth:`Market.expected` keeps of a run of empty slots only
the slots in which the market was open (``Hub.gaps`` reports no night, weekend or
holiday as a hole), :meth:`Market.open_seconds` counts how long a feed was silent while
the market was open (the age of a product's newest candle), and :meth:`Market.close_of`
says when a rollup bucket's minutes have all arrived because the market closed (a
daily candle closes at the session's end, not at midnight UTC). With ``align: open``,
:attr:`Market.shift` moves every bucket's start to the first session's open (1h candles
from 09:15 IST, as exchange charts draw them; a zone on one UTC offset all year, for
InfluxDB's ``GROUP BY time(span, offset)`` to agree).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Span = tuple[int, int]  # [open, close) in Unix seconds

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})$")
_CACHED_DAYS = 8192  # days whose sessions are kept in UTC (22 years)


def parse_hours(text: object) -> tuple[int, int]:
    """``"09:15-15:30"`` -> (555, 930), minutes from local midnight; an end at or before
    the start is the next day's (``"18:00-17:00"`` -> (1080, 2460)). Raises ValueError."""
    match = _HOURS.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected hours like '09:15-15:30', got {text!r}")
    h1, m1, h2, m2 = map(int, match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"not a time of day in {text!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end <= start:
        end += 1440
    return start, end


def parse_sessions(texts: Sequence[object]) -> tuple[tuple[int, int], ...]:
    """A day's sessions (:func:`parse_hours` each), in time order whatever order they
    are written in. Raises ValueError when two overlap, or when the last runs into the
    next day's first (a day's sessions span at most 24 hours)."""
    parsed = sorted((parse_hours(text), str(text)) for text in texts)
    for (before, shown_before), (after, shown_after) in pairwise(parsed):
        if after[0] < before[1]:
            raise ValueError(f"sessions {shown_before!r} and {shown_after!r} overlap")
    if parsed and parsed[-1][0][1] > parsed[0][0][0] + 1440:
        raise ValueError(f"session {parsed[-1][1]!r} runs into the next day's "
                         f"{parsed[0][1]!r}")
    return tuple(hours for hours, _ in parsed)


def zone(name: object) -> ZoneInfo:
    """The IANA time zone ``name`` (``"Asia/Kolkata"``). Raises ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"expected a time zone like 'Asia/Kolkata', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def fixed_offset(where: ZoneInfo, year: int | None = None) -> int | None:
    """The zone's UTC offset in seconds when it is the same all year (no daylight saving
    time: Asia/Kolkata's +19800), else None."""
    year = year or datetime.now(UTC).year
    offsets = {datetime(year, month, 1, 12, tzinfo=where).utcoffset() for month in (1, 4, 7, 10)}
    if len(offsets) != 1:
        return None
    (only,) = offsets
    return None if only is None else int(only.total_seconds())


@dataclass(frozen=True, eq=False)
class Market:
    """One market's trading calendar."""

    name: str
    zone: ZoneInfo
    hours: tuple[tuple[int, int], ...]  # a usual trading day's sessions (parse_hours)
    weekdays: frozenset[int]  # the days it trades, Monday 0
    days: dict[date, tuple[tuple[int, int], ...]]  # days of their own; () a holiday
    # buckets start this many seconds into the UTC day (mod their span): 0, the epoch's
    # alignment; a session's open (align: open)
    shift: int = 0

    @classmethod
    def build(cls, name: str, timezone: str, hours: Sequence[str], weekdays: Sequence[str],
              holidays: Sequence[date] = (),
              days: dict[date, Sequence[str]] | None = None, align: bool = False) -> Market:
        special: dict[date, tuple[tuple[int, int], ...]] = {day: () for day in holidays}
        special.update({day: parse_sessions(spans) for day, spans in (days or {}).items()})
        where = zone(timezone)
        sessions = parse_sessions(hours)
        shift = 0
        if align:
            fixed = fixed_offset(where)
            if fixed is None:
                raise ValueError(f"align: open needs a zone on one UTC offset all year; "
                                 f"{timezone} changes its clocks")
            shift = (sessions[0][0] * 60 - fixed) % 86_400
        return cls(name, where, sessions, frozenset(WEEKDAYS.index(d) for d in weekdays),
                   special, shift)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cache", {})

    # ---- sessions in UTC ------------------------------------------------------------

    def _sessions(self, day: date) -> tuple[Span, ...]:
        """The sessions opening on local ``day``, in UTC."""
        cache: dict[date, tuple[Span, ...]] = self._cache  # type: ignore[attr-defined]
        found = cache.get(day)
        if found is None:
            if day in self.days:
                local = self.days[day]
            else:
                local = self.hours if day.weekday() in self.weekdays else ()
            midnight = datetime(day.year, day.month, day.day)
            found = tuple((self._utc(midnight, start), self._utc(midnight, end))
                          for start, end in local)
            if len(cache) >= _CACHED_DAYS:
                cache.clear()
            cache[day] = found
        return found

    def _utc(self, midnight: datetime, minutes: int) -> int:
        """Local ``midnight`` + ``minutes`` (a wall-clock time, perhaps the next day's)
        in Unix seconds. A time a spring-forward skips is read with the offset before
        the change, an hour repeated in autumn as its first occurrence (``fold=0``)."""
        local = midnight + timedelta(minutes=minutes)
        return int(local.replace(tzinfo=self.zone).timestamp())

    def open_spans(self, lo: int, hi: int) -> list[Span]:
        """When the market is open within ``[lo, hi)``: ascending, non-overlapping."""
        if hi <= lo:
            return []
        # a session opening the day before lo's local date may still run (overnight)
        first = datetime.fromtimestamp(lo, UTC).astimezone(self.zone).date() - timedelta(days=2)
        last = datetime.fromtimestamp(hi, UTC).astimezone(self.zone).date()
        out: list[Span] = []
        day = first
        while day <= last:
            for start, end in self._sessions(day):
                a, b = max(start, lo), min(end, hi)
                if a >= b:
                    continue
                if out and a <= out[-1][1]:
                    if b > out[-1][1]:
                        out[-1] = (out[-1][0], b)
                else:
                    out.append((a, b))
            day += timedelta(days=1)
        return out

    def open_seconds(self, lo: float, hi: float) -> float:
        """How long the market was open between ``lo`` and ``hi``."""
        if hi <= lo:
            return 0.0
        return float(sum(min(b, hi) - max(a, lo)
                         for a, b in self.open_spans(int(lo), int(hi) + 1)
                         if min(b, hi) > max(a, lo)))

    def expected(self, holes: list[Span], span: int) -> list[Span]:
        """Of runs of empty slots (``(first, last)`` slot starts, slots ``span`` seconds
        long), the slots during which the market was open at all, as runs."""
        out: list[Span] = []
        for first, last in holes:
            for a, b in self.open_spans(first, last + span):
                run = (first + (a - first) // span * span, first + (b - 1 - first) // span * span)
                if out and run[0] <= out[-1][1] + span:
                    out[-1] = (out[-1][0], max(out[-1][1], run[1]))
                else:
                    out.append(run)
        return out

    def bucket_over(self, after: int, end: int) -> int:
        """When a bucket ending at ``end`` is over, its newest minute ended at ``after``:
        :meth:`close_of` when that minute lay in a session, else ``end`` (a feed that
        writes outside the hours in config, a pre-open or a late print, has its buckets
        closed by their ends: never early, so its next minute is not late)."""
        if not self.open_spans(after - 60, after):
            return end
        return self.close_of(after, end)

    def close_of(self, after: int, end: int) -> int:
        """When the market closes for good before ``end``, from ``after`` on: the end of
        its last session in ``[after, end)``, ``after`` when it opens none there; ``end``
        when it is open at ``end``'s last second (it closes no earlier than ``end``)."""
        spans = self.open_spans(after, end)
        return spans[-1][1] if spans else after


@dataclass(frozen=True)
class Rule:
    """Which products a market's calendar applies to."""

    exchanges: frozenset[str]
    products: frozenset[str]  # empty: every product of the exchanges
    market: Market


class Markets:
    """Each product's market: the first rule naming its exchange and the product, else
    the first naming its exchange with no products listed (a product's own market wins
    over its exchange's, in whatever order they are written). None: trades around the
    clock."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = list(rules)
        self._found: dict[tuple[str, str], Market | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def shift(self, exchange: str, product: str) -> int:
        """Where the product's buckets start into the UTC day (0: the epoch's)."""
        market = self.get(exchange, product) if self.rules else None
        return 0 if market is None else market.shift

    def get(self, exchange: str, product: str) -> Market | None:
        key = (exchange, product)
        if key not in self._found:
            mine = [r for r in self.rules if exchange in r.exchanges
                    and (not r.products or product in r.products)]
            self._found[key] = next((r.market for r in mine if r.products),
                                    next((r.market for r in mine), None))
        return self._found[key]
