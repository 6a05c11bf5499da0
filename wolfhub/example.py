"""The short end-to-end run behind ``wolfhub example``: a hub, a few minutes of candles,
an indicator read back, a trade, a position, and the stats."""

from __future__ import annotations

import random
import time
from typing import Any

from hub import Hub
from hubdomain.config import HubConfig
from hubdomain.records import Candle

EXCHANGE = "papertrader"
PRODUCTS = ("BANKNIFTY-FUT", "NIFTY-FUT")


def _candles(n: int, start: int, price: float, rnd: random.Random) -> list[Candle]:
    out = []
    for i in range(n):
        o = price
        c = o + rnd.uniform(-15, 15)
        out.append(Candle(start + 60 * i, round(o, 2), round(max(o, c) + rnd.uniform(0, 5), 2),
                          round(min(o, c) - rnd.uniform(0, 5), 2), round(c, 2),
                          float(rnd.randint(100, 3000))))
        price = c
    return out


async def run(config: HubConfig, candles: int = 600) -> dict[str, Any]:
    """Exercise the hub; returns a summary (also printed by the CLI)."""
    rnd = random.Random(42)
    start = (int(time.time()) // 60 - candles) * 60
    summary: dict[str, Any] = {}
    async with Hub(config) as hub:
        t = time.perf_counter()
        for n, product in enumerate(PRODUCTS):
            data = _candles(candles, start, 44500.0 / (n + 1), rnd)
            for c in data:
                await hub.write_candle(EXCHANGE, product, c.timestamp, c.open, c.high, c.low,
                                       c.close, c.volume)
            closes = [c.close for c in data[-20:]]
            await hub.cache_indicator(EXCHANGE, product, "SMA", 20, sum(closes) / len(closes))
        summary["candles_written"] = candles * len(PRODUCTS)
        summary["write_seconds"] = round(time.perf_counter() - t, 3)
        product = PRODUCTS[0]
        summary["sma20"] = await hub.get_indicator(EXCHANGE, product, "SMA", 20)
        last = await hub.query_candles(EXCHANGE, product, limit=100)
        summary["last_100_from"] = last[0].timestamp
        await hub.write_trade(EXCHANGE, product, time.time(), "buy", last[-1].close, 1.0,
                              "example-1", fee=0.5)
        await hub.cache_position(EXCHANGE, product, {"size": 1.0, "entry": last[-1].close})
        await hub.flush()
        hourly = await hub.query_candles(EXCHANGE, product, interval="1h", limit=24)
        summary["hourly_candles"] = len(hourly)
        summary["trades"] = len(await hub.query_trades(EXCHANGE, product))
        summary["position"] = await hub.get_position(EXCHANGE, product)
        stats = await hub.get_stats()
        summary["redis"] = {k: stats[k] for k in ("keyspace_hits", "keyspace_misses",
                                                  "used_memory_human")}
        summary["hub"] = stats["hub"]
        summary["points_written"] = stats["actors"]["writer"]["points_written"]
    return summary
