"""Redis Cluster: 3 masters + 3 replicas on loopback, started by the fixtures.

Every CONTRACT.md call works on it; one product's keys share a slot (hash tags), the
products spread over the masters; near caches follow writes on every master; MOVED
and ASK (a slot migrated under the hub) are followed; killing a master mid-run, the
hub carries on after its replica is promoted, with correct values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub import BackendUnavailable, Candle, Hub, HubConfig
from hub.compat import wolfinch
from tests.conftest import eventually, failover_under_load, subscribed, wolfhub
from wolfhub.servers import LocalServers, RedisClusterServers, RedisServer, make_certificates

pytestmark = pytest.mark.anyio
EX = "binance"
PRODUCTS = [f"P{i}-USD" for i in range(12)] + ["we{ird}:name", "}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


def cluster_config(config_data: dict[str, Any], cluster: RedisClusterServers,
                   **performance: Any) -> HubConfig:
    data = dict(config_data)
    # one seed is enough: the other nodes are discovered
    data["redis"] = {"cluster": {"nodes": cluster.seeds[:1]}, "timeout": 1.0}
    data["performance"] = performance
    return HubConfig.from_mapping(data, environ={})


def flush_cluster(cluster: RedisClusterServers) -> None:
    for node in cluster.nodes:
        if node.running and cluster.ask(node, "ROLE").startswith("master"):
            cluster.ask(node, "FLUSHALL")


def hub_connections(cluster: RedisClusterServers) -> int:
    """Connections named by a hub that the running nodes still see open."""
    return sum(RedisClusterServers.ask(node, "CLIENT", "LIST").count("name=wolfhub ")
               for node in cluster.nodes if node.running)


async def released(cluster: RedisClusterServers) -> None:
    """Closing a hub closes every connection it opened, on every node (a connection left
    open outlives the hub, and its socket is closed by the garbage collector, if ever)."""
    async def none_open() -> bool:
        return hub_connections(cluster) == 0
    await eventually(none_open, within=5)


def hub_data_on(node: RedisServer) -> int:
    """Keys ``node`` holds besides the hub's instance marker (``wolfhub:instance:{n}``)."""
    markers, cursor = 0, "0"
    while True:
        reply = RedisClusterServers.ask(node, "SCAN", cursor, "MATCH", "wolfhub:instance:*",
                                        "COUNT", "1000").split()
        cursor, markers = reply[0], markers + len(reply) - 1
        if cursor == "0":
            return int(RedisClusterServers.ask(node, "DBSIZE")) - markers


def node_get(node: RedisServer, key: str) -> str:
    return RedisClusterServers.ask(node, "GET", key).strip()


