"""``wolfhub demo``: a simulated papertrader feed and async strategies beside the hub.

One event loop runs everything: a random-walk tick feed per product, aggregated
into 1-minute candles (replayed ``speed`` times faster than real time), an EMA
crossover and an RSI strategy per product, and the hub. Candles go in, indicators
are cached and read back, paper trades are written, positions kept. A 5-minute
strategy per product follows ``hub.candles(..., "5m", warmup=12)``: the hub's rollups,
warm-up first, then live. The first product's feed drops one minute on purpose; a gap
watcher finds it with ``hub.gaps`` and repairs it from the feed's history (the 5m
candle it belongs to is then republished as a revision). A live view shows
throughput, latency percentiles, hit rate, mailbox depths, the spool, the rollups and
the gaps.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hub import Hub
from hubdomain.config import HubConfig
from hubdomain.records import Candle

EXCHANGE = "papertrader"
PRODUCTS = ["BANKNIFTY-FUT", "NIFTY-FUT", "FINNIFTY-FUT", "MIDCPNIFTY-FUT", "SENSEX-FUT",
            "RELIANCE", "TCS", "INFY"]
START_PRICE = {"BANKNIFTY-FUT": 44500.0, "NIFTY-FUT": 19800.0, "FINNIFTY-FUT": 19900.0,
               "MIDCPNIFTY-FUT": 9200.0, "SENSEX-FUT": 66000.0, "RELIANCE": 2450.0,
               "TCS": 3500.0, "INFY": 1450.0}


@dataclass
class Metrics:
    started: float = field(default_factory=time.perf_counter)
    candles: int = 0
    ticks: int = 0
    trades: int = 0
    reads: int = 0
    rollups: int = 0  # 5m candles the 5-minute strategies received
    revisions: int = 0
    gaps_found: int = 0
    minutes_repaired: int = 0
    latencies: dict[str, deque[float]] = field(default_factory=dict)

    def timed(self, name: str, seconds: float) -> None:
        self.latencies.setdefault(name, deque(maxlen=50_000)).append(seconds)

    def percentiles(self, name: str) -> tuple[float, float]:
        values = sorted(self.latencies.get(name, ()))
        if not values:
            return math.nan, math.nan
        return (values[len(values) // 2],
                values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)])


class Strategy:
    """EMA(9/21) crossover with an RSI(14) filter, on the hub's indicator cache."""

    def __init__(self, hub: Hub, product: str, metrics: Metrics) -> None:
        self.hub, self.product, self.metrics = hub, product, metrics
        self.fast: float | None = None
        self.slow: float | None = None
        self.gains: deque[float] = deque(maxlen=14)
        self.losses: deque[float] = deque(maxlen=14)
        self.last_close: float | None = None
        self.position = 0.0

    async def _call(self, name: str, coro: Any) -> Any:
        began = time.perf_counter()
        result = await coro
        self.metrics.timed(name, time.perf_counter() - began)
        return result

    async def on_candle(self, c: Candle) -> None:
        hub, p = self.hub, self.product
        self.fast = c.close if self.fast is None else self.fast + (c.close - self.fast) * 0.2
        self.slow = c.close if self.slow is None else self.slow + (c.close - self.slow) * (
            2 / 22)
        if self.last_close is not None:
            change = c.close - self.last_close
            self.gains.append(max(change, 0.0))
            self.losses.append(max(-change, 0.0))
        self.last_close = c.close
        loss = sum(self.losses)
        rsi = 100.0 if loss == 0 else 100 - 100 / (1 + sum(self.gains) / loss)
        await self._call("cache_indicator", hub.cache_indicator(EXCHANGE, p, "EMA", 9,
                                                                self.fast))
        await self._call("cache_indicator", hub.cache_indicator(EXCHANGE, p, "EMA", 21,
                                                                self.slow))
        await self._call("write_indicator", hub.write_indicator(EXCHANGE, p, "RSI",
                                                                c.timestamp, rsi, period=14))
        # strategies read their indicators back many times per candle
        for _ in range(5):
            fast = await self._call("get_indicator", hub.get_indicator(EXCHANGE, p, "EMA", 9))
            slow = await self._call("get_indicator", hub.get_indicator(EXCHANGE, p, "EMA", 21))
            self.metrics.reads += 2
        want = 1.0 if fast > slow and rsi < 70 else -1.0 if fast < slow and rsi > 30 else 0.0
        if want and want != self.position:
            side = "buy" if want > self.position else "sell"
            size = abs(want - self.position)
            await self._call("write_trade", hub.write_trade(
                EXCHANGE, p, c.timestamp + 59.5, side, c.close, size,
                f"{p}-{c.timestamp}", fee=round(c.close * size * 0.0003, 2)))
            self.position = want
            await self._call("cache_position", hub.cache_position(
                EXCHANGE, p, {"size": want, "entry": c.close, "time": c.timestamp}))
            self.metrics.trades += 1


