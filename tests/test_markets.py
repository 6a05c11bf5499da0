"""Trading sessions (config ``markets``) on their own: when a market is open, in UTC,
across daylight saving time, overnight sessions, lunch breaks, holidays and days of their
own; which slots of a hole are missing; when a rollup bucket closes. Pure. The same
rules against real servers are in test_market_hours.py."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from hub import HubConfig, ValidationError
from hubdomain.markets import Market, parse_hours
from hubdomain.timeframes import Book, Closed, bucket, seconds

WEEK = ["mon", "tue", "wed", "thu", "fri"]


def utc(text: str) -> int:
    """'2026-03-06 14:30' (UTC) in Unix seconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def spans(market: Market, lo: str, hi: str) -> list[tuple[str, str]]:
    def show(t: int) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")
    return [(show(a), show(b)) for a, b in market.open_spans(utc(lo), utc(hi))]


NSE_CONFIG = {"name": "nse", "exchanges": ["openalgo"], "timezone": "Asia/Kolkata",
              "hours": ["09:15-15:30"]}
NSE = Market.build("nse", "Asia/Kolkata", ["09:15-15:30"], WEEK,
                   holidays=[date(2026, 1, 26)],  # Republic Day, a Monday
                   days={date(2026, 11, 8): ["18:00-19:00"]})  # a Sunday's evening session
NYSE = Market.build("nyse", "America/New_York", ["09:30-16:00"], WEEK,
                    days={date(2026, 11, 27): ["09:30-13:00"]})  # the day after Thanksgiving
CME = Market.build("cme", "America/Chicago", ["17:00-16:00"], ["sun", "mon", "tue", "wed", "thu"])
TOKYO = Market.build("tse", "Asia/Tokyo", ["09:00-11:30", "12:30-15:30"], WEEK)


def test_an_indian_session_is_open_0345_to_1000_utc_on_weekdays_but_holidays() -> None:
    # IST is UTC+5:30 all year: Friday the 23rd, then Monday the 26th is a holiday
    assert spans(NSE, "2026-01-23 00:00", "2026-01-28 00:00") == [
        ("2026-01-23 03:45", "2026-01-23 10:00"), ("2026-01-27 03:45", "2026-01-27 10:00")]
    # a day of its own: one evening hour on a Sunday (12:30-13:30 UTC)
    assert spans(NSE, "2026-11-07 00:00", "2026-11-09 05:00") == [
        ("2026-11-08 12:30", "2026-11-08 13:30"), ("2026-11-09 03:45", "2026-11-09 05:00")]


def test_new_york_opens_an_hour_earlier_in_utc_once_clocks_go_forward() -> None:
    # US daylight saving time began on Sunday 8 March 2026: 14:30 UTC before, 13:30 after
    assert spans(NYSE, "2026-03-06 00:00", "2026-03-10 00:00") == [
        ("2026-03-06 14:30", "2026-03-06 21:00"), ("2026-03-09 13:30", "2026-03-09 20:00")]
    # and ended on Sunday 1 November; the day after Thanksgiving closes at 13:00
    assert spans(NYSE, "2026-10-30 00:00", "2026-11-03 00:00") == [
        ("2026-10-30 13:30", "2026-10-30 20:00"), ("2026-11-02 14:30", "2026-11-02 21:00")]
    assert spans(NYSE, "2026-11-27 00:00", "2026-11-28 00:00") == [
        ("2026-11-27 14:30", "2026-11-27 18:00")]


def test_an_overnight_session_runs_from_sunday_evening_to_friday_afternoon() -> None:
    # Chicago 17:00-16:00 next day, sessions opening Sunday to Thursday (CST, UTC-6):
    # one span each day with an hour's pause, closed from Friday 22:00 to Sunday 23:00
    assert spans(CME, "2026-01-09 00:00", "2026-01-13 00:00") == [
        ("2026-01-09 00:00", "2026-01-09 22:00"), ("2026-01-11 23:00", "2026-01-12 22:00"),
        ("2026-01-12 23:00", "2026-01-13 00:00")]


