"""Gaps in stored candles and their repair, and the maintenance actor, against real
servers (the maintenance actor's retry rule also on its own)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import textwrap
import time
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.maintenance import Job, MaintenanceActor
from hub import Candle, Hub, HubConfig, ValidationError
from tests.conftest import eventually, redis_command, wolfhub
from tests.test_cli_data import make_config, write_csv
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR = "kraken", "ETH-EUR"
T0 = 1_700_006_400  # midnight UTC
DAY = 1440  # minutes


def candle(i: int, value: float = 1.0) -> Candle:
    return Candle(T0 + 60 * i, value, value + 1, value - 0.5, value, 1.0)


def brute_force(present: set[int], lo: int, hi: int, span: int = 60) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    filled = {t - t % span for t in present}
    for slot in range(lo, hi + 1, span):
        if slot in filled:
            continue
        if runs and runs[-1][1] + span == slot:
            runs[-1] = (runs[-1][0], slot)
        else:
            runs.append((slot, slot))
    return runs


async def test_gaps_are_exactly_the_missing_minutes(hub: Hub) -> None:
    """Three days with holes of every shape: one minute, a run across midnight (two of
    the scan's chunks), a whole missing day, and candles off the minute grid."""
    missing = {5, 6, 7, 500} | set(range(DAY - 3, DAY + 4)) | set(range(DAY + 100, 2 * DAY + 100))
    kept = [i for i in range(3 * DAY) if i not in missing]
    candles = [candle(i) for i in kept]
    candles.append(Candle(T0 + 60 * 500 + 30, 1.0, 2.0, 0.5, 1.0, 1.0))  # minute 500, late
    for i in range(0, len(candles), 5000):
        await hub.write_candles_batch(EX, PR, candles[i:i + 5000])
    times = {c.timestamp for c in candles}
    expected = [(T0 + 60 * 5, T0 + 60 * 7), (T0 + 60 * (DAY - 3), T0 + 60 * (DAY + 3)),
                (T0 + 60 * (DAY + 100), T0 + 60 * (2 * DAY + 99))]
    assert await hub.gaps(EX, PR) == expected  # minute 500 holds the off-grid candle
    assert await hub.gaps(EX, PR, start=T0 + 60 * 6, end=T0 + 60 * DAY) == [
        (T0 + 60 * 6, T0 + 60 * 7), (T0 + 60 * (DAY - 3), T0 + 60 * DAY)]
    # beyond the stored candles, asked for: the edges are holes too, with or without an
    # end (a repair from a start before the history loaded so far fills it from there)
    assert await hub.gaps(EX, PR, start=T0 - 120, end=T0 + 60) == [(T0 - 120, T0 - 60)]
    assert await hub.gaps(EX, PR, start=T0 - 120) == [(T0 - 120, T0 - 60), *expected]
    five = await hub.gaps(EX, PR, timeframe="5m")
    assert five == brute_force(times, T0, T0 + 60 * (3 * DAY - 1) - (60 * (3 * DAY - 1)) % 300,
                               300)
    assert await hub.gaps(EX, "NOTHING") == []
    with pytest.raises(ValidationError, match="timeframe"):
        await hub.gaps(EX, PR, timeframe="90s")
    with pytest.raises(ValidationError, match="end"):
        await hub.gaps(EX, PR, start=T0 + 60, end=T0)


async def test_a_full_count_does_not_hide_a_hole_and_other_series_count(hub: Hub) -> None:
    """Days holding exactly a day's worth of candles that still miss minutes (a minute
    with two candles off the grid), holes at a day's very end and start, candles just
    before the range asked, and candles another writer stored under an extra tag: the
    scan's answer equals counting every slot, for random ranges and four timeframes
    (7m: a day of its slots is a week, whose chunks once started on a Monday, off the
    slots' grid)."""
    rng = random.Random(20261127)
    product = "TRAP"
    times = {T0 + 60 * i for i in range(7 * DAY)}
    # day 0 holds 1,440 candles and misses minute 100 (minute 200 has two); day 2 misses
    # its last minute, day 4 its first; days 1 and 3 are whole
    times -= {T0 + 60 * 100, T0 + 60 * (3 * DAY - 1), T0 + 60 * (4 * DAY)}
    times.add(T0 + 60 * 200 + 30)
    for _ in range(12):  # days 5 and 6: short random holes, some filled off the grid
        at = rng.randrange(5 * DAY, 7 * DAY - 40)
        times -= {T0 + 60 * (at + d) for d in range(rng.randrange(1, 40))}
        if rng.random() < 0.5:
            times.add(T0 + 60 * (at + 1) + rng.randrange(1, 60))
    others = {t for t in times if T0 + 60 * (5 * DAY + 300) <= t < T0 + 60 * (5 * DAY + 400)}
    mine = sorted(times - others)
    day0 = [t for t in times if t < T0 + 60 * DAY]
    assert len(day0) == DAY  # counting the day's candles alone finds it whole
    for i in range(0, len(mine), 5000):
        await hub.write_candles_batch(EX, product, [Candle(t, 1.0, 2.0, 0.5, 1.0, 1.0)
                                                    for t in mine[i:i + 5000]], window=False)
    lines = "\n".join(f"candle,exchange={EX},product={product},source=other "
                      f"open=1,high=2,low=0.5,close=1,volume=1 {t}000000000" for t in others)
    _write_raw(hub.config, lines)
    newest = max(times)
    assert await hub.gaps(EX, product) == brute_force(times, T0, newest - newest % 60)
    for timeframe, span in (("1m", 60), ("5m", 300), ("1h", 3600), ("7m", 420)):
        for _ in range(6):
            lo = T0 + rng.randrange(-3600, 7 * 86_400)
            hi = lo + rng.randrange(0, 3 * 86_400)
            first = -(-lo // span) * span
            assert await hub.gaps(EX, product, start=lo, end=hi, timeframe=timeframe) \
                == brute_force(times, first, hi - hi % span, span), (timeframe, lo, hi)
    # across Monday 20 November 00:00 UTC (day 5), where a week of 7m slots began a chunk
    lo, hi = T0 + 4 * 86_400 + 7, T0 + 7 * 86_400 - 1
    assert await hub.gaps(EX, product, start=lo, end=hi, timeframe="7m") == brute_force(
        times, -(-lo // 420) * 420, hi - hi % 420, 420)


async def test_an_answer_lacking_a_candle_does_not_make_a_hole(hub: Hub) -> None:
    """influxd answering one of a scan's queries without a candle it holds (a busy
    server mid-compaction, say) must not report a hole there: each hole is confirmed by
    a second answer before it is reported."""
    missing = {100, 101, DAY + 7}
    await hub.write_candles_batch(EX, "SHAKY", [candle(i) for i in range(2 * DAY)
                                                if i not in missing], window=False)
    real = hub._influx
    shaken: list[str] = []

    async def lacking_one(query: Any) -> list[dict[str, Any]]:
        answers = await real(query)
        if "GROUP BY time(60s) fill(none)" in query.text and not shaken:
            values = answers[0]["series"][0]["values"]
            shaken.append(query.text)
            del values[len(values) // 2]  # a present minute, answered missing
        return answers

    hub._influx = lacking_one  # type: ignore[method-assign]
    assert await hub.gaps(EX, "SHAKY") == [(T0 + 6000, T0 + 6060), (T0 + 60 * (DAY + 7),
                                                                    T0 + 60 * (DAY + 7))]
    assert shaken  # the scan read slot by slot, and got the answer lacking a minute


async def test_a_gap_scan_reports_each_product_and_the_newest_candles_age(
        config_data: dict[str, Any]) -> None:
    config = HubConfig.from_mapping({**config_data, "maintenance": {
        "gap_scan_span": 10 * 86_400, "products": [{"exchange": EX, "product": PR}]}},
        environ={})
    now = int(time.time()) // 60 * 60
    async with Hub(config) as hub:
        await hub.write_candles_batch(EX, PR, [Candle(now - 60 * i, 1.0, 2.0, 0.5, 1.0, 1.0)
                                               for i in range(1, 120) if i not in (30, 31)])
        job = await hub.run_maintenance("gaps")
        assert job["failures"] == 0 and job["last_result"]["gaps"] == 1
        stats = await hub.get_stats()
        found = stats["gaps"][f"{EX}:{PR}"]
        assert found["gaps"] == 1 and found["holes"] == [(now - 60 * 31, now - 60 * 30)]
        assert 0 <= found["newest_age"] < 120  # the newest minute ended at most a minute ago
        await hub.flush()
        rows = _influx(config, "SELECT last(value) FROM metric WHERE \"name\"='candle_gaps' "
                               f"AND product='{PR}'")
        assert rows and rows[0][1] == 1.0


async def test_maintenance_jobs_report_and_write_the_hubs_health(
        config_data: dict[str, Any]) -> None:
    config = HubConfig.from_mapping({**config_data, "maintenance": {"quarantine_days": 1}},
                                    environ={})
    async with Hub(config) as hub:
        await hub.get_indicator(EX, PR, "rsi", 14)
        jobs = (await hub.get_stats())["actors"]["maintenance"]["jobs"]
        assert {"rollups", "gaps", "health", "check", "prune"} <= set(jobs)
        await asyncio.sleep(1.5)  # the rollup timer ticks every second or so
        assert (await hub.get_stats())["actors"]["maintenance"]["jobs"]["rollups"]["runs"] >= 1
        health = await hub.run_maintenance("health")
        assert health["failures"] == 0 and health["last_result"] >= 4
        await hub.flush()
        depth = _influx(config, "SELECT count(value) FROM metric WHERE \"name\"='mailbox_depth'")
        assert depth and depth[0][1] >= 4  # one per actor
        spool = _influx(config, "SELECT last(value) FROM metric WHERE \"name\"='spool_lines'")
        assert spool and spool[0][1] == 0.0
        # an old quarantined line goes, a fresh one stays
        with closing(sqlite3.connect(config.sqlite.path)) as db:
            db.executemany("INSERT INTO quarantine(line, reason, created_at) VALUES (?, ?, ?)",
                           [("old x=1", "test", time.time() - 3 * 86_400),
                            ("new x=1", "test", time.time())])
            db.commit()
        pruned = await hub.run_maintenance("prune")
        assert pruned["last_result"] == {"quarantine": 1, "outbox": 0}
        assert [q["line"] for q in await hub.quarantined()] == ["new x=1"]
        checked = await hub.run_maintenance("check")
        assert checked["last_result"] == {"drift": []}
        with pytest.raises(ValidationError, match="job"):
            await hub.run_maintenance("nope")


def _write_raw(config: HubConfig, lines: str) -> None:
    url = (config.influxdb.url + "/write?"
           + urllib.parse.urlencode({"db": config.influxdb.bucket}))
    with urllib.request.urlopen(urllib.request.Request(url, data=lines.encode()),
                                timeout=30) as answer:
        assert answer.status == 204


def _influx(config: HubConfig, query: str) -> list[list[Any]]:
    url = (config.influxdb.url + "/query?"
           + urllib.parse.urlencode({"db": config.influxdb.bucket, "q": query}))
    with urllib.request.urlopen(url, timeout=30) as answer:
        result = json.load(answer)["results"][0]
    series = result.get("series", [])
    return series[0]["values"] if series else []


async def test_a_failing_job_is_retried_and_never_stops_the_others() -> None:
    calls = {"bad": 0, "good": 0}
    third = asyncio.Event()

    async def bad() -> None:
        calls["bad"] += 1
        if calls["bad"] < 3:
            raise OSError("disk on fire")
        third.set()

    async def good() -> int:
        calls["good"] += 1
        return calls["good"]

    actor = MaintenanceActor([Job("bad", 0.05, bad, at_start=True),
                              Job("good", 0.05, good, at_start=True)])
    runner = asyncio.create_task(actor.run())
    actor.go.set()
    try:
        await asyncio.wait_for(third.wait(), 10)
        stats = actor.statistics()["jobs"]
        assert calls["bad"] >= 3  # retried after failing (backoff: 1 s, then 2 s)
        assert stats["bad"]["failures"] == 2 and not stats["bad"]["failing"]
        assert stats["bad"]["last_error"] == "OSError: disk on fire"
        assert calls["good"] >= 20  # the other job kept its clock meanwhile
        assert stats["good"]["failures"] == 0
    finally:
        actor.mailbox.close()
        await runner


def test_repair_fills_only_the_holes_from_a_file_and_a_fetcher(servers: LocalServers,
                                                                tmp_path: Path) -> None:
    make_config(servers, tmp_path)
    redis_command(servers, "FLUSHALL")  # hot windows of earlier tests' products
    config = HubConfig.load(tmp_path / "config" / "cache_db.yml")
    stored = [i for i in range(300) if not (10 <= i < 20 or 100 <= i < 105 or 200 <= i < 230)]

    async def seed() -> None:
        async with Hub(config) as hub:
            await hub.write_candles_batch(EX, PR, [candle(i, 1.0) for i in stored])

    asyncio.run(seed())
    listed = wolfhub("gaps", EX, PR, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split("\t")[:2] == [str(T0 + 600), str(T0 + 1140)]
    assert "3 gaps, 45 1m slots missing" in listed.stderr
    # a file holding every minute, with other values: only the holes' minutes go in
    source = tmp_path / "all.csv"
    write_csv(source, [[T0 + 60 * i, 7.0, 8.0, 6.5, 7.0, 1.0] for i in range(150)])
    filled = wolfhub("backfill", "--repair", str(source), "--exchange", EX, "--product", PR,
                     cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr
    assert "3 gaps (45 minutes) before; 15 candles written of 150 offered; " \
           "1 gaps (30 minutes) left" in filled.stdout
    # a fetcher (an exchange API, say) for the rest
    (tmp_path / "myfeed.py").write_text(textwrap.dedent(f"""
        calls = []
        async def fetch(exchange, product, start, end):
            assert (exchange, product) == ({EX!r}, {PR!r})
            return [{{"timestamp": t, "open": 9.0, "high": 9.5, "low": 8.5, "close": 9.0,
                     "volume": 2.0}} for t in range(start - 600, end + 601, 60)]
    """))
    fetched = wolfhub("backfill", "--repair", "--fetcher", "myfeed:fetch", "--exchange", EX,
                      "--product", PR, cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert "30 candles written of 50 offered; 0 gaps (0 minutes) left" in fetched.stdout
    bad = wolfhub("backfill", "--repair", "--fetcher", "myfeed", "--exchange", EX,
                  "--product", PR, cwd=tmp_path)
    assert bad.returncode == 1 and "module:function" in bad.stderr

    async def check() -> list[Candle]:
        async with Hub(config) as hub:
            assert await hub.gaps(EX, PR) == []
            return await hub.query_candles(EX, PR, limit=1000)

    found = {c.timestamp: c.open for c in asyncio.run(check())}
    assert len(found) == 300
    assert all(found[T0 + 60 * i] == 1.0 for i in stored)  # nothing stored was rewritten
    assert {found[T0 + 60 * i] for i in range(10, 20)} == {7.0}
    assert {found[T0 + 60 * i] for i in range(200, 230)} == {9.0}


def warming(config_data: dict[str, Any]) -> HubConfig:
    """The config with this product to warm at start."""
    return HubConfig.from_mapping({**config_data, "maintenance": {
        "products": [{"exchange": EX, "product": PR}]}}, environ={})


async def warm_job(hub: Hub) -> dict[str, Any]:
    """The warm job's stats once it has run."""
    async def warmed() -> bool:
        jobs = (await hub.get_stats())["actors"]["maintenance"]["jobs"]
        return bool(jobs["warm"]["runs"])

    await eventually(warmed)
    job: dict[str, Any] = (await hub.get_stats())["actors"]["maintenance"]["jobs"]["warm"]
    return job


async def test_the_warm_job_fills_each_timeframes_window_with_closed_buckets_only(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """History loaded without rollups (as a backfill loads it): at start the warm job puts
    each rollup timeframe's closed buckets in its window, equal to InfluxDB's resampling,
    and never a bucket still open; a warm-up is then served from Redis, and the live
    minutes after it hand over without a duplicate or a hole."""
    minutes = 3 * 60 + 7  # from midnight: ends inside a 5m, 15m, 30m, 1h, 4h and 1d bucket
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.write_candles_batch(EX, PR, [candle(i, 10.0 + i % 13) for i in
                                               range(minutes)], window=False)
        await hub.flush()
        resampled = {tf: await hub.query_candles(EX, PR, interval=tf, limit=100)
                     for tf in ("5m", "15m", "30m", "1h", "4h", "1d")}
    end = T0 + 60 * minutes
    spans = {"5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "4h": 14_400, "1d": 86_400}
    closed = {tf: [c for c in found if c.timestamp + spans[tf] <= end]
              for tf, found in resampled.items()}
    assert [len(closed[tf]) for tf in spans] == [37, 12, 6, 3, 0, 0]
    assert all(len(resampled[tf]) == len(closed[tf]) + 1 for tf in spans)  # one open each
    async with Hub(warming(config_data)) as hub:
        job = await warm_job(hub)
        # the 1m window and the four timeframes with a closed bucket
        assert job["last_result"]["windows_filled"] == 5 and job["failures"] == 0
        for tf in ("5m", "15m", "30m", "1h"):
            before = (await hub.get_stats())["hub"]["candle_cold_queries"]
            stream = hub.candles(EX, PR, tf, warmup=len(closed[tf]))
            got = [await anext(stream) for _ in closed[tf]]
            assert (await hub.get_stats())["hub"]["candle_cold_queries"] == before, tf
            assert [(c.timestamp, c.open, c.high, c.low, c.close, c.volume) for c in got] == [
                (c.timestamp, c.open, c.high, c.low, c.close, c.volume) for c in closed[tf]]
            await stream.aclose()
        for tf in ("4h", "1d"):  # nothing closed: nothing in the window
            assert redis_command(servers, "EXISTS",
                                 f"candles:{EX}:{PR}:{tf}") == b":0\r\n"
        # live minutes close the open 1h bucket: it follows the warm-up, once
        stream = hub.candles(EX, PR, "1h", warmup=3)
        got = [await anext(stream) for _ in range(3)]
        for i in range(minutes, 4 * 60):
            c = candle(i, 10.0 + i % 13)
            await hub.write_candle(EX, PR, c.timestamp, c.open, c.high, c.low, c.close,
                                   c.volume)
        got.append(await asyncio.wait_for(anext(stream), 10))
        await stream.aclose()
        assert [c.timestamp for c in got] == [T0 + 3600 * h for h in range(4)]
        assert not got[-1].revision


async def test_warm_windows_fills_only_empty_windows(hub: Hub) -> None:
    """``warm_windows`` after a bulk load without the windows: the 1-minute window and
    each rollup's with a closed bucket are filled (25 hours: all seven); called again it
    leaves them as they are; names are checked."""
    await hub.write_candles_batch(EX, "BULK", [candle(i) for i in range(1500)], window=False)
    assert await hub.warm_windows(EX, "BULK") == 7
    assert [c.timestamp for c in await hub.get_candles(EX, "BULK", 2)] == [
        T0 + 60 * 1498, T0 + 60 * 1499]
    assert await hub.warm_windows(EX, "BULK") == 0
    assert await hub.warm_windows(EX, "NOTHING") == 0
    with pytest.raises(ValidationError, match="product"):
        await hub.warm_windows(EX, "")


async def test_weekly_gaps_are_counted_in_weeks_from_monday(hub: Hub) -> None:
    """Weekly candles as charts and freqtrade label them (Mondays, 00:00 UTC) with two
    weeks missing: the holes are those two Mondays, not the Thursdays of the epoch's
    weeks."""
    monday = 1_699_833_600  # 2023-11-13 00:00 UTC
    week = 604_800
    stored = [k for k in range(12) if k not in (4, 5)]
    await hub.write_candles_batch(EX, "WEEKLY", [
        Candle(monday + week * k, 1.0, 2.0, 0.5, 1.5, 3.0) for k in stored])
    assert await hub.gaps(EX, "WEEKLY", timeframe="1w") == [
        (monday + 4 * week, monday + 5 * week)]
    # a start inside a week counts from the next Monday
    assert await hub.gaps(EX, "WEEKLY", start=monday + 3 * week + 3600,
                          timeframe="1w") == [(monday + 4 * week, monday + 5 * week)]
    assert await hub.gaps(EX, "WEEKLY", start=monday + 4 * week + 1,
                          timeframe="1w") == [(monday + 5 * week, monday + 5 * week)]


def test_config_names_a_bad_timeframe(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"streams": {"timeframes": ["1m", "5x"]}}))
    with pytest.raises(ValidationError, match=r"streams\.timeframes"):
        HubConfig.load(path)


async def test_the_warm_job_fills_empty_hot_windows_at_start(
        config_data: dict[str, Any]) -> None:
    """Candles only InfluxDB holds (Redis was flushed): at start the warm job puts the
    newest in the hot window, so the first read after start is served from it."""
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.write_candles_batch(EX, PR, [candle(i) for i in range(1500)], window=False)
        await hub.flush()
        assert await hub.flush_all() is None
    async with Hub(warming(config_data)) as hub:
        job = await warm_job(hub)
        # the 1m window and every rollup's (25 hours: each has a closed bucket)
        assert job["last_result"]["windows_filled"] == 7 and job["failures"] == 0
        before = (await hub.get_stats())["hub"]["candle_cold_queries"]
        newest = await hub.get_candles(EX, PR, 1000)
        assert [c.timestamp for c in newest] == [T0 + 60 * i for i in range(500, 1500)]
        assert (await hub.get_stats())["hub"]["candle_cold_queries"] == before
