"""query_candles: newest-N ordering below, at and above the hot window; ranges; resampling."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import hub._hub as hub_module
from hub import Candle, Hub, HubConfig
from tests.conftest import influx_candles, influx_resampled

pytestmark = pytest.mark.anyio
EX, PR = "papertrader", "NIFTY-FUT"
T0 = 1697529600  # on an hour boundary
WINDOW = 50


def random_candles(n: int, seed: int = 7) -> list[Candle]:
    rnd = random.Random(seed)
    price, out = 20000.0, []
    for i in range(n):
        o = price
        c = o + rnd.uniform(-20, 20)
        h = max(o, c) + rnd.uniform(0, 10)
        low = min(o, c) - rnd.uniform(0, 10)
        out.append(Candle(T0 + 60 * i, round(o, 2), round(h, 2), round(low, 2), round(c, 2),
                          float(rnd.randint(0, 5000))))
        price = c
    return out


@pytest.fixture(params=[True, False], ids=["near", "no-near"])
async def windowed(config_data: dict[str, Any], request: pytest.FixtureRequest
                   ) -> AsyncIterator[Hub]:
    """The hot window read through the near cache, and straight from Redis."""
    config_data["performance"] = {"redis_hot_data_window": WINDOW,
                                  "near_cache": request.param}
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        yield hub


async def counters(hub: Hub) -> tuple[int, int]:
    c = (await hub.get_stats())["hub"]
    return c["candle_window_hits"], c["candle_cold_queries"]


@pytest.mark.parametrize("limit,served_hot", [(10, True), (WINDOW, True), (WINDOW + 1, False),
                                              (100, False), (500, False)])
async def test_newest_n_ascending(windowed: Hub, limit: int, served_hot: bool) -> None:
    data = random_candles(120)
    for c in data:  # one at a time, as a live feed does
        await windowed.write_candle(EX, PR, c.timestamp, c.open, c.high, c.low, c.close,
                                    c.volume)
    before = await counters(windowed)
    got = await windowed.query_candles(EX, PR, limit=limit)
    assert got == data[-limit:]
    after = await counters(windowed)
    assert (after[0] - before[0], after[1] - before[1]) == ((1, 0) if served_hot else (0, 1))


async def test_bounded_ranges(windowed: Hub) -> None:
    data = random_candles(120)
    assert await windowed.write_candles_batch(EX, PR, data) == 120
    ts = [c.timestamp for c in data]

    def expect(start: int | None, end: int | None, limit: int) -> list[Candle]:
        inside = [c for c in data if (start is None or c.timestamp >= start)
                  and (end is None or c.timestamp <= end)]
        return inside[-limit:]

    cases = [
        (ts[100], ts[110], 1000),  # inside the window: hot
        (ts[100], None, 5),  # newest 5 from a start inside the window
        (ts[10], ts[20], 1000),  # before the window: cold
        (ts[60], ts[90], 1000),  # straddles the window's oldest: cold
        (ts[10], ts[100], 7),  # newest 7 in a wide range: hot (7 found in the window)
        (None, ts[30], 4),  # end only, before the window
        (ts[5] + 1, ts[8] - 1, 1000),  # bounds between candles are inclusive of what lies inside
        (T0 - 10_000, T0 - 1, 10),  # nothing there
    ]
    for start, end, limit in cases:
        assert await windowed.query_candles(EX, PR, start, end, limit) == expect(
            start, end, limit), (start, end, limit)


async def test_hot_window_is_trimmed_and_ttl_set(windowed: Hub) -> None:
    await windowed.write_candles_batch(EX, PR, random_candles(80))
    assert windowed._cache is not None
    from actors.cache.ops import RedisOp
    card, ttl = await windowed._cache.perform(RedisOp(
        (("ZCARD", f"candles:{EX}:{PR}"), ("TTL", f"candles:{EX}:{PR}")), lambda r: r))
    assert card == WINDOW
    assert 590 < ttl <= 600


async def test_get_candles_after_the_window_expired_answers_the_stored_newest(
        windowed: Hub) -> None:
    """A feed that paused longer than redis.ttl.candles (a market closed overnight)
    lost its hot window; the minutes written since start a new one. get_candles answers
    the newest candles all the same (the window completed from InfluxDB), as it does
    with Redis down, not the few written since; a young product's short window is
    answered as it is, and once found whole, without asking InfluxDB again."""
    data = random_candles(WINDOW + 30)
    await windowed.write_candles_batch(EX, PR, data[:WINDOW + 20])
    await windowed.flush()
    assert windowed._cache is not None
    await windowed._cache.clear_all()  # the window expired
    assert await windowed.get_candles(EX, PR, 30) == data[WINDOW - 10:WINDOW + 20]
    for c in data[WINDOW + 20:]:  # the next day's first minutes
        await windowed.write_candle(EX, PR, c.timestamp, c.open, c.high, c.low, c.close,
                                    c.volume)
    assert await windowed.get_candles(EX, PR, 30) == data[-30:]
    assert await windowed.get_candles(EX, PR, 5) == data[-5:]  # the window alone
    # at most a window's worth, as the seed's list
    assert await windowed.get_candles(EX, PR, 1000) == data[-WINDOW:]
    young = random_candles(5, seed=3)
    await windowed.write_candles_batch(EX, "YOUNG", young)
    assert await windowed.get_candles(EX, "YOUNG", 20) == young
    before = await counters(windowed)
    for _ in range(3):
        assert await windowed.get_candles(EX, "YOUNG", 20) == young
    assert (await counters(windowed))[1] == before[1]  # no cold query


async def test_a_bulk_load_over_a_live_window_is_what_reads_answer(windowed: Hub) -> None:
    """A bulk load (``window=False``, as ``wolfhub backfill`` writes) of minutes a live
    product's hot window spans: the minutes it fills in (a feed dropped them) and those
    it corrects are what reads answer, as InfluxDB holds them, not the window's older
    picture; history older than the window leaves the window alone."""
    data = random_candles(90)
    live = data[30:60] + data[65:]  # the feed dropped five minutes
    await windowed.write_candles_batch(EX, PR, live)
    fixed = [Candle(c.timestamp, c.open, c.high, c.low, c.close, c.volume + 1)
             for c in data[55:70]]
    assert await windowed.write_candles_batch(EX, PR, fixed, window=False) == 15
    assert await windowed.write_candles_batch(EX, PR, data[:30], window=False) == 30
    expected = data[:55] + fixed + data[70:]
    assert await windowed.get_candles(EX, PR, WINDOW) == expected[-WINDOW:]
    assert await windowed.query_candles(EX, PR, start_time=data[50].timestamp,
                                        end_time=data[75].timestamp) == expected[50:76]
    assert await windowed.query_candles(EX, PR, limit=WINDOW) == expected[-WINDOW:]
    await windowed.flush()
    assert await windowed.query_candles(EX, PR, limit=90) == expected


async def test_rewriting_a_candle_replaces_it(windowed: Hub) -> None:
    data = random_candles(3)
    await windowed.write_candles_batch(EX, PR, data)
    fixed = Candle(data[1].timestamp, 1.0, 5.0, 0.5, 2.0, 9.0)
    await windowed.write_candles_batch(EX, PR, [fixed])
    expected = [data[0], fixed, data[2]]
    assert await windowed.query_candles(EX, PR) == expected
    await windowed.flush()
    await windowed.flush_all()
    assert await windowed.query_candles(EX, PR) == expected  # InfluxDB overwrote too


async def test_candles_read_back_are_records_like_the_ones_written(windowed: Hub) -> None:
    """Candles from the hot window (Redis, or the near cache) and from InfluxDB are
    Candles as a user builds them: equal, hashable alike, printable and read-only."""
    data = random_candles(WINDOW + 10)
    await windowed.write_candles_batch(EX, PR, data)
    await windowed.flush()
    hot = await windowed.query_candles(EX, PR, limit=5)  # the window
    deep = await windowed.query_candles(EX, PR, limit=WINDOW + 10)  # InfluxDB
    for got, want in zip(hot + deep, data[-5:] + data, strict=True):
        assert type(got) is Candle and got == want and hash(got) == hash(want)
        assert repr(got) == repr(want) and got.as_dict() == want.as_dict()
        with pytest.raises(AttributeError):
            got.close = 0.0  # type: ignore[misc]
    assert len({*hot, *deep}) == WINDOW + 10


async def test_old_backfill_does_not_punch_holes_in_the_window(windowed: Hub) -> None:
    data = random_candles(40)
    await windowed.write_candles_batch(EX, PR, data[20:])  # live candles first
    await windowed.write_candles_batch(EX, PR, data[:20])  # then an older backfill
    assert await windowed.query_candles(EX, PR, limit=30) == data[-30:]
    assert await windowed.query_candles(EX, PR, limit=5) == data[-5:]



@pytest.mark.parametrize("streams,durable", [(True, True), (False, True), (True, False)],
                         ids=["durable", "durable-no-streams", "memory"])
async def test_a_large_window_takes_batches_whole_and_in_order(
        config_data: dict[str, Any], streams: bool, durable: bool) -> None:
    """A 10,000-candle window filled by batches newer than all it holds, one of 6,000
    (durable mode pushes a batch whole: more than one ZADD's slice, and more than Lua
    unpacks at once), then a batch mixing new minutes with corrections of held ones:
    the window holds what InfluxDB stores, every candle once, ascending."""
    config_data["performance"] = {"redis_hot_data_window": 10_000, "near_cache": False}
    config_data["streams"] = {"enabled": streams}
    config_data["influxdb"]["durable"] = durable
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        data = random_candles(10_200, seed=11)
        assert await hub.write_candles_batch(EX, PR, data[:2100]) == 2100
        assert await hub.write_candles_batch(EX, PR, data[2100:8100]) == 6000
        assert await hub.write_candles_batch(EX, PR, data[8100:9600]) == 1500
        fixed = [Candle(c.timestamp, c.open, c.high + 1, c.low, c.close, 0.5)
                 for c in data[9000:9600:50]]
        mixed = data[9600:] + fixed
        random.Random(5).shuffle(mixed)
        assert await hub.write_candles_batch(EX, PR, mixed) == len(mixed)
        await hub.flush()
        stored = influx_candles(hub, f"SELECT open, high, low, close, volume FROM candle "
                                     f"WHERE exchange='{EX}' AND product='{PR}' "
                                     f"ORDER BY time DESC LIMIT 10000")
        assert len(stored) == 10_000 and sum(c.volume == 0.5 for c in stored) == len(fixed)
        before = await counters(hub)
        assert await hub.query_candles(EX, PR, limit=10_000) == stored
        assert (await counters(hub))[0] == before[0] + 1  # from the window


async def test_every_candle_shape_stores_the_same_candles(windowed: Hub) -> None:
    """Tuples of floats (the fast path), lists, ints, mappings and Candles, out of order,
    more than the window, values near the float limit: the window and InfluxDB agree."""
    data = random_candles(WINDOW + 20)
    big = Candle(T0 - 60, 1e308, 1.5e308, 1e308, 1.2e308, 1e308)  # a finite sum overflows
    shapes: list[object] = [big]
    for i, c in enumerate(data):
        row = (c.timestamp, c.open, c.high, c.low, c.close, c.volume)
        shapes.append([row, list(row), c, c.as_dict(),
                       (c.timestamp, int(c.open), int(c.high) + 1, int(c.low),
                        int(c.close), int(c.volume))][i % 5])
    random.Random(3).shuffle(shapes)
    assert await windowed.write_candles_batch(EX, PR, shapes) == WINDOW + 21
    expected = [big] + [
        Candle(c.timestamp, float(int(c.open)), float(int(c.high) + 1), float(int(c.low)),
               float(int(c.close)), c.volume) if i % 5 == 4 else c
        for i, c in enumerate(data)]
    assert await windowed.query_candles(EX, PR, limit=WINDOW) == expected[-WINDOW:]
    await windowed.flush()
    assert await windowed.query_candles(EX, PR, limit=WINDOW + 21) == expected


async def test_1h_resampling_matches_ohlcv_computed_here(hub: Hub) -> None:
    data = random_candles(60 * 5 + 17)  # five full hours and a partial one
    await hub.write_candles_batch(EX, PR, data)
    expected = []
    for hour in range(6):
        bucket = [c for c in data if hour * 3600 <= c.timestamp - T0 < (hour + 1) * 3600]
        expected.append(Candle(
            T0 + hour * 3600, bucket[0].open, max(c.high for c in bucket),
            min(c.low for c in bucket), bucket[-1].close, sum(c.volume for c in bucket)))
    got = await hub.query_candles(EX, PR, interval="1h")
    assert len(got) == 6
    for g, e in zip(got, expected, strict=True):
        assert g.timestamp == e.timestamp
        assert (g.open, g.high, g.low, g.close) == (e.open, e.high, e.low, e.close)
        assert g.volume == pytest.approx(e.volume)
    # newest 2 buckets, and a bounded range
    assert [c.timestamp for c in await hub.query_candles(EX, PR, limit=2, interval="1h")] == [
        T0 + 4 * 3600, T0 + 5 * 3600]
    ranged = await hub.query_candles(EX, PR, T0 + 3600, T0 + 3 * 3600 - 1, interval="1h")
    assert ranged == got[1:3]
    assert await hub.query_candles(EX, "NONE", interval="5m") == []


def influx_newest(hub: Hub, limit: int, start: int | None = None,
                  end: int | None = None) -> list[Candle]:
    """The newest ``limit`` candles as influxd itself answers the single plain query."""
    where = f"exchange='{EX}' AND product='{PR}'"
    if start is not None:
        where += f" AND time >= {start}s"
    if end is not None:
        where += f" AND time <= {end}s"
    return influx_candles(hub, f"SELECT open, high, low, close, volume FROM candle "
                               f"WHERE {where} ORDER BY time DESC LIMIT {limit}")


def influx_newest_csv(hub: Hub, limit: int, start: int | None = None,
                      end: int | None = None) -> bytes:
    """The same single query's answer as influxd's own CSV."""
    import urllib.parse
    import urllib.request

    where = f"exchange='{EX}' AND product='{PR}'"
    if start is not None:
        where += f" AND time >= {start}s"
    if end is not None:
        where += f" AND time <= {end}s"
    url = hub.config.influxdb.url + "/query?" + urllib.parse.urlencode({
        "db": hub.config.influxdb.bucket, "epoch": "s",
        "q": f"SELECT open, high, low, close, volume FROM candle WHERE {where} "
             f"ORDER BY time DESC LIMIT {limit}"})
    request = urllib.request.Request(url, headers={"Accept": "application/csv"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return bytes(answer.read())


@pytest.mark.parametrize("limit,start,end", [
    (2000, None, None), (2600, None, None), (5000, None, None),  # across the gap, all
    (2200, T0 + 60 * 100, None), (2000, None, T0 + 60 * 1400 + 40 * 86400),
    (3000, T0, T0 + 60 * 1499 + 30 * 86400), (10, None, None), (1000, None, None),
    (10, None, T0 + 60 * 1400 + 40 * 86400)])
@pytest.mark.parametrize("written", ["window", "no-window", "no-window-live"])
async def test_deep_reads_answer_as_the_single_query_does(
        windowed: Hub, limit: int, start: int | None, end: int | None, written: str) -> None:
    """Beyond the hot window the hub splits a newest-N read into time-bounded queries
    guessed from the window's spacing, or with no window (history written with
    ``window=False``) from the newest stored candle's time, which it looks for in the
    last week first (``live``: the data ends a minute ago); with a 40-day gap in the
    data (the guess falls short) and bounds on either side, the answer is what influxd
    gives for one query, and query_candles_csv's is influxd's CSV of it, to the byte."""
    shift = 0
    if written == "no-window-live":
        shift = (int(time.time()) // 60 - 1) * 60 - (T0 + 60 * 1499 + 40 * 86400)
        start, end = (None if t is None else t + shift for t in (start, end))
    dense = [Candle(c.timestamp + shift, c.open, c.high, c.low, c.close, c.volume)
             for c in random_candles(1500)]
    late = [Candle(c.timestamp + 40 * 86400 + shift, c.open, c.high, c.low, c.close,
                   c.volume) for c in random_candles(1500, seed=8)]
    await windowed.write_candles_batch(EX, PR, dense + late, window=written == "window")
    await windowed.flush()
    got = await windowed.query_candles(EX, PR, start, end, limit=limit)
    assert got == influx_newest(windowed, limit, start, end)
    csv = await windowed.query_candles_csv(EX, PR, start, end, limit=limit)
    assert csv == influx_newest_csv(windowed, limit, start, end)
    assert hub_module._csv_rows(csv) == len(got)  # (how the hub counts an answer's rows)
    assert len(got) == min(limit, len([c for c in dense + late
                                       if (start is None or c.timestamp >= start)
                                       and (end is None or c.timestamp <= end)]))


def ragged_minutes(n: int, skip: range, first: int, seed: int = 3) -> list[Candle]:
    """Minutes from ``first`` on, with a hole, whose volumes' float sum depends on the
    order they are added in."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if i in skip:
            continue
        o = 100 + rnd.random()
        c = 100 + rnd.random()
        out.append(Candle(first + 60 * i, o, max(o, c) + rnd.random(),
                          min(o, c) - rnd.random(), c, rnd.uniform(0, 1000)))
    return out


