"""Live candles under random load against real servers: one hub writes a product's
minutes in random bursts (single calls and batches, some larger than the hot window),
subscribers of 1m and 5m candles start at random moments in the writing hub and in
another one, with random warm-ups, some reading slowly; the windows, buffers and stream
are small, so catch-ups from storage happen all the time. Every subscriber must get
consecutive candles, each once, up to the last one written.

Each case found a defect once: a subscriber that took nothing yet caught up with the
window only; a batch larger than the window reached subscribers as its newest part; a
burst handed to this process's subscribers early lost its minutes to the bound on
that list; a warm-up deeper than the window read InfluxDB before another process had
posted the minutes."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from hub import Candle, Hub, HubConfig, LiveCandle
from tests.conftest import subscribed

pytestmark = pytest.mark.anyio
EX = "random"
T0 = 1_700_006_400  # a multiple of 1d
SPANS = {"1m": 60, "5m": 300}


def minute(i: int) -> Candle:
    return Candle(T0 + 60 * i, 1.0 + i, 2.0 + i, 0.5 + i, 1.5 + i, 1.0)


async def consume(hub: Hub, product: str, timeframe: str, warmup: int, last: int,
                  slow: random.Random | None) -> list[LiveCandle]:
    """Candles of ``timeframe`` until the one starting at ``last``."""
    got: list[LiveCandle] = []
    stream = hub.candles(EX, product, timeframe, warmup=warmup)
    try:
        async for candle in stream:
            got.append(candle)
            if slow is not None and slow.random() < 0.02:
                await asyncio.sleep(slow.choice((0, 0.01, 0.05)))
            if candle.timestamp >= last:
                return got
    finally:
        await stream.aclose()
    return got


@pytest.mark.parametrize("seed", range(10))
async def test_random_writes_and_subscriptions_leave_no_hole_and_no_duplicate(
        config_data: dict[str, Any], seed: int) -> None:
    rnd = random.Random(seed)
    config_data["performance"] = {"redis_hot_data_window": 64}
    config_data["streams"] = {"buffer": 50, "length": 200}
    reader = HubConfig.from_mapping(config_data, environ={})
    writer = HubConfig.from_mapping(  # posting every second: another process's catch-ups
        {**config_data,  # and warm-ups wait for it
         "influxdb": {**config_data["influxdb"],
                      "batch": {"size": 5000, "flush_interval": rnd.choice((0.05, 1.0))}}},
        environ={})
    product = f"R{seed}"
    total = rnd.choice((300, 800, 2000))
    ends = {tf: T0 + ((total + 5) * 60 // span) * span - span for tf, span in SPANS.items()}
    async with Hub(writer) as hub, Hub(reader) as other:
        hubs = (hub, other)
        started: list[tuple[int, str, int, asyncio.Future[list[LiveCandle]]]] = []
        i = 0
        while i < total:
            if rnd.random() < 0.3 and len(started) < 12:
                where, timeframe = rnd.randrange(2), rnd.choice(("1m", "1m", "5m"))
                warmup = rnd.choice((0, 0, 1, 10, 100))
                slow = random.Random(rnd.random()) if rnd.random() < 0.5 else None
                started.append((where, timeframe, warmup, asyncio.ensure_future(consume(
                    hubs[where], product, timeframe, warmup, ends[timeframe], slow))))
                await asyncio.sleep(rnd.choice((0, 0.001, 0.02)))
            n = min(rnd.choice((1, 1, 1, 5, 50, 300)), total - i)
            candles = [minute(j) for j in range(i, i + n)]
            if n == 1 or rnd.random() < 0.5:
                for c in candles:
                    await hub.write_candle(EX, product, c.timestamp, c.open, c.high, c.low,
                                           c.close, c.volume)
            else:
                await hub.write_candles_batch(EX, product, candles)
            i += n
            if rnd.random() < 0.1:
                await asyncio.sleep(rnd.choice((0, 0.001, 0.01)))
        for where, count in ((0, sum(s[0] == 0 for s in started)),
                             (1, sum(s[0] == 1 for s in started))):
            await subscribed(hubs[where], count)  # (each follows before the last minutes)
        for j in range(total, total + 5):
            c = minute(j)
            await hub.write_candle(EX, product, c.timestamp, c.open, c.high, c.low, c.close,
                                   c.volume)
        results = await asyncio.wait_for(asyncio.gather(*(s[3] for s in started)), 60)
    for (where, timeframe, warmup, _), got in zip(started, results, strict=True):
        times = [c.timestamp for c in got if not c.revision]
        span = SPANS[timeframe]
        assert times == list(range(times[0], ends[timeframe] + 1, span)), \
            (where, timeframe, warmup)
        if timeframe == "1m":  # the values written, too
            assert all(c.as_candle() == minute((c.timestamp - T0) // 60) for c in got), \
                (where, warmup)
