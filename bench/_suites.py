"""The measurements. Every contestant runs in the same process, against the same local
servers, one after another, so the numbers are ratios taken side by side."""

from __future__ import annotations

import asyncio
import gc
import http.client
import math
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from actors.backends.influx import InfluxClient, aioinflux
from hub import Candle, Hub, HubConfig
from hubdomain import influxql as ql
from hubdomain import keys
from hubdomain import lineproto as lp
from hubdomain import timeframes as tfs
from wolfhub.servers import LocalServers

EX = "papertrader"
PRODUCTS = ["BANKNIFTY-FUT", "NIFTY-FUT", "FINNIFTY-FUT", "MIDCPNIFTY-FUT", "SENSEX-FUT"]
T0 = 1_600_000_020 // 3600 * 3600


@dataclass
class Sizes:
    repeats: int
    candles_per_product: int  # cold store (InfluxDB, SQLite)
    query_sizes: tuple[int, ...]
    write_points: int
    seed_write_points: int
    strategies: tuple[int, ...]
    reads_per_strategy: int

    @classmethod
    def make(cls, quick: bool) -> Sizes:
        if quick:
            return cls(30, 12_000, (100, 1000, 10_000), 20_000, 300, (100, 1000), 5)
        return cls(200, 100_000, (100, 1000, 10_000), 200_000, 2000, (100, 1000), 20)


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)  # seconds, for the chart
    goals: list[dict[str, Any]] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def atimed(fn: Callable[[], Awaitable[Any]], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - began)
    return out


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def candles(n: int, product_seed: int) -> list[Candle]:
    price, out = 20_000.0 + 1000 * product_seed, []
    for i in range(n):
        o = price
        c = o + ((i * 7919 + product_seed) % 41 - 20) * 0.5
        out.append(Candle(T0 + 60 * i, o, max(o, c) + 1.5, min(o, c) - 1.5, c,
                          float((i * 31) % 5000)))
        price = c
    return out