def test_only_the_open_slots_of_a_hole_are_missing() -> None:
    friday_close, monday_open = utc("2026-01-23 10:00"), utc("2026-01-27 03:45")
    # minutes missing from Friday's close to ten minutes into Tuesday (Monday a holiday)
    hole = (friday_close, monday_open + 9 * 60)
    assert NSE.expected([hole], 60) == [(monday_open, monday_open + 9 * 60)]
    # the last ten minutes of Friday too, and nothing else of the weekend
    assert NSE.expected([(friday_close - 600, monday_open - 60)], 60) == [
        (friday_close - 600, friday_close - 60)]
    # a lunch break is no hole; hours holding any open minute are
    morning_end, afternoon = utc("2026-01-23 02:30"), utc("2026-01-23 03:30")
    assert TOKYO.expected([(morning_end, afternoon - 60)], 60) == []
    lunch_hours = (utc("2026-01-23 02:00"), utc("2026-01-23 03:00"))
    assert TOKYO.expected([lunch_hours], 3600) == [lunch_hours]
    # a night, a weekend: nothing
    assert NSE.expected([(friday_close, monday_open - 60)], 60) == []


def test_open_time_counts_only_sessions() -> None:
    friday = utc("2026-01-23 09:00")
    assert NSE.open_seconds(friday, utc("2026-01-27 04:00") + 0.5) == 3600 + 900 + 0.5
    assert NSE.open_seconds(utc("2026-01-24 00:00"), utc("2026-01-26 23:59")) == 0.0
    assert NSE.open_seconds(friday + 0.25, friday + 1.0) == 0.75


def test_a_market_closes_a_bucket_when_it_closes_for_the_rest_of_it() -> None:
    day_end = utc("2026-01-24 00:00")
    # a day bucket of Friday: over at the session's end, whenever the last minute came
    assert NSE.close_of(utc("2026-01-23 10:00"), day_end) == utc("2026-01-23 10:00")
    assert NSE.close_of(utc("2026-01-23 06:00"), day_end) == utc("2026-01-23 10:00")
    # the market open at the bucket's end: the bucket's end
    assert CME.close_of(utc("2026-01-12 10:00"), utc("2026-01-12 12:00")) == utc(
        "2026-01-12 12:00")


def test_hours_and_config_are_checked() -> None:
    assert parse_hours("00:00-24:00") == (0, 1440)
    assert parse_hours("18:00-17:00") == (1080, 2460)
    for bad in ("9:15-15:30", "24:00-01:00", "10:60-11:00", 915):
        with pytest.raises(ValueError):
            parse_hours(bad)
    for market, where in (({"timezone": "Asia/Bombay2"}, "markets.0.timezone"),
                          ({"hours": ["09:15"]}, "markets.0.hours"),
                          ({"weekdays": ["monday"]}, "markets.0.weekdays"),
                          ({"days": {"2026-01-01": ["9-10"]}}, "markets.0.days"),
                          ({"exchanges": []}, "markets.0.exchanges"),
                          ({"opens": "09:15"}, "markets.0.opens")):
        with pytest.raises(ValidationError) as caught:
            HubConfig.from_mapping({"markets": [{"name": "nse", "exchanges": ["x"], **market}]},
                                   environ={})
        assert caught.value.argument == where
    config = HubConfig.from_mapping({"markets": [
        {"name": "one", "exchanges": ["openalgo"], "products": ["NIFTY-FUT"],
         "timezone": "Asia/Kolkata", "hours": ["09:15-15:30"]},
        {"name": "all", "exchanges": ["openalgo", "papertrader"], "timezone": "Asia/Kolkata",
         "hours": ["09:15-15:30"]}]}, environ={})
    calendars = config.calendars()
    named = {(ex, pr): getattr(calendars.get(ex, pr), "name", None)
             for ex, pr in (("openalgo", "NIFTY-FUT"), ("openalgo", "BANKNIFTY-FUT"),
                            ("papertrader", "X"), ("binance", "BTC-USDT"))}
    assert named == {("openalgo", "NIFTY-FUT"): "one", ("openalgo", "BANKNIFTY-FUT"): "all",
                     ("papertrader", "X"): "all", ("binance", "BTC-USDT"): None}
    # the product's own market wins over its exchange's, written after it too
    later = HubConfig.from_mapping({"markets": [
        {"name": "all", "exchanges": ["openalgo"], "timezone": "Asia/Kolkata"},
        {"name": "one", "exchanges": ["openalgo"], "products": ["NIFTY-FUT"],
         "timezone": "Asia/Kolkata"}]}, environ={}).calendars()
    assert [getattr(later.get("openalgo", p), "name", None)
            for p in ("NIFTY-FUT", "BANKNIFTY-FUT")] == ["one", "all"]
    with pytest.raises(ValidationError):
        HubConfig.from_mapping({"markets": [{"name": "a", "exchanges": ["x"]},
                                            {"name": "a", "exchanges": ["y"]}]}, environ={})
    # buckets from the open need one UTC offset all year: Kolkata's, not New York's
    with pytest.raises(ValidationError) as caught:
        HubConfig.from_mapping({"markets": [{"name": "nyse", "exchanges": ["x"],
                                             "timezone": "America/New_York",
                                             "align": "open"}]}, environ={})
    assert caught.value.argument == "markets.0.align"


