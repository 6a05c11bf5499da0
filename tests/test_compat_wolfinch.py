"""The seed's "Manual Usage in Code" block, unchanged but for its imports, on real servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hub import ValidationError
from hub._servers import LocalServers
from hub.compat import wolfinch
from tests.conftest import redis_command


@pytest.fixture
def dropin(config_data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield config_data
    wolfinch.close_all()


def test_the_seeds_usage_block(dropin: dict[str, Any]) -> None:
    wolfinch.init_redis_cache(dropin)
    wolfinch.init_influx_db(dropin)
    # ---- the seed's block from here, with `from hub.compat.wolfinch import ...` ----
    from hub.compat.wolfinch import get_influx_db, get_redis_cache

    # Get instances
    redis = get_redis_cache()
    influx = get_influx_db()

    # Cache an indicator
    redis.cache_indicator('papertrader', 'BANKNIFTY-FUT', 'EMA', 20, 44500.0)

    # Get cached indicator
    ema_value = redis.get_indicator('papertrader', 'BANKNIFTY-FUT', 'EMA', 20)

    # Write candle to InfluxDB
    influx.write_candle(
        exchange='papertrader',
        product='BANKNIFTY-FUT',
        timestamp=1697529600,
        open_price=44500.0,
        high=44550.0,
        low=44480.0,
        close=44520.0,
        volume=1500.0
    )

    # Query candles
    candles = influx.query_candles('papertrader', 'BANKNIFTY-FUT', limit=100)
    # ---- end of the seed's block ----
    assert ema_value == 44500.0
    assert candles == [{"timestamp": 1697529600, "open": 44500.0, "high": 44550.0,
                        "low": 44480.0, "close": 44520.0, "volume": 1500.0}]
    # the seed's monitoring snippet
    stats = redis.get_stats()
    rate = stats['keyspace_hits'] / (stats['keyspace_hits'] + stats['keyspace_misses']) * 100
    assert 0 <= rate <= 100
    # and what the seed returns
    assert influx.write_candle('papertrader', 'BANKNIFTY-FUT', 1697529660, 1, 2, 1, 1, 1)
    assert influx.flush() is True
    redis.flush_all()
    assert len(influx.query_candles('papertrader', 'BANKNIFTY-FUT')) == 2  # from InfluxDB


def test_generic_commands_are_json(dropin: dict[str, Any], servers: LocalServers,
                                   tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default sqlite.path is relative
    redis = wolfinch.init_redis_cache(dropin["redis"])  # just the section, as the seed does
    assert redis.set("k", {"a": [1, 2.5]}, ttl=60) is True
    assert redis.get("k") == {"a": [1, 2.5]}
    assert redis_command(servers, "GET", "k") == b'$13\r\n{"a":[1,2.5]}\r\n'
    assert redis.exists("k") and redis.expire("k", 30)
    assert redis.get("missing", default="d") == "d"
    assert redis.rpush("l", 1, 2) == 2 and redis.lpush("l", 0) == 3
    assert redis.lrange("l", 0, -1) == [0, 1, 2]
    assert redis.ltrim("l", 0, 1) is True and redis.lrange("l", 0, -1) == [0, 1]
    assert redis.hset("h", "f", {"x": 1}) == 1
    assert redis.hget("h", "f") == {"x": 1}
    assert redis.hgetall("h") == {"f": {"x": 1}}
    assert redis.delete("k", "l", "h") == 3
    with pytest.raises(ValidationError, match="value"):
        redis.set("k", object())
    with pytest.raises(ValidationError, match="value"):
        redis.set("k", float("nan"))
    assert redis.exists("k") is False  # nothing was written


def test_outage_reads_return_defaults_and_writes_do_not_raise(
        dropin: dict[str, Any], servers: LocalServers) -> None:
    dropin["redis"]["timeout"] = 0.5
    wolfinch.init_influx_db(dropin)
    redis = wolfinch.get_redis_cache()
    influx = wolfinch.get_influx_db()
    redis.cache_position("px", "P", {"size": 1})
    servers.redis.kill()
    try:
        assert redis.get("k", default="d") == "d"
        assert redis.set("k", 1) is False
        assert redis.cache_indicator("px", "P", "EMA", 20, 1.0) is True  # skipped, not raised
        assert redis.get_position("px", "P") == {"size": 1}  # from SQLite
        assert influx.write_candle("px", "P", 1697529600, 1, 2, 1, 1, 1) is True
    finally:
        servers.redis.start()
    assert influx.query_candles("px", "P") == [
        {"timestamp": 1697529600, "open": 1.0, "high": 2.0, "low": 1.0, "close": 1.0,
         "volume": 1.0}]


def test_calls_before_init_say_what_to_do() -> None:
    wolfinch.close_all()
    with pytest.raises(wolfinch.HubError, match="init_redis_cache"):
        wolfinch.get_redis_cache()