@pytest.mark.parametrize("interval,seconds,start,end,limit", [
    ("5m", 300, None, None, 50),
    ("15m", 900, T0 + 37 * 60 + 7, None, 1000),  # a bucket cut by the start
    ("1h", 3600, T0 + 3600, T0 + 5 * 3600 + 59, 3),
    ("7m", 420, T0 + 100 * 60, T0 + 800 * 60 + 30, 40),
    ("30s", 30, T0 + 200 * 60, T0 + 260 * 60, 100),
    ("1d", 86400, T0 + 37 * 60, None, 5),
    ("5m", 300, T0 + 442 * 60, T0 + 497 * 60, 10),  # inside the hole: nothing
])
async def test_resampling_from_the_hot_window_is_influxdbs_to_the_bit(
        hub: Hub, interval: str, seconds: int, start: int | None, end: int | None,
        limit: int) -> None:
    """query_candles(interval=...) over minutes the hot window holds is answered without
    asking InfluxDB, and is what influxd computes over the same minutes: the same
    buckets (cut by the range, holes left out), the same floats to the last bit."""
    data = ragged_minutes(900, range(400, 470), T0 + 37 * 60)
    await hub.write_candles_batch(EX, PR, data)
    await hub.flush()
    cold = (await hub.get_stats())["hub"]["candle_cold_queries"]
    got = await hub.query_candles(EX, PR, start, end, limit=limit, interval=interval)
    assert (await hub.get_stats())["hub"]["candle_cold_queries"] == cold  # not asked
    lo = data[0].timestamp if start is None else start
    hi = data[-1].timestamp if end is None else end
    assert got == influx_resampled(hub, EX, PR, seconds, limit, lo, hi)
    assert bool(got) == (start != T0 + 442 * 60)