def test_buckets_from_the_open_start_at_0915_ist_and_still_nest() -> None:
    aligned = HubConfig.from_mapping({"markets": [{**NSE_CONFIG, "align": "open"}]},
                                     environ={}).calendars()
    shift = aligned.shift("openalgo", "NIFTY-FUT")
    assert shift == 3 * 3600 + 45 * 60  # 09:15 IST is 03:45 UTC
    at = utc("2026-01-23 05:10")
    starts = {tf: bucket(at, seconds(tf), shift) for tf in ("5m", "15m", "30m", "1h", "4h",
                                                            "1d", "1w")}
    assert starts == {"5m": utc("2026-01-23 05:10"), "15m": utc("2026-01-23 05:00"),
                      "30m": utc("2026-01-23 04:45"), "1h": utc("2026-01-23 04:45"),
                      "4h": utc("2026-01-23 03:45"), "1d": utc("2026-01-23 03:45"),
                      "1w": utc("2026-01-19 03:45")}  # the Monday's open
    # the usual timeframes still make one chain (each bucket whole in the next's)
    book = Book(["1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w"], 5,
                aligned.get("openalgo", "NIFTY-FUT"))
    assert [[lv.timeframe for lv in chain.levels] for chain in book.chains] == [
        ["5m", "15m", "30m", "1h", "4h", "1d", "1w"]]


def _session(book: Book, first: int, count: int) -> None:
    for i in range(count):  # each minute written live, two seconds after it ends
        ts = first + 60 * i
        book.add((ts, 100.0, 101.0, 99.0, 100.0, 1.0), ts + 62)


def test_a_daily_candle_closes_at_the_sessions_end_not_at_midnight() -> None:
    timeframes = ["1m", "5m", "1h", "4h", "1d"]
    opens, closes = utc("2026-01-23 03:45"), utc("2026-01-23 10:00")
    sessioned, clocked = Book(timeframes, 5, NSE), Book(timeframes, 5)
    for book in (sessioned, clocked):
        _session(book, opens, 375)
    # before the grace has passed, nothing; then the 4h (08:00-12:00) and the day
    assert sessioned.expire(closes + 4) == []
    closed = sessioned.expire(closes + 5)
    assert [(e.timeframe, e.start) for e in closed] == [
        ("4h", utc("2026-01-23 08:00")), ("1d", utc("2026-01-23 00:00"))]
    assert all(isinstance(e, Closed) and not e.complete for e in closed)  # recomputed
    # around the clock, they wait for their ends
    assert clocked.expire(closes + 5) == []
    assert [e.timeframe for e in clocked.expire(utc("2026-01-23 12:00") + 5)] == ["4h"]
    # a feed silent from 06:00 closes the day at the session's end, not before
    stalled = Book(timeframes, 5, NSE)
    _session(stalled, opens, 135)
    assert [e.timeframe for e in stalled.expire(utc("2026-01-23 08:00") + 5)] == ["4h"]
    assert stalled.expire(closes) == []
    assert [e.timeframe for e in stalled.expire(closes + 5)] == ["1d"]
    # a feed writing past the hours in config (a late session): its day is not cut at
    # 15:30 IST, so its next minute is never late
    late = Book(timeframes, 5, NSE)
    _session(late, opens, 395)  # to 15:50 IST
    assert late.expire(closes + 20 * 60 + 5) == []
    assert [e.timeframe for e in late.expire(utc("2026-01-24 00:00") + 5)] == ["1h", "4h", "1d"]


