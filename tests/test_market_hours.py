"""Trading sessions (config ``markets``) against real servers: a closed market's nights,
weekends and holidays are no gaps and no stalled feed, and its daily candle closes at the
session's end, live and in a warm-up from storage. The session times are those of the
National Stock Exchange of India (09:15-15:30 IST, 03:45-10:00 UTC), which the real
Wolfinch trades; a product of the same exchange outside the market is the control."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from hub import Candle, Hub, HubConfig
from tests.conftest import influx_resampled, redis_command, wolfhub
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR, OTHER = "openalgo", "NIFTY-FUT", "CRYPTO-PERP"
NSE = {"name": "nse", "exchanges": [EX], "products": [PR, "BANKNIFTY-FUT"],
       "timezone": "Asia/Kolkata",
       "hours": ["09:15-15:30"], "holidays": ["2026-01-26"]}


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def session(day: str, skip: range = range(0)) -> list[Candle]:
    """The 375 minutes of a trading day (03:45-09:59 UTC), but those at ``skip``."""
    opens = utc(f"{day} 03:45")
    return [Candle(opens + 60 * i, 100.0 + i % 7, 101.0 + i % 7, 99.0, 100.5, 1.0 + i % 3)
            for i in range(375) if i not in skip]


def plain(c: Candle) -> Candle:
    return Candle(c.timestamp, c.open, c.high, c.low, c.close, c.volume)


def market_config(config_data: dict[str, Any], **more: Any) -> HubConfig:
    return HubConfig.from_mapping({**config_data, "markets": [NSE], **more}, environ={})


async def test_nights_weekends_and_holidays_are_no_gaps(config_data: dict[str, Any]) -> None:
    """Thursday 22 January 2026 (nothing stored), Friday, the weekend, Monday 26th (a
    holiday), Tuesday with ten minutes missing at 10:30 IST, Wednesday."""
    days = session("2026-01-23") + session("2026-01-27", range(45, 55)) + session("2026-01-28")
    hole = (utc("2026-01-27 04:30"), utc("2026-01-27 04:39"))
    async with Hub(market_config(config_data)) as hub:
        for product in (PR, OTHER):
            await hub.write_candles_batch(EX, product, days, window=False)
        await hub.flush()
        assert await hub.gaps(EX, PR) == [hole]
        # from Thursday on: its whole session missing, then the same hole
        assert await hub.gaps(EX, PR, start=utc("2026-01-22 00:00"),
                              end=utc("2026-01-28 12:00")) == [
            (utc("2026-01-22 03:45"), utc("2026-01-22 09:59")), hole]
        assert await hub.gaps(EX, PR, timeframe="5m") == [(hole[0], utc("2026-01-27 04:35"))]
        # the slots an hour bucket holds of a session count as the session's
        assert await hub.gaps(EX, PR, start=utc("2026-01-22 00:00"),
                              end=utc("2026-01-23 23:00"), timeframe="1h") == [
            (utc("2026-01-22 03:00"), utc("2026-01-22 09:00"))]
        # outside the market: every night, the weekend and the holiday are holes
        assert await hub.gaps(EX, OTHER) == [
            (utc("2026-01-23 10:00"), utc("2026-01-27 03:44")), hole,
            (utc("2026-01-27 10:00"), utc("2026-01-28 03:44"))]


async def test_a_repair_asks_the_fetcher_only_for_holes_while_the_market_was_open(
        config_data: dict[str, Any]) -> None:
    """``wolfhub backfill --repair`` (wolfhub.repair): Friday and Tuesday with ten
    minutes missing on Tuesday; the fetcher (a broker's API, with its quota) is asked for
    those ten minutes, not for the weekend and the holiday; beside it, a product outside
    the market has the fetcher asked for the nights too."""
    from wolfhub.repair import repair

    days = session("2026-01-23") + session("2026-01-27", range(45, 55))
    asked: dict[str, list[tuple[int, int]]] = {PR: [], OTHER: []}

    async def fetcher(exchange: str, product: str, start: int, end: int) -> list[Candle]:
        asked[product].append((start, end))
        return [c for c in session("2026-01-27") if start <= c.timestamp <= end]

    async with Hub(market_config(config_data)) as hub:
        for product in (PR, OTHER):
            await hub.write_candles_batch(EX, product, days, window=False)
        report = await repair(hub, EX, PR, fetcher=fetcher)
        other = await repair(hub, EX, OTHER, fetcher=fetcher)
    hole = (utc("2026-01-27 04:30"), utc("2026-01-27 04:39"))
    assert asked[PR] == [(hole[0], hole[1] + 59)]
    assert (report.written, report.holes_after) == (10, [])
    assert len(asked[OTHER]) == 2 and other.written == 10  # the weekend and the hole
    assert asked[OTHER][0] == (utc("2026-01-23 10:00"), utc("2026-01-27 03:44") + 59)


def test_wolfhub_gaps_names_the_market_whose_hours_it_counted(
        config_data: dict[str, Any], tmp_path: Path) -> None:
    """``wolfhub gaps`` with the config file: Tuesday's ten minutes, not the weekend, and
    it says whose sessions it counted."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "cache_db.yml").write_text(yaml.safe_dump(
        {**config_data, "markets": [NSE]}))

    async def load() -> None:
        async with Hub(HubConfig.load(tmp_path / "config" / "cache_db.yml")) as hub:
            await hub.write_candles_batch(EX, PR, session("2026-01-23") + session(
                "2026-01-27", range(45, 55)), window=False)
    asyncio.run(load())
    done = wolfhub("gaps", EX, PR, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{utc('2026-01-27 04:30')}\t{utc('2026-01-27 04:39')}\t"
        "2026-01-27 04:30 .. 2026-01-27 04:39 UTC\t10 missing"]
    assert "1 gaps, 10 1m slots missing (only while market nse was open)" in done.stderr