async def test_every_call_works_on_a_cluster(cluster: RedisClusterServers,
                                             config_data: dict[str, Any]) -> None:
    flush_cluster(cluster)
    async with Hub(cluster_config(config_data, cluster)) as hub:
        for i, product in enumerate(PRODUCTS):
            await hub.cache_indicator(EX, product, "RSI", 14, 40.0 + i)
            await hub.write_indicator(EX, product, "EMA", 1_700_000_000, 7.5 + i, period="20")
            await hub.write_candle(EX, product, 1_700_000_000, 1, 2, 0.5, 1.5 + i, 10)
            assert await hub.write_candles_batch(EX, product, [
                Candle(1_700_000_060 + 60 * k, 1, 2, 0.5, 1.0 + k, 1) for k in range(3)]) == 3
            await hub.cache_candles(EX, product, [
                Candle(1_700_000_000, 1, 2, 0.5, 1.5 + i, 10)])
            await hub.write_trade(EX, product, 1_700_000_000, "buy", 100.0 + i, 1.0, f"o{i}")
            await hub.cache_position(EX, product, {"size": i})
            await hub.cache_strategy_state(EX, product, "ema_cross", {"state": i})
        await hub.write_metric("latency", 1.5, exchange=EX)
        await hub.flush()
        for i, product in enumerate(PRODUCTS):
            assert await hub.get_indicator(EX, product, "RSI", 14) == 40.0 + i
            assert await hub.get_indicator(EX, product, "EMA", 20) == 7.5 + i
            window = await hub.query_candles(EX, product)
            assert [c.timestamp for c in window] == [1_700_000_000 + 60 * k for k in range(4)]
            assert window[0].close == 1.5 + i
            hourly = await hub.query_candles(EX, product, interval="1h")
            assert [(c.open, c.high, c.low, c.volume) for c in hourly] == [(1, 2, 0.5, 13)]
            newest = await hub.get_candles(EX, product, 4)
            assert [c.close for c in newest] == [1.5 + i, 1.0, 2.0, 3.0]
            trades = await hub.query_trades(EX, product)
            assert [(t.price, t.order_id) for t in trades] == [(100.0 + i, f"o{i}")]
            assert await hub.get_position(EX, product) == {"size": i}
            assert await hub.get_strategy_state(EX, product, "ema_cross") == {"state": i}
        stats = await hub.get_stats()
        assert stats["hub"]["cache_reads_failed"] == 0
        assert stats["actors"]["cache"]["available"]
        assert stats["used_memory_human"] and stats["connected_clients"] >= 3

        # one product's four kinds of keys share a slot; the products spread over masters
        product = "we{ird}:name"
        slots = {cluster.ask(cluster.nodes[0], "CLUSTER", "KEYSLOT", key).strip() for key in (
            f"indicator:{{{EX}:we\\(ird\\)\\:name}}:RSI:14",
            f"candles:{{{EX}:we\\(ird\\)\\:name}}",
            f"position:{{{EX}:we\\(ird\\)\\:name}}",
            f"strategy:{{{EX}:we\\(ird\\)\\:name}}:ema_cross")}
        assert len(slots) == 1
        owner = cluster.master_of(f"position:{{{EX}:we\\(ird\\)\\:name}}")
        assert node_get(owner, f"position:{{{EX}:we\\(ird\\)\\:name}}") == '{"size":12}'
        holders = {cluster.master_of(f"position:{{{EX}:{p}}}").port for p in PRODUCTS[:12]}
        assert len(holders) == 3

        # delete_data finds the cached keys of one product on whichever master holds them
        gone, kept = PRODUCTS[1], PRODUCTS[2]
        for measurement in ("candle", "indicator"):
            await hub.delete_data("1970-01-01T00:00:00Z", "now",
                                  f'_measurement="{measurement}" AND product="{gone}"')
        assert await hub.query_candles(EX, gone) == []
        assert await hub.get_indicator(EX, gone, "EMA", 20) is None
        assert await hub.get_indicator(EX, gone, "RSI", 14) is None
        assert len(await hub.query_candles(EX, kept)) == 4
        assert await hub.get_indicator(EX, kept, "RSI", 14) == 42.0

        await hub.flush_all()  # SCAN + UNLINK on every master
        assert all(hub_data_on(n) == 0 for n in cluster.nodes if n.running)
        assert await hub.get_position(EX, PRODUCTS[3]) == {"size": 3}  # durable in SQLite
        assert await hub.get_indicator(EX, PRODUCTS[3], "RSI", 14, default="gone") == "gone"
    await released(cluster)


async def test_near_caches_follow_writes_on_every_master(
        cluster: RedisClusterServers, config_data: dict[str, Any], tmp_path: Path) -> None:
    flush_cluster(cluster)
    config = cluster_config(config_data, cluster)
    other = cluster_config({**config_data, "sqlite": {"path": str(tmp_path / "w.sqlite")}},
                           cluster)
    async with Hub(config) as reader, Hub(other, handle_sigterm=False) as writer:
        async def tracking() -> bool:  # on for all three masters
            return bool((await reader.get_stats())["actors"]["cache"]["near_cache"]["enabled"])
        await eventually(tracking, within=10)
        for product in PRODUCTS[:12]:
            await writer.cache_indicator(EX, product, "RSI", 14, 1.0)

        async def reported() -> bool:  # the reader heard of all 12 writes, from 3 masters
            near = (await reader.get_stats())["actors"]["cache"]["near_cache"]
            return int(near["invalidations"]) >= 12
        await eventually(reported, within=10)
        for product in PRODUCTS[:12]:
            assert await reader.get_indicator(EX, product, "RSI", 14) == 1.0
            assert await reader.get_indicator(EX, product, "RSI", 14) == 1.0
        near = (await reader.get_stats())["actors"]["cache"]["near_cache"]
        assert near["enabled"] and near["entries"] >= 12 and near["hits"] >= 12
        for product in PRODUCTS[:12]:  # every master reports its own keys' writes
            await writer.cache_indicator(EX, product, "RSI", 14, 2.0)
        for product in PRODUCTS[:12]:
            async def updated(product: str = product) -> bool:
                return await reader.get_indicator(EX, product, "RSI", 14) == 2.0
            await eventually(updated, within=10)
        # a foreign client writing straight to the owning master reaches the near cache
        key = f"indicator:{{{EX}:{PRODUCTS[5]}}}:RSI:14"
        cluster.ask(cluster.master_of(key), "SET", key, "3.0")

        async def foreign() -> bool:
            return await reader.get_indicator(EX, PRODUCTS[5], "RSI", 14) == 3.0
        await eventually(foreign, within=10)
    await released(cluster)