async def test_weeks_resampled_from_the_hot_window_start_on_monday(hub: Hub) -> None:
    """Minutes across a Monday's midnight, answered from the hot window: two weekly
    buckets labelled by their Mondays, as influxd computes them with the offset that
    starts weeks on Monday (``GROUP BY time(1w, 4d)``), to the bit."""
    monday = 1_699_833_600  # 2023-11-13 00:00 UTC
    data = ragged_minutes(480, range(100, 130), monday - 4 * 3600, seed=9)
    await hub.write_candles_batch(EX, PR, data)
    await hub.flush()
    cold = (await hub.get_stats())["hub"]["candle_cold_queries"]
    got = await hub.query_candles(EX, PR, data[0].timestamp, None, limit=10, interval="1w")
    assert (await hub.get_stats())["hub"]["candle_cold_queries"] == cold  # not asked
    assert [c.timestamp for c in got] == [monday - 604_800, monday]
    assert got == influx_resampled(hub, EX, PR, 604_800, 10, data[0].timestamp,
                                   data[-1].timestamp, offset="4d")


@pytest.mark.parametrize("interval,seconds,limit", [("5m", 300, 400), ("1h", 3600, 30)])
async def test_resampling_a_live_product_reaches_its_newest_candle(
        hub: Hub, interval: str, seconds: int, limit: int) -> None:
    """A product written up to now, and one candle dated two days ahead (a clock set
    wrong): with no end given, query_candles(interval) answers as influxd does over
    everything stored, the future candle's bucket and the older buckets below a gap
    included (the newest candle is looked for in the last week first)."""
    now = int(time.time()) // 60 * 60
    shift = now - 3000 * 60 - T0
    minutes = [Candle(c.timestamp + shift, c.open, c.high, c.low, c.close, c.volume)
               for c in random_candles(3000, seed=3)]
    ahead = Candle(now + 2 * 86400, 1.0, 2.0, 0.5, 1.5, 3.0)
    await hub.write_candles_batch(EX, PR, [*minutes, ahead], window=False)
    await hub.flush()
    got = await hub.query_candles(EX, PR, limit=limit, interval=interval)
    assert got[-1].timestamp == ahead.timestamp - ahead.timestamp % seconds
    assert got == influx_resampled(hub, EX, PR, seconds, limit, minutes[0].timestamp,
                                   ahead.timestamp)
    assert len(got) == min(limit, len({c.timestamp - c.timestamp % seconds
                                       for c in [*minutes, ahead]}))


