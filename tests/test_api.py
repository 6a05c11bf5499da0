"""Every call of CONTRACT.md's async table, round-tripped through real Redis and InfluxDB."""

from __future__ import annotations

import time

import pytest

from hub import Candle, Hub, HubClosed, HubConfig, Trade
from tests.conftest import eventually, keys_in_redis, redis_command
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR = "papertrader", "BANKNIFTY-FUT"
T0 = 1697529600


def candle(i: int, base: float = 100.0) -> Candle:
    o = base + i
    return Candle(T0 + 60 * i, o, o + 2, o - 1, o + 1, 10.0 + i)


async def test_indicator_cache_roundtrip_uses_the_seed_key(hub: Hub, servers: LocalServers
                                                           ) -> None:
    await hub.cache_indicator(EX, PR, "EMA", 20, 44500.0)
    assert await hub.get_indicator(EX, PR, "EMA", 20) == 44500.0  # in-process at once

    async def in_redis() -> bool:  # the SET itself follows without being awaited
        return redis_command(servers, "GET", f"indicator:{EX}:{PR}:EMA:20") != b"$-1\r\n"
    await eventually(in_redis, within=2)
    assert redis_command(servers, "GET", f"indicator:{EX}:{PR}:EMA:20") == b"$7\r\n44500.0\r\n"
    ttl = int(redis_command(servers, "TTL", f"indicator:{EX}:{PR}:EMA:20")[1:])
    assert 290 < ttl <= 300
    await hub.cache_indicator(EX, PR, "MACD", "12-26", {"macd": 1.5, "signal": [1, 2]}, ttl=5)
    assert await hub.get_indicator(EX, PR, "MACD", "12-26") == {"macd": 1.5, "signal": [1, 2]}
    assert await hub.get_indicator(EX, PR, "EMA", 50, default=-1) == -1


@pytest.mark.parametrize("dated", ["years-ago", "live"])
async def test_get_indicator_reads_through_influx_then_caches(
        hub: Hub, servers: LocalServers, dated: str) -> None:
    """The newest point, whether written years ago (looked for in all of time) or
    lately (in the last week, first), a point dated a day ahead included."""
    if dated == "live":
        now = int(time.time())
        await hub.write_indicator(EX, PR, "RSI", now - 30 * 86400, 40.0, period=14)
        await hub.write_indicator(EX, PR, "RSI", now - 60, 50.0, period=14)
        await hub.write_indicator(EX, PR, "RSI", now + 86400, 55.5, period=14)
        await hub.write_indicator(EX, PR, "RSI", now + 2 * 86400, 99.0, period=7)
    else:
        await hub.write_indicator(EX, PR, "RSI", T0, 40.0, period=14)
        await hub.write_indicator(EX, PR, "RSI", T0 + 60, 55.5, period=14)
        await hub.write_indicator(EX, PR, "RSI", T0 + 60, 99.0, period=7)
    await hub.flush()
    redis_command(servers, "FLUSHALL")

    async def flushed() -> bool:  # Redis' invalidation reached the near cache
        near = hub._cache.near if hub._cache is not None else None
        return near is None or f"indicator:{EX}:{PR}:RSI:14" not in near
    await eventually(flushed, within=2)
    assert await hub.get_indicator(EX, PR, "RSI", 14) == 55.5
    assert redis_command(servers, "EXISTS", f"indicator:{EX}:{PR}:RSI:14") == b":1\r\n"
    stats = (await hub.get_stats())["hub"]
    assert stats["indicator_cold_hits"] == 1
    assert await hub.get_indicator(EX, PR, "RSI", 14) == 55.5
    assert (await hub.get_stats())["hub"]["indicator_cache_hits"] >= 1


async def test_write_candle_and_query(hub: Hub) -> None:
    for i in range(5):
        c = candle(i)
        await hub.write_candle(EX, PR, c.timestamp, c.open, c.high, c.low, c.close, c.volume)
    got = await hub.query_candles(EX, PR, limit=3)
    assert got == [candle(2), candle(3), candle(4)]
    assert all(type(c.timestamp) is int for c in got)
    await hub.flush()
    # the same answer from InfluxDB once the hot window is gone
    await hub.flush_all()
    assert await hub.query_candles(EX, PR, limit=3) == [candle(2), candle(3), candle(4)]
    assert (await hub.get_stats())["hub"]["candle_cold_queries"] >= 1