async def test_moved_and_ask_while_a_slot_migrates(cluster: RedisClusterServers,
                                                   config_data: dict[str, Any]) -> None:
    """Migrate one product's slot to another master under a running hub: ASK while the
    slot is half moved, MOVED after; every read answers from Redis, not a fallback."""
    flush_cluster(cluster)
    product = "MIGRATE-USD"
    key = f"indicator:{{{EX}:{product}}}:RSI:14"
    other = f"indicator:{{{EX}:{product}}}:RSI:28"
    # no near cache: every read must cross to Redis
    async with Hub(cluster_config(config_data, cluster, near_cache=False)) as hub:
        await hub.cache_indicator(EX, product, "RSI", 14, 1.0)
        await hub.cache_indicator(EX, product, "RSI", 28, 2.0)
        assert await hub.get_indicator(EX, product, "RSI", 28) == 2.0  # both have landed
        source = cluster.master_of(key)
        assert node_get(source, key) == "1.0"
        target = next(n for n in cluster.nodes if n.running and n is not source
                      and cluster.ask(n, "ROLE").startswith("master"))
        slot = cluster.ask(source, "CLUSTER", "KEYSLOT", key).strip()
        src_id, dst_id = cluster.node_id(source), cluster.node_id(target)
        for node, state, peer in ((target, "IMPORTING", src_id), (source, "MIGRATING", dst_id)):
            assert cluster.ask(node, "CLUSTER", "SETSLOT", slot, state, peer).strip() == "OK"
        # move one of the two keys: the other is still served by the source
        assert cluster.migrate(source, target, key).strip() == "OK"
        # gone from the source, which now redirects: only ASK finds it
        assert node_get(source, key).startswith("ASK ")
        assert await hub.get_indicator(EX, product, "RSI", 14) == 1.0  # ASK -> target
        assert await hub.get_indicator(EX, product, "RSI", 28) == 2.0  # still at the source
        assert cluster.migrate(source, target, other).strip() == "OK"
        for node in cluster.nodes:
            if node.running and cluster.ask(node, "ROLE").startswith("master"):
                cluster.ask(node, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)

        async def settled() -> bool:
            return cluster.master_of(key) is target
        await eventually(settled, within=10)
        # the hub's slot map still names the source: MOVED, refresh, resend
        assert await hub.get_indicator(EX, product, "RSI", 14) == 1.0
        await hub.cache_indicator(EX, product, "RSI", 14, 5.0)
        assert await hub.get_indicator(EX, product, "RSI", 14) == 5.0
        assert node_get(target, key) == "5.0"
        stats = await hub.get_stats()
        assert stats["hub"]["cache_reads_failed"] == 0
        assert stats["actors"]["cache"]["available"] and stats["hub"]["indicator_cold_hits"] == 0
        # give the slot back so the other tests find the layout they started with
        cluster.move_slot(int(slot), source)
    await released(cluster)