@pytest.mark.parametrize("interval,seconds,limit,start", [
    ("5m", 300, 20, None),  # the newest buckets alone
    ("5m", 300, 50, None),  # a hole among them: a second query, split inside the data
    ("5m", 300, 700, None),  # past the 20-day gap
    ("1h", 3600, 1, None),  # the window holds only the newest 50 minutes of that hour
    ("1h", 3600, 30, T0 + 60 * 7),  # all of it, from an unaligned start
    ("15m", 900, 10_000, None),
])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "halves"])
async def test_resampling_beyond_the_hot_window_answers_as_the_single_query_does(
        windowed: Hub, interval: str, seconds: int, limit: int, start: int | None,
        split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the hot window InfluxDB resamples the range the newest buckets lie in,
    then (when a gap leaves fewer) the rest below, a long range as two halves at once
    (``halves``: every range longer than two hours): the answer is influxd's to the
    one query over the whole range."""
    if split:
        monkeypatch.setattr(hub_module, "_SPLIT_RESAMPLE", 7200)
    early = ragged_minutes(1200, range(0), T0, seed=4)
    late = ragged_minutes(1200, range(1000, 1080), T0 + 20 * 86400, seed=5)
    await windowed.write_candles_batch(EX, PR, early + late)
    await windowed.flush()
    cold = (await windowed.get_stats())["hub"]["candle_cold_queries"]
    got = await windowed.query_candles(EX, PR, start, None, limit=limit, interval=interval)
    assert (await windowed.get_stats())["hub"]["candle_cold_queries"] > cold
    lo = T0 if start is None else start
    assert got == influx_resampled(windowed, EX, PR, seconds, limit, lo,
                                  late[-1].timestamp)
    assert len(got) == min(limit, len({c.timestamp - c.timestamp % seconds
                                       for c in early + late if c.timestamp >= lo}))