class Bench:
    def __init__(self, servers: LocalServers, workdir: Path, sizes: Sizes) -> None:
        self.servers = servers
        self.workdir = workdir
        self.sizes = sizes
        self.results = Results()
        overrides = servers.config_overrides()
        self.config = HubConfig.from_mapping({
            **overrides, "sqlite": {"path": str(workdir / "hub.sqlite")},
            "influxdb": {**overrides["influxdb"], "bucket": "bench"},
        }, environ={})
        self.rport = servers.redis.port
        self.sqlite_path = workdir / "wolfinch.sqlite"

    # ---- fixtures of data -----------------------------------------------------

    def build_sqlite(self) -> None:
        """The original Wolfinch store: one table of candles, one of indicators."""
        db = sqlite3.connect(self.sqlite_path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE candles (product TEXT, ts INTEGER, open REAL, high REAL, "
                   "low REAL, close REAL, volume REAL, PRIMARY KEY (product, ts))")
        db.execute("CREATE TABLE indicators (key TEXT PRIMARY KEY, value BLOB)")
        for n, product in enumerate(PRODUCTS):
            db.executemany("INSERT INTO candles VALUES (?,?,?,?,?,?,?)", [
                (product, c.timestamp, c.open, c.high, c.low, c.close, c.volume)
                for c in candles(self.sizes.candles_per_product, n)])
        db.executemany("INSERT INTO indicators VALUES (?, ?)", [
            (f"indicator:{EX}:{PRODUCTS[0]}:EMA:{i}", orjson.dumps(44500.0 + i))
            for i in range(1000)])
        db.commit()
        db.close()

    # ---- tables -------------------------------------------------------------

    async def indicator_lookups(self, hub: Hub) -> None:
        """The seed's first table: read 1 / 100 / 1,000 cached indicators."""
        r = self.sizes.repeats
        keys = [f"indicator:{EX}:{PRODUCTS[0]}:EMA:{i}" for i in range(1000)]
        for i in range(1000):
            await hub.cache_indicator(EX, PRODUCTS[0], "EMA", i, 44500.0 + i, ttl=3600)
        sync = redis.Redis(port=self.rport)
        raw = aioredis.Redis(port=self.rport)
        db = sqlite3.connect(self.sqlite_path)
        rows = []
        for n in (1, 100, 1000):
            subset = keys[:n]
            reps = max(5, r // (1 + n // 100))

            def seed_way(subset: list[str] = subset) -> None:
                for k in subset:  # the seed: a synchronous GET and a decode per call
                    orjson.loads(sync.get(k) or b"null")

            def sqlite_way(subset: list[str] = subset) -> None:
                for k in subset:
                    orjson.loads(db.execute("SELECT value FROM indicators WHERE key = ?",
                                            (k,)).fetchone()[0])

            async def raw_way(subset: list[str] = subset) -> None:
                for k in subset:
                    orjson.loads(await raw.get(k) or b"null")

            async def hub_way(n: int = n) -> None:
                for i in range(n):
                    await hub.get_indicator(EX, PRODUCTS[0], "EMA", i)

            row = {"indicators": n}
            for name, samples in (
                ("sqlite", timed(sqlite_way, reps)),
                ("seed sync redis-py", timed(seed_way, reps)),
                ("redis.asyncio", await atimed(raw_way, reps)),
                ("hub", await atimed(hub_way, reps)),
            ):
                row[name] = statistics.median(samples)
                if n == 1:
                    self.results.samples[f"indicator read: {name}"] = samples
            rows.append(row)
        self.results.tables["indicator_lookup"] = rows
        sync.close()
        await raw.aclose()
        db.close()

    async def single_reads(self, hub: Hub) -> None:
        """Per-read latency of one indicator, many times (the goals' p50s)."""
        n = self.sizes.repeats * 10
        raw = aioredis.Redis(port=self.rport)
        db = sqlite3.connect(self.sqlite_path)
        key = f"indicator:{EX}:{PRODUCTS[0]}:EMA:7"
        await hub.get_indicator(EX, PRODUCTS[0], "EMA", 7)
        hot = await atimed(lambda: hub.get_indicator(EX, PRODUCTS[0], "EMA", 7), n)
        rawget = await atimed(lambda: raw.get(key), n)
        lite = timed(lambda: db.execute("SELECT value FROM indicators WHERE key = ?",
                                        (key,)).fetchone(), n)
        cold, beside = [], []  # a cold hub read and a raw GET, taken in turn
        assert hub.intake.cache is not None
        for i in range(n):
            if hub.intake.cache.near is not None:
                hub.intake.cache.near.clear()
            began = time.perf_counter()
            await hub.get_indicator(EX, PRODUCTS[0], "EMA", i % 1000)
            cold.append(time.perf_counter() - began)
            began = time.perf_counter()
            await raw.get(f"indicator:{EX}:{PRODUCTS[0]}:EMA:{(i + 500) % 1000}")
            beside.append(time.perf_counter() - began)
        self.results.samples.update({"hub hot read": hot, "hub cold read (Redis)": cold,
                                     "redis.asyncio GET": rawget, "sqlite PK lookup": lite})
        self.results.tables["single_read"] = [
            {"read": name, "p50": statistics.median(s), "p99": pct(s, 0.99)}
            for name, s in (("hub hot (near cache)", hot), ("hub cold (Redis)", cold),
                            ("redis.asyncio GET", rawget),
                            ("redis.asyncio GET, in turn with the cold reads", beside),
                            ("sqlite PK lookup", lite))]
        await raw.aclose()
        db.close()

    async def concurrency(self, hub: Hub) -> None:
        rows = []
        pool = aioredis.BlockingConnectionPool(port=self.rport, max_connections=64)
        raw = aioredis.Redis(connection_pool=pool)
        k = self.sizes.reads_per_strategy
        for n in self.sizes.strategies:
            async def strategy_hub(i: int) -> None:
                for j in range(k):
                    await hub.get_indicator(EX, PRODUCTS[0], "EMA", (i * k + j) % 1000)

            async def strategy_raw(i: int) -> None:
                for j in range(k):
                    await raw.get(f"indicator:{EX}:{PRODUCTS[0]}:EMA:{(i * k + j) % 1000}")

            row: dict[str, Any] = {"strategies": n, "reads": n * k}
            for name, one in (("redis.asyncio pool", strategy_raw), ("hub", strategy_hub)):
                async def all_of(one: Any = one, n: int = n) -> None:
                    await asyncio.gather(*(one(i) for i in range(n)))
                row[name] = statistics.median(await atimed(all_of, 5))
            rows.append(row)
        # the case: 100 strategies reading 1,000 distinct keys, each once, none
        # held in process (the near cache is emptied before each timed run)
        per = 1000 // 100
        cold: dict[str, list[float]] = {"redis.asyncio pool": [], "hub": []}
        near = hub.intake.cache.near if hub.intake.cache is not None else None
        for _ in range(5):
            for name in cold:
                if near is not None:
                    near.clear()

                async def strategy(i: int, name: str = name) -> None:
                    for j in range(per):
                        if name == "hub":
                            await hub.get_indicator(EX, PRODUCTS[0], "EMA", i * per + j)
                        else:
                            await raw.get(f"indicator:{EX}:{PRODUCTS[0]}:EMA:{i * per + j}")
                began = time.perf_counter()
                await asyncio.gather(*(strategy(i) for i in range(100)))
                cold[name].append(time.perf_counter() - began)
        rows.append({"strategies": "100, 1,000 distinct cold keys", "reads": 1000,
                     **{name: statistics.median(times) for name, times in cold.items()}})
        self.results.tables["concurrency"] = rows
        await raw.aclose()
        await pool.disconnect()

    async def writes(self, hub: Hub) -> None:
        """Candles written until queryable."""
        n = self.sizes.write_points
        data = candles(n, 9)
        influx = InfluxClient(self.config.influxdb.model_copy(update={"bucket": "bench_raw"}))
        await influx.connect()

        async def raw(run: int, rollups: bool = False) -> float:
            product = f"RAW{'R' if rollups else ''}{run}"
            lines = [lp.candle(EX, product, c) for c in data]
            if rollups:  # and the rollups the hub stores with streams on (closed buckets)
                rows = [(c.timestamp, c.open, c.high, c.low, c.close, c.volume) for c in data]
                for timeframe, span, _ in tfs.plan(self.config.streams.timeframes):
                    buckets: dict[int, list[tfs.Row]] = {}
                    for row in rows:
                        buckets.setdefault(tfs.bucket(row[0], span), []).append(row)
                    closed = [tfs.aggregate(start, parts) for start, parts in buckets.items()
                              if len(parts) * 60 == span]
                    lines += lp.rollup_lines(EX, product, timeframe, closed)
                rollup_points.append(len(lines))
            began = time.perf_counter()
            for i in range(0, len(lines), 5000):
                await influx.write("\n".join(lines[i:i + 5000]).encode())
            return time.perf_counter() - began

        async def one_by_one(target: Hub, product: str) -> float:
            began = time.perf_counter()
            for c in data:
                await target.write_candle(EX, product, c.timestamp, c.open, c.high, c.low,
                                          c.close, c.volume)
            await target.flush()
            return time.perf_counter() - began

        durable = self.config.model_copy(update={
            "influxdb": self.config.influxdb.model_copy(update={"durable": True}),
            "sqlite": self.config.sqlite.model_copy(update={
                "path": str(self.workdir / "durable.sqlite")})})
        # the same without live streams and rollups (streams.enabled: false): what they cost
        plain_config = self.config.model_copy(update={
            "streams": self.config.streams.model_copy(update={"enabled": False}),
            "sqlite": self.config.sqlite.model_copy(update={
                "path": str(self.workdir / "plain.sqlite")})})
        batch_runs: list[float] = []
        durable_runs: list[float] = []
        plain_runs: list[float] = []
        single_runs: list[float] = []
        raw_runs: list[float] = []
        rollup_runs: list[float] = []
        rollup_points: list[int] = []
        plain_single_runs: list[float] = []
        async with Hub(durable, handle_sigterm=False) as kept, \
                Hub(plain_config, handle_sigterm=False) as plain:
            for run in range(3):  # in turn, the median of each: the machine is noisy
                raw_runs.append(await raw(run))
                rollup_runs.append(await raw(run, rollups=True))
                single_runs.append(await one_by_one(hub, f"HUBW{run}"))
                plain_single_runs.append(await one_by_one(plain, f"PLAINW{run}"))
                for target, times, tag in ((hub, batch_runs, "B"), (kept, durable_runs, "D"),
                                           (plain, plain_runs, "P")):
                    product = f"HUB{tag}{run}"
                    began = time.perf_counter()
                    for i in range(0, n, 5000):
                        await target.write_candles_batch(EX, product, data[i:i + 5000])
                    await target.flush()
                    times.append(time.perf_counter() - began)
        await influx.close()
        raw_s = statistics.median(raw_runs)
        rollup_s = statistics.median(rollup_runs)
        hub_s = statistics.median(single_runs)
        plain_single_s = statistics.median(plain_single_runs)
        hub_batch_s = statistics.median(batch_runs)
        durable_s = statistics.median(durable_runs)
        plain_batch_s = statistics.median(plain_runs)

        m = self.sizes.seed_write_points  # the seed: one synchronous POST per point
        conn = http.client.HTTPConnection("127.0.0.1", self.servers.influx.port)
        began = time.perf_counter()
        for c in data[:m]:
            conn.request("POST", "/write?db=bench_raw", body=lp.candle(EX, "SEED", c).encode())
            conn.getresponse().read()
        seed_s = (time.perf_counter() - began) * n / m
        conn.close()

        db = sqlite3.connect(self.workdir / "writes.sqlite")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE candles (ts INTEGER PRIMARY KEY, open REAL, high REAL, "
                   "low REAL, close REAL, volume REAL)")
        began = time.perf_counter()
        db.executemany("INSERT INTO candles VALUES (?,?,?,?,?,?)",
                       [(c.timestamp, c.open, c.high, c.low, c.close, c.volume) for c in data])
        db.commit()
        sqlite_s = time.perf_counter() - began
        db.close()
        self.results.tables["writes"] = [
            {"writer": name, "points": n, "seconds": s, "points_per_s": n / s}
            for name, s in (("seed: one POST per point (extrapolated)", seed_s),
                            ("sqlite executemany", sqlite_s),
                            ("aioinflux 5,000-line batches, prebuilt", raw_s),
                            ("hub write_candle x N + flush", hub_s),
                            ("hub write_candles_batch + flush", hub_batch_s),
                            ("hub write_candles_batch + flush, durable", durable_s),
                            ("hub write_candle x N + flush, streams off", plain_single_s),
                            ("hub write_candles_batch + flush, streams off", plain_batch_s))]
        # the floor influxd itself sets with streams on: the same candles with the rollup
        # points the hub stores beside them, prebuilt (points: candles and rollups)
        self.results.tables["writes"].insert(3, {
            "writer": "aioinflux 5,000-line batches, prebuilt, with the candles' rollups",
            "points": rollup_points[0], "seconds": rollup_s,
            "points_per_s": rollup_points[0] / rollup_s})

    async def batch_sizes(self, hub: Hub) -> None:
        """The writer's batch size, tuned by measurement: one hub per size, same candles."""
        n = self.sizes.write_points
        data = candles(n, 11)
        rows = []
        for size in (1000, 5000, 10_000, 20_000):
            cfg = self.config.model_copy(update={
                "influxdb": self.config.influxdb.model_copy(update={
                    "bucket": f"bench_batch_{size}",
                    "batch": self.config.influxdb.batch.model_copy(update={"size": size})}),
                "sqlite": self.config.sqlite.model_copy(update={
                    "path": str(self.workdir / f"batch{size}.sqlite")}),
            })
            async with Hub(cfg, handle_sigterm=False) as sized:
                began = time.perf_counter()
                await sized.write_candles_batch(EX, "SIZE", data)
                await sized.flush()
                seconds = time.perf_counter() - began
            rows.append({"batch.size": size, "points": n, "seconds": seconds,
                         "points_per_s": n / seconds})
        self.results.tables["batch_sizes"] = rows

    async def candle_queries(self, hub: Hub) -> None:
        product = PRODUCTS[0]
        data = candles(self.sizes.candles_per_product, 0)
        for n, p in enumerate(PRODUCTS):
            await hub.write_candles_batch(EX, p, data if n == 0 else candles(len(data), n))
        await hub.flush()
        # the raw client: aioinflux's own query (JSON, stdlib json), same query text
        influx = aioinflux.InfluxDBClient(host="127.0.0.1", port=self.servers.influx.port,
                                          db="bench")
        db = sqlite3.connect(self.sqlite_path)
        reps = max(5, self.sizes.repeats // 4)
        rows = []

        async def newest(name: str, n: int, expected: list[Candle], label: str) -> None:
            """The newest ``n`` candles of product ``name``: SQLite, raw InfluxQL (the
            query the hub sends when it asks InfluxDB at all) and the hub."""
            q = ql.select_candles(EX, name, None, None, n)
            got = await hub.query_candles(EX, name, limit=n)
            assert got == expected[-n:], f"hub answer for {label} differs"
            rows.append({"query": label,
                         "sqlite": statistics.median(timed(lambda: db.execute(
                             "SELECT ts, open, high, low, close, volume FROM candles WHERE "
                             "product = ? ORDER BY ts DESC LIMIT ?", (name, n)).fetchall(),
                             reps)),
                         "influxql (aioinflux)": statistics.median(
                             await atimed(lambda: influx.query(q), reps)),
                         "hub": statistics.median(await atimed(
                             lambda: hub.query_candles(EX, name, limit=n), reps))})

        for n in self.sizes.query_sizes:
            await newest(product, n, data, f"last {n:,} candles")
        # a product whose hot window is gone (expired, or history written with
        # window=False): the hub goes by the newest stored candle's time
        other = PRODUCTS[1]
        async with aioredis.Redis(port=self.rport) as raw_redis:
            await raw_redis.delete(keys.candles(EX, other))
        other_data = candles(len(data), 1)
        for n in (100, 10_000):
            await newest(other, n, other_data, f"last {n:,} candles, no hot window")
        end = T0 + 60 * len(data)
        for n in (100, 1000):  # the newest 5m buckets: within, then beyond, the hot window
            q = ql.select_candles_resampled(EX, product, T0, end, n, "5m")
            got = await hub.query_candles(EX, product, limit=n, interval="5m")
            assert len(got) == min(n, -(-len(data) // 5))
            assert got[-1].timestamp == (end - 60) - (end - 60) % 300
            rows.append({"query": f"newest {n:,} 5m OHLCV buckets",
                         "sqlite": statistics.median(timed(lambda n=n: db.execute(
                             "SELECT ts / 300, MAX(high), MIN(low), SUM(volume) FROM candles "
                             "WHERE product = ? GROUP BY ts / 300 ORDER BY ts / 300 DESC "
                             "LIMIT ?", (product, n)).fetchall(), reps)),
                         "influxql (aioinflux)": statistics.median(
                             await atimed(lambda q=q: influx.query(q), reps)),
                         "hub": statistics.median(await atimed(
                             lambda n=n: hub.query_candles(EX, product, limit=n, interval="5m"),
                             reps))})
        agg = ql.select_candles_resampled(EX, product, T0, end, 100_000, "1h")
        rows.append({"query": "1h OHLCV aggregate, all candles",
                     "sqlite": statistics.median(timed(lambda: db.execute(
                         "SELECT ts / 3600, MAX(high), MIN(low), SUM(volume) FROM candles "
                         "WHERE product = ? GROUP BY ts / 3600", (product,)).fetchall(), reps)),
                     "influxql (aioinflux)": statistics.median(
                         await atimed(lambda: influx.query(agg), reps)),
                     "hub": statistics.median(await atimed(
                         lambda: hub.query_candles(EX, product, limit=100_000, interval="1h"),
                         reps))})
        self.results.tables["candle_queries"] = rows
        await influx.close()
        db.close()

    async def memory(self, hub: Hub) -> None:
        sync = redis.Redis(port=self.rport)
        hub_bytes = seed_bytes = 0
        for n, product in enumerate(PRODUCTS):
            window = candles(1000, n)
            await hub.cache_candles(EX, product, window, max_candles=1000)
            await hub.get_candles(EX, product, 1)  # queued behind the write
            hub_bytes += int(sync.memory_usage(f"candles:{EX}:{product}", samples=0) or 0)
            key = f"seedlist:{product}"
            sync.delete(key)
            sync.rpush(key, *[orjson.dumps(c.as_dict()) for c in window])
            seed_bytes += int(sync.memory_usage(key, samples=0) or 0)
            sync.delete(key)
        sync.close()
        influx_dir = self.servers.influx.directory
        influx_bytes = sum(f.stat().st_size for d in ("data/bench", "wal/bench")
                           for f in (influx_dir / d).rglob("*") if f.is_file())
        self.results.tables["memory"] = [
            {"store": "Redis, hub hot window (sorted set, 1,000 candles x 5)",
             "bytes": hub_bytes},
            {"store": "Redis, the seed's list of JSON dicts (1,000 candles x 5)",
             "bytes": seed_bytes},
            {"store": f"InfluxDB on disk ({self.sizes.candles_per_product:,} candles x 5)",
             "bytes": influx_bytes},
            {"store": f"SQLite file ({self.sizes.candles_per_product:,} candles x 5)",
             "bytes": (await asyncio.to_thread(self.sqlite_path.stat)).st_size},
        ]

    async def invalidation(self, hub: Hub) -> None:
        """A write by another process reaches this hub's near cache."""
        assert hub.intake.cache is not None
        near = hub.intake.cache.near
        if near is None:
            self.results.tables["invalidation"] = [{"note": "near cache disabled"}]
            return
        remote = aioredis.Redis(port=self.rport)
        lags = []
        key = f"indicator:{EX}:{PRODUCTS[1]}:RSI:14"
        for i in range(self.sizes.repeats):
            await hub.cache_indicator(EX, PRODUCTS[1], "RSI", 14, float(i), ttl=3600)
            await asyncio.sleep(0.02)  # Redis echoes our own write; let it pass first
            await hub.get_indicator(EX, PRODUCTS[1], "RSI", 14)
            assert key in near
            began = time.perf_counter()
            await remote.set(key, orjson.dumps(-1.0), ex=3600)
            # the measurement itself: yield until the message is applied
            while key in near:  # noqa: ASYNC110
                await asyncio.sleep(0)
            lags.append(time.perf_counter() - began)
        await remote.aclose()
        self.results.samples["remote write -> near cache invalidated"] = lags
        self.results.tables["invalidation"] = [
            {"p50": statistics.median(lags), "p99": pct(lags, 0.99), "n": len(lags)}]

    async def run(self) -> Results:
        self.build_sqlite()
        async with Hub(self.config, handle_sigterm=False) as hub:
            for step in (self.indicator_lookups, self.single_reads, self.concurrency,
                         self.writes, self.batch_sizes, self.candle_queries, self.memory,
                         self.invalidation):
                gc.collect()
                print(f"  {step.__name__} ...", flush=True)
                await step(hub)
        return self.results
