"""Positions and strategy state are durable in SQLite; Redis only caches them."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

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


def _owners(config: HubConfig) -> dict[int, int]:
    """Candle lines in the outbox per slot (their rollups left out)."""
    import sqlite3
    with closing(sqlite3.connect(config.sqlite.path)) as db:
        return dict(db.execute("SELECT owner, sum(lines) FROM outbox "
                               "WHERE line LIKE 'candle,%' GROUP BY owner"))


async def test_hubs_sharing_a_sqlite_file_each_spool_and_the_next_replays_all(
        config: HubConfig, servers: LocalServers) -> None:
    """Two hubs on one file (as a bot and its diagnostic script would be): state is
    shared, each spools into its own slot, and the next hub to start replays both
    spools, not only the one of the slot it takes (a script's writes of an outage are
    not left waiting for some later process to take its slot)."""
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
        assert _owners(config) == {0: 50, 1: 30}  # closed while InfluxDB was down
    finally:
        servers.influx.start()
    async with Hub(config) as alone:  # takes slot 0, and the script's spool with it
        await alone.flush()
        await alone.flush_all()
        assert await alone.query_candles(EX, PR, limit=10_000) == first
        assert await alone.query_candles(EX, "OTHER", limit=10_000) == second
        assert (await alone.get_stats())["sqlite"]["outbox_all"] == 0


async def test_a_running_hubs_spool_is_never_taken_by_another(
        config: HubConfig, config_data: dict[str, Any], servers: LocalServers) -> None:
    """A hub that starts takes over the spools of processes that ended, never the
    outbox of one still running (which writes it itself once InfluxDB is back)."""
    from hub import Candle

    ended = {name: [Candle(1697529600 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0) for i in range(n)]
             for name, n in (("B", 20), ("C", 30))}
    servers.influx.kill()
    running = Hub(config)
    try:
        await running.start()  # slot 0, alive throughout
        b, c = Hub(config), Hub(config)
        await b.start()
        await c.start()  # slots 1 and 2
        await b.write_candles_batch(EX, "B", ended["B"])
        await c.write_candles_batch(EX, "C", ended["C"])
        await b.close()
        await c.close()  # both spooled: InfluxDB is down
        await running.write_trade(EX, PR, 1697529600, "buy", 1.5, 2.0, "t-1")  # its outbox
        assert _owners(config) == {1: 20, 2: 30}
        async with Hub(config) as d:  # slot 1 (free): C's slot 2 is taken over too
            assert (await d.get_stats())["sqlite"]["slot"] == 1
            assert _owners(config) == {1: 50}
            assert (await d.get_stats())["sqlite"]["outbox"] == (await d.get_stats())[
                "sqlite"]["outbox_all"] - 1  # all but the running hub's trade
            servers.influx.start()
            await d.flush()
            await d.flush_all()
            for name, data in ended.items():
                assert await d.query_candles(EX, name, limit=1000) == data
            # a hub that does not write to InfluxDB (a Redis-only drop-in process)
            # leaves ended processes' spools to one that does
            cache_only = HubConfig.from_mapping({**config_data, "influxdb": {
                **config_data["influxdb"], "enabled": False}}, environ={})
            holder, late = Hub(config), Hub(config)
            await holder.start()
            await late.start()  # slots 2 and 3
            await late.write_candles_batch(EX, "E", ended["B"][:5])
            servers.influx.kill()
            await late.close()  # spooled in slot 3
            await holder.close()
            async with Hub(cache_only) as e:  # slot 2
                assert (await e.get_stats())["sqlite"]["slot"] == 2
                assert _owners(config) == {3: 5}
            servers.influx.start()
            async with Hub(config) as f:  # slot 2, taking slot 3's spool over
                await f.flush()
                assert await f.query_candles(EX, "E") == ended["B"][:5]
        await running.flush()  # the running hub wrote its own trade
        assert [t.order_id for t in await running.query_trades(EX, PR)] == ["t-1"]
        assert (await running.get_stats())["sqlite"]["outbox_all"] == 0
    finally:
        if not servers.influx.running:
            servers.influx.start()
        await running.close()


async def test_a_running_hub_takes_over_a_spool_left_while_it_runs(
        config: HubConfig, servers: LocalServers) -> None:
    """A bot that runs for days replays what a script that ended during an outage left
    (the maintenance job `takeover`), beside its own writes of that outage, without
    waiting for its own restart."""
    from hub import Candle

    mine = [Candle(1697529600 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0) for i in range(40)]
    theirs = [Candle(1697529600 + 60 * i, 3.0, 4.0, 2.5, 3.5, 2.0) for i in range(25)]
    async with Hub(config) as bot:
        servers.influx.kill()
        try:
            async with Hub(config) as script:
                await script.write_candles_batch(EX, "SCRIPT", theirs)
                await bot.write_candles_batch(EX, PR, mine[:20])
            assert _owners(config) == {1: 25}  # the script's, spooled at its close
            stats = await bot.run_maintenance("takeover")  # (InfluxDB still down)
            assert stats["last_result"]["lines"] >= 25 and stats["last_error"] is None
            assert _owners(config) == {0: 25}
        finally:
            servers.influx.start()
        await bot.write_candles_batch(EX, PR, mine[20:])  # (its memory, behind them)
        assert (await bot.run_maintenance("takeover"))["last_result"] == {"lines": 0}
        await bot.flush()
        await bot.flush_all()
        assert await bot.query_candles(EX, "SCRIPT") == theirs
        assert await bot.query_candles(EX, PR) == mine
        assert (await bot.get_stats())["sqlite"]["slot"] == 0
        assert _owners(config) == {}


async def test_a_hub_without_influxdb_leaves_an_ended_processes_slot_to_others(
        config: HubConfig, config_data: dict[str, Any], servers: LocalServers) -> None:
    """A Redis-only hub (it replays nothing) does not take the slot of a process that
    ended with writes in its spool, which would hold them back while it runs: the next
    hub that writes to InfluxDB replays them."""
    from hub import Candle

    data = [Candle(1697529600 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0) for i in range(15)]
    cache_only = HubConfig.from_mapping({**config_data, "influxdb": {
        **config_data["influxdb"], "enabled": False}}, environ={})
    servers.influx.kill()
    try:
        async with Hub(config) as bot:  # slot 0
            async with Hub(config) as script:  # slot 1, spooled at its close
                await script.write_candles_batch(EX, "SCRIPT", data)
            assert _owners(config) == {1: 15}
            async with Hub(cache_only) as reader:
                assert (await reader.get_stats())["sqlite"]["slot"] == 2
                servers.influx.start()
                async with Hub(config) as next_one:  # slot 1, with its spool
                    assert (await next_one.get_stats())["sqlite"]["slot"] == 1
                    await next_one.flush()
                    assert await next_one.query_candles(EX, "SCRIPT") == data
            await bot.flush()
    finally:
        if not servers.influx.running:
            servers.influx.start()


def test_an_ended_slots_spool_is_taken_over_once_and_in_order(tmp_path: Path) -> None:
    """Two running processes look for ended slots at once: one takes the rows over, in
    their order, and the other finds none left (nothing is replayed twice)."""
    from actors.backends.sqlite import SQLiteStore

    path = str(tmp_path / "state.sqlite")
    first, second = SQLiteStore(path), SQLiteStore(path)
    first.open()
    second.open()
    ended = SQLiteStore(path)
    ended.open()  # slot 2
    ended.run_batch([lambda st: st.outbox_add([f"m v={i}" for i in range(7)], "spool",
                                              group=2)])
    ended.close()
    try:
        moved, top = first.take_over_ended()
        assert (moved, second.take_over_ended()[0]) == (7, 0)
        loaded = first.outbox_load(0, 100)
        assert [line for _, lines in loaded for line in lines] == [f"m v={i}" for i in range(7)]
        assert loaded[-1][0] == top and first.counts()["outbox"] == 7
        assert second.counts()["outbox"] == 0
    finally:
        first.close()
        second.close()