VECTORS = json.loads((Path(__file__).parent / "data/calendars-2026.json").read_text())


def merged(sessions: list[list[int]]) -> list[tuple[int, int]]:
    """Sessions as one span where one ends as the next opens (CME's 17:00 to 17:00)."""
    out: list[tuple[int, int]] = []
    for a, b in sessions:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


@pytest.mark.parametrize("entry", VECTORS["markets"], ids=lambda m: m["name"])
def test_a_year_of_sessions_lands_where_exchange_calendars_puts_them(
        entry: dict[str, Any]) -> None:
    """Six exchanges' 2026 as the exchange_calendars library publishes them
    (tests/data/make_calendar_vectors.py): each market's config entry, as a user writes
    it in local time, puts every session of the year at the library's UTC times, New
    York's, London's and Chicago's daylight saving changes (each on its own dates),
    Tokyo's and Hong Kong's lunch breaks, CME's sessions opening the evening before and
    its early closes included; the market is open for the library's total time; and
    a UTC day's candle whose newest minute ends a session is over at that session's end
    (or, with a session still to come that day, at that one's)."""
    config = HubConfig.from_mapping({"markets": [{
        "name": entry["name"], "exchanges": ["x"], "timezone": entry["timezone"],
        "hours": entry["hours"], "weekdays": entry["weekdays"],
        "holidays": entry["holidays"], "days": entry["days"]}]}, environ={})
    market = config.calendars().get("x", "ANY")
    assert market is not None
    sessions = entry["sessions"]
    lo, hi = sessions[0][0], sessions[-1][1]
    got = market.open_spans(lo, hi)
    want = merged(sessions)
    assert len(got) == len(want)
    for mine, theirs in zip(got, want, strict=True):
        assert mine == tuple(theirs), (
            f"{datetime.fromtimestamp(theirs[0], UTC)}: {mine} != {theirs}")
    assert market.open_seconds(lo, hi) == sum(b - a for a, b in sessions)
    day = 86_400
    for _, b in want:
        end = b - b % day + day if b % day else b  # the UTC day's bucket holding b's minute
        if end > hi:  # (past the vectors' year: the config knows no holiday there)
            continue
        later = [s for s in want if b <= s[0] < end]
        assert market.bucket_over(b, end) == (min(later[-1][1], end) if later else b)


def test_sessions_count_in_time_order_however_written_and_may_not_overlap() -> None:
    """Hours written afternoon first are the same market (both of Tokyo's sessions, and
    buckets from the morning's open); sessions that overlap, or run into the next day's
    first, are refused naming where."""
    def market(**entry: Any) -> Market:
        found = HubConfig.from_mapping({"markets": [{"name": "m", "exchanges": ["x"],
                                                     **entry}]}, environ={}).calendars()
        got = found.get("x", "ANY")
        assert got is not None
        return got
    backwards = market(timezone="Asia/Tokyo", hours=["12:30-15:30", "09:00-11:30"])
    week = (utc("2026-01-05 00:00"), utc("2026-01-10 00:00"))
    assert backwards.open_spans(*week) == TOKYO.open_spans(*week)
    assert len(backwards.open_spans(*week)) == 10
    assert market(timezone="Asia/Kolkata", hours=["13:00-15:30", "09:15-12:00"],
                  align="open").shift == 3 * 3600 + 45 * 60  # 09:15 IST, not 13:00
    special = market(timezone="Asia/Tokyo", hours=["09:00-15:00"],
                     days={"2026-01-05": ["13:00-14:00", "09:00-10:00"]})
    assert spans(special, "2026-01-05 00:00", "2026-01-06 00:00") == [
        ("2026-01-05 00:00", "2026-01-05 01:00"), ("2026-01-05 04:00", "2026-01-05 05:00")]
    for entry, where, says in (
            ({"hours": ["09:00-12:00", "11:00-15:30"]}, "markets.0.hours", "overlap"),
            ({"hours": ["09:00-12:00", "18:00-10:00"]}, "markets.0.hours", "next day"),
            ({"days": {"2026-01-05": ["09:00-10:00", "09:30-11:00"]}}, "markets.0.days",
             "overlap")):
        with pytest.raises(ValidationError) as caught:
            market(**entry)
        assert caught.value.argument == where
        assert says in str(caught.value)
