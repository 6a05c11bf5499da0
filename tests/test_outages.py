"""Nothing accepted is lost: InfluxDB and Redis outages, crashes, SIGTERM, rejected data."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub import Candle, Hub, HubConfig, ValidationError
from tests.conftest import eventually, redis_command
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR = "papertrader", "BANKNIFTY-FUT"
T0 = 1697529600
CHILD = Path(__file__).with_name("_child.py")


async def test_influxd_killed_under_load_loses_nothing(config_data: dict[str, Any],
                                                       servers: LocalServers) -> None:
    config_data["influxdb"]["spool_after"] = 0.3
    n = 3000
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        loop = asyncio.get_running_loop()
        worst = 0.0
        killed = asyncio.Event()

        async def feed() -> None:
            nonlocal worst
            for i in range(n):
                began = loop.time()
                await hub.write_candle(EX, PR, T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, float(i))
                worst = max(worst, loop.time() - began)
                if i == 500:
                    killed.set()
                if i % 25 == 0:
                    await asyncio.sleep(0.002)

        producer = asyncio.create_task(feed())
        await killed.wait()
        await asyncio.to_thread(servers.influx.kill)
        await asyncio.sleep(1.5)  # the feed goes on while InfluxDB is dead
        await asyncio.to_thread(servers.influx.start)
        await producer
        await hub.flush()
        stats = await hub.get_stats()
        assert stats["actors"]["writer"]["retries"] > 0
        assert stats["actors"]["writer"]["spooled"] > 0  # the outage outlasted spool_after
        await hub.flush_all()
        got = await hub.query_candles(EX, PR, limit=n + 10)
        assert [c.timestamp for c in got] == [T0 + 60 * i for i in range(n)]
        assert [c.volume for c in got] == [float(i) for i in range(n)]
        assert (await hub.get_stats())["sqlite"]["outbox"] == 0
        # a loose bound, not a speed goal: the outage never blocked a write for long
        assert worst < 1.0


async def test_hub_killed_while_influx_down_keeps_every_returned_trade(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    servers.influx.kill()
    # the child is driven with blocking reads on purpose: nothing else runs on this loop
    child = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, str(CHILD), "trades", json.dumps(config_data)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        last = -1
        while last < 200:
            last = int(child.stdout.readline())
        child.kill()  # SIGKILL: no close, no flush
        child.wait()
        last = max([last, *(int(x) for x in child.stdout.read().split())])
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        servers.influx.start()
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.flush()
        trades = await hub.query_trades("px", "BANK", limit=100_000)
        ids = {t.order_id for t in trades}
        assert {f"t{i}" for i in range(last + 1)} <= ids
        assert (await hub.get_stats())["sqlite"]["outbox"] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_during_load_keeps_everything_accepted(
        config_data: dict[str, Any], servers: LocalServers, signum: int) -> None:
    config_data["influxdb"]["batch"] = {"size": 5000, "flush_interval": 5.0}  # keep lines pending
    child = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, str(CHILD), "candles", json.dumps(config_data)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        last = -1
        while last < 1500:
            last = int(child.stdout.readline())
        child.send_signal(signum)
        rest = child.stdout.read().split()
        # closed gracefully, then ended by the signal (SIGINT: asyncio.run re-raises it)
        assert child.wait(30) == -signum
        last = max([last, *(int(x) for x in rest)])
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.flush_all()
        got = await hub.query_candles("px", "BANK", limit=100_000)
        assert len(got) >= last + 1
        assert [c.timestamp for c in got] == [T0 + 60 * i for i in range(len(got))]


async def test_a_conflicting_point_is_quarantined_and_the_others_land(
        hub: Hub, config: HubConfig, servers: LocalServers) -> None:
    await hub.write_trade(EX, PR, T0, "buy", 1.0, 1.0, "o1", fee=0.5)
    await hub.flush()
    # another client fixes `note` as a string field (in the same shard: types are per
    # shard), unknown to this hub's field types
    foreign = urllib.request.Request(
        f"http://127.0.0.1:{servers.influx.port}/write?db={config.influxdb.bucket}",
        f'trade,exchange={EX},order_id=x,product={PR},side=buy price=1,size=1,note="text" '
        f'{T0 - 1}000000000'.encode(), method="POST")
    assert await asyncio.to_thread(lambda: urllib.request.urlopen(foreign, timeout=10).status
                                   ) == 204
    await hub.write_trade(EX, PR, T0 + 1, "buy", 1.0, 1.0, "o2", fee=1.0)
    await hub.write_trade(EX, PR, T0 + 2, "buy", 1.0, 1.0, "o3", note=5.0)  # float vs string
    await hub.write_trade(EX, PR, T0 + 3, "buy", 1.0, 1.0, "o4", fee=2.0)
    await hub.flush()
    assert [t.order_id for t in await hub.query_trades(EX, PR)] == ["x", "o1", "o2", "o4"]
    bad = await hub.quarantined()
    assert len(bad) == 1
    assert "order_id=o3" in bad[0]["line"]
    assert "field type conflict" in bad[0]["reason"]
    stats = await hub.get_stats()
    assert stats["actors"]["writer"]["quarantined"] == 1
    assert {k: stats["sqlite"][k] for k in ("outbox", "outbox_all", "quarantined")} == {
        "outbox": 0, "outbox_all": 0, "quarantined": 1}


async def test_a_conflict_the_hub_knows_is_refused_at_the_call(hub: Hub) -> None:
    await hub.write_trade(EX, PR, T0, "buy", 1.0, 1.0, "o1", note="text")
    with pytest.raises(ValidationError, match=r"note.*string field"):
        await hub.write_trade(EX, PR, T0 + 1, "buy", 1.0, 1.0, "o2", note=5.0)
    await hub.flush()
    assert [t.order_id for t in await hub.query_trades(EX, PR)] == ["o1"]
    assert await hub.quarantined() == []


async def test_redis_killed_reads_fall_back_then_recover(config_data: dict[str, Any],
                                                         servers: LocalServers) -> None:
    config_data["redis"]["timeout"] = 0.5
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, float(i)) for i in range(30)]
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.write_indicator(EX, PR, "EMA", T0, 44500.0, period=20)
        await hub.write_candles_batch(EX, PR, data)
        await hub.flush()
        servers.redis.kill()
        loop = asyncio.get_running_loop()
        for _ in range(3):
            began = loop.time()
            assert await hub.get_indicator(EX, PR, "EMA", 20) == 44500.0
            assert await hub.query_candles(EX, PR, limit=10) == data[-10:]
            assert await hub.get_candles(EX, PR, count=5) == data[-5:]
            # loose bound: within the configured deadline, not stuck on a dead socket
            assert loop.time() - began < 0.5 * 3 + 1.0
        stats = await hub.get_stats()
        assert stats["keyspace_hits"] is None
        assert stats["actors"]["cache"]["available"] is False
        await hub.cache_indicator(EX, PR, "EMA", 20, 1.0)  # skipped, never raised
        servers.redis.start()

        async def back() -> bool:
            return bool((await hub.get_stats())["actors"]["cache"]["available"])

        await eventually(back)
        misses = (await hub.get_stats())["hub"]["indicator_cache_misses"]
        await hub.cache_indicator(EX, PR, "EMA", 20, 44600.0)
        assert await hub.get_indicator(EX, PR, "EMA", 20) == 44600.0
        assert (await hub.get_stats())["hub"]["indicator_cache_misses"] == misses

        async def in_redis() -> bool:  # the write reaches the recovered Redis
            return redis_command(servers, "GET", f"indicator:{EX}:{PR}:EMA:20") \
                == b"$7\r\n44600.0\r\n"
        await eventually(in_redis, within=5)


async def test_a_frozen_redis_costs_reads_one_timeout_not_one_each(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """Redis stops answering (SIGSTOP) while the hub is idle: the first cold read waits
    for redis.timeout and falls back to InfluxDB; the reads after it fall back at once
    (the hub knows Redis is down and reconnects in the background)."""
    config_data["redis"]["timeout"] = 0.5
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.flush()
        assert servers.redis.process is not None
        pid = servers.redis.process.pid
        loop = asyncio.get_running_loop()
        os.kill(pid, signal.SIGSTOP)
        try:
            began = loop.time()
            # stored nowhere: InfluxDB answers the default, and nothing is filled in
            # Redis (a fill queued to Redis would find the outage by itself)
            assert await hub.get_indicator(EX, PR, "FRZ", 1, default=-1) == -1
            first = loop.time() - began
            began = loop.time()
            for period in range(2, 12):
                assert await hub.get_indicator(EX, PR, "FRZ", period, default=-1) == -1
            rest = loop.time() - began
        finally:
            os.kill(pid, signal.SIGCONT)
        assert first >= 0.4, first  # it did wait for Redis
        assert rest < 0.5 * 4, rest  # the ten after it did not (one timeout each: 5 s)

        async def back() -> bool:
            return bool((await hub.get_stats())["actors"]["cache"]["available"])
        await eventually(back)


async def test_frozen_redis_never_serves_a_stale_position(config_data: dict[str, Any],
                                                          servers: LocalServers) -> None:
    config_data["redis"]["timeout"] = 0.5
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.cache_position(EX, PR, {"size": 1})
        assert await hub.get_position(EX, PR) == {"size": 1}
        assert servers.redis.process is not None
        pid = servers.redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await hub.cache_position(EX, PR, {"size": 2})  # durable; the Redis copy is skipped
            assert await hub.get_position(EX, PR) == {"size": 2}
        finally:
            os.kill(pid, signal.SIGCONT)

        async def back() -> bool:
            return bool((await hub.get_stats())["actors"]["cache"]["available"])

        await eventually(back)
        assert await hub.get_position(EX, PR) == {"size": 2}


async def test_a_bulk_load_while_redis_is_frozen_is_what_reads_answer_after(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """A bulk load (``window=False``) of minutes the hot window spans, written while
    Redis does not answer: once Redis is back (the same server, its window as it was),
    reads answer the loaded minutes too, not the window's older picture."""
    config_data["redis"]["timeout"] = 0.5
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.0 + i, 1.0) for i in range(100)]
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.write_candles_batch(EX, PR, data[:50] + data[60:])  # ten minutes lost
        await hub.flush()
        assert servers.redis.process is not None
        pid = servers.redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            assert await hub.get_indicator(EX, PR, "FRZ", 1, default=-1) == -1  # noticed

            async def down() -> bool:
                return not (await hub.get_stats())["actors"]["cache"]["available"]
            await eventually(down, within=10)
            await hub.write_candles_batch(EX, PR, data[50:60], window=False)
        finally:
            os.kill(pid, signal.SIGCONT)

        async def back() -> bool:
            return bool((await hub.get_stats())["actors"]["cache"]["available"])
        await eventually(back)
        await hub.flush()
        assert await hub.get_candles(EX, PR, 100) == data
        assert await hub.query_candles(EX, PR, start_time=data[40].timestamp,
                                       end_time=data[70].timestamp) == data[40:71]


async def test_hub_starts_while_both_servers_are_down(config_data: dict[str, Any],
                                                      servers: LocalServers) -> None:
    servers.redis.kill()
    servers.influx.kill()
    try:
        async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
            await hub.write_candle(EX, PR, T0, 1.0, 2.0, 0.5, 1.5, 1.0)
            await hub.cache_position(EX, PR, {"size": 1})
            assert await hub.get_position(EX, PR) == {"size": 1}
            assert (await hub.get_stats())["healthy"] is True
    finally:
        servers.redis.start()
        servers.influx.start()
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.flush()
        assert await hub.query_candles(EX, PR) == [Candle(T0, 1.0, 2.0, 0.5, 1.5, 1.0)]
