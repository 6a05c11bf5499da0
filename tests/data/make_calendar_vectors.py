"""Writes ``calendars-2026.json``: trading sessions of six exchanges in 2026 as the
``exchange_calendars`` library publishes them (https://github.com/gerrymanoim/exchange_calendars),
beside the ``markets`` config entry that describes each exchange.

Not part of the suite (it needs that library and pandas):

    python -m venv /tmp/xc && /tmp/xc/bin/pip install exchange_calendars
    /tmp/xc/bin/python tests/data/make_calendar_vectors.py

The config entry keeps the library's local times only (a usual day's hours, the days
sessions open on, the dates it has none, the dates its hours differ); the sessions
are the library's own UTC times. ``tests/test_markets.py`` builds each market from its
entry and checks that the hub puts every session at the library's UTC times: the
daylight saving changes of New York, London and Chicago on their own dates, the lunch
breaks of Tokyo and Hong Kong, CME's sessions that open the evening before.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import exchange_calendars as xc
import pandas as pd

YEAR = 2026
CALENDARS = ("XNYS", "XLON", "XTKS", "XHKG", "XBOM", "CMES")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def hhmm(t: datetime, day: date) -> str:
    minutes = (t.date() - day).days * 1440 + t.hour * 60 + t.minute
    if minutes > 1440:
        minutes -= 1440  # (an end on the next day is read as such: end <= start)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def local_hours(row: pd.Series, zone: str) -> tuple[date, list[str]]:
    """The local date a session opens on and its hours there (two with a break)."""
    opened = row["open"].tz_convert(zone).to_pydatetime()
    closed = row["close"].tz_convert(zone).to_pydatetime()
    day = opened.date()
    parts = [(opened, closed)]
    if not pd.isna(row["break_start"]):
        parts = [(opened, row["break_start"].tz_convert(zone).to_pydatetime()),
                 (row["break_end"].tz_convert(zone).to_pydatetime(), closed)]
    return day, [f"{hhmm(a, day)}-{hhmm(b, day)}" for a, b in parts]


def utc_spans(row: pd.Series) -> list[list[int]]:
    def ts(t: pd.Timestamp) -> int:
        return int(t.timestamp())
    if pd.isna(row["break_start"]):
        return [[ts(row["open"]), ts(row["close"])]]
    return [[ts(row["open"]), ts(row["break_start"])], [ts(row["break_end"]), ts(row["close"])]]


def market(name: str) -> dict[str, object]:
    cal = xc.get_calendar(name, start=f"{YEAR}-01-01", end=f"{YEAR}-12-31")
    zone = str(cal.tz)
    schedule = cal.schedule
    opens = {}
    for _, row in schedule.iterrows():
        day, hours = local_hours(row, zone)
        opens[day] = (hours, utc_spans(row))
    usual = Counter(tuple(hours) for hours, _ in opens.values()).most_common(1)[0][0]
    weekdays = sorted({day.weekday() for day, (hours, _) in opens.items()
                       if tuple(hours) == usual})
    first, last = min(opens), max(opens)  # (what the library knows, and nothing else)
    holidays, days, sessions = [], {}, []
    day = first
    while day <= last:
        found = opens.get(day)
        if found is None:
            if day.weekday() in weekdays:
                holidays.append(day.isoformat())
        else:
            hours, spans = found
            if tuple(hours) != usual or day.weekday() not in weekdays:
                days[day.isoformat()] = hours
            sessions += spans
        day += timedelta(days=1)
    return {"name": name.lower(), "timezone": zone, "hours": list(usual),
            "weekdays": [WEEKDAYS[d] for d in weekdays], "holidays": holidays,
            "days": days, "sessions": sessions}


# (each market's sessions are checked from its first session's open to its last's close:
# the library lists sessions by the date they are traded for, and CME's first of the
# year opens the evening before it)


def main() -> None:
    out = {
        "source": f"exchange_calendars {xc.__version__} "
                  "(https://github.com/gerrymanoim/exchange_calendars), sessions opening "
                  f"from {YEAR}-01-01 to {YEAR}-12-31 local time; each market's sessions "
                  "in Unix seconds, UTC, [open, close) (a lunch break splits one)",
        "year": YEAR,
        "markets": [market(name) for name in CALENDARS],
    }
    path = Path(__file__).with_name(f"calendars-{YEAR}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    for m in out["markets"]:
        print(m["name"], m["timezone"], m["hours"], m["weekdays"], len(m["holidays"]),
              "holidays", len(m["days"]), "days of their own", len(m["sessions"]), "spans")


if __name__ == "__main__":
    main()