async def feed(hub: Hub, product: str, strategy: Strategy, metrics: Metrics, start: int,
               speed: float, stop: asyncio.Event, rnd: random.Random,
               dropped: list[Candle] | None = None) -> None:
    """Ticks every simulated second, a candle every simulated minute. With ``dropped``,
    the 8th minute is not written (a feed that missed it) but kept there, as the
    exchange's history would have it."""
    price = START_PRICE.get(product, 1000.0)
    t = start
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not stop.is_set():
        o = h = low = c = price
        vol = 0.0
        for _ in range(60):
            price = max(0.01, price * (1 + rnd.gauss(0, 0.0004)))
            h, low, c = max(h, price), min(low, price), price
            vol += rnd.randint(1, 50)
            metrics.ticks += 1
        candle = Candle(t, round(o, 2), round(h, 2), round(low, 2), round(c, 2), vol)
        if dropped is not None and t == start + 7 * 60:
            dropped.append(candle)
            t += 60
            continue
        began_write = time.perf_counter()
        await hub.write_candle(EXCHANGE, product, candle.timestamp, candle.open, candle.high,
                               candle.low, candle.close, candle.volume)
        metrics.timed("write_candle", time.perf_counter() - began_write)
        metrics.candles += 1
        await strategy.on_candle(candle)
        t += 60
        # keep pace: a simulated minute takes 60 / speed real seconds
        delay = began + (t - start) / speed * 1.0 - loop.time()
        await asyncio.sleep(max(0.0, delay))


async def five_minutes(hub: Hub, product: str, metrics: Metrics) -> None:
    """A 5-minute strategy: the hub's 5m rollups, an hour of warm-up then live."""
    closes: deque[float] = deque(maxlen=12)
    async for candle in hub.candles(EXCHANGE, product, "5m", warmup=12):
        if candle.revision:
            metrics.revisions += 1
            continue
        closes.append(candle.close)
        metrics.rollups += 1
        if len(closes) == closes.maxlen:
            await hub.cache_indicator(EXCHANGE, product, "SMA5m", 12, sum(closes) / len(closes))


async def watch_gaps(hub: Hub, products: list[str], metrics: Metrics, dropped: list[Candle],
                     start: int, stop: asyncio.Event) -> None:
    """Looks for holes in this run's candles every second and fills them from the feed's
    history."""
    from wolfhub.repair import repair

    async def history(exchange: str, product: str, start: int, end: int) -> list[Candle]:
        return [c for c in dropped if start <= c.timestamp <= end]

    seen: set[tuple[str, int, int]] = set()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        for product in products:
            report = await repair(hub, EXCHANGE, product, start=start, fetcher=history)
            seen.update((product, *hole) for hole in report.holes_before)
            metrics.gaps_found = len(seen)
            metrics.minutes_repaired += report.written