async def test_master_killed_under_load(tmp_path: Path, config_data: dict[str, Any],
                                        servers: LocalServers) -> None:
    own = RedisClusterServers(tmp_path / "failover")
    own.start()
    try:
        product = "BANKNIFTY-FUT"
        key = f"indicator:{{{EX}:{product}}}:EMA:20"
        victim = own.master_of(key)
        async with Hub(cluster_config(config_data, own)) as hub:
            async def promoted() -> bool:
                try:
                    return own.master_of(key) is not victim and own.healthy()
                except (LookupError, StopIteration):
                    return False
            await failover_under_load(hub, EX, product, victim.kill, promoted)
            new_master = own.master_of(key)

            async def landed() -> bool:  # read back in-process at once, the SET follows
                return node_get(new_master, key) == "500.0"
            await eventually(landed, within=5)
            assert (await hub.get_stats())["actors"]["cache"]["skipped"] >= 1  # it noticed

            async def tracking_again() -> bool:  # invalidations from the new master too
                near = (await hub.get_stats())["actors"]["cache"]["near_cache"]
                return bool(near["enabled"])
            await eventually(tracking_again, within=30)
            new_master_set = own.ask(new_master, "SET", key, "600.0")
            assert new_master_set.strip() == "OK"

            async def followed() -> bool:  # a foreign write on the promoted master
                return await hub.get_indicator(EX, product, "EMA", 20) == 600.0
            await eventually(followed, within=10)
        await released(own)
    finally:
        own.stop()


