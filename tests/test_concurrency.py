"""1,000 strategy coroutines on one loop: mixed reads and writes, all correct."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hub import Candle, Hub, HubConfig

pytestmark = pytest.mark.anyio
EX = "papertrader"
T0 = 1697529600
N, PRODUCTS = 1000, 20


async def strategy(hub: Hub, i: int) -> None:
    product = f"P{i % PRODUCTS}"
    k = i // PRODUCTS
    await hub.cache_indicator(EX, product, "EMA", i, i * 1.5)
    c = Candle(T0 + 60 * k, 100.0 + k, 101.0 + k, 99.0 + k, 100.5 + k, float(i))
    await hub.write_candle(EX, product, c.timestamp, c.open, c.high, c.low, c.close, c.volume)
    await hub.cache_strategy_state(EX, product, f"s{i}", {"i": i, "armed": i % 2 == 0})
    await hub.write_trade(EX, product, T0 + i, "buy" if i % 2 else "sell", 100.0 + i, 1.0,
                          f"o{i}", fee=0.01 * i)
    await hub.write_indicator(EX, product, "RSI", T0 + 60 * k, float(i), period=14)
    assert await hub.get_indicator(EX, product, "EMA", i) == i * 1.5
    assert await hub.get_indicator(EX, product, "MISSING", 1, default="none") == "none"
    assert await hub.get_strategy_state(EX, product, f"s{i}") == {"i": i, "armed": i % 2 == 0}
    window = await hub.query_candles(EX, product, limit=1000)
    assert c in window
    assert [x.timestamp for x in window] == sorted({x.timestamp for x in window})


@pytest.fixture
async def roomy(config_data: dict[str, Any]) -> AsyncIterator[Hub]:
    # Correctness under load, not deadlines: on a busy 2-core machine a call queued behind
    # 1,000 others can wait past the default 2 s and fall back (tested in test_outages.py)
    config_data["redis"]["timeout"] = 15.0
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as opened:
        yield opened


async def test_thousand_strategies(roomy: Hub) -> None:
    hub = roomy
    async with asyncio.TaskGroup() as tg:
        for i in range(N):
            tg.create_task(strategy(hub, i))
    await hub.flush()
    await hub.flush_all()  # what follows comes from InfluxDB and SQLite
    per_product = N // PRODUCTS
    for p in range(PRODUCTS):
        product = f"P{p}"
        candles = await hub.query_candles(EX, product)
        assert [c.timestamp for c in candles] == [T0 + 60 * k for k in range(per_product)]
        assert [c.volume for c in candles] == [float(p + PRODUCTS * k) for k in range(per_product)]
        trades = await hub.query_trades(EX, product)
        assert len(trades) == per_product
        assert await hub.get_strategy_state(EX, product, f"s{p}") == {"i": p, "armed": p % 2 == 0}
    stats = await hub.get_stats()
    # auto-pipelining: far fewer round trips than commands
    cache = stats["actors"]["cache"]
    assert cache["round_trips"] * 10 < cache["commands"]
    # group commit: far fewer SQLite transactions than durable writes (2,000)
    assert stats["actors"]["state"]["commits"] * 10 < 2 * N
    assert {k: stats["sqlite"][k] for k in ("outbox", "outbox_all", "quarantined")} == {
        "outbox": 0, "outbox_all": 0, "quarantined": 0}


async def test_many_cold_reads_of_distinct_keys_share_round_trips(
        hub: Hub, servers: Any) -> None:
    """300 coroutines each read a key no one read before, written by another client: some
    plain values, a JSON object, a key of another type, one that is not JSON, one without
    a TTL and missing ones. Each gets its own answer; the reads share a few round trips."""
    from tests.conftest import redis_command

    expected: dict[int, Any] = {}
    for i in range(300):
        key = f"indicator:{EX}:MANY:EMA:{i}"
        if i % 50 == 7:
            redis_command(servers, "HSET", key, "f", "v")  # another type: a miss
            expected[i] = "none"
        elif i % 50 == 8:
            redis_command(servers, "SET", key, b"\xff not json", "EX", "300")
            expected[i] = "none"
        elif i % 50 == 9:
            expected[i] = "none"  # missing
        elif i % 50 == 10:
            redis_command(servers, "SET", key, '{"macd": 1.5}')  # no TTL: held till it changes
            expected[i] = {"macd": 1.5}
        else:
            redis_command(servers, "SET", key, str(i * 0.5), "EX", "300")
            expected[i] = i * 0.5
    before = (await hub.get_stats())["actors"]["cache"]
    got = await asyncio.gather(*(hub.get_indicator(EX, "MANY", "EMA", i, default="none")
                                 for i in range(300)))
    assert dict(enumerate(got)) == expected
    after = (await hub.get_stats())["actors"]["cache"]
    assert after["round_trips"] - before["round_trips"] < 30  # pipelined
    # and few commands: reads batched into script calls, not a GET and a PTTL per key
    assert after["commands"] - before["commands"] < 100, after["commands"] - before["commands"]
    near = hub._cache.near if hub._cache is not None else None
    if near is not None:
        assert f"indicator:{EX}:MANY:EMA:10" in near  # no TTL: held until a write evicts it
        assert f"indicator:{EX}:MANY:EMA:11" in near
        assert await hub.get_indicator(EX, "MANY", "EMA", 10) == {"macd": 1.5}  # a hit


@pytest.mark.parametrize("near_cache", [False, True])
async def test_a_read_right_after_a_write_sees_it(config_data: dict[str, Any],
                                                  servers: Any, near_cache: bool) -> None:
    """A lone cold read runs on the caller's task only while the cache actor is idle: a
    write queued before it (not yet sent to Redis) is never overtaken, whether or not the
    near cache could have answered, and values another client set are read as they are."""
    from tests.conftest import redis_command

    config_data.setdefault("performance", {})["near_cache"] = near_cache
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        before = (await hub.get_stats())["actors"]["cache"]["round_trips"]
        for i in range(200):
            await hub.cache_indicator(EX, "RYW", "EMA", 9, float(i))
            assert await hub.get_indicator(EX, "RYW", "EMA", 9) == float(i)
            redis_command(servers, "SET", f"indicator:{EX}:RYW:EMA:10", str(i), "EX", "60")
            assert await hub.get_indicator(EX, "RYW", "EMA", 10) == i
        assert (await hub.get_stats())["actors"]["cache"]["round_trips"] > before


def _connections_received(servers: Any) -> int:
    from tests.conftest import redis_command

    info = redis_command(servers, "INFO", "stats").decode()
    return int(info.split("total_connections_received:")[1].split()[0])


async def test_a_read_its_caller_gave_up_on_leaves_the_connection_in_step(
        config_data: dict[str, Any], servers: Any) -> None:
    """A strategy stops waiting for a cold read (its timeout fired while Redis held the
    reply back): the hub reads that reply itself, the next reads get their own values,
    and the hub opens no new connection to Redis for it."""
    from tests.conftest import redis_command

    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        for period, value in ((11, "1"), (12, "2"), (13, "3")):  # (another process's)
            redis_command(servers, "SET", f"indicator:{EX}:GIVEUP:EMA:{period}", value,
                          "EX", "60")
        assert await hub.get_indicator(EX, "GIVEUP", "EMA", 13) == 3
        before = _connections_received(servers)
        redis_command(servers, "CLIENT", "PAUSE", "400", "ALL")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await hub.get_indicator(EX, "GIVEUP", "EMA", 11)
        assert await hub.get_indicator(EX, "GIVEUP", "EMA", 12) == 2
        assert await hub.get_indicator(EX, "GIVEUP", "EMA", 11) == 1
        # the PAUSE's connection and this INFO's: none of the hub's
        assert _connections_received(servers) == before + 2
