"""Positions and strategy state are durable in SQLite; Redis only caches them."""

from __future__ import annotations

from contextlib import closing

import pytest

from hub import Hub, HubConfig
from tests.conftest import redis_command
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR = "papertrader", "BANKNIFTY-FUT"


async def test_state_survives_flushall_and_hub_restart(config: HubConfig,
                                                       servers: LocalServers) -> None:
    async with Hub(config) as hub:
        await hub.cache_position(EX, PR, {"size": 3, "entry": 44500.5})
        await hub.cache_strategy_state(EX, PR, "ema", {"fast": 12, "slow": 26, "armed": True})
    redis_command(servers, "FLUSHALL")
    async with Hub(config) as hub:
        assert await hub.get_position(EX, PR) == {"size": 3, "entry": 44500.5}
        assert await hub.get_strategy_state(EX, PR, "ema") == {"fast": 12, "slow": 26,
                                                               "armed": True}
        assert (await hub.get_stats())["hub"]["state_cache_misses"] == 2
        # re-cached on the way: the next reads are Redis hits
        assert await hub.get_position(EX, PR) == {"size": 3, "entry": 44500.5}
        assert await hub.get_strategy_state(EX, PR, "ema") is not None
        assert (await hub.get_stats())["hub"]["state_cache_hits"] == 2
        assert redis_command(servers, "EXISTS", f"position:{EX}:{PR}") == b":1\r\n"


async def test_state_survives_a_redis_restart(hub: Hub, servers: LocalServers) -> None:
    await hub.cache_position(EX, PR, {"size": 1})
    servers.redis.restart()  # started with no persistence: it comes back empty
    assert redis_command(servers, "DBSIZE") == b":0\r\n"
    assert await hub.get_position(EX, PR) == {"size": 1}
    await hub.cache_position(EX, PR, {"size": 2})
    assert await hub.get_position(EX, PR) == {"size": 2}


async def test_state_is_read_from_sqlite_while_redis_is_down(hub: Hub,
                                                             servers: LocalServers) -> None:
    await hub.cache_strategy_state(EX, PR, "rsi", {"level": 70})
    servers.redis.kill()
    try:
        assert await hub.get_strategy_state(EX, PR, "rsi") == {"level": 70}
        await hub.cache_position(EX, PR, {"size": 5})  # durable even with Redis down
        assert await hub.get_position(EX, PR) == {"size": 5}
        assert (await hub.get_stats())["hub"]["cache_writes_skipped"] >= 1
    finally:
        servers.redis.start()
    assert await hub.get_position(EX, PR) == {"size": 5}


async def test_trade_is_on_disk_before_write_trade_returns(hub: Hub, config: HubConfig,
                                                           servers: LocalServers) -> None:
    servers.influx.kill()
    try:
        await hub.write_trade(EX, PR, 1697529600, "buy", 100.0, 1.0, "o-1")
        # read the SQLite file from outside the hub: the trade is there already
        import sqlite3
        with closing(sqlite3.connect(config.sqlite.path)) as db:
            lines = [r[0] for r in db.execute("SELECT line FROM outbox WHERE kind='trade'")]
        assert len(lines) == 1 and lines[0].startswith("trade,exchange=papertrader")
    finally:
        servers.influx.start()
    await hub.flush()
    assert [t.order_id for t in await hub.query_trades(EX, PR)] == ["o-1"]
    stats = await hub.get_stats()
    assert stats["sqlite"]["outbox"] == 0


async def test_candles_survive_influx_being_down_at_close(config: HubConfig,
                                                          servers: LocalServers) -> None:
    from hub import Candle
    data = [Candle(1697529600 + 60 * i, 1.0, 2.0, 0.5, 1.5, float(i)) for i in range(200)]
    async with Hub(config) as hub:
        servers.influx.kill()
        await hub.write_candles_batch(EX, PR, data)
    # closed while InfluxDB was down: the candles went to the SQLite spool
    servers.influx.start()
    async with Hub(config) as hub:
        await hub.flush()
        await hub.flush_all()
        assert await hub.query_candles(EX, PR) == data
        assert (await hub.get_stats())["sqlite"]["outbox"] == 0


async def test_hubs_sharing_a_sqlite_file_each_replay_only_their_own_spool(
        config: HubConfig, servers: LocalServers) -> None:
    """Two hubs on one file (as a bot and its diagnostic script would be): state is
    shared, each spools into its own slot, and a spool is replayed only by the next
    hub to take that slot, never by the other."""
    from hub import Candle

    first = [Candle(1697529600 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0) for i in range(50)]
    second = [Candle(1697533200 + 60 * i, 1.0, 2.0, 0.5, 1.5, 2.0) for i in range(30)]
    servers.influx.kill()
    try:
        async with Hub(config) as bot, Hub(config) as script:
            await bot.cache_position(EX, PR, {"size": 3})
            assert await script.get_position(EX, PR) == {"size": 3}  # one SQLite state
            await bot.write_candles_batch(EX, PR, first)
            await script.write_candles_batch(EX, "OTHER", second)
            stats = [(await h.get_stats())["sqlite"] for h in (bot, script)]
            assert [s["slot"] for s in stats] == [0, 1]
        import sqlite3
        with closing(sqlite3.connect(config.sqlite.path)) as db:
            owners = dict(db.execute("SELECT owner, count(*) FROM outbox "
                                     "WHERE line LIKE 'candle,%' GROUP BY owner"))
        assert owners == {0: 50, 1: 30}  # closed while InfluxDB was down: both spooled
    finally:
        servers.influx.start()
    async with Hub(config) as alone:  # takes slot 0: replays the bot's spool only
        await alone.flush()
        assert await alone.query_candles(EX, PR, limit=10_000) == first
        assert await alone.query_candles(EX, "OTHER") == []
        # the script's 30 candles and the 9 rollups they closed (6 of 5m, 2 of 15m, 1 of 30m)
        assert (await alone.get_stats())["sqlite"]["outbox_all"] == 39
        async with Hub(config) as next_one:  # slot 1: the script's spool
            await next_one.flush()
            await alone.flush_all()
            assert await alone.query_candles(EX, "OTHER", limit=10_000) == second
            assert (await next_one.get_stats())["sqlite"]["outbox_all"] == 0