async def test_the_command_line_on_a_cluster(cluster: RedisClusterServers,
                                             config_data: dict[str, Any],
                                             tmp_path: Path) -> None:
    """`wolfhub doctor` checks every master; `wolfhub cache clear --pattern` finds keys
    on all of them (SCAN per master, UNLINK per key)."""
    flush_cluster(cluster)
    async with Hub(cluster_config(config_data, cluster)) as hub:
        for product in PRODUCTS[:12]:
            await hub.cache_indicator(EX, product, "RSI", 14, 1.0)
            await hub.cache_indicator(EX, product, "EMA", 20, 2.0)
        assert await hub.get_indicator(EX, PRODUCTS[11], "EMA", 20) == 2.0  # all landed
    await released(cluster)
    data = {**config_data, "redis": {"cluster": {"nodes": cluster.seeds[:1]}}}
    path = tmp_path / "cluster.yml"
    path.write_text(yaml.safe_dump(data))
    doctor = wolfhub("doctor", "--config", str(path), cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"redis reachable: cluster {cluster.seeds[0]}, redis 7." in doctor.stdout
    cleared = wolfhub("cache", "clear", "--pattern", "indicator:*:RSI:*", "--config", str(path),
                      cwd=tmp_path)
    assert cleared.returncode == 0, cleared.stderr
    assert "removed 12 keys" in cleared.stdout
    left = sum(hub_data_on(n) for n in cluster.nodes
               if n.running and cluster.ask(n, "ROLE").startswith("master"))
    assert left == 12  # the EMA keys


async def test_near_cache_follows_a_slot_to_a_new_master(tmp_path: Path,
                                                         config_data: dict[str, Any]) -> None:
    """A master added and a product's slot moved onto it under a running hub: the hub
    finds the new master (MOVED), tracks it too, and a foreign write there reaches its
    near cache. Until it tracks the new master, it holds nothing from it."""
    own = RedisClusterServers(tmp_path / "grow", replicas=0)
    own.start()
    try:
        product = "NEW-MASTER"
        key = f"indicator:{{{EX}:{product}}}:RSI:14"
        async with Hub(cluster_config(config_data, own)) as hub:
            near = hub._cache.near if hub._cache else None
            assert near is not None

            async def tracking() -> bool:
                return near.enabled
            await eventually(tracking, within=10)
            await hub.cache_indicator(EX, product, "RSI", 14, 1.0)
            assert await hub.get_indicator(EX, product, "RSI", 14) == 1.0

            async def held() -> bool:  # our own write's echo has passed: the value is held
                return (not near.expecting(key) and key in near
                        and await hub.get_indicator(EX, product, "RSI", 14) == 1.0)
            await eventually(held, within=10)

            newcomer = own.add_node()
            slot = int(own.ask(newcomer, "CLUSTER", "KEYSLOT", key))
            own.begin_move(slot, newcomer)  # the key is on the newcomer, the slot not yet

            async def dropped() -> bool:  # MIGRATE deleted it on the old master, which said so
                return key not in near
            await eventually(dropped, within=10)
            # ASK to a node the hub's slot map does not know yet
            assert await hub.get_indicator(EX, product, "RSI", 14) == 1.0
            assert key not in near  # not held: no master tracked for it yet
            own.finish_move(slot, newcomer)
            assert own.master_of(key) is newcomer
            # (with a TTL, as the hub's own values have: the near cache holds no value
            # that never expires)
            assert own.ask(newcomer, "SET", key, "2.0", "EX", "300").strip() == "OK"
            assert await hub.get_indicator(EX, product, "RSI", 14) == 2.0  # MOVED, resent
            await eventually(tracking, within=10)  # on all four masters again

            async def held_new() -> bool:
                return await hub.get_indicator(EX, product, "RSI", 14) == 2.0 and key in near
            await eventually(held_new, within=10)
            assert own.ask(newcomer, "SET", key, "3.0", "EX", "300").strip() == "OK"

            async def followed() -> bool:
                return await hub.get_indicator(EX, product, "RSI", 14) == 3.0
            await eventually(followed, within=10)
        await released(own)
    finally:
        own.stop()


def test_the_sync_drop_in_on_a_cluster(cluster: RedisClusterServers,
                                       config_data: dict[str, Any]) -> None:
    """hub.compat.wolfinch's generic commands on a cluster: keys in different slots,
    one multi-key delete across masters, values JSON as on one server."""
    flush_cluster(cluster)
    section = {"cluster": {"nodes": cluster.seeds[:1]}, "timeout": 2.0}
    try:
        redis = wolfinch.init_redis_cache({**config_data, "redis": section})
        keys = ["k", "l", "h", "other"]
        assert len({cluster.master_of(k).port for k in keys}) > 1  # spread over masters
        assert redis.set("k", {"a": [1, 2.5]}, ttl=60) is True
        assert redis.get("k") == {"a": [1, 2.5]}
        assert redis.rpush("l", 1, 2) == 2 and redis.lrange("l", 0, -1) == [1, 2]
        assert redis.hset("h", "f", {"x": 1}) == 1 and redis.hgetall("h") == {"f": {"x": 1}}
        assert redis.set("other", 5) is True
        assert redis.delete(*keys) == 4
        assert not any(redis.exists(k) for k in keys)
        redis.cache_indicator("papertrader", "BANKNIFTY-FUT", "EMA", 20, 44500.0)
        assert redis.get_indicator("papertrader", "BANKNIFTY-FUT", "EMA", 20) == 44500.0
        tagged = "indicator:{papertrader:BANKNIFTY-FUT}:EMA:20"
        assert node_get(cluster.master_of(tagged), tagged) == "44500.0"
    finally:
        wolfinch.close_all()


async def test_a_cluster_with_password_and_tls(tmp_path: Path,
                                               config_data: dict[str, Any]) -> None:
    """requirepass and TLS only on every node: pipelines, tracking connections and SCAN
    all log in over TLS; a wrong password stops the start with a clear error."""
    certs = make_certificates(tmp_path / "certs")
    own = RedisClusterServers(tmp_path / "auth", replicas=0, password="cluster-s3cret",
                              tls=certs)
    own.start()
    try:
        config = cluster_config(config_data, own)
        data = config.model_dump(mode="json")
        data["redis"].update(password="cluster-s3cret", ssl=True, ssl_ca_certs=str(certs["ca"]))
        async with Hub(HubConfig.from_mapping(data, environ={})) as hub:
            for product in PRODUCTS[:12]:
                await hub.cache_indicator(EX, product, "RSI", 14, 1.0)
            for product in PRODUCTS[:12]:
                assert await hub.get_indicator(EX, product, "RSI", 14) == 1.0
            stats = await hub.get_stats()
            assert stats["hub"]["cache_reads_failed"] == 0
            assert stats["actors"]["cache"]["near_cache"]["enabled"]
            await hub.flush_all()
            assert all(hub_data_on(n) == 0 for n in own.nodes)
        await released(own)
        data["redis"]["password"] = "wrong"
        with pytest.raises(BackendUnavailable, match="credentials refused"):
            async with Hub(HubConfig.from_mapping(data, environ={})):
                pass
    finally:
        own.stop()


async def test_one_master_down_the_others_keep_serving(tmp_path: Path,
                                                       config_data: dict[str, Any]) -> None:
    """With cluster-require-full-coverage no, the healthy masters answer during a
    failover: the hub keeps serving their products from Redis (values only Redis has),
    fails fast for the dead master's products, and serves those again, never stale, once
    the replica is promoted."""
    own = RedisClusterServers(tmp_path / "partial", full_coverage=False)
    own.start()
    try:
        async with Hub(cluster_config(config_data, own)) as hub:
            products = PRODUCTS[:12]
            for product in products:
                await hub.cache_indicator(EX, product, "RSI", 14, 1.0)
            assert await hub.get_indicator(EX, products[-1], "RSI", 14) == 1.0
            key = f"indicator:{{{EX}:{products[0]}}}:RSI:14"
            victim = own.master_of(key)
            on_victim = [p for p in products
                         if own.master_of(f"indicator:{{{EX}:{p}}}:RSI:14") is victim]
            elsewhere = [p for p in products if p not in on_victim]
            assert on_victim and elsewhere
            victim.kill()
            # the dead master's products fall back (no Redis value: the default) ...
            near = hub._cache.near if hub._cache else None
            for product in on_victim:
                await hub.cache_indicator(EX, product, "RSI", 14, 2.0)  # skipped
                # read back in-process until the write fails, then the fallback
                dead_key = f"indicator:{{{EX}:{product}}}:RSI:14"

                async def failed(dead_key: str = dead_key) -> bool:
                    return near is None or dead_key not in near
                await eventually(failed, within=5)
                assert await hub.get_indicator(EX, product, "RSI", 14, "fallback") == "fallback"
            # ... while every other product is still read from Redis, and written there
            for product in elsewhere:
                assert await hub.get_indicator(EX, product, "RSI", 14) == 1.0
                await hub.cache_indicator(EX, product, "RSI", 14, 3.0)
                assert await hub.get_indicator(EX, product, "RSI", 14) == 3.0
            stats = (await hub.get_stats())["actors"]["cache"]
            assert stats["available"] and stats["skipped"] >= len(on_victim)
            assert 5000 < stats["unavailable_slots"] < 6000  # a third of 16,384

            async def replaced() -> bool:  # promoted, and served again
                await hub.cache_indicator(EX, on_victim[0], "RSI", 14, 4.0)
                slots = (await hub.get_stats())["actors"]["cache"]["unavailable_slots"]
                try:  # (the node asked may not see the promotion yet: ask again)
                    if slots != 0 or node_get(own.master_of(key), key) != "4.0":
                        return False
                except LookupError:
                    return False
                # read back through the hub (a node still reporting the old map can make
                # a refresh route those slots to the dead master once more: they are
                # fenced again, and their keys forgotten again, for a moment)
                return await hub.get_indicator(EX, on_victim[0], "RSI", 14) == 4.0
            await eventually(replaced, within=30)
            assert own.master_of(key) is not victim
            # never stale: the skipped 2.0 left nothing older behind (keys were dropped)
            for product in on_victim[1:]:
                assert await hub.get_indicator(EX, product, "RSI", 14, "gone") == "gone"
            for product in elsewhere:
                assert await hub.get_indicator(EX, product, "RSI", 14) == 3.0
            assert (await hub.get_stats())["actors"]["cache"]["reconnects"] == 0
        await released(own)  # the dead master's old connections included
    finally:
        own.stop()


async def test_a_hub_started_after_a_master_restarted_from_a_snapshot_serves_nothing_older(
        tmp_path: Path, config_data: dict[str, Any]) -> None:
    """A master restarts from its last snapshot (RDB) while no hub runs: what it holds
    of the hub's is older than what it acknowledged. The next hub process drops that
    master's hub keys (its instance marker names the run_id before the restart) before
    serving from it; a process after that drops nothing."""
    own = RedisClusterServers(tmp_path / "snapshot", replicas=0)
    for node in own.nodes:
        node.extra += ["--dbfilename", "d.rdb"]
    own.start()
    product = PRODUCTS[0]
    key = f"indicator:{{{EX}:{product}}}:EMA:20"
    position = f"position:{{{EX}:{product}}}"
    try:
        victim = own.master_of(key)
        async with Hub(cluster_config(config_data, own)) as hub:
            await hub.cache_indicator(EX, product, "EMA", 20, 1.0)
            await hub.cache_position(EX, product, {"size": 1.0})

            async def in_redis() -> bool:
                return (node_get(victim, key), node_get(victim, position)) == (
                    "1.0", '{"size":1.0}')
            await eventually(in_redis, within=10)
            assert own.ask(victim, "SAVE").strip() == "OK"  # the snapshot
            await hub.cache_indicator(EX, product, "EMA", 20, 2.0)
            await hub.cache_position(EX, product, {"size": 2.0})
            assert await hub.get_indicator(EX, product, "EMA", 20) == 2.0
        victim.kill()  # the master crashes, the bot is down too
        victim.start()  # its snapshot (and nodes.conf: the same slots)

        def whole() -> bool:
            return own.healthy()
        await eventually(lambda: asyncio.to_thread(whole), within=30)
        assert node_get(victim, key) == "1.0"  # what the snapshot held
        async with Hub(cluster_config(config_data, own)) as hub:
            indicator = await hub.get_indicator(EX, product, "EMA", 20, "gone")
            held = await hub.get_position(EX, product)
            await hub.cache_indicator(EX, product, "EMA", 20, 3.0)

            async def written() -> bool:
                return node_get(victim, key) == "3.0"
            await eventually(written, within=10)
        async with Hub(cluster_config(config_data, own)) as hub:  # nothing dropped now
            kept = await hub.get_indicator(EX, product, "EMA", 20, "gone")
        await released(own)
    finally:
        own.stop()
    assert (indicator, held, kept) == ("gone", {"size": 2.0}, 3.0)


@pytest.mark.parametrize("used_by", ["the hub's own commands", "redis-py's target_nodes"])
async def test_a_node_dropped_from_the_map_while_held_leaves_no_connection_open(
        cluster: RedisClusterServers, config_data: dict[str, Any], used_by: str) -> None:
    """During a failover a topology refresh can drop a node object from redis-py's map
    (disconnecting what it held then) while a task of the hub still holds it (a
    recovery step, a stream read, the masters an INFO goes to); a command sent on it
    afterwards opens a connection no map knows. Closing the client still closes it."""
    from actors.backends.redis import RedisClusterClient

    client = RedisClusterClient(cluster_config(config_data, cluster).redis)
    await client.connect()
    try:
        manager = client._client.nodes_manager
        held = client._masters()[0]
        # a refresh whose answer lacks the node: redis-py drops it (and disconnects it)
        manager.set_nodes(manager.nodes_cache, {n: node for n, node in
                                                manager.nodes_cache.items()
                                                if node is not held}, remove_old=True)
        assert held.name not in manager.nodes_cache
        if used_by == "the hub's own commands":
            assert await client._on(held, [("PING",)]) in ([b"PONG"], ["PONG"], [True])
        else:
            assert await client._client.execute_command("PING", target_nodes=held)
        assert hub_connections(cluster) >= 1
    finally:
        await client.close()
    await released(cluster)


async def test_candle_streams_on_a_cluster(cluster: RedisClusterServers,
                                           config_data: dict[str, Any]) -> None:
    """Products on different masters: each product's window and stream share its hash
    tag (one script call publishes both), and the reader XREADs every master at once."""
    flush_cluster(cluster)
    products = [f"P{i}" for i in range(6)]  # spread over the three masters
    t0 = 1_700_006_400
    async with Hub(cluster_config(config_data, cluster)) as hub:
        for p in products:
            for i in range(5):
                await hub.write_candle("px", p, t0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0)

        async def follow(product: str) -> list[int]:
            got: list[int] = []
            async for candle in hub.candles("px", product, "5m", warmup=1):
                got.append(candle.timestamp)
                if len(got) == 3:
                    return got
            return got

        followers = [asyncio.create_task(follow(p)) for p in products]
        await subscribed(hub, len(products))
        for p in products:
            for i in range(5, 15):
                await hub.write_candle("px", p, t0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0)
        assert hub_connections(cluster) > 0
        found = await asyncio.wait_for(asyncio.gather(*followers), 20)
    assert found == [[t0, t0 + 300, t0 + 600]] * len(products)
    await released(cluster)  # the reader's polling connections on every master included