async def test_a_closed_markets_feed_is_not_stalled(config_data: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The gap scan at 12:00 UTC on Friday 23 January, two hours after the session's
    close, looking two days back over Thursday's and Friday's sessions."""
    import hub._maintenance as jobs_module

    now = utc("2026-01-23 12:00")
    monkeypatch.setattr(jobs_module, "time", SimpleNamespace(time=lambda: now))
    config = market_config(config_data, maintenance={
        "gap_scan_span": 2 * 86_400,
        "products": [{"exchange": EX, "product": p} for p in (PR, OTHER)]})
    async with Hub(config) as hub:
        for product in (PR, OTHER):
            await hub.write_candles_batch(EX, product, session("2026-01-22")
                                          + session("2026-01-23"), window=False)
        job = await hub.run_maintenance("gaps")
        assert job["failures"] == 0 and job["last_result"]["gaps"] == 1
        found = (await hub.get_stats())["gaps"]
        assert found[f"{EX}:{PR}"]["gaps"] == 0 and found[f"{EX}:{PR}"]["newest_age"] == 0.0
        assert found[f"{EX}:{OTHER}"]["gaps"] == 1  # the night between the sessions
        assert found[f"{EX}:{OTHER}"]["newest_age"] == 7200.0
        # and 30 minutes into Tuesday's session (Monday a holiday), 30 minutes silent
        monkeypatch.setattr(jobs_module, "time",
                            SimpleNamespace(time=lambda: utc("2026-01-27 04:15")))
        await hub.run_maintenance("gaps")
        found = (await hub.get_stats())["gaps"]
        assert found[f"{EX}:{PR}"]["newest_age"] == 1800.0


async def test_the_daily_candle_closes_at_the_sessions_end(
        config_data: dict[str, Any], servers: LocalServers,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A live feed writes Friday's session minute by minute (the hub's clock set by the
    test). Subscribers of 1d and 4h get their candles close_grace after 15:30 IST, equal
    to InfluxDB's resampling; the same feed outside the market gets none before
    midnight UTC. A warm-up from storage (the window gone) hands the daily candle over."""
    import hub._streams as streams_module

    clock = [0.0]
    monkeypatch.setattr(streams_module, "time", SimpleNamespace(time=lambda: clock[0]))
    config = market_config(config_data, streams={"close_grace": 1.0},
                           maintenance={"enabled": False})
    minutes = session("2026-01-23")
    day, closes = utc("2026-01-23 00:00"), utc("2026-01-23 10:00")
    async with Hub(config) as hub:
        assert hub.streams is not None
        follow = {(p, tf): hub.candles(EX, p, tf) for p in (PR, OTHER) for tf in ("4h", "1d")}
        got: dict[tuple[str, str], list[Candle]] = {k: [] for k in follow}

        async def take(key: tuple[str, str]) -> None:
            async for candle in follow[key]:
                got[key].append(candle)

        tasks = [asyncio.create_task(take(k)) for k in follow]
        await asyncio.sleep(0.5)  # (subscribed before the first close)
        for c in minutes:
            clock[0] = c.timestamp + 62
            for product in (PR, OTHER):
                await hub.write_candle(EX, product, c.timestamp, c.open, c.high, c.low,
                                       c.close, c.volume)
        # the 4h of 00:00-04:00 closed with the first minute of the next one
        await hub.streams.expire(now=closes + 0.5)
        await asyncio.sleep(0.5)
        assert [c.timestamp for c in got[(PR, "1d")]] == []  # not before the grace
        await hub.streams.expire(now=closes + 1.0)
        for _ in range(100):
            if got[(PR, "1d")] and len(got[(PR, "4h")]) == 2:
                break
            await asyncio.sleep(0.05)
        await hub.flush()
        for timeframe, span in (("4h", 14_400), ("1d", 86_400)):
            assert [plain(c) for c in got[(PR, timeframe)]] == influx_resampled(
                hub, EX, PR, span, 10, day, closes)
        # around the clock: neither the 08:00-12:00 4h nor the day is over
        assert [c.timestamp for c in got[(OTHER, "4h")]] == [day, day + 14_400]
        await hub.streams.expire(now=day + 86_400 - 1)
        await asyncio.sleep(0.5)
        assert got[(OTHER, "1d")] == []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        # the day's window lost: filled again from storage, the closed day with it
        redis_command(servers, "DEL", hub.streams.window_key(EX, PR, "1d"))
        assert await hub.warm_windows(EX, PR) >= 1
        stream = hub.candles(EX, PR, "1d", warmup=1)
        first = await asyncio.wait_for(stream.__anext__(), 10)
        await stream.aclose()
        assert first == got[(PR, "1d")][0] and not first.revision


async def test_buckets_start_at_the_sessions_open(
        config_data: dict[str, Any], servers: LocalServers,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``align: open``: a live feed writes Friday's session but the hour from 10:15 IST.
    1h candles are 09:15-10:15 IST, ..., 15:15-15:30 IST, as exchange charts draw them;
    the stream, query_candles (from the hot window and from InfluxDB) and influxd's own
    ``GROUP BY time(1h, 45m)`` agree, and so do 4h and 1d; gaps count hours from :45."""
    import hub._streams as streams_module

    clock = [0.0]
    monkeypatch.setattr(streams_module, "time", SimpleNamespace(time=lambda: clock[0]))
    config = HubConfig.from_mapping({**config_data, "markets": [{**NSE, "align": "open"}],
                                     "streams": {"close_grace": 1.0},
                                     "maintenance": {"enabled": False}}, environ={})
    minutes = session("2026-01-23", skip=range(60, 120))  # 04:45-05:44 UTC missing
    day, opens, closes = utc("2026-01-23 00:00"), utc("2026-01-23 03:45"), utc("2026-01-23 10:00")
    async with Hub(config) as hub:
        assert hub.streams is not None
        follow = {tf: hub.candles(EX, PR, tf) for tf in ("1h", "4h", "1d")}
        got: dict[str, list[Candle]] = {tf: [] for tf in follow}

        async def take(timeframe: str) -> None:
            async for candle in follow[timeframe]:
                got[timeframe].append(plain(candle))

        tasks = [asyncio.create_task(take(tf)) for tf in follow]
        await asyncio.sleep(0.5)  # (subscribed before the first close)
        for c in minutes:
            clock[0] = c.timestamp + 62
            await hub.write_candle(EX, PR, c.timestamp, c.open, c.high, c.low, c.close,
                                   c.volume)
        await hub.streams.expire(now=closes + 1.0)
        for _ in range(100):
            if got["1d"] and len(got["4h"]) == 2 and len(got["1h"]) == 6:
                break
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.flush()
        hours = influx_resampled(hub, EX, PR, 3600, 20, day, closes, offset="2700s")
        assert [c.timestamp for c in hours] == [opens, opens + 2 * 3600, opens + 3 * 3600,
                                                opens + 4 * 3600, opens + 5 * 3600,
                                                opens + 6 * 3600]
        assert got["1h"] == hours
        assert got["4h"] == influx_resampled(hub, EX, PR, 14_400, 20, day, closes,
                                             offset="13500s")
        assert [c.timestamp for c in got["4h"]] == [opens, opens + 14_400]
        assert got["1d"] == influx_resampled(hub, EX, PR, 86_400, 20, day, closes,
                                             offset="13500s")
        assert [c.timestamp for c in got["1d"]] == [opens]
        # query_candles: from the hot window, then (the window gone) from InfluxDB
        for _ in range(2):  # (the second time from the near cache's copy of the window)
            assert await hub.query_candles(EX, PR, opens, interval="1h", limit=20) == hours
        assert (await hub.get_stats())["hub"]["candle_window_hits"] >= 2
        redis_command(servers, "DEL", hub.streams.window_key(EX, PR, "1m"))
        assert await hub.query_candles(EX, PR, day, closes, interval="1h", limit=20) == hours
        assert await hub.query_candles(EX, PR, interval="4h", limit=20) == got["4h"]
        assert await hub.gaps(EX, PR, timeframe="1h") == [(opens + 3600, opens + 3600)]
        assert await hub.gaps(EX, PR) == [(opens + 3600, opens + 2 * 3600 - 60)]

        # another product's feed at 10:40 IST (05:10 UTC), its 1h window lost: the warm-up
        # from storage holds the closed 09:15 IST hour, never the open 10:15 one
        other = "BANKNIFTY-FUT"
        for c in session("2026-01-23")[:86]:
            clock[0] = c.timestamp + 62
            await hub.write_candle(EX, other, c.timestamp, c.open, c.high, c.low, c.close,
                                   c.volume)
        await hub.flush()
        redis_command(servers, "DEL", hub.streams.window_key(EX, other, "1h"))
        assert await hub.warm_windows(EX, other) >= 1
        key = hub.streams.window_key(EX, other, "1h")
        assert redis_command(servers, "ZCARD", key) == b":1\r\n"  # the closed hour alone
        stream = hub.candles(EX, other, "1h", warmup=5)
        first = await asyncio.wait_for(stream.__anext__(), 10)
        await stream.aclose()
        assert plain(first) == influx_resampled(hub, EX, other, 3600, 1, opens, opens + 3599,
                                                offset="2700s")[0]
        # (query_candles answers the bucket in progress too)
        assert [c.timestamp for c in await hub.query_candles(
            EX, other, interval="1h", limit=5)] == [opens, opens + 3600]