def view(metrics: Metrics, stats: dict[str, Any] | None, done: bool) -> Table:
    elapsed = time.perf_counter() - metrics.started
    table = Table(title="wolfhub demo" + (" - summary" if done else ""), expand=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("elapsed", f"{elapsed:.1f} s")
    table.add_row("candles processed", f"{metrics.candles:,} ({metrics.candles / elapsed:,.0f}/s)")
    table.add_row("ticks simulated", f"{metrics.ticks:,}")
    table.add_row("indicator reads", f"{metrics.reads:,}")
    table.add_row("paper trades", f"{metrics.trades:,}")
    table.add_row("5m rollups received / revised", f"{metrics.rollups:,} / {metrics.revisions:,}")
    table.add_row("gaps found / minutes repaired",
                  f"{metrics.gaps_found:,} / {metrics.minutes_repaired:,}")
    for name in ("get_indicator", "write_candle", "cache_indicator", "write_trade",
                 "cache_position"):
        p50, p99 = metrics.percentiles(name)
        if not math.isnan(p50):
            table.add_row(f"{name} p50 / p99", f"{p50 * 1e6:,.1f} / {p99 * 1e6:,.1f} µs")
    if stats is not None:
        near = stats["actors"].get("cache", {}).get("near_cache") or {}
        hits, misses = near.get("hits", 0), near.get("misses", 0)
        if hits + misses:
            table.add_row("near-cache hit rate", f"{hits / (hits + misses) * 100:.1f} %")
        rh, rm = stats.get("keyspace_hits"), stats.get("keyspace_misses")
        if rh is not None and rm is not None and rh + rm:
            table.add_row("Redis hit rate", f"{rh / (rh + rm) * 100:.1f} %")
        for actor in ("cache", "writer", "state", "query"):
            if actor in stats["actors"]:
                table.add_row(f"{actor} mailbox depth", str(stats["actors"][actor]["depth"]))
        writer = stats["actors"].get("writer", {})
        table.add_row("points written", f"{writer.get('points_written', 0):,}")
        table.add_row("writer pending / spooled",
                      f"{writer.get('pending', 0):,} / {writer.get('spooled', 0):,}")
    return table


async def run(config: HubConfig, duration: float, products: int, speed: float,
              console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    metrics = Metrics()
    rnd = random.Random(7)
    chosen = PRODUCTS[:max(1, min(products, len(PRODUCTS)))]
    start = (int(time.time()) // 60) * 60 - int(duration * speed) // 60 * 60
    stop = asyncio.Event()
    async with Hub(config) as hub:
        strategies = {p: Strategy(hub, p, metrics) for p in chosen}
        dropped: list[Candle] = []
        tasks = [asyncio.create_task(feed(hub, p, strategies[p], metrics, start, speed, stop,
                                          rnd, dropped if p == chosen[0] else None))
                 for p in chosen]
        followers = [asyncio.create_task(five_minutes(hub, p, metrics)) for p in chosen]
        tasks.append(asyncio.create_task(watch_gaps(hub, chosen, metrics, dropped, start, stop)))
        stats: dict[str, Any] | None = None
        with Live(view(metrics, None, False), console=console, refresh_per_second=4,
                  transient=True) as live:
            deadline = asyncio.get_running_loop().time() + duration
            while asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.25)
                stats = await hub.get_stats()
                live.update(view(metrics, stats, False))
        stop.set()
        await asyncio.gather(*tasks)
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        await hub.flush()
        stats = await hub.get_stats()
        console.print(view(metrics, stats, True))
        stored = await hub.query_trades(EXCHANGE, chosen[0], limit=100_000)
        gaps_left = await hub.gaps(EXCHANGE, chosen[0], start=start)
    summary: dict[str, Any] = {
        "candles_processed": metrics.candles,
        "trades": metrics.trades,
        "trades_stored_for_" + chosen[0]: len(stored),
        "indicator_reads": metrics.reads,
        "rollups_5m": metrics.rollups,
        "rollup_revisions": metrics.revisions,
        "gaps_found": metrics.gaps_found,
        "minutes_repaired": metrics.minutes_repaired,
        "gaps_left": len(gaps_left),
    }
    near = stats["actors"].get("cache", {}).get("near_cache") or {}
    hits, misses = near.get("hits", 0), near.get("misses", 0)
    summary["near_cache_hit_rate"] = round(hits / (hits + misses), 4) if hits + misses else None
    for name in metrics.latencies:
        p50, p99 = metrics.percentiles(name)
        summary[f"{name}_p50_us"] = round(p50 * 1e6, 1)
        summary[f"{name}_p99_us"] = round(p99 * 1e6, 1)
    return summary
