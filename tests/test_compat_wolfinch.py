"""The Wolfinch drop-in, used the way the real Wolfinch code uses ``db/redis_cache.py``
and ``db/influx_db.py`` (its boot, candle database, market restart import, trade and
indicator loggers, UI process and diagnostic scripts), on real servers.

The call sites are replayed in this project's own words; ``OHLC`` below is a
candle class of the same shape as Wolfinch's (slots time, open, high, low, close,
volume), so nothing here depends on Wolfinch's (GPL) code.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from influxdb_client import Point, WritePrecision

from hub import ValidationError
from hub.compat import wolfinch
from hub.compat._runtime import runtime
from tests.conftest import redis_command
from wolfhub.servers import LocalServers

EX, PR = "papertrader", "BANKNIFTY-FUT"


class OHLC:
    """A candle shaped like Wolfinch's market.OHLC."""

    __slots__ = ("close", "high", "low", "open", "time", "volume")

    def __init__(self, time: Any = 0, open: Any = 0, high: Any = 0, low: Any = 0,
                 close: Any = 0, volume: Any = 0) -> None:
        self.time = time
        self.open, self.high, self.low = float(open), float(high), float(low)
        self.close, self.volume = float(close), float(volume)


def influx_query(servers: LocalServers, database: str, query: str) -> list[dict[str, Any]]:
    """Rows of an InfluxQL query, asked of influxd over plain HTTP (no hub in the way)."""
    data = urllib.parse.urlencode({"db": database, "q": query, "epoch": "s"}).encode()
    url = f"http://127.0.0.1:{servers.influx.port}/query"
    with urllib.request.urlopen(url, data, timeout=10) as answer:
        results = json.loads(answer.read())["results"]
    rows = []
    for series in results[0].get("series", ()):
        rows += [{**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
                 for values in series["values"]]
    return rows


@pytest.fixture
def sections(config_data: dict[str, Any], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The two sections of config/cache_db.yml as Wolfinch reads and passes them, run
    in a working folder of its own (the default sqlite.path is relative, as in a bot)."""
    monkeypatch.chdir(tmp_path)
    data = {"redis": {**config_data["redis"], "enabled": True, "password": None,
                      "ttl": {"indicators": 300, "candles": 600, "positions": 3600,
                              "strategies": 3600}},
            "influxdb": {**config_data["influxdb"], "enabled": True, "org": "wolfinch",
                         "token": "only-2.x-reads-this",
                         "retention": {"candles": "90d", "indicators": "30d"}}}
    yield data
    wolfinch.close_all()


def boot(sections: dict[str, Any]) -> tuple[wolfinch.RedisCache, wolfinch.InfluxDB]:
    """Wolfinch_init: each enabled section is initialised on its own, Redis first."""
    wolfinch.init_redis_cache(sections["redis"])
    wolfinch.init_influx_db(sections["influxdb"])
    redis, influx = wolfinch.get_redis_cache(), wolfinch.get_influx_db()
    assert redis is not None and influx is not None
    return redis, influx


def test_the_seeds_usage_block(config_data: dict[str, Any]) -> None:
    wolfinch.init_redis_cache(config_data)
    wolfinch.init_influx_db(config_data)
    try:
        # ---- the seed's block from here, with `from hub.compat.wolfinch import ...` ----
        from hub.compat.wolfinch import get_influx_db, get_redis_cache

        # Get instances
        redis = get_redis_cache()
        influx = get_influx_db()
        assert redis is not None and influx is not None

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
        stats = redis.get_stats()  # the seed's monitoring snippet
        rate = stats['keyspace_hits'] / (stats['keyspace_hits'] + stats['keyspace_misses'])
        assert 0 <= rate <= 1 and stats["enabled"] is True
        assert influx.write_candle('papertrader', 'BANKNIFTY-FUT', 1697529660, 1, 2, 1, 1, 1)
        assert influx.flush() is True
        redis.flush_all()
        assert len(influx.query_candles('papertrader', 'BANKNIFTY-FUT')) == 2  # InfluxDB
    finally:
        wolfinch.close_all()


def test_boot_starts_each_section_on_its_own_and_keeps_earlier_objects(
        sections: dict[str, Any]) -> None:
    assert wolfinch.get_redis_cache() is None and wolfinch.get_influx_db() is None
    redis = wolfinch.init_redis_cache(sections["redis"])
    assert redis.is_enabled() and redis.enabled
    assert wolfinch.get_influx_db() is None  # Redis' init started no InfluxDB
    assert runtime.hub is not None and runtime.hub.intake.writer is None
    assert redis.set("k", 1) is True
    influx = wolfinch.init_influx_db(sections["influxdb"])
    # the object kept from the first init still works on the hub that now has both
    assert redis.set("k", 2) is True and redis.get("k") == 2
    redis.cache_indicator(EX, PR, "EMA", 20, 44500.0)
    assert redis.get_indicator(EX, PR, "EMA", 20) == 44500.0
    assert influx.is_enabled() and wolfinch.get_influx_db() is influx
    assert influx.bucket == sections["influxdb"]["bucket"] and influx.org == "wolfinch"
    # closing one object leaves the other serving
    redis.close()
    assert not redis.is_enabled() and wolfinch.get_redis_cache() is None
    assert influx.write_candle(EX, PR, 1697529600, 1, 2, 1, 1.5, 3) and influx.flush()
    assert len(influx.query_candles(EX, PR)) == 1


def test_candle_database_save_and_restart_import_with_wolfinch_candles(
        sections: dict[str, Any], servers: LocalServers) -> None:
    redis, influx = boot(sections)
    history = [OHLC(1697529600.0 + 60 * i, 100 + i, 101 + i, 99 + i, 100.5 + i, np.float64(7))
               for i in range(5)]
    # CandleDBInflux.db_save_candles: dicts built from the candles' attributes, then the
    # candle objects themselves into the hot window
    batch = [{"timestamp": c.time, "open": c.open, "high": c.high, "low": c.low,
              "close": c.close, "volume": c.volume} for c in history]
    assert influx.write_candles_batch(exchange=EX, product=PR, candles=batch) is True
    assert redis.cache_candles(exchange=EX, product=PR, candles=history[-1000:],
                               max_candles=1000) is True
    # db_save_candle: one live candle, its float time and numpy values as they come
    live = OHLC(np.int64(1697529900), 105, 106, 104, 105.5, 9)
    assert influx.write_candle(exchange=EX, product=PR, timestamp=live.time,
                               open_price=live.open, high=live.high, low=live.low,
                               close=live.close, volume=live.volume) is True
    assert redis.cache_candles(exchange=EX, product=PR, candles=[live], max_candles=1000)
    # the market's restart import reads the hot window as OHLC objects
    imported = redis.get_candles(exchange=EX, product=PR, count=1000)
    assert [c.time for c in imported] == [1697529600 + 60 * i for i in range(6)]
    assert imported[-1].close == 105.5 and imported[0].timestamp == 1697529600
    assert all(c.open <= c.high and c.low <= c.close for c in imported)
    # the other read path converts the seed's dicts: cd['timestamp'], cd['open'], ...
    assert influx.flush()
    cold = influx.query_candles(exchange=EX, product=PR, start_time=1697529600,
                                end_time=1697529780, limit=10000)
    assert [(cd["timestamp"], cd["open"], cd["volume"]) for cd in cold] == [
        (1697529600 + 60 * i, 100.0 + i, 7.0) for i in range(4)]
    # records cross Wolfinch's UI pipe (a multiprocessing Pipe) and its JSON with
    # `default=serialize`
    ours, theirs = multiprocessing.Pipe()
    with ours, theirs:
        ours.send(imported[-1])
        sent = theirs.recv()
    assert sent == imported[-1] and sent.time == 1697529900
    body = json.dumps([{"ohlc": sent}], default=lambda o: o.serialize())
    assert json.loads(body) == [{"ohlc": {"time": 1697529900, "open": 105.0, "high": 106.0,
                                          "low": 104.0, "close": 105.5, "volume": 9.0}}]
    stored = influx_query(servers, sections["influxdb"]["bucket"],
                          'SELECT count(close) FROM candle WHERE product = \'BANKNIFTY-FUT\'')
    assert stored[0]["count"] == 6
    with pytest.raises(ValidationError, match=r"candles\[0\].time"):
        influx.write_candles_batch(EX, PR, [OHLC(1697529600.5, 1, 2, 1, 1, 1)])


def test_the_import_after_a_night_gets_the_days_before_too(
        sections: dict[str, Any], servers: LocalServers) -> None:
    """The hot window expired overnight (redis.ttl.candles after the market's last
    minute); the morning's minutes start a new one. A process importing then (the
    bot's restart, its UI) reads the newest candles through get_candles as the seed's
    list, which never expired, gave them: yesterday's with this morning's."""
    redis, influx = boot(sections)
    day = [OHLC(1697529600 + 60 * i, 100 + i, 101 + i, 99 + i, 100.5 + i, 7) for i in range(30)]
    assert influx.write_candles_batch(exchange=EX, product=PR, candles=[
        {"timestamp": c.time, "open": c.open, "high": c.high, "low": c.low, "close": c.close,
         "volume": c.volume} for c in day])
    assert redis.cache_candles(exchange=EX, product=PR, candles=day, max_candles=1000)
    assert influx.flush()
    redis_command(servers, "DEL", f"candles:{EX}:{PR}")  # expired overnight
    morning = [OHLC(1697529600 + 86400 + 60 * i, 200, 201, 199, 200.5, 3) for i in range(3)]
    for live in morning:  # db_save_candle
        assert influx.write_candle(exchange=EX, product=PR, timestamp=live.time,
                                   open_price=live.open, high=live.high, low=live.low,
                                   close=live.close, volume=live.volume)
        assert redis.cache_candles(exchange=EX, product=PR, candles=[live], max_candles=1000)
    imported = redis.get_candles(exchange=EX, product=PR, count=1000)
    assert [c.time for c in imported] == [c.time for c in day + morning]
    assert [c.close for c in imported[-4:]] == [129.5, 200.5, 200.5, 200.5]


def test_trade_logger_points_land_with_their_tags_fields_and_time(
        sections: dict[str, Any], servers: LocalServers) -> None:
    _, influx = boot(sections)
    # TradeLogger._write_trade_event: an influxdb-client Point in seconds precision
    point = (Point("trade_event").tag("event_type", "order_filled").tag("exchange", EX)
             .tag("product", PR).tag("order_id", "o-17").tag("side", "buy")
             .field("fill_price", 44520.0).field("fill_size", 2.0).field("fee", 0.4)
             .field("reason_str", 'a "quoted", odd=reason')
             .time(1697529660, WritePrecision.S))
    assert influx.write_api is not None
    influx.write_api.write(bucket=influx.bucket, org=influx.org, record=point)
    # other record forms influxdb-client accepts
    influx.write_api.write(influx.bucket, influx.org,
                           [f"trade_event,event_type=risk_event,exchange={EX} loss=3 1697529720",
                            {"measurement": "trade_event", "tags": {"event_type": "note"},
                             "fields": {"count": 3, "ok": True}, "time": 1697529780}],
                           write_precision="s")
    with pytest.raises(ValidationError, match="record"):
        influx.write_api.write(influx.bucket, influx.org, "trade_event,broken 1")
    with pytest.raises(ValidationError, match="bucket"):
        influx.write_api.write(bucket="elsewhere", record=point)
    assert influx.flush()
    rows = influx_query(servers, influx.bucket, "SELECT * FROM trade_event")
    assert [(r["time"], r["event_type"]) for r in rows] == [
        (1697529660, "order_filled"), (1697529720, "risk_event"), (1697529780, "note")]
    filled = rows[0]
    assert (filled["fill_price"], filled["fill_size"], filled["fee"], filled["order_id"],
            filled["side"], filled["reason_str"]) == (44520.0, 2.0, 0.4, "o-17", "buy",
                                                      'a "quoted", odd=reason')
    assert rows[2]["count"] == 3 and rows[2]["ok"] is True
    kinds = influx_query(servers, influx.bucket, "SHOW FIELD KEYS FROM trade_event")
    assert {r["fieldKey"]: r["fieldType"] for r in kinds}["count"] == "integer"


def test_indicator_logger_points(sections: dict[str, Any], servers: LocalServers) -> None:
    redis, influx = boot(sections)
    # IndicatorLogger.log_indicators / log_strategy_signal
    assert influx.write_point(measurement="indicator",
                              tags={"exchange": EX, "product": PR, "strategy": "TREND_RSI",
                                    "ind_trend": "up"},
                              fields={"rsi": 61.5, "ema_20": 44500.0, "signal_buy": 1.0},
                              timestamp=1697529600) is True
    assert influx.write_point(measurement="strategy_signal",
                              tags={"exchange": EX, "product": PR, "strategy": "TREND_RSI",
                                    "signal_type": "buy"},
                              fields={"signal_strength": np.float64(0.85), "ind_rsi": 61.5,
                                      "skipped": None},
                              timestamp=1697529600) is True
    with pytest.raises(ValidationError, match="fields"):
        influx.write_point(measurement="indicator", tags={}, fields={}, timestamp=1)
    assert influx.flush()
    (row,) = influx_query(servers, influx.bucket, "SELECT * FROM indicator")
    assert (row["time"], row["strategy"], row["ind_trend"], row["rsi"], row["ema_20"]) == (
        1697529600, "TREND_RSI", "up", 61.5, 44500)
    (signal,) = influx_query(servers, influx.bucket, "SELECT * FROM strategy_signal")
    assert signal["signal_strength"] == 0.85 and "skipped" not in signal
    # the hub's own indicator reads are not confused by the logger's rows
    assert redis.get_indicator(EX, PR, "RSI", 14, default=50.0) == 50.0


def test_seed_constructors_defaults_and_numpy(sections: dict[str, Any],
                                              servers: LocalServers) -> None:
    # test_influxdb_redis.py builds the classes directly
    r = sections["redis"]
    redis = wolfinch.RedisCache(host=r["host"], port=r["port"], db=0, enabled=True)
    i = sections["influxdb"]
    influx = wolfinch.InfluxDB(url=i["url"], token="t", org="wolfinch", bucket=i["bucket"],
                               enabled=True)
    assert redis.is_enabled() and influx.is_enabled()
    assert redis.set("test_key", "test_value", ttl=60) and redis.get("test_key") == "test_value"
    assert redis.set("forever", np.float64(1.5), ttl=0) is True  # 0: no expiry, as the seed
    assert redis_command(servers, "TTL", "forever") == b":-1\r\n"
    assert redis.get("forever") == 1.5
    assert redis.get_indicator(EX, PR, "RSI", 14, default=50.0) == 50.0
    assert redis.hget("h", "missing", default=0) == 0
    assert redis.cache_indicator(EX, PR, "EMA", np.int64(20), np.float64(44500.5))
    assert redis.get_indicator(EX, PR, "EMA", 20) == 44500.5
    assert redis.cache_position(EX, PR, {"size": np.int64(2), "entry": np.float32(1.5)})
    assert redis.get_position(EX, PR) == {"size": 2, "entry": 1.5}
    assert redis.get_stats()["enabled"] is True
    assert redis.client is not None and redis.client.ping()
    keys = {k.decode() for k in redis.client.keys("*")}
    assert {"test_key", "forever", f"indicator:{EX}:{PR}:EMA:20"} <= keys
    assert influx.client is not None and influx.client.health().status == "pass"
    with pytest.raises(ValidationError, match="value"):
        redis.set("bad", object())
    assert redis.exists("bad") is False


def test_a_disabled_section_answers_with_the_seeds_defaults(sections: dict[str, Any]) -> None:
    redis = wolfinch.init_redis_cache({**sections["redis"], "enabled": False})
    assert not redis.is_enabled() and redis.client is None
    assert redis.set("k", 1) is False and redis.get("k", default="d") == "d"
    assert redis.delete("k") == 0 and redis.exists("k") is False
    assert redis.lrange("l", 0, -1) == [] and redis.hgetall("h") == {}
    assert redis.cache_indicator(EX, PR, "EMA", 20, 1.0) is False
    assert redis.get_candles(EX, PR) == [] and redis.get_position(EX, PR) is None
    assert redis.get_stats() == {"enabled": False}
    influx = wolfinch.init_influx_db(sections["influxdb"])  # InfluxDB alone
    assert influx.is_enabled() and not redis.is_enabled()
    assert influx.write_candle(EX, PR, 1697529600, 1, 2, 1, 1, 1) and influx.flush()
    assert influx.write_indicator(EX, PR, "EMA", 1697529600, 3.0, period=20) and influx.flush()
    assert len(influx.query_candles(EX, PR)) == 1
    # the disabled cache does not answer through the hub InfluxDB now runs
    assert redis.get_candles(EX, PR) == [] and redis.get_indicator(EX, PR, "EMA", 20) is None


def test_hot_reads_and_writes_do_not_wait_for_the_loop(sections: dict[str, Any]) -> None:
    redis, influx = boot(sections)
    redis.cache_indicator(EX, PR, "EMA", 20, 1.0)
    for _ in range(1000):  # read until held in-process (Redis echoes our own write first)
        assert redis.get_indicator(EX, PR, "EMA", 20) == 1.0
        assert runtime.hub is not None
        if runtime.hub.intake.hot_indicator(EX, PR, "EMA", 20)[0]:
            break
        time.sleep(0.01)
    assert runtime.loop is not None
    release, blocked, done = threading.Event(), threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        blocked.set()
        release.wait(30)
        done.set()

    runtime.loop.call_soon_threadsafe(hold_the_loop)
    assert blocked.wait(10)
    try:
        # with the loop thread busy, these are answered or accepted on this thread
        assert redis.get_indicator(EX, PR, "EMA", 20) == 1.0
        assert influx.write_candle(EX, PR, 1697529600, 1, 2, 1, 1.5, 3) is True
        assert redis.cache_indicator(EX, PR, "EMA", 20, 2.0) is True
        assert not done.is_set()
    finally:
        release.set()
    # read-your-writes: the new value, never the one held before the write
    assert redis.get_indicator(EX, PR, "EMA", 20) == 2.0
    assert [c.time for c in influx.query_candles(EX, PR)] == [1697529600]


def test_a_drop_in_read_counts_once_in_the_hit_rate(sections: dict[str, Any],
                                                   servers: LocalServers) -> None:
    """A read the near cache cannot answer looks there on the caller's thread, then on
    the hub's loop, then goes to Redis: one miss in the hit rate, not three."""
    redis, _ = boot(sections)
    key = f"indicator:{EX}:{PR}:RSI:14"
    assert redis_command(servers, "SET", key, "55.5", "EX", "600").startswith(b"+OK")
    assert runtime.hub is not None and runtime.hub._cache is not None
    near = runtime.hub._cache.near
    assert near is not None
    for _ in range(500):  # tracking on: values read are held from then on
        if near.enabled:
            break
        time.sleep(0.01)
    near.clear()
    misses, hits = near.misses, near.hits
    assert redis.get_indicator(EX, PR, "RSI", 14) == 55.5  # from Redis
    assert redis.get_indicator(EX, PR, "RSI", 14) == 55.5  # held
    assert (near.misses - misses, near.hits - hits) == (1, 1)


def _query_in_child(queue: Any) -> None:
    influx = wolfinch.get_influx_db()
    assert influx is not None
    queue.put((influx.is_enabled(), [c["timestamp"] for c in influx.query_candles(EX, PR)],
               wolfinch.get_redis_cache().get_indicator(EX, PR, "EMA", 20)))  # type: ignore[union-attr]
    # accepted here, not flushed: a multiprocessing child ends with os._exit, and the
    # drop-in still delivers this before the child is gone
    influx.write_candle(EX, "CHILD", 1697529600, 1, 2, 1, 1.5, 3)


def test_a_forked_child_gets_a_hub_of_its_own(sections: dict[str, Any]) -> None:
    redis, influx = boot(sections)
    influx.write_candle(EX, PR, 1697529600, 1, 2, 1, 1.5, 3)
    redis.cache_indicator(EX, PR, "EMA", 20, 7.0)
    assert influx.flush()
    context = multiprocessing.get_context("fork")  # as Wolfinch starts its UI process
    queue = context.Queue()
    child = context.Process(target=_query_in_child, args=(queue,))
    child.start()
    try:
        # the child answers from its own hub (on its own SQLite slot), it does not hang
        assert queue.get(timeout=30) == (True, [1697529600], 7.0)
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert redis.get_indicator(EX, PR, "EMA", 20) == 7.0  # the parent is untouched
    assert [c.time for c in influx.query_candles(EX, "CHILD")] == [1697529600]


def test_threads_writing_at_once_lose_nothing_and_read_their_writes(
        sections: dict[str, Any]) -> None:
    redis, influx = boot(sections)
    errors: list[BaseException] = []

    def strategy(n: int) -> None:
        try:
            for i in range(300):
                assert influx.write_candle(EX, f"T{n}", 1697529600 + 60 * i, 1, 2, 1, 1.5, i)
                redis.cache_indicator(EX, f"T{n}", "EMA", 20, float(i))
                if i % 25 == 0:  # this thread's last write, never an older value
                    assert redis.get_indicator(EX, f"T{n}", "EMA", 20) == float(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=strategy, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert influx.flush()
    for n in range(4):
        got = influx.query_candles(EX, f"T{n}", limit=1000)
        assert [c.volume for c in got] == [float(i) for i in range(300)]
        assert redis.get_indicator(EX, f"T{n}", "EMA", 20) == 299.0


def test_a_second_process_in_the_same_folder(sections: dict[str, Any], tmp_path: Path) -> None:
    redis, influx = boot(sections)
    assert redis.cache_position(EX, PR, {"size": 3})
    script = textwrap.dedent(f"""
        import json, sys
        from hub.compat.wolfinch import init_influx_db, init_redis_cache, close_all
        sections = json.loads(sys.argv[1])
        redis = init_redis_cache(sections["redis"])
        influx = init_influx_db(sections["influxdb"])
        ok = influx.write_candle({EX!r}, {PR!r}, 1697529660, 1, 2, 1, 1.5, 3)
        print(json.dumps([redis.is_enabled(), ok, redis.get_position({EX!r}, {PR!r})]))
        close_all()
    """)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(sections)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [True, True, {"size": 3}]
    assert influx.flush()
    assert [c.time for c in influx.query_candles(EX, PR)] == [1697529660]


def test_outage_reads_return_defaults_and_writes_do_not_raise(
        sections: dict[str, Any], servers: LocalServers) -> None:
    sections["redis"]["timeout"] = 0.5
    redis, influx = boot(sections)
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


def test_generic_commands_are_json(sections: dict[str, Any], servers: LocalServers) -> None:
    redis = wolfinch.init_redis_cache(sections["redis"])
    assert redis.set("k", {"a": [1, 2.5]}, ttl=60) is True
    assert redis.get("k") == {"a": [1, 2.5]}
    assert redis_command(servers, "GET", "k") == b'$13\r\n{"a":[1,2.5]}\r\n'
    assert redis.exists("k") and redis.expire("k", 30)
    assert redis.rpush("l", 1, 2) == 2 and redis.lpush("l", 0) == 3
    assert redis.lrange("l", 0, -1) == [0, 1, 2]
    assert redis.ltrim("l", 0, 1) is True and redis.lrange("l", 0, -1) == [0, 1]
    assert redis.hset("h", "f", {"x": 1}) == 1
    assert redis.hget("h", "f") == {"x": 1} and redis.hgetall("h") == {"f": {"x": 1}}
    assert redis.delete("k", "l", "h") == 3
    with pytest.raises(ValidationError, match="value"):
        redis.set("k", float("nan"))
    assert redis.exists("k") is False  # nothing was written


def test_flux_scripts_get_a_clear_error(sections: dict[str, Any]) -> None:
    _, influx = boot(sections)
    assert influx.query_api is not None
    with pytest.raises(wolfinch.HubError, match="InfluxQL"):
        influx.query_api.query('from(bucket:"trading") |> range(start: -1h)')


NSE_OPEN = {"name": "nse", "exchanges": ["papertrader"], "timezone": "Asia/Kolkata",
            "hours": ["09:15-15:30"], "align": "open"}


def write_an_hour_from_0915_ist(servers: LocalServers) -> list[int]:
    """61 minutes from 09:15 IST on a Tuesday through the drop-in; the stored 1h
    rollups' times."""
    influx = wolfinch.get_influx_db()
    assert influx is not None
    first = 1697514300  # 2023-10-17 03:45 UTC
    for i in range(61):
        assert influx.write_candle("papertrader", "NIFTY-FUT", first + 60 * i,
                                   1.0, 2.0, 0.5, 1.5, 1.0)
    assert influx.flush()  # (a rollup recomputed for missing minutes included)
    bucket = runtime.hub.config.influxdb.bucket if runtime.hub is not None else ""
    rows = influx_query(servers, bucket,
                        "SELECT open FROM candle_rollup WHERE timeframe = '1h'")
    return [row["time"] for row in rows]


def test_the_hubs_other_sections_come_from_the_file_wolfinch_read(
        sections: dict[str, Any], servers: LocalServers, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Wolfinch hands init_redis_cache and init_influx_db only their own sections of
    config/cache_db.yml; the hub reads its other sections (markets, sqlite, ...) from
    that file, found in the bot's folder by its matching sections, so an NSE market
    configured there takes effect: an hour from 09:15 IST is one 1h candle at 03:45 UTC
    (with the defaults the hour from 03:00 UTC closes instead), and the SQLite file is the
    file's. A config/cache_db.yml whose sections differ is not the file Wolfinch read
    (defaults); WOLFHUB_CONFIG names one anywhere."""
    import yaml

    (tmp_path / "config").mkdir()
    wolfinch_file = tmp_path / "config/cache_db.yml"
    wolfinch_file.write_text(yaml.safe_dump({
        **sections, "markets": [NSE_OPEN], "sqlite": {"path": "state/from-file.sqlite"}}))
    boot(sections)
    assert write_an_hour_from_0915_ist(servers) == [1697514300]
    assert (tmp_path / "state/from-file.sqlite").exists()
    wolfinch.close_all()

    # another file in the folder, its redis or its influxdb section not the one handed
    # over (the second init finds that out): the hub's defaults
    for name, fresh in (("redis", "b"), ("influxdb", "x")):
        bucket = sections["influxdb"]["bucket"] + fresh
        sections["influxdb"] = {**sections["influxdb"], "bucket": bucket}
        other = {**sections, name: {**sections[name], "timeout": 9.0}}
        wolfinch_file.write_text(yaml.safe_dump({**other, "markets": [NSE_OPEN]}))
        boot(sections)
        # (the 03:00 UTC hour holds 15 minutes; 04:00's is still open)
        assert write_an_hour_from_0915_ist(servers) == [1697511600], name
        wolfinch.close_all()

    # WOLFHUB_CONFIG names the file wherever it is, and must exist
    named = tmp_path / "elsewhere.yml"
    named.write_text(yaml.safe_dump({"markets": [NSE_OPEN]}))
    monkeypatch.setenv("WOLFHUB_CONFIG", str(named))
    sections["influxdb"] = {**sections["influxdb"], "bucket": sections["influxdb"]["bucket"] + "c"}
    boot(sections)
    assert write_an_hour_from_0915_ist(servers) == [1697514300]
    wolfinch.close_all()
    monkeypatch.setenv("WOLFHUB_CONFIG", str(tmp_path / "missing.yml"))
    with pytest.raises(ValidationError) as caught:
        wolfinch.init_redis_cache(sections["redis"])
    assert caught.value.argument == "WOLFHUB_CONFIG"