async def test_write_candles_batch_accepts_candles_and_seed_mappings(hub: Hub) -> None:
    items: list[Candle | dict[str, float]] = [candle(i) for i in range(3)]
    items.append(candle(3).as_dict())
    assert await hub.write_candles_batch(EX, PR, items) == 4
    assert await hub.write_candles_batch(EX, PR, []) == 0
    await hub.flush()
    await hub.flush_all()
    assert await hub.query_candles(EX, PR) == [candle(i) for i in range(4)]


async def test_cache_candles_and_get_candles(hub: Hub, servers: LocalServers) -> None:
    await hub.cache_candles(EX, PR, [candle(i) for i in range(10)], max_candles=5)
    assert await hub.get_candles(EX, PR, count=3) == [candle(7), candle(8), candle(9)]
    assert await hub.get_candles(EX, PR) == [candle(i) for i in range(5, 10)]
    assert redis_command(servers, "ZCARD", f"candles:{EX}:{PR}") == b":5\r\n"
    # cache only: nothing went to InfluxDB
    await hub.flush_all()
    assert await hub.query_candles(EX, PR) == []


async def test_trades_roundtrip_ascending(hub: Hub) -> None:
    await hub.write_trade(EX, PR, T0 + 10.5, "sell", 44600.0, 2, "o-2", fee=1.25, profit=50.0,
                          note="tp hit", paper=True)
    await hub.write_trade(EX, PR, T0, "buy", 44500.0, 2.0, 1001, fee=1.0)
    trades = await hub.query_trades(EX, PR)
    assert trades == [
        Trade(EX, PR, T0, "buy", 44500.0, 2.0, "1001", {"fee": 1.0}),
        Trade(EX, PR, T0 + 10.5, "sell", 44600.0, 2.0, "o-2",
              {"fee": 1.25, "profit": 50.0, "note": "tp hit", "paper": True}),
    ]
    assert trades[1].as_dict()["profit"] == 50.0
    assert await hub.query_trades(EX, PR, start_time=T0 + 1) == trades[1:]
    assert await hub.query_trades(EX, PR, limit=1) == trades[1:]
    assert await hub.query_trades(EX, "OTHER") == []


async def test_trades_around_the_last_week_answer_as_one_query(hub: Hub) -> None:
    """Trades spread over 20 days up to one dated a day ahead, some a fraction of a
    second apart around the last week's start: the newest N (asked of the last week
    first, then of the weeks before) with and without bounds on either side of the
    week's start are influxd's answer to the single query."""
    import json
    import urllib.parse
    import urllib.request

    now = int(time.time())
    # every 2 hours over 20 days, a quarter-second apart around the week's start (so
    # the start the hub takes, a moment later, falls among them), one a day ahead
    times: list[float] = [now - 20 * 86400 + k * 7200 for k in range(240)]
    times += [now - 7 * 86400 - 5 + k * 0.25 for k in range(120)] + [now + 86400]
    for k, t in enumerate(times):
        await hub.write_trade(EX, PR, t, "buy" if k % 2 else "sell", 100.0 + k, 1.0, f"o{k}")
    await hub.flush()

    def influxd(start: int | None, end: int | None, limit: int) -> list[str]:
        where = f"exchange='{EX}' AND product='{PR}'"
        where += "" if start is None else f" AND time >= {start}s"
        where += "" if end is None else f" AND time <= {end}s"
        url = hub.config.influxdb.url + "/query?" + urllib.parse.urlencode({
            "db": hub.config.influxdb.bucket, "q": f"SELECT price, order_id FROM trade WHERE "
                                                  f"{where} ORDER BY time DESC LIMIT {limit}"})
        with urllib.request.urlopen(url, timeout=30) as answer:
            series = json.load(answer)["results"][0].get("series", [])
        return [row[2] for row in reversed(series[0]["values"])] if series else []

    week = now - 7 * 86400
    for start, end, limit in [(None, None, 10), (None, None, 84), (None, None, 150),
                              (None, None, 1000), (week - 86400, None, 100),
                              (None, week + 86400, 30), (week - 3 * 86400, now, 60),
                              (now - 86400, None, 5), (None, week - 86400, 5),
                              (None, None, 220), (None, week + 60, 20)]:
        got = await hub.query_trades(EX, PR, start, end, limit=limit)
        assert [t.order_id for t in got] == influxd(start, end, limit), (start, end, limit)
        assert len(got) == min(limit, len([t for t in times if (start is None or t >= start)
                                           and (end is None or t <= end)]))


