"""The near cache answers in-process and stays coherent with Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.cache import NearCache
from hub import Hub, HubConfig
from tests.conftest import eventually, redis_command
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR = "papertrader", "BANKNIFTY-FUT"
KEY = f"indicator:{EX}:{PR}:EMA:20"


def near_of(hub: Hub) -> NearCache:
    assert hub._cache is not None and hub._cache.near is not None
    return hub._cache.near


async def tracking_on(hub: Hub) -> None:
    async def on() -> bool:
        return near_of(hub).enabled
    await eventually(on)


async def test_hot_reads_are_served_in_process(hub: Hub) -> None:
    await tracking_on(hub)
    await hub.cache_indicator(EX, PR, "EMA", 20, 44500.0)
    await asyncio.sleep(0.1)  # Redis reports our own write too; let that arrive first
    assert await hub.get_indicator(EX, PR, "EMA", 20) == 44500.0  # fills
    before = (await hub.get_stats())["actors"]["cache"]
    for _ in range(100):
        assert await hub.get_indicator(EX, PR, "EMA", 20) == 44500.0
    after = (await hub.get_stats())["actors"]["cache"]
    assert after["round_trips"] == before["round_trips"]  # not one went to Redis
    assert after["near_cache"]["hits"] == before["near_cache"]["hits"] + 100


async def test_each_read_counts_once_as_a_hit_or_a_miss(hub: Hub, servers: LocalServers
                                                       ) -> None:
    """The hit rate the hub reports (stats, metrics, its health points) counts each read
    once: a read Redis answers is one miss, whatever was checked on its way."""
    await tracking_on(hub)
    assert redis_command(servers, "SET", KEY, "44500.0", "EX", "600").startswith(b"+OK")
    for _ in range(3):
        before = (await hub.get_stats())["actors"]["cache"]["near_cache"]
        near_of(hub).clear()
        assert await hub.get_indicator(EX, PR, "EMA", 20) == 44500.0  # from Redis
        for _ in range(4):
            assert await hub.get_indicator(EX, PR, "EMA", 20) == 44500.0  # held
        after = (await hub.get_stats())["actors"]["cache"]["near_cache"]
        assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 4)
    await hub.write_candles_batch(EX, PR, [(1_700_000_040, 1.0, 2.0, 0.5, 1.5, 3.0)])
    near_of(hub).clear()
    before = (await hub.get_stats())["actors"]["cache"]["near_cache"]
    assert len(await hub.get_candles(EX, PR, 1)) == 1  # the window, from Redis
    assert len(await hub.query_candles(EX, PR, limit=1)) == 1  # held now
    after = (await hub.get_stats())["actors"]["cache"]["near_cache"]
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 1)


async def test_a_write_by_another_client_invalidates(hub: Hub, servers: LocalServers) -> None:
    await tracking_on(hub)
    await hub.cache_indicator(EX, PR, "EMA", 20, 1.0)
    await asyncio.sleep(0.1)  # Redis reports our own write too; let that arrive first
    assert await hub.get_indicator(EX, PR, "EMA", 20) == 1.0
    assert KEY in near_of(hub)
    redis_command(servers, "SET", KEY, "2.0", "EX", "300")  # another process

    async def fresh() -> bool:
        return await hub.get_indicator(EX, PR, "EMA", 20) == 2.0
    await eventually(fresh)
    redis_command(servers, "FLUSHALL")

    async def gone() -> bool:
        return await hub.get_indicator(EX, PR, "EMA", 20, default="none") == "none"
    await eventually(gone)


async def test_two_hubs_stay_coherent(config_data: dict[str, Any], tmp_path: Any) -> None:
    other = {**config_data, "sqlite": {"path": str(tmp_path / "other.sqlite")}}
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as a, \
            Hub(HubConfig.from_mapping(other, environ={})) as b:
        await tracking_on(a)
        await tracking_on(b)
        await a.cache_indicator(EX, PR, "EMA", 20, 10.0)
        await asyncio.sleep(0.1)
        assert await b.get_indicator(EX, PR, "EMA", 20) == 10.0
        assert KEY in near_of(b)
        await a.cache_indicator(EX, PR, "EMA", 20, 11.0)
        assert await a.get_indicator(EX, PR, "EMA", 20) == 11.0  # its own write, at once

        async def b_sees() -> bool:
            return await b.get_indicator(EX, PR, "EMA", 20) == 11.0
        await eventually(b_sees)


async def test_never_served_past_the_ttl(hub: Hub) -> None:
    await tracking_on(hub)
    await hub.cache_indicator(EX, PR, "EMA", 20, 5.0, ttl=1)
    await asyncio.sleep(0.1)
    assert await hub.get_indicator(EX, PR, "EMA", 20) == 5.0
    assert KEY in near_of(hub)
    await asyncio.sleep(1.1)
    assert await hub.get_indicator(EX, PR, "EMA", 20, default="expired") == "expired"


async def test_a_key_without_a_ttl_is_held_until_it_changes(hub: Hub, servers: LocalServers
                                                           ) -> None:
    """A value another client set with no expiry is held (it used to be read from Redis
    every time); whatever that client does to the key next (a new value, an expiry given
    later, a delete) evicts it, and a later expiry is kept."""
    await tracking_on(hub)
    near = near_of(hub)

    def read_and_held(value: Any) -> Any:
        async def check() -> bool:
            got = await hub.get_indicator(EX, PR, "EMA", 20, default="none")
            return got == value and KEY in near
        return check

    redis_command(servers, "SET", KEY, "1.0")  # no TTL
    await eventually(read_and_held(1.0))  # (once the SET's own invalidation is in)
    before = (await hub.get_stats())["actors"]["cache"]
    for _ in range(50):
        assert await hub.get_indicator(EX, PR, "EMA", 20) == 1.0
    after = (await hub.get_stats())["actors"]["cache"]
    assert after["round_trips"] == before["round_trips"]  # held: not one went to Redis
    assert after["near_cache"]["hits"] == before["near_cache"]["hits"] + 50

    redis_command(servers, "SET", KEY, "2.0")  # a new value, still no TTL
    await eventually(read_and_held(2.0))
    redis_command(servers, "PEXPIRE", KEY, "800")  # an expiry given later: evicts

    async def evicted() -> bool:
        return KEY not in near
    await eventually(evicted)
    await eventually(read_and_held(2.0))  # held again, with the key's TTL
    await asyncio.sleep(0.9)
    assert await hub.get_indicator(EX, PR, "EMA", 20, default="none") == "none"

    redis_command(servers, "SET", KEY, "3.0")
    await eventually(read_and_held(3.0))
    redis_command(servers, "DEL", KEY)
    await eventually(evicted)
    assert await hub.get_indicator(EX, PR, "EMA", 20, default="none") == "none"


async def test_returned_values_are_copies(hub: Hub) -> None:
    await tracking_on(hub)
    await hub.cache_indicator(EX, PR, "MACD", 1, {"macd": [1.0, 2.0]})
    first = await hub.get_indicator(EX, PR, "MACD", 1)
    first["macd"].append(99.0)
    assert await hub.get_indicator(EX, PR, "MACD", 1) == {"macd": [1.0, 2.0]}
    await asyncio.sleep(0.1)  # Redis reports our own write too; let that arrive first
    near_of(hub).clear()
    cold = await hub.get_indicator(EX, PR, "MACD", 1)  # read from Redis, and held
    assert KEY.replace("EMA:20", "MACD:1") in near_of(hub)
    cold["macd"].append(99.0)
    assert await hub.get_indicator(EX, PR, "MACD", 1) == {"macd": [1.0, 2.0]}


async def test_redis_loss_empties_and_disables_it(hub: Hub, servers: LocalServers) -> None:
    await tracking_on(hub)
    await hub.cache_indicator(EX, PR, "EMA", 20, 3.0)
    await asyncio.sleep(0.1)
    assert await hub.get_indicator(EX, PR, "EMA", 20) == 3.0
    assert KEY in near_of(hub)
    servers.redis.kill()
    try:
        async def dropped() -> bool:
            return not near_of(hub).enabled and len(near_of(hub)) == 0
        await eventually(dropped)
    finally:
        servers.redis.start()
    await tracking_on(hub)  # reconnected by itself


def test_an_invalidation_during_a_read_wins() -> None:
    near = NearCache(10)
    near.enabled = True
    ticket = near.ticket()  # a GET is sent...
    near.invalidate(["k"])  # ...another client writes k before the reply is handled
    near.put("k", orjson.dumps(1.0), 60, ticket)
    assert "k" not in near
    near.put("k", orjson.dumps(2.0), 60, near.ticket())  # a read sent after it is fine
    assert near.get("k") == (True, 2.0)
    ticket = near.ticket()
    near.clear()  # the link dropped: answers to reads in flight are refused
    near.put("k", orjson.dumps(3.0), 60, ticket)
    assert "k" not in near


def test_bounded_and_off_until_tracking() -> None:
    near = NearCache(3)
    near.put("a", b"1", 60, near.ticket())
    assert "a" not in near  # not enabled: invalidations are not flowing yet
    near.enabled = True
    for k in "abcde":
        near.put(k, b"1", 60, near.ticket())
    assert len(near) == 3 and "a" not in near and "e" in near


async def test_the_hot_window_is_held_in_process_and_kept_coherent(
        hub: Hub, servers: LocalServers) -> None:
    from hub import Candle

    await tracking_on(hub)
    data = [Candle(1697529600 + 60 * i, 1.0, 2.0, 0.5, 1.5, float(i)) for i in range(20)]
    await hub.write_candles_batch(EX, PR, data)
    await asyncio.sleep(0.1)  # Redis reports our own write too; let that arrive first
    assert await hub.query_candles(EX, PR, limit=5) == data[-5:]  # fills
    before = (await hub.get_stats())["actors"]["cache"]["round_trips"]
    assert await hub.query_candles(EX, PR, limit=10) == data[-10:]
    assert await hub.query_candles(EX, PR, data[3].timestamp, data[6].timestamp) == data[3:7]
    assert await hub.get_candles(EX, PR, count=2) == data[-2:]
    assert (await hub.get_stats())["actors"]["cache"]["round_trips"] == before + 0  # in-process
    # another process trims the window: this hub sees it at once
    redis_command(servers, "ZREMRANGEBYRANK", f"candles:{EX}:{PR}", "-1", "-1")

    async def trimmed() -> bool:
        return await hub.get_candles(EX, PR, count=1) == data[-2:-1]
    await eventually(trimmed)


async def test_a_value_this_hub_wrote_is_a_hit_at_once(hub: Hub, servers: LocalServers) -> None:
    """The strategy pattern: cache an indicator, then read it. No round trip to Redis for
    the read, and another client's later write still reaches this hub."""
    await tracking_on(hub)
    before = (await hub.get_stats())["actors"]["cache"]
    for i in range(50):
        await hub.cache_indicator(EX, PR, "EMA", 20, float(i))
        assert await hub.get_indicator(EX, PR, "EMA", 20) == float(i)
    await asyncio.sleep(0.05)  # the writes' own invalidations arrive: they keep the value
    assert await hub.get_indicator(EX, PR, "EMA", 20) == 49.0
    after = (await hub.get_stats())["actors"]["cache"]
    near = after["near_cache"]
    assert near["hits"] - before["near_cache"]["hits"] >= 45  # not a read went to Redis
    assert near["misses"] - before["near_cache"]["misses"] <= 5  # (the first may race its SET)
    assert KEY in near_of(hub)
    redis_command(servers, "SET", KEY, "7.5", "EX", "300")  # another process, later

    async def fresh() -> bool:
        return await hub.get_indicator(EX, PR, "EMA", 20) == 7.5
    await eventually(fresh, within=2)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_own_writes_never_hold_a_value_another_write_replaced(data: st.DataObject) -> None:
    """A model of Redis, the CacheActor's FIFO and the invalidation link: own SETs (some
    failing before or after they ran), other clients' SETs, and the near cache's own
    re-reads run in some order; invalidations arrive in Redis' order, several writes
    folded into one message at random (BCAST does that), interleaved at random with the
    replies. Whenever the near cache holds a value, it is an own write not yet answered,
    or every write Redis ran after it still has its invalidation on the way; once all
    has arrived, it holds Redis' value or nothing."""
    near = NearCache(10)
    near.enabled = True
    todo = list(enumerate(data.draw(st.lists(
        st.sampled_from(["own", "own", "other", "own_fail_before", "own_fail_after"]),
        min_size=1, max_size=8))))
    redis_log: list[int] = []  # values, in the order Redis ran the writes
    queued: list[tuple[str, int, int]] = []  # the CacheActor's FIFO: (kind, value, ticket)
    unsettled: set[int] = set()  # own values whose reply has not come
    invalidations: list[int] = []  # positions in redis_log, not delivered yet
    replies: list[tuple[str, int | None, int]] = []
    while todo or queued or invalidations or replies:
        step = data.draw(st.sampled_from([name for name, ready in (
            ("issue", todo), ("run", queued), ("inv", invalidations), ("reply", replies))
            if ready]))
        if step == "issue":
            value, kind = todo.pop(0)
            if kind == "other":  # another client: runs at once
                redis_log.append(value)
                invalidations.append(len(redis_log) - 1)
            else:
                ticket = near.begin_write(["k"], own=(orjson.dumps(value), 60))
                queued.append((kind, value, ticket))
                unsettled.add(value)
        elif step == "run":
            kind, value, ticket = queued.pop(0)
            if kind == "again":  # the near cache's re-read
                replies.append((kind, redis_log[-1] if redis_log else None, ticket))
            elif kind == "own_fail_before":  # refused: never ran
                replies.append((kind, value, ticket))
            else:
                redis_log.append(value)
                invalidations.append(len(redis_log) - 1)
                replies.append((kind, value, ticket))
        elif step == "inv":  # one message for one or more writes
            folded = data.draw(st.integers(1, len(invalidations)))
            del invalidations[:folded]
            if near.invalidated(["k"]):
                queued.append(("again", -1, near.ticket()))
        else:
            kind, value, ticket = replies.pop(0)
            if kind == "again":
                if value is not None:
                    near.put("k", orjson.dumps(value), 60, ticket)
                continue
            unsettled.discard(value)  # type: ignore[arg-type]
            if kind == "own":
                near.own_written("k", orjson.dumps(value), 60, ticket)
            else:
                near.own_failed("k")
            near.end_write(["k"])
        held, value = near.get("k")
        if held and value not in unsettled:
            newer = set(range(redis_log.index(value) + 1, len(redis_log)))
            assert newer <= set(invalidations), (redis_log, value)
    held, value = near.get("k")
    assert not held or value == redis_log[-1]
