"""Rollups under random writes against real servers: one hub writes a product's minutes
with holes, repairs some holes later, corrects minutes already written (some still in
the hot window, some older than it), in single calls and in batches (some unsorted);
subscribers of every timeframe follow in the writing hub and in another one. Once
everything is flushed, every closed bucket must be the same wherever a user looks:
stored in ``candle_rollup``, answered by ``query_candles(interval=...)``, held by the hot
window, and the last value each subscriber received for it; all equal to influxd's own
resampling of the stored minutes (not to anything computed here)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from typing import Any

import pytest

from hub import Candle, Hub, HubConfig, LiveCandle
from tests.conftest import eventually, influx_candles, influx_resampled, subscribed

pytestmark = pytest.mark.anyio
EX = "rollrand"
T0 = 1_700_006_400  # a multiple of 1d
TIMEFRAMES = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600}
WINDOW = 64


def value(rnd: random.Random, ts: int) -> Candle:
    low = rnd.uniform(1, 100)
    high = low + rnd.uniform(0, 10)
    return Candle(ts, rnd.uniform(low, high), high, low, rnd.uniform(low, high),
                  rnd.uniform(0, 5))


async def follow(hub: Hub, product: str, timeframe: str, got: list[LiveCandle],
                 slow: random.Random | None) -> None:
    async for candle in hub.candles(EX, product, timeframe):
        got.append(candle)
        if slow is not None and slow.random() < 0.05:
            await asyncio.sleep(0.01)


def last_values(got: list[LiveCandle]) -> dict[int, Candle]:
    out: dict[int, Candle] = {}
    for candle in got:
        out[candle.timestamp] = candle.as_candle()
    return out


@pytest.mark.parametrize("seed", range(int(os.environ.get("ROLLUP_SEEDS", "10"))))
async def test_random_corrections_and_repairs_leave_every_view_of_a_bucket_equal(
        config_data: dict[str, Any], seed: int) -> None:
    """(Buffers that hold the whole run: a subscriber that falls behind and catches up
    from storage is checked by tests/test_streams.py and tests/test_streams_random.py.)"""
    rnd = random.Random(seed)
    config_data["performance"] = {"redis_hot_data_window": WINDOW}
    config_data["streams"] = {"timeframes": list(TIMEFRAMES), "buffer": 10_000,
                              "length": 10_000}
    config = HubConfig.from_mapping(config_data, environ={})
    product = f"RR{seed}"
    total = rnd.choice((300, 700, 1500))
    written: dict[int, Candle] = {}
    holes: list[int] = []
    async with Hub(config) as hub, Hub(config) as other:
        hubs = (hub, other)
        followed: list[tuple[int, str, list[LiveCandle]]] = []
        tasks = []
        for where in (0, 1):
            for timeframe in TIMEFRAMES:
                got: list[LiveCandle] = []
                slow = random.Random(rnd.random()) if rnd.random() < 0.3 else None
                followed.append((where, timeframe, got))
                tasks.append(asyncio.ensure_future(
                    follow(hubs[where], product, timeframe, got, slow)))
        await subscribed(hub, len(TIMEFRAMES))
        await subscribed(other, len(TIMEFRAMES))

        async def write(candles: list[Candle]) -> None:
            for c in candles:
                written[c.timestamp] = c
            if len(candles) == 1 or rnd.random() < 0.5:
                for c in candles:
                    await hub.write_candle(EX, product, c.timestamp, c.open, c.high, c.low,
                                           c.close, c.volume)
            else:
                if rnd.random() < 0.3:
                    candles = rnd.sample(candles, len(candles))
                await hub.write_candles_batch(EX, product, candles)

        i = 0
        while i < total:
            action = rnd.random()
            if action < 0.6:  # the feed goes on, dropping a minute now and then
                n = min(rnd.choice((1, 1, 3, 20, 100)), total - i)
                new = []
                for j in range(i, i + n):
                    ts = T0 + 60 * j
                    if rnd.random() < 0.08:
                        holes.append(ts)
                    else:
                        new.append(value(rnd, ts))
                i += n
                if new:
                    await write(new)
            elif action < 0.75 and holes:  # some holes repaired
                picked = rnd.sample(holes, min(len(holes), rnd.choice((1, 2, 10))))
                for ts in picked:
                    holes.remove(ts)
                await write([value(rnd, ts) for ts in sorted(picked)])
            elif action < 0.95 and written:  # minutes corrected, recent or old
                times = sorted(written)
                recent = rnd.random() < 0.5
                pool = times[-WINDOW // 2:] if recent else times[:max(1, len(times) - WINDOW)]
                picked = rnd.sample(pool, min(len(pool), rnd.choice((1, 1, 5))))
                await write([value(rnd, ts) for ts in sorted(picked)])
            else:
                await asyncio.sleep(rnd.choice((0, 0.001, 0.02)))
        # a minute of the next hour closes every bucket before it
        end = T0 + (total * 60 // 3600 + 1) * 3600
        await write([value(rnd, end)])
        await hub.flush()

        expected = {}
        for timeframe, span in TIMEFRAMES.items():
            stored_minutes = influx_resampled(hub, EX, product, span, 100_000, T0, end - 1)
            expected[timeframe] = {c.timestamp: c for c in stored_minutes}
        # the minutes stored are the last ones written
        assert expected["1m"] == {ts: c for ts, c in written.items() if ts < end}

        async def received() -> bool:
            return all({ts: c for ts, c in last_values(got).items() if ts < end}
                       == expected[timeframe] for _, timeframe, got in followed)
        with contextlib.suppress(AssertionError):  # (what is missing is told below)
            await eventually(received, within=20)
        for where, timeframe, got in followed:
            seen = {ts: c for ts, c in last_values(got).items() if ts < end}
            wrong = sorted(ts for ts in expected[timeframe].keys() | seen.keys()
                           if seen.get(ts) != expected[timeframe].get(ts))
            assert not wrong, (seed, where, timeframe, len(wrong), [
                (ts, [(c.revision, c.as_candle()) for c in got if c.timestamp == ts],
                 expected[timeframe].get(ts)) for ts in wrong[:3]])
            firsts = [c.timestamp for c in got if not c.revision]
            assert firsts == sorted(set(firsts)), (seed, where, timeframe)

        for timeframe in TIMEFRAMES:
            if timeframe != "1m":
                stored = influx_candles(hub, (
                    "SELECT open, high, low, close, volume FROM candle_rollup WHERE "
                    f"exchange='{EX}' AND product='{product}' AND timeframe='{timeframe}' "
                    f"AND time < {end}s ORDER BY time DESC"))
                found = {c.timestamp: c for c in stored}
                wrong = sorted(ts for ts in expected[timeframe].keys() | found.keys()
                               if found.get(ts) != expected[timeframe].get(ts))
                assert not wrong, (seed, timeframe, "stored", [
                    (ts, found.get(ts), expected[timeframe].get(ts)) for ts in wrong[:3]])
            for where in (0, 1):
                asked = await hubs[where].query_candles(EX, product, T0, end - 1, 100_000,
                                                        interval=timeframe)
                assert {c.timestamp: c for c in asked} == expected[timeframe], \
                    (seed, where, timeframe)
                # the hot window: a warm-up of its size, up to the newest closed bucket
                warm: list[Candle] = []
                async with asyncio.timeout(20):
                    async for candle in hubs[where].candles(EX, product, timeframe,
                                                            warmup=WINDOW):
                        warm.append(candle.as_candle())
                        if len(warm) == WINDOW or \
                                candle.timestamp >= max(expected[timeframe]):
                            break
                assert len(warm) >= min(WINDOW - 1, len(expected[timeframe]))
                assert {c.timestamp: c for c in warm} == {
                    ts: c for ts, c in expected[timeframe].items()
                    if ts >= warm[0].timestamp}, (seed, where, timeframe, "window")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = [(await h.get_stats())["streams"] for h in hubs]
        assert [s["overflows"] for s in stats] == [0, 0], (seed, stats)  # (as meant)