async def test_metric_is_written_with_time_now(hub: Hub, config: HubConfig) -> None:
    before = time.time()
    await hub.write_metric("pnl", 12.5, exchange=EX, product=PR, strategy="ema")
    await hub.flush()
    assert hub._query is not None
    from actors.query import Query
    results = await hub._query.run_query(Query('SELECT * FROM "metric"'))
    series = results[0]["series"][0]
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert row["name"] == "pnl" and row["value"] == 12.5 and row["strategy"] == "ema"
    assert before - 1 <= row["time"] <= time.time() + 1


async def test_positions_and_strategy_state(hub: Hub) -> None:
    assert await hub.get_position(EX, PR) is None
    await hub.cache_position(EX, PR, {"size": 2, "entry": 44500.0, "side": "long"})
    assert await hub.get_position(EX, PR) == {"size": 2, "entry": 44500.0, "side": "long"}
    await hub.cache_strategy_state(EX, PR, "ema_cross", {"fast": [1.0, 2.0], "armed": True})
    assert await hub.get_strategy_state(EX, PR, "ema_cross") == {"fast": [1.0, 2.0],
                                                                 "armed": True}
    assert await hub.get_strategy_state(EX, PR, "rsi") is None


async def test_flush_all_clears_only_hub_keys_with_scan(hub: Hub, servers: LocalServers
                                                        ) -> None:
    redis_command(servers, "SET", "someone:else", "1")
    await hub.cache_indicator(EX, PR, "EMA", 20, 1.0)
    await hub.cache_candles(EX, PR, [candle(0)])
    await hub.cache_position(EX, PR, {"size": 1})
    await hub.flush_all()
    assert keys_in_redis(servers) == 1
    assert redis_command(servers, "EXISTS", "someone:else") == b":1\r\n"
    assert await hub.get_indicator(EX, PR, "EMA", 20) is None
    # positions are durable in SQLite, so they come back
    assert await hub.get_position(EX, PR) == {"size": 1}


async def test_delete_data_with_the_seeds_syntax(hub: Hub) -> None:
    await hub.write_candles_batch(EX, PR, [candle(i) for i in range(5)])
    await hub.write_candles_batch(EX, "NIFTY-FUT", [candle(i) for i in range(5)])
    assert len(await hub.query_candles(EX, PR)) == 5  # the window is held in-process now
    await hub.delete_data("2000-01-01T00:00:00Z", "now",
                          f'_measurement="candle" AND product="{PR}"')
    assert await hub.query_candles(EX, PR) == []  # at once, not after an invalidation
    await hub.flush_all()
    assert await hub.query_candles(EX, PR) == []
    assert len(await hub.query_candles(EX, "NIFTY-FUT")) == 5
    # a range: keep what is outside it
    await hub.delete_data(T0 + 60, T0 + 120, '_measurement="candle"')
    assert [c.timestamp for c in await hub.query_candles(EX, "NIFTY-FUT")] == [
        T0, T0 + 180, T0 + 240]


async def test_get_stats_has_the_seeds_keys(hub: Hub) -> None:
    await hub.cache_indicator(EX, PR, "EMA", 20, 1.0)
    await hub.get_indicator(EX, PR, "EMA", 20)
    stats = await hub.get_stats()
    for key in ("keyspace_hits", "keyspace_misses", "connected_clients", "used_memory_human",
                "total_commands_processed"):
        assert stats[key] is not None, key
    assert stats["keyspace_hits"] >= 1
    assert stats["actors"]["cache"]["round_trips"] >= 1
    assert stats["healthy"] is True


async def test_lifecycle(config: HubConfig) -> None:
    hub = Hub(config)
    await hub.start()
    await hub.write_candle(EX, PR, T0, 1, 2, 1, 1, 1)
    await hub.close()
    await hub.close()  # idempotent
    with pytest.raises(HubClosed):
        await hub.write_candle(EX, PR, T0, 1, 2, 1, 1, 1)
    with pytest.raises(HubClosed):
        await hub.start()
    # what was accepted before close was flushed by close
    async with Hub(config) as again:
        await again.flush_all()  # so the answer must come from InfluxDB
        assert await again.query_candles(EX, PR) == [Candle(T0, 1, 2, 1, 1, 1)]
