"""Synchronous callers: the Wolfinch drop-in beside the seed's way (plain sync redis-py
and one HTTP POST per point), measured from a plain thread in one run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from bench._suites import EX, PRODUCTS, Results, Sizes, candles, pct, timed
from hub.compat import wolfinch
from wolfhub.servers import LocalServers


def dropin(servers: LocalServers, workdir: Path, sizes: Sizes, results: Results) -> None:
    """Per-call latency of the hot read, the fire-and-forget candle write and the hot
    window, through ``hub.compat.wolfinch``, against the seed's synchronous calls."""
    overrides = servers.config_overrides()
    config = {**overrides, "influxdb": {**overrides["influxdb"], "bucket": "bench_dropin"},
              "sqlite": {"path": str(workdir / "dropin.sqlite")}}
    cache = wolfinch.init_redis_cache(config)
    influx = wolfinch.init_influx_db(config)
    sync = redis.Redis(port=servers.redis.port)
    n = sizes.repeats * 10
    product = PRODUCTS[2]
    key = f"indicator:{EX}:{product}:EMA:20"
    try:
        cache.cache_indicator(EX, product, "EMA", 20, 44500.0, ttl=3600)
        _until_held(cache, product)
        seed_get = timed(lambda: orjson.loads(sync.get(key) or b"null"), n)
        hot = timed(lambda: cache.get_indicator(EX, product, "EMA", 20), n)
        through = []
        for _ in range(n):  # through the loop thread to Redis: the near cache emptied
            _near().clear()
            began = time.perf_counter()
            cache.get_indicator(EX, product, "EMA", 20)
            through.append(time.perf_counter() - began)

        data = candles(sizes.write_points // 10, 3)
        window = data[-1000:]
        written = iter(data)
        began = time.perf_counter()
        writes = timed(lambda: _write(influx, next(written)), len(data))
        influx.flush()
        until_queryable = time.perf_counter() - began

        seed_list = f"seedlist:{product}"
        sync.delete(seed_list)
        sync.rpush(seed_list, *[orjson.dumps(c.as_dict()) for c in window])
        seed_window = timed(lambda: [orjson.loads(x) for x in sync.lrange(seed_list, -100, -1)],
                            n)
        sync.delete(seed_list)
        cache.get_candles(EX, product, 100)  # the window is now held in-process
        hot_window = timed(lambda: cache.get_candles(EX, product, 100), n)
    finally:
        sync.close()
        wolfinch.close_all()
    results.samples.update({"drop-in hot read": hot, "seed sync redis-py GET": seed_get,
                            "drop-in write_candle": writes})
    results.tables["dropin"] = [
        {"call": name, "p50": statistics.median(s), "p99": pct(s, 0.99), "n": len(s)}
        for name, s in (("seed: sync redis-py GET + decode", seed_get),
                        ("drop-in get_indicator, near cache", hot),
                        ("drop-in get_indicator, through the loop to Redis", through),
                        ("drop-in write_candle (accepted)", writes),
                        ("seed: sync LRANGE of 100 candles + decode", seed_window),
                        ("drop-in get_candles(100), near cache", hot_window))]
    results.tables["dropin_writes"] = [
        {"writer": "drop-in write_candle x N + flush", "points": len(data),
         "seconds": until_queryable, "points_per_s": len(data) / until_queryable}]


def _write(influx: wolfinch.InfluxDB, c: Any) -> None:
    influx.write_candle(EX, "DROPIN", c.timestamp, c.open, c.high, c.low, c.close, c.volume)


def _near() -> Any:
    from hub.compat._runtime import runtime

    assert runtime.hub is not None and runtime.hub.intake.cache is not None
    return runtime.hub.intake.cache.near


def _until_held(cache: wolfinch.RedisCache, product: str) -> None:
    """Read until the near cache holds the value and Redis' echo of this process's own
    write has come and gone (it evicts; the value is read again at once): the steady
    state a strategy's repeated reads see."""
    from hub.compat._runtime import runtime

    for _ in range(1000):
        cache.get_indicator(EX, product, "EMA", 20)
        assert runtime.hub is not None
        key = f"indicator:{EX}:{product}:EMA:20"
        if runtime.hub.intake.hot_indicator(EX, product, "EMA", 20)[0] \
                and not _near().expecting(key):
            return
        time.sleep(0.005)
    raise RuntimeError("the near cache never held the indicator")
