"""What another client leaves under the hub's keys, on a real Redis: bytes that are not
JSON, JSON of another shape, a value of another Redis type. A read answers as if the
key were absent (InfluxDB, SQLite or the default), never raises; the key is deleted
and refilled by the read-through; a write over a key of another type is skipped and the
key deleted, so the next write lands."""

from __future__ import annotations

from typing import Any

import pytest

from hub import Hub
from tests.conftest import eventually, redis_command
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR, T0 = "foreign", "BTC-USD", 1697529600


def exists(servers: LocalServers, key: str) -> bool:
    return redis_command(servers, "EXISTS", key) == b":1\r\n"


async def invalidated(hub: Hub, key: str) -> None:
    async def evicted() -> bool:
        near = hub._cache.near if hub._cache is not None else None
        return near is None or key not in near
    await eventually(evicted, within=5)


async def deleted(servers: LocalServers, key: str) -> None:
    async def gone() -> bool:
        return not exists(servers, key)
    await eventually(gone)


@pytest.mark.parametrize("foreign", [b"\xff\xfe\x00 not json", b"{\"half\": ", b""])
async def test_undecodable_indicator_is_a_miss_then_refilled(
        hub: Hub, servers: LocalServers, foreign: bytes) -> None:
    await hub.write_indicator(EX, PR, "EMA", T0, 5.0, period=20)
    await hub.flush()
    key = f"indicator:{EX}:{PR}:EMA:20"
    # the hub's own SET lands first (flush() waits for InfluxDB, not for Redis): the
    # foreign value must replace it, not be replaced by it
    await eventually(lambda: _holds(servers, key, b"5.0"))
    redis_command(servers, "SET", key, foreign)
    await invalidated(hub, key)  # this hub held its own write; Redis' news evicts it
    assert await hub.get_indicator(EX, PR, "EMA", 20) == 5.0  # from InfluxDB
    assert (await hub.get_stats())["actors"]["cache"]["undecodable"] >= 1
    await eventually(lambda: _holds(servers, key, b"5.0"))  # deleted, then refilled
    assert await hub.get_indicator(EX, PR, "EMA", 20) == 5.0


async def _holds(servers: LocalServers, key: str, value: bytes) -> bool:
    return redis_command(servers, "GET", key).endswith(b"\r\n" + value + b"\r\n")


@pytest.mark.parametrize("foreign", [b"[1, 2]", b"\"a string\"", b"42", b"\x80\x81"])
async def test_a_position_of_another_shape_is_read_from_sqlite(
        hub: Hub, servers: LocalServers, foreign: bytes) -> None:
    await hub.cache_position(EX, PR, {"size": 3})
    key = f"position:{EX}:{PR}"
    redis_command(servers, "SET", key, foreign)
    assert await hub.get_position(EX, PR) == {"size": 3}
    await eventually(lambda: _holds(servers, key, b'{"size":3}'))


async def test_values_of_another_redis_type_are_misses_and_writes_land_after(
        hub: Hub, servers: LocalServers) -> None:
    candles = f"candles:{EX}:{PR}"
    indicator = f"indicator:{EX}:{PR}:RSI:14"
    position = f"position:{EX}:{PR}"
    redis_command(servers, "LPUSH", candles, "not", "a", "window")
    redis_command(servers, "HSET", indicator, "field", "value")
    redis_command(servers, "SADD", position, "member")
    assert await hub.get_candles(EX, PR, 10) == []  # InfluxDB has none yet
    assert await hub.query_candles(EX, PR, limit=10) == []
    assert await hub.get_indicator(EX, PR, "RSI", 14, "default") == "default"
    assert await hub.get_position(EX, PR) is None
    for key in (candles, indicator, position):
        await deleted(servers, key)
    await hub.write_candle(EX, PR, T0, 1, 2, 0.5, 1.5, 3)
    await hub.cache_indicator(EX, PR, "RSI", 14, 55.5)
    assert await hub.get_indicator(EX, PR, "RSI", 14) == 55.5
    got = await hub.get_candles(EX, PR, 10)
    assert [c.timestamp for c in got] == [T0]
    assert redis_command(servers, "TYPE", candles) == b"+zset\r\n"


async def test_a_foreign_write_over_a_window_is_skipped_and_the_key_deleted(
        hub: Hub, servers: LocalServers) -> None:
    key = f"candles:{EX}:{PR}"
    redis_command(servers, "SET", key, "a string where a window should be")
    await hub.write_candle(EX, PR, T0, 1, 2, 0.5, 1.5, 3)  # WRONGTYPE for the script
    await deleted(servers, key)
    await hub.write_candle(EX, PR, T0 + 60, 1, 2, 0.5, 1.6, 3)
    got = await hub.query_candles(EX, PR, limit=2)
    assert [c.close for c in got] == [1.5, 1.6]  # both in InfluxDB, nothing lost
    stats: dict[str, Any] = (await hub.get_stats())["actors"]["cache"]
    assert stats["skipped"] >= 1


async def test_an_undecodable_member_of_a_window_is_a_miss(hub: Hub,
                                                           servers: LocalServers) -> None:
    for i in range(3):
        await hub.write_candle(EX, PR, T0 + 60 * i, 1, 2, 0.5, 1.5 + i, 3)
    await hub.flush()
    key = f"candles:{EX}:{PR}"
    redis_command(servers, "ZADD", key, str(T0 + 600), b"\xffgarbage")
    got = await hub.query_candles(EX, PR, limit=3)  # the window is unreadable: InfluxDB
    assert [c.close for c in got] == [1.5, 2.5, 3.5]
    await deleted(servers, key)
