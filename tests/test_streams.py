"""Live candles against real servers: rollups equal to InfluxDB's own resampling,
warm-up handed over to live data with no duplicate and no hole (in this process and
from another one), revisions, the timer that closes a stalled feed's bucket but never
a replay's, slow subscribers, and releasing a subscription."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hub import Candle, Hub, HubConfig, LiveCandle, ValidationError
from hubdomain import timeframes as tfs
from tests.conftest import (
    eventually,
    influx_candles,
    influx_resampled,
    redis_command,
    subscribed,
)
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR = "binance", "BTC/USDT"
T0 = 1_700_006_400  # a multiple of 1d


def minute(i: int, rng: random.Random | None = None, t0: int = T0) -> Candle:
    if rng is None:
        return Candle(t0 + 60 * i, 100.0 + i, 102.0 + i, 99.0 + i, 101.0 + i, 1.0 + i % 3)
    low = rng.uniform(10, 1000)
    high = low + rng.uniform(0, 50)
    return Candle(t0 + 60 * i, rng.uniform(low, high), high, low, rng.uniform(low, high),
                  rng.uniform(0, 1000) / 7)


async def write(hub: Hub, candles: list[Candle], product: str = PR) -> None:
    for c in candles:
        await hub.write_candle(EX, product, c.timestamp, c.open, c.high, c.low, c.close,
                               c.volume)


async def collect(stream: Any, count: int, within: float = 10.0) -> list[LiveCandle]:
    out: list[LiveCandle] = []

    async def run() -> None:
        async for candle in stream:
            out.append(candle)
            if len(out) >= count:
                return

    await asyncio.wait_for(run(), within)
    return out


async def test_rollups_equal_influxdbs_resampling_to_the_bit(hub: Hub) -> None:
    """Three hours and a bit of random minutes (float volumes whose sum depends on the
    order of addition): every 5m, 15m and 1h candle published equals what InfluxDB
    computes over the same minutes (asked directly), and so does query_candles(interval)."""
    rng = random.Random(7)
    candles = [minute(i, rng) for i in range(3 * 60 + 7)]
    await write(hub, candles)
    assert hub.streams is not None
    await hub.streams.settle()
    await hub.flush()
    for timeframe, span in (("5m", 300), ("15m", 900), ("1h", 3600)):
        closed = (len(candles) * 60) // span  # buckets whose last minute was written
        published = await collect(hub.candles(EX, PR, timeframe, warmup=closed), closed)
        resampled = influx_resampled(hub, EX, PR, span, 10_000, T0, T0 + closed * span - 1)
        assert [c.as_candle() for c in published] == resampled, timeframe
        # records like the ones a user builds: equal, hashable alike, read-only
        built = [LiveCandle(c.timestamp, c.open, c.high, c.low, c.close, c.volume, timeframe)
                 for c in resampled]
        assert published == built and list(map(hash, published)) == list(map(hash, built))
        with pytest.raises(AttributeError):
            published[0].revision = True  # type: ignore[misc]
        assert await hub.query_candles(EX, PR, T0, T0 + closed * span - 1, limit=10_000,
                                       interval=timeframe) == resampled
        assert [c.timestamp for c in published] == [T0 + span * k for k in range(closed)]
        # the open bucket (minutes 180..186) is not published: no look-ahead
        assert all(c.timestamp + span <= candles[-1].timestamp + 60 for c in published)


async def test_weekly_and_non_nesting_rollups_equal_influxdbs_resampling(
        config_data: dict[str, Any]) -> None:
    """Timeframes whose buckets do not nest (3m beside 5m; a week from Monday beside
    days) and weeks: nine days of random minutes from a Saturday, and every 3m, 5m, 1d
    and 1w candle published equals what influxd computes over the same minutes, asked
    directly (weeks with the offset that starts them on Mondays, ``time(1w,4d)``, as
    TradingView's weekly candles start); query_candles(interval="1w") answers the same."""
    config_data["streams"] = {"timeframes": ["1m", "3m", "5m", "1d", "1w"]}
    saturday = 1_700_265_600  # 2023-11-18 00:00 UTC
    rng = random.Random(11)
    candles = [minute(i, rng, saturday) for i in range(9 * 1440)]  # to a Monday 00:00
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await write(hub, candles)
        assert hub.streams is not None
        await hub.streams.settle()
        await hub.flush()
        # computed in memory, each from the timeframe its buckets nest in: only the week
        # that began before the first minute is read back from storage
        assert (await hub.get_stats())["streams"]["rollups_recomputed"] == 1
        end = candles[-1].timestamp + 59
        for timeframe, span, offset in (("3m", 180, ""), ("5m", 300, ""),
                                        ("1d", 86_400, ""), ("1w", 604_800, "4d")):
            closed = min(1000, len(candles) * 60 // span + (timeframe == "1w"))
            published = await collect(hub.candles(EX, PR, timeframe, warmup=closed), closed)
            resampled = influx_resampled(hub, EX, PR, span, closed, saturday, end, offset)
            assert [c.as_candle() for c in published] == resampled, timeframe
            assert await hub.query_candles(EX, PR, saturday, end, limit=closed,
                                           interval=timeframe) == resampled, timeframe
        weeks = [c.timestamp for c in published]
        assert weeks == [saturday - 5 * 86_400, saturday + 2 * 86_400]  # two Mondays
        assert [(c.timestamp - 4 * 86_400) % 604_800 for c in resampled] == [0, 0]


async def test_flush_returns_once_recomputed_rollups_are_stored_too(
        config_data: dict[str, Any]) -> None:
    """A bucket closed with minutes missing is recomputed from the stored minutes before
    it is published and stored; flush() returns once those are in InfluxDB as well, so
    what reads candle_rollup right after a flush (a dashboard, a delete) finds every
    closed bucket, each equal to influxd's own resampling."""
    config_data["streams"] = {"timeframes": ["1m", "5m", "1h"]}
    rng = random.Random(9)
    sparse = [minute(i, rng) for i in range(600) if rng.random() < 0.7]
    newest = sparse[-1].timestamp
    for timeframe, span in (("5m", 300), ("1h", 3600)):
        async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
            product = f"FLUSH{timeframe}"
            await hub.write_candles_batch(EX, product, sparse)
            await hub.flush()  # (no settle: flush alone)
            stored = influx_candles(hub, "SELECT open, high, low, close, volume FROM "
                                         f"candle_rollup WHERE product = '{product}' AND "
                                         f"timeframe = '{timeframe}' ORDER BY time DESC")
            # every bucket holding a minute is closed, but the newest's unless its last
            # minute came
            last = newest - (newest - T0) % span
            closed = sorted({c.timestamp - (c.timestamp - T0) % span for c in sparse
                             if c.timestamp < last or newest + 60 == last + span})
            assert [c.timestamp for c in stored] == closed
            assert stored == influx_resampled(hub, EX, product, span, len(closed), T0,
                                              closed[-1] + span - 1)
            assert (await hub.get_stats())["streams"]["rollups_recomputed"] > 0


async def test_sparse_minutes_rollups_are_recomputed_together_and_published_at_close(
        config_data: dict[str, Any]) -> None:
    """An exchange skips minutes without trades, so in history written in batches most
    buckets lack a minute and are recomputed from the stored minutes before they are
    published: they are read together (a few queries, not one a bucket), and a hub
    closed right after such a write publishes them all before it stops. Every rollup
    stored equals influxd's own resampling."""
    config_data["streams"] = {"timeframes": ["1m", "5m", "1h"]}
    rng = random.Random(5)
    sparse = [minute(i, rng) for i in range(6000) if rng.random() < 0.7]
    config = HubConfig.from_mapping(config_data, environ={})
    async with Hub(config) as hub:
        before = await hub.get_stats()
        for i in range(0, len(sparse), 5000):
            await hub.write_candles_batch(EX, PR, sparse[i:i + 5000])
        assert hub.streams is not None
        await hub.streams.settle()
        after = await hub.get_stats()
        recomputed = after["streams"]["rollups_recomputed"]
        queries = after["actors"]["query"]["queries"] - before["actors"]["query"]["queries"]
        assert recomputed > 1000  # most of the 1,200 5m buckets and all 100 1h ones
        assert queries <= 10, queries  # one read spans up to 1,000 buckets
        for i in range(0, len(sparse), 5000):  # another product, and close at once
            await hub.write_candles_batch(EX, "CLOSED", sparse[i:i + 5000])
    last = sparse[-1].timestamp
    for product in (PR, "CLOSED"):
        for timeframe, span in (("5m", 300), ("1h", 3600)):
            stored = influx_candles(hub, (
                "SELECT open, high, low, close, volume FROM candle_rollup WHERE "
                f"exchange='{EX}' AND product='{product}' AND timeframe='{timeframe}' "
                "ORDER BY time DESC"))
            closed = tfs.bucket(last + 60, span) - 1  # the last bucket is still open
            assert stored == influx_resampled(hub, EX, product, span, 10_000, T0, closed), (
                product, timeframe)
            assert len(stored) == len({tfs.bucket(c.timestamp, span) for c in sparse
                                       if c.timestamp <= closed})


async def test_warm_up_hands_over_to_live_without_duplicate_or_hole(hub: Hub) -> None:
    """A writer keeps writing while subscribers come and go: each one sees consecutive
    minutes from its warm-up on, whatever moment it subscribed at."""
    await write(hub, [minute(i) for i in range(200)])
    stop = asyncio.Event()
    written = [200]

    async def writer() -> None:
        while not stop.is_set():
            await write(hub, [minute(written[0])])
            written[0] += 1
            if written[0] % 5 == 0:
                await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    try:
        for run in range(30):
            warmup = 1 + run * 7 % 50
            got = await collect(hub.candles(EX, PR, "1m", warmup=warmup), warmup + 40)
            times = [c.timestamp for c in got]
            assert times == list(range(times[0], times[0] + 60 * len(times), 60)), run
            assert not any(c.revision for c in got)
            five = await collect(hub.candles(EX, PR, "5m", warmup=3), 5)
            starts = [c.timestamp for c in five]
            assert starts == list(range(starts[0], starts[0] + 300 * 5, 300)), run
    finally:
        stop.set()
        await task


async def test_scripts_redis_forgot_are_sent_again_in_full(hub: Hub,
                                                          servers: LocalServers) -> None:
    """A restarted or flushed Redis knows none of the hub's scripts: each call then goes
    again as EVAL of the whole script, and nothing written is lost (window, stream,
    rollups, snapshot)."""
    await write(hub, [minute(i) for i in range(5)])
    follower = hub.candles(EX, PR, "5m", warmup=1)
    first = await anext(follower)
    assert first.timestamp == minute(0).timestamp
    assert redis_command(servers, "SCRIPT", "FLUSH").startswith(b"+OK")
    await write(hub, [minute(i) for i in range(5, 10)])  # closes the second 5m bucket
    second = await asyncio.wait_for(anext(follower), 5)
    await follower.aclose()
    assert second.timestamp == minute(5).timestamp
    assert second.volume == sum(minute(i).volume for i in range(5, 10))
    assert [c.timestamp for c in await hub.get_candles(EX, PR, 10)] == [
        minute(i).timestamp for i in range(10)]
    assert redis_command(servers, "SCRIPT", "FLUSH").startswith(b"+OK")
    warm = await collect(hub.candles(EX, PR, "1m", warmup=3), 3)  # the snapshot script
    assert [c.timestamp for c in warm] == [minute(i).timestamp for i in range(7, 10)]


async def test_candles_written_by_another_process_arrive(config: HubConfig,
                                                         config_data: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """Two hub processes: the other one writes minutes, this one follows 1m and 5m from
    a warm-up taken while it writes."""
    child_config = tmp_path / "child.yml"
    import yaml

    data = {**config_data, "sqlite": {"path": str(tmp_path / "child.sqlite")}}
    child_config.write_text(yaml.safe_dump(data))
    script = textwrap.dedent(f"""
        import asyncio, sys
        from hub import Hub, HubConfig
        async def main():
            async with Hub(HubConfig.load({str(child_config)!r})) as hub:
                for i in range(300):
                    await hub.write_candle({EX!r}, {PR!r}, {T0} + 60 * i, 1.0 + i, 2.0 + i,
                                           0.5 + i, 1.5 + i, 1.0)
                    if i == 100:
                        print("halfway", flush=True)
                        await asyncio.sleep(0.5)
                    elif i % 10 == 0:
                        await asyncio.sleep(0.01)
        asyncio.run(main())
    """)
    async with Hub(config) as hub:
        with subprocess.Popen(  # noqa: ASYNC220 - driven with a reader thread
                [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            line = await asyncio.to_thread(child.stdout.readline)
            assert line.strip() == "halfway"
            minutes, fives = await asyncio.gather(
                until(hub.candles(EX, PR, "1m", warmup=50), T0 + 60 * 299),
                until(hub.candles(EX, PR, "5m", warmup=10), T0 + 300 * 59))
            assert await asyncio.to_thread(child.wait, 60) == 0
    # the warm-up ends wherever the other process had got to: from there on, every one
    first = minutes[0].timestamp
    assert [c.timestamp for c in minutes] == list(range(first, T0 + 60 * 300, 60))
    assert len(minutes) >= 200 and first <= T0 + 60 * 51
    # the live ones (read from the stream) are the candles the other process wrote
    assert minutes[-100:] == [LiveCandle(T0 + 60 * i, 1.0 + i, 2.0 + i, 0.5 + i, 1.5 + i, 1.0)
                              for i in range(200, 300)]
    assert len(set(minutes)) == len(minutes)
    first = fives[0].timestamp
    assert [c.timestamp for c in fives] == list(range(first, T0 + 300 * 60, 300))
    assert len(fives) >= 40
    assert fives[-1].open == 1.0 + 295 and fives[-1].close == 1.5 + 299
    assert fives[-1].volume == 5.0


async def test_two_processes_writing_one_product_publish_each_rollup_once(
        config: HubConfig, config_data: dict[str, Any], tmp_path: Path) -> None:
    """Two hub processes write the same minutes of one product (a redundant feed): each
    computes every rollup, and a subscriber gets each one once, never as a revision."""
    child_config = tmp_path / "child.yml"
    import yaml

    data = {**config_data, "sqlite": {"path": str(tmp_path / "child.sqlite")}}
    child_config.write_text(yaml.safe_dump(data))
    writes = textwrap.dedent(f"""
        for i in range(120):
            await hub.write_candle({EX!r}, {PR!r}, {T0} + 60 * i, 1.0 + i, 2.0 + i,
                                   0.5 + i, 1.5 + i, 0.1 * (i % 7))
            if i % 5 == 0:
                await asyncio.sleep(0.002)
    """)
    script = ("import asyncio\nfrom hub import Hub, HubConfig\nasync def main():\n"
              f"    async with Hub(HubConfig.load({str(child_config)!r})) as hub:\n"
              "        print('ready', flush=True)\n        await asyncio.sleep(0.2)\n"
              + textwrap.indent(writes, " " * 8) + "asyncio.run(main())\n")
    async with Hub(config) as hub:
        stream = hub.candles(EX, PR, "5m")
        follow = asyncio.create_task(until(stream, T0 + 300 * 23))
        await asyncio.sleep(0.1)
        with subprocess.Popen(  # noqa: ASYNC220 - driven with a reader thread
                [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            assert (await asyncio.to_thread(child.stdout.readline)).strip() == "ready"
            await asyncio.sleep(0.2)
            for i in range(120):  # the same minutes, racing the other process
                await hub.write_candle(EX, PR, T0 + 60 * i, 1.0 + i, 2.0 + i, 0.5 + i,
                                       1.5 + i, 0.1 * (i % 7))
                if i % 5 == 0:
                    await asyncio.sleep(0.002)
            assert await asyncio.to_thread(child.wait, 60) == 0
        fives = await follow
        assert hub.streams is not None
        await hub.streams.settle()
    assert [c.timestamp for c in fives] == [T0 + 300 * k for k in range(24)]
    assert not any(c.revision for c in fives)
    assert fives[3].volume == tfs.volume([0.1 * (i % 7) for i in range(15, 20)])


async def until(stream: Any, last: int, within: float = 30.0) -> list[LiveCandle]:
    """Candles of ``stream`` up to the one at time ``last``."""
    out: list[LiveCandle] = []

    async def run() -> None:
        async for candle in stream:
            out.append(candle)
            if candle.timestamp >= last:
                return

    try:
        await asyncio.wait_for(run(), within)
    finally:
        await stream.aclose()
    return out


async def test_a_rollup_closed_here_reaches_subscribers_here_before_redis_has_it(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """A strategy in the feed's process gets the 5m candle its closing minute completes
    without waiting for Redis (here paused for writes: another hub gets it only once
    Redis takes it), and the minutes with it; once each: the stream's copies that follow
    are not delivered again. The next ones go early again, in order."""
    config = HubConfig.from_mapping(config_data, environ={})
    async with Hub(config) as hub, Hub(config) as other:
        mine: list[LiveCandle] = []
        theirs: list[LiveCandle] = []
        minutes: list[LiveCandle] = []

        async def follow(stream: Any, into: list[LiveCandle]) -> None:
            async for candle in stream:
                into.append(candle)

        def counts(m: int, t: int) -> Any:
            async def reached() -> bool:
                return len(mine) == m and len(theirs) == t
            return reached

        tasks = [asyncio.create_task(follow(hub.candles(EX, PR, "5m"), mine)),
                 asyncio.create_task(follow(other.candles(EX, PR, "5m"), theirs)),
                 asyncio.create_task(follow(hub.candles(EX, PR, "1m"), minutes))]
        try:
            await subscribed(hub, 2)
            await subscribed(other)
            await write(hub, [minute(i) for i in range(5)])
            await eventually(counts(1, 1))
            redis_command(servers, "CLIENT", "PAUSE", "1500", "WRITE")
            await write(hub, [minute(i) for i in range(5, 10)])
            await asyncio.sleep(0.3)
            assert [c.timestamp for c in mine] == [T0, T0 + 300]  # Redis took nothing
            assert [c.timestamp for c in theirs] == [T0]
            assert [c.timestamp for c in minutes] == [T0 + 60 * i for i in range(10)]
            await eventually(counts(2, 2), within=10)
            await asyncio.sleep(0.2)  # the stream's copy reached this process too
            await write(hub, [minute(i) for i in range(10, 15)])
            await eventually(counts(3, 3))
            await asyncio.sleep(0.2)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert mine == theirs  # the same candles, once each, none a revision
        assert [c.timestamp for c in mine] == [T0, T0 + 300, T0 + 600]
        assert [c.timestamp for c in minutes] == [T0 + 60 * i for i in range(15)]
        nine = minute(9)
        assert minutes[9] == LiveCandle(nine.timestamp, nine.open, nine.high, nine.low,
                                        nine.close, nine.volume, "1m")
        assert not any(c.revision for c in mine)
        assert mine[1].open == minute(5).open and mine[1].close == minute(9).close
        stats = (await hub.get_stats())["streams"]
        assert stats["delivered_early"] >= 2 + 10, stats


@pytest.mark.parametrize("repair", ["write_candle", "write_candles_batch"])
async def test_a_late_minute_queued_behind_newer_ones_reaches_this_process_subscriber(
        config_data: dict[str, Any], servers: LocalServers, repair: str) -> None:
    """While Redis does not take writes (a push of another product in flight, held),
    minutes 5, 6 and 8 are written (handed to the subscriber here at once), then the
    missing minute 7 and minute 9: the pushes queued behind reach Redis as one call.
    Minute 7 comes to the subscriber as a revision, and a subscriber in another
    process gets every minute's value. Merged by time, minute 7 had gone out inside a
    run of new minutes, and the subscriber here, past it already, dropped it."""
    config = HubConfig.from_mapping(config_data, environ={})
    async with Hub(config) as hub, Hub(config) as other:
        here: list[LiveCandle] = []
        there: list[LiveCandle] = []

        async def follow(stream: Any, into: list[LiveCandle]) -> None:
            async for candle in stream:
                into.append(candle)

        tasks = [asyncio.create_task(follow(hub.candles(EX, PR, "1m"), here)),
                 asyncio.create_task(follow(other.candles(EX, PR, "1m"), there))]
        try:
            await subscribed(hub)
            await subscribed(other)
            await write(hub, [minute(i) for i in range(5)])

            async def reached() -> bool:
                return len(here) == 5 and len(there) == 5
            await eventually(reached)
            redis_command(servers, "CLIENT", "PAUSE", "1000", "WRITE")
            await write(hub, [minute(0)], "OTHER")  # in flight, held: the rest queue
            await asyncio.sleep(0.05)
            await write(hub, [minute(5), minute(6), minute(8)])
            await asyncio.sleep(0.05)
            if repair == "write_candle":
                await write(hub, [minute(7)])
            else:
                await hub.write_candles_batch(EX, PR, [minute(7)])
            await write(hub, [minute(9)])

            async def all_in() -> bool:
                return any(c.timestamp == T0 + 420 for c in here) and \
                    any(c.timestamp == T0 + 420 for c in there) and \
                    any(c.timestamp == T0 + 540 for c in there)
            await eventually(all_in, within=10)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert [(c.timestamp - T0) // 60 for c in here] == [0, 1, 2, 3, 4, 5, 6, 8, 7, 9]
        assert [c.revision for c in here] == [False] * 8 + [True, False]
        assert here[8].as_candle() == minute(7)
        assert {c.timestamp: c.as_candle() for c in there} == \
            {T0 + 60 * i: minute(i) for i in range(10)}


async def test_a_corrected_minute_republishes_its_rollup_as_a_revision(hub: Hub) -> None:
    await write(hub, [minute(i) for i in range(10)])
    assert hub.streams is not None
    await hub.streams.settle()
    stream = hub.candles(EX, PR, "5m", warmup=2)
    first = await collect(stream, 2)
    assert [c.timestamp for c in first] == [T0, T0 + 300]
    # minute 7 corrected after its 5m bucket (5..9) was published
    await hub.write_candle(EX, PR, T0 + 420, 107.0, 500.0, 1.0, 107.5, 9.0)
    (revised,) = await collect(stream, 1)
    await stream.aclose()
    assert revised.revision and revised.timestamp == T0 + 300
    assert revised.high == 500.0 and revised.low == 1.0
    await hub.flush()
    (resampled,) = await hub.query_candles(EX, PR, T0 + 300, T0 + 599, interval="5m")
    assert revised.as_candle() == resampled


@pytest.mark.parametrize("where", ["here", "another-process"])
async def test_corrections_and_late_minutes_older_than_the_window_reach_subscribers(
        config_data: dict[str, Any], where: str) -> None:
    """With 64-candle windows, 400 minutes written, minute 300 missing: minute 2
    corrected (older than every window holds) and minute 300 arriving late (a hole
    inside the 1-minute window's span) reach the 1m subscribers as revisions, and their
    5m buckets (the first older than the 5m window) as revised rollups, equal to
    influxd's resampling. They had been stored only, and subscribers never saw them."""
    config_data["performance"] = {"redis_hot_data_window": 64}
    config = HubConfig.from_mapping(config_data, environ={})
    async with Hub(config) as hub, Hub(config) as other:
        follower = hub if where == "here" else other
        await write(hub, [minute(i) for i in range(400) if i != 300])
        assert hub.streams is not None
        await hub.streams.settle()
        ones = follower.candles(EX, PR, "1m", warmup=1)
        fives = follower.candles(EX, PR, "5m", warmup=1)
        assert [c.timestamp for c in await collect(ones, 1)] == [T0 + 60 * 399]
        assert [c.timestamp for c in await collect(fives, 1)] == [T0 + 300 * 79]
        corrected = Candle(T0 + 120, 50.0, 500.0, 5.0, 60.0, 9.0)
        late = Candle(T0 + 60 * 300, 400.0, 401.0, 399.0, 400.5, 4.0)
        await write(hub, [corrected, late])
        got = await collect(ones, 2)
        assert [(c.as_candle(), c.revision) for c in got] == [(corrected, True), (late, True)]
        revised = await collect(fives, 2)
        await hub.flush()
        assert all(c.revision for c in revised)
        assert [c.as_candle() for c in revised] == [
            influx_resampled(hub, EX, PR, 300, 1, T0 + 300 * k, T0 + 300 * k + 299)[0]
            for k in (0, 60)]
        assert revised[0].high == 500.0 and revised[1].volume == sum(
            minute(i).volume for i in range(301, 305)) + 4.0
        await ones.aclose()
        await fives.aclose()


async def test_a_batch_of_more_than_the_window_with_corrections_leaves_no_hole_in_it(
        config_data: dict[str, Any]) -> None:
    """An unsorted batch larger than a script call takes whose newest minutes come twice
    (a correction after the first value): the 64-candle window then holds the newest 64
    minutes, with the corrected values. It kept 64 rows, the newest 32 minutes twice,
    and so 32 stale minutes from before the batch beside them: get_candles answered
    minutes 32-63 and 1,100-1,131, a thousand-minute hole, as the newest 64."""
    config_data["performance"] = {"redis_hot_data_window": 64}
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.write_candles_batch(EX, PR, [minute(i) for i in range(64)])
        fixed = [Candle(T0 + 60 * i, 1.0, 3.0, 0.5, 2.0, 7.0) for i in range(1100, 1132)]
        batch = [minute(i) for i in range(64, 1132)] + fixed
        assert len(batch) > 1024
        await hub.write_candles_batch(EX, PR, batch)
        expected = [minute(i) for i in range(1068, 1100)] + fixed
        assert await hub.get_candles(EX, PR, count=64) == expected
        assert await hub.query_candles(EX, PR, limit=64) == expected
        await hub.flush()
        assert await hub.query_candles(EX, PR, T0, T0 + 60 * 1131, limit=64) == expected


async def test_a_bulk_load_under_closed_rollups_is_what_their_warm_ups_answer(
        hub: Hub) -> None:
    """Minutes older than the 1-minute window, inside the rollup windows' spans, rewritten
    by a bulk load (``window=False``, as ``wolfhub backfill`` writes): a 1h warm-up then
    answers their rollups as InfluxDB resamples the stored minutes, not those published
    before; a bulk load older than every window changes no window."""
    await hub.write_candles_batch(EX, PR, [minute(i) for i in range(1200)])  # 20 hours
    assert hub.streams is not None
    await hub.streams.settle()
    fixed = [Candle(T0 + 60 * i, 100.0, 900.0, 1.0, 100.5, 7.0) for i in range(60, 120)]
    await hub.write_candles_batch(EX, PR, fixed, window=False)  # hour 1, long closed
    history = [minute(i, t0=T0 - 86_400) for i in range(600)]  # the day before
    await hub.write_candles_batch(EX, PR, history, window=False)
    await hub.streams.settle()
    await hub.flush()
    warm = await collect(hub.candles(EX, PR, "1h", warmup=20), 20)
    resampled = await hub.query_candles(EX, PR, T0, T0 + 20 * 3600 - 1, interval="1h")
    assert [c.as_candle() for c in warm] == resampled
    assert warm[0].timestamp == T0 and warm[1].high == 900.0 and warm[1].low == 1.0


async def test_a_stalled_live_feed_is_closed_by_the_timer_a_replay_never(
        config_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's clock is set by the test: a live feed writes each minute as it ends and
    stops inside a bucket; a replay writes minutes of long ago and pauses."""
    import hub._streams as streams_module

    clock = [0.0]
    monkeypatch.setattr(streams_module, "time", SimpleNamespace(time=lambda: clock[0]))
    config = HubConfig.from_mapping({**config_data, "streams": {"close_grace": 1.0}},
                                    environ={})
    live0 = T0 + 86_400  # the live feed's 5m bucket
    async with Hub(config) as hub:
        assert hub.streams is not None
        for i in range(-10, 2):  # ten minutes before the bucket, then its first two
            clock[0] = live0 + 60 * i + 62
            await write(hub, [Candle(live0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0)], "LIVE")
        await write(hub, [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0) for i in range(3)],
                    "REPLAY")  # still the live clock: days after these minutes
        live = hub.candles(EX, "LIVE", "5m", warmup=0)
        replay = hub.candles(EX, "REPLAY", "5m", warmup=0)
        live_next = asyncio.ensure_future(live.__anext__())
        replay_next = asyncio.ensure_future(replay.__anext__())
        await hub.streams.expire(now=live0 + 300)  # the bucket's end, not past the grace
        await asyncio.sleep(0.5)
        assert not live_next.done()  # nothing partial is published while it runs
        await hub.streams.expire(now=live0 + 301)
        closed = await asyncio.wait_for(live_next, 5)
        assert (closed.timestamp, closed.volume) == (live0, 2.0)  # the two stored minutes
        await hub.streams.expire(now=live0 + 10 * 86_400)
        await asyncio.sleep(0.5)
        assert not replay_next.done()  # the replay's bucket waits for its own minutes
        # the missing minute 3 arrives after all: the 5m candle is republished, revised
        await write(hub, [Candle(live0 + 180, 1.0, 9.0, 0.5, 1.5, 1.0)], "LIVE")
        revised = await asyncio.wait_for(live.__anext__(), 5)
        assert revised.revision and (revised.high, revised.volume) == (9.0, 3.0)
        replay_next.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replay_next
        await live.aclose()
        await replay.aclose()


async def test_a_slow_subscriber_catches_up_from_storage(config_data: dict[str, Any]) -> None:
    """A subscriber that does not read while 600 minutes are written (the process keeps
    only 50 stream entries for it) still gets every one of them, in order, once."""
    config = HubConfig.from_mapping({**config_data, "streams": {"buffer": 50}}, environ={})
    async with Hub(config) as hub:
        await write(hub, [minute(i) for i in range(5)])
        stream = hub.candles(EX, PR, "1m", warmup=5)
        head = await collect(stream, 5)
        await write(hub, [minute(i) for i in range(5, 605)])
        rest = await collect(stream, 600, within=30)
        await stream.aclose()
        times = [c.timestamp for c in head + rest]
        assert times == [T0 + 60 * i for i in range(605)]
        stats = await hub.get_stats()
        assert stats["streams"]["overflows"] >= 1
        assert stats["streams"]["subscribers"] == 0  # closing the iterator released it


@pytest.mark.parametrize("where", ["here", "another-process"])
async def test_a_slow_subscriber_gets_the_corrections_of_candles_it_took_meanwhile(
        config_data: dict[str, Any], where: str) -> None:
    """A subscriber that took minutes 0-9 (and 5m bucket 0), then does not read while
    300 more are written and minutes 3 and 8 are corrected (8 twice), catches up from
    storage with the candles after its last one, and gets the corrections of the ones
    it took as revisions, the latest of each, and its 5m buckets 0 and 1 revised: the
    catch-up reads only the candles after its last, and they had been lost to it."""
    config = HubConfig.from_mapping({**config_data, "streams": {"buffer": 50}}, environ={})
    async with Hub(config) as hub, Hub(config) as other:
        follower = hub if where == "here" else other
        ones = follower.candles(EX, PR, "1m")
        fives = follower.candles(EX, PR, "5m")
        first_one = asyncio.ensure_future(collect(ones, 10))
        first_five = asyncio.ensure_future(collect(fives, 1))
        await subscribed(follower, 2)
        await write(hub, [minute(i) for i in range(11)])
        assert [c.timestamp for c in await first_one] == [T0 + 60 * i for i in range(10)]
        assert [c.timestamp for c in await first_five] == [T0]
        await write(hub, [minute(i) for i in range(11, 300)])
        fixes = [Candle(T0 + 180, 1.0, 2.0, 0.5, 1.5, 9.0),
                 Candle(T0 + 480, 1.0, 900.0, 0.5, 1.5, 9.0),
                 Candle(T0 + 480, 1.0, 800.0, 0.5, 1.5, 9.0)]  # minute 8 twice
        await write(hub, fixes)
        await write(hub, [minute(i) for i in range(300, 311)])
        await read_into_buffer(follower, minute(310))
        # minute 10, taken from the buffer before it stopped reading, the two
        # corrections, then minutes 11-310 from storage
        got = await collect(ones, 1 + 2 + 300, within=30)
        assert [(c.as_candle(), c.revision) for c in got[:3]] == [
            (minute(10), False), (fixes[0], True), (fixes[2], True)]
        assert [c.timestamp for c in got[3:]] == [T0 + 60 * i for i in range(11, 311)]
        assert not any(c.revision for c in got[3:])
        # 5m: bucket 1 from the buffer, buckets 0 and 1 revised, then 2-61 from storage
        five = await collect(fives, 1 + 2 + 60, within=30)
        await hub.flush()
        assert [(c.timestamp, c.revision) for c in five] == [
            (T0 + 300, False), (T0, True), (T0 + 300, True)] + [
            (T0 + 300 * k, False) for k in range(2, 62)]
        assert five[0].high == minute(9).high and five[2].high == 800.0
        assert [c.as_candle() for c in five[1:]] == await hub.query_candles(
            EX, PR, T0, T0 + 300 * 62 - 1, interval="5m")
        stats = (await follower.get_stats())["streams"]
        assert stats["overflows"] >= 2 and stats["catch_ups_without_revisions"] == 0
        await ones.aclose()
        await fives.aclose()


async def read_into_buffer(hub: Hub, newest: Candle, product: str = PR) -> None:
    """Wait until the process's reader has read ``newest`` (a 1-minute candle) from the
    product's stream into its buffer."""
    assert hub.streams is not None and hub.streams.reader is not None
    reader, key = hub.streams.reader, hub.streams.stream_key(EX, product)

    async def read() -> bool:
        ring = reader.rings.get(key)
        return ring is not None and any(
            e.candle.timeframe == "1m" and e.candle.timestamp >= newest.timestamp
            for e in reversed(ring.entries))
    await eventually(read)


async def test_a_subscriber_streams_buffer_minutes_behind_needs_no_catch_up(
        config_data: dict[str, Any]) -> None:
    """``streams.buffer`` counts 1-minute candles: a subscriber that many minutes behind
    still finds them all in the process's buffer, though the rollups published between
    them (another third with the default timeframes) went through it too; only past it
    does it catch up from storage."""
    config = HubConfig.from_mapping({**config_data, "streams": {"buffer": 600}}, environ={})
    async with Hub(config) as hub:
        await write(hub, [minute(i) for i in range(5)])
        stream = hub.candles(EX, PR, "1m", warmup=5)
        head = await collect(stream, 5)
        await write(hub, [minute(i) for i in range(5, 605)])
        await read_into_buffer(hub, minute(604))  # all of them (and ~190 rollups)
        rest = await collect(stream, 600, within=30)
        assert [c.timestamp for c in head + rest] == [T0 + 60 * i for i in range(605)]
        assert (await hub.get_stats())["streams"]["overflows"] == 0
        await write(hub, [minute(i) for i in range(605, 1400)])  # 795 minutes: past it
        await read_into_buffer(hub, minute(1399))
        rest = await collect(stream, 795, within=30)
        await stream.aclose()
        assert [c.timestamp for c in rest] == [T0 + 60 * i for i in range(605, 1400)]
        assert (await hub.get_stats())["streams"]["overflows"] == 1


async def _left_behind(hub: Hub, other: Hub, servers: LocalServers
                       ) -> tuple[Any, list[LiveCandle]]:
    """``hub`` writes 5 minutes, ``other`` subscribes with them as warm-up and takes
    them, then ``hub`` writes 600 more at once: the stream and the warm-up taken."""
    assert hub.streams is not None
    window = hub.streams.window_key(EX, PR, "1m")
    await write(hub, [minute(i) for i in range(5)])

    async def in_redis() -> bool:  # an accepted write reaches Redis a moment later
        return redis_command(servers, "ZCARD", window) == b":5\r\n"
    await eventually(in_redis)
    stream = other.candles(EX, PR, "1m", warmup=5)
    head = await collect(stream, 5)
    await write(hub, [minute(i) for i in range(5, 605)])
    return stream, head


@pytest.mark.parametrize("timeframe", ["1m", "5m"])
@pytest.mark.parametrize("before", ["nothing", "in-the-window", "in-influxdb-only"])
async def test_a_subscriber_without_warm_up_lost_before_its_first_candle_misses_none(
        config_data: dict[str, Any], before: str, timeframe: str) -> None:
    """A subscriber with no warm-up, in another process than the writer's, falls
    behind the buffer before it took its first candle (600 minutes in one burst, a
    50-entry buffer, 64-candle hot windows): its catch-up from storage starts where its
    subscription did, so it gets every candle closed after it subscribed, in order,
    once, and none closed before (five minutes stored in the window, or in InfluxDB
    only, or nothing at all)."""
    config_data["performance"] = {"redis_hot_data_window": 64}
    config = HubConfig.from_mapping({**config_data, "streams": {"buffer": 50}}, environ={})
    async with Hub(config) as hub, Hub(config) as other:
        if before == "in-the-window":
            await write(hub, [minute(i) for i in range(5)])
        elif before == "in-influxdb-only":
            await hub.write_candles_batch(EX, PR, [minute(i) for i in range(5)],
                                          window=False)
            await hub.flush()
        stream = other.candles(EX, PR, timeframe)
        first = asyncio.ensure_future(anext(stream))
        await subscribed(other)
        await hub.write_candles_batch(EX, PR, [minute(i) for i in range(5, 605)])
        span = tfs.seconds(timeframe)
        expected = list(range(T0 + 300, T0 + 605 * 60, span))  # from the sixth minute
        got = [await asyncio.wait_for(first, 30)]
        got += await collect(stream, len(expected) - 1, within=30)
        await stream.aclose()
        assert [c.timestamp for c in got] == expected
        assert all(c.timeframe == timeframe and not c.revision for c in got)
        assert (await other.get_stats())["streams"]["overflows"] >= 1  # it did fall behind


async def test_a_subscription_on_an_empty_window_starts_while_influxdb_is_down(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """With InfluxDB down, a subscription on a product whose window is empty cannot ask
    where the stored candles end: it starts anyway, once ``influxdb.timeout`` has
    passed, and gets the minutes written after it."""
    config_data["influxdb"]["timeout"] = 0.5
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        servers.influx.kill()
        stream = hub.candles(EX, "DOWN", "1m")
        first = asyncio.ensure_future(anext(stream))
        await subscribed(hub)
        await write(hub, [minute(i) for i in range(3)], "DOWN")
        got = [await asyncio.wait_for(first, 10)] + await collect(stream, 2)
        await stream.aclose()
        assert [c.timestamp for c in got] == [T0 + 60 * i for i in range(3)]
        servers.influx.start()


async def test_a_burst_after_a_quiet_moment_reaches_a_subscriber_here_whole(hub: Hub) -> None:
    """A subscriber in the writing process, a feed quiet for a moment, then a burst of
    150 write_candle calls (one run, handed to this process's subscribers at once with
    the rollups it closes): every minute arrives, in order, once (candles handed over
    early were kept in a bounded list, and the burst's rollups pushed its minutes
    out of it)."""
    stream = hub.candles(EX, PR, "1m")
    first = asyncio.ensure_future(anext(stream))
    await subscribed(hub)
    await write(hub, [minute(0)])
    got = [await asyncio.wait_for(first, 10)]
    await write(hub, [minute(i) for i in range(1, 151)])
    got += await collect(stream, 150)
    await stream.aclose()
    assert [c.timestamp for c in got] == [T0 + 60 * i for i in range(151)]
    assert (await hub.get_stats())["streams"]["delivered_early"] >= 150


@pytest.mark.parametrize("where", ["here", "another-process"])
@pytest.mark.parametrize("batch", ["ascending", "unsorted"])
async def test_a_batch_larger_than_the_window_reaches_subscribers_whole(
        config_data: dict[str, Any], where: str, batch: str) -> None:
    """One write_candles_batch of more minutes than the hot window keeps (2,500 in
    order, taken 1,000 at a time, or 1,500 out of order, taken whole; the window 1,000):
    only the newest 1,000 go into the window and onto the stream, and the stream says
    how many were withheld before them, so a subscriber here or in another process
    catches up from storage and gets every minute, in order, once."""
    count = 2500 if batch == "ascending" else 1500
    data = [minute(i) for i in range(1, count + 1)]
    if batch == "unsorted":
        random.Random(5).shuffle(data)
    config = HubConfig.from_mapping(config_data, environ={})
    async with Hub(config) as hub, Hub(config) as other:
        follower = hub if where == "here" else other
        await write(hub, [minute(0)])
        stream = follower.candles(EX, PR, "1m", warmup=1)
        head = await collect(stream, 1)
        await hub.write_candles_batch(EX, PR, data)
        rest = await collect(stream, count, within=30)
        await stream.aclose()
        assert [c.timestamp for c in head + rest] == [T0 + 60 * i for i in range(count + 1)]
        assert (await follower.get_stats())["streams"]["withheld_notices"] >= 1


async def test_a_warm_up_deeper_than_the_window_waits_for_another_processs_minutes(
        config_data: dict[str, Any]) -> None:
    """Another hub wrote 200 minutes and posts them to InfluxDB only after its 3 s
    linger; a warm-up of 150 with a 64-minute window reads the older 86 from InfluxDB:
    it waits for them to be stored rather than hand over a hole."""
    config_data["performance"] = {"redis_hot_data_window": 64}
    writer_data = {**config_data, "influxdb": {**config_data["influxdb"],
                                               "batch": {"size": 100_000,
                                                         "flush_interval": 3.0}}}
    async with Hub(HubConfig.from_mapping(writer_data, environ={})) as hub, \
            Hub(HubConfig.from_mapping(config_data, environ={})) as other:
        await write(hub, [minute(i) for i in range(200)])
        await eventually(lambda: _window_holds(other, minute(199)))
        stream = other.candles(EX, PR, "1m", warmup=150)
        got = await collect(stream, 150, within=20)
        await stream.aclose()
        assert [c.timestamp for c in got] == [T0 + 60 * i for i in range(50, 200)]


async def _window_holds(hub: Hub, candle: Candle) -> bool:
    return (await hub.get_candles(EX, PR, 1)) == [candle]


async def test_a_catch_up_waits_for_another_processs_minutes_to_reach_influxdb(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """A subscriber in one hub falls behind while another hub writes 600 minutes, which
    that hub posts to InfluxDB only after its 3 s linger: the catch-up finds the older
    ones neither in the hot window (64) nor yet in InfluxDB, waits for them, and the
    subscriber still gets every minute, in order, once."""
    config_data["performance"] = {"redis_hot_data_window": 64}
    writer_data = {**config_data, "influxdb": {**config_data["influxdb"],
                                               "batch": {"size": 100_000,
                                                         "flush_interval": 3.0}}}
    async with Hub(HubConfig.from_mapping(writer_data, environ={})) as hub, \
            Hub(HubConfig.from_mapping({**config_data, "streams": {"buffer": 50}},
                                       environ={})) as other:
        stream, head = await _left_behind(hub, other, servers)
        rest: list[LiveCandle] = []

        async def until_the_last() -> None:
            async for candle in stream:
                rest.append(candle)
                if candle.timestamp >= minute(604).timestamp:
                    return
        await asyncio.wait_for(until_the_last(), 30)
        await stream.aclose()
        assert [c.timestamp for c in head + rest] == [T0 + 60 * i for i in range(605)]
        stats = (await other.get_stats())["streams"]
        assert stats["catch_ups"] >= 1 and stats["catch_ups_unconfirmed"] == 0


async def test_a_catch_up_waits_a_bounded_time_for_minutes_never_posted(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """The other hub does not post its minutes in time (a 10 minute linger here; a writer
    gone or failing alike): the catch-up waits ``flush_interval + influxdb.timeout`` of
    the subscriber's config, then goes on with what is stored, and says so in its
    stats; the live stream is not held up for ever."""
    config_data["performance"] = {"redis_hot_data_window": 64}
    writer_data = {**config_data, "influxdb": {**config_data["influxdb"],
                                               "batch": {"size": 100_000,
                                                         "flush_interval": 600.0}}}
    reader_data = {**config_data, "streams": {"buffer": 50},
                   "influxdb": {**config_data["influxdb"], "timeout": 0.5,
                                "batch": {"flush_interval": 0.2}}}
    async with Hub(HubConfig.from_mapping(writer_data, environ={})) as hub, \
            Hub(HubConfig.from_mapping(reader_data, environ={})) as other:
        stream, _ = await _left_behind(hub, other, servers)
        started = asyncio.get_running_loop().time()
        rest = await collect(stream, 64, within=10)  # the hot window's minutes
        waited = asyncio.get_running_loop().time() - started
        await stream.aclose()
        assert [c.timestamp for c in rest] == [minute(i).timestamp for i in range(541, 605)]
        assert 0.6 <= waited < 5
        assert (await other.get_stats())["streams"]["catch_ups_unconfirmed"] == 1


async def test_a_subscriber_taking_a_burst_lets_the_loop_run(hub: Hub) -> None:
    """3,000 minutes wait in the process's buffer when a subscriber comes to read them:
    taking them, it lets the loop run every few hundred (a thousand subscribers taking
    a burst one after another held the loop for seconds, and the reader's XREAD timed
    out behind them), and still gets every minute, in order."""
    stream = hub.candles(EX, PR, "1m")
    first = asyncio.ensure_future(anext(stream))
    await subscribed(hub)
    await write(hub, [minute(i) for i in range(3000)])
    await read_into_buffer(hub, minute(2999))  # every one
    turns = 0

    async def tick() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)
    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0)
    got = [await first]
    before = turns
    async for candle in stream:  # nothing in this loop's body waits
        got.append(candle)
        if len(got) == 3000:
            break
    after = turns
    ticker.cancel()
    await stream.aclose()
    assert [c.timestamp for c in got] == [minute(i).timestamp for i in range(3000)]
    assert after - before >= 3000 // 256 - 2


async def test_stream_arguments_are_checked(hub: Hub) -> None:
    with pytest.raises(ValidationError, match="timeframe"):
        hub.candles(EX, PR, "7m")
    with pytest.raises(ValidationError, match="warmup"):
        hub.candles(EX, PR, "1m", warmup=-1)
    with pytest.raises(ValidationError, match="product"):
        hub.candles(EX, "", "1m")


async def test_a_thousand_subscribers_share_one_reader(hub: Hub) -> None:
    await write(hub, [minute(0)])
    streams = [hub.candles(EX, PR, "1m", warmup=1) for _ in range(1000)]
    tasks = [asyncio.ensure_future(collect(s, 21, within=30)) for s in streams]
    await subscribed(hub, 1000)
    await write(hub, [minute(i) for i in range(1, 21)])
    results = await asyncio.gather(*tasks)
    assert all([c.timestamp for c in got] == [T0 + 60 * i for i in range(21)]
               for got in results)
    for s in streams:
        await s.aclose()
    stats = await hub.get_stats()
    assert stats["streams"]["followed"] == 0


async def test_a_thousand_subscriptions_on_an_empty_window_ask_influxdb_together(
        hub: Hub) -> None:
    """A thousand subscribers without warm-up start on a product nothing was written
    to yet (each asks where the stored candles end, to start from there): they share
    a few questions to InfluxDB rather than ask a thousand, and each gets every minute
    written after."""
    before = (await hub.get_stats())["actors"]["query"]["queries"]
    streams = [hub.candles(EX, "EMPTY", "1m") for _ in range(1000)]
    tasks = [asyncio.ensure_future(collect(s, 20, within=60)) for s in streams]
    await subscribed(hub, 1000)
    asked = (await hub.get_stats())["actors"]["query"]["queries"] - before
    await write(hub, [minute(i) for i in range(20)], "EMPTY")
    results = await asyncio.gather(*tasks)
    for s in streams:
        await s.aclose()
    assert all([c.timestamp for c in got] == [T0 + 60 * i for i in range(20)]
               for got in results)
    assert 1 <= asked <= 20, asked


async def test_a_subscriber_waits_out_a_redis_restart_without_a_hole(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """Redis is killed under 20 subscribers and started again empty: minutes written
    meanwhile went to InfluxDB only; each subscriber gets every one, then live ones, and
    they share their reads of storage."""
    config_data["redis"]["timeout"] = 0.5
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await write(hub, [minute(i) for i in range(5)])
        others = [hub.candles(EX, PR, "1m", warmup=5) for _ in range(19)]
        for other in others:
            await collect(other, 5)
        stream = hub.candles(EX, PR, "1m", warmup=5)
        head = await collect(stream, 5)
        servers.redis.kill()
        try:
            await asyncio.sleep(0.5)  # the reader and the cache find Redis gone
            await write(hub, [minute(i) for i in range(5, 35)])
            await asyncio.sleep(0.5)
        finally:
            servers.redis.start()
        await asyncio.sleep(1.0)  # the hub notices Redis again
        await write(hub, [minute(i) for i in range(35, 45)])
        rest = await collect(stream, 40, within=30)
        theirs = await asyncio.gather(*(collect(other, 40, within=30) for other in others))
        for other in [stream, *others]:
            await other.aclose()
        stats = (await hub.get_stats())["streams"]
    assert [c.timestamp for c in head + rest] == [T0 + 60 * i for i in range(45)]
    assert all([c.timestamp for c in got] == [T0 + 60 * i for i in range(5, 45)]
               for got in theirs)
    assert stats["reconnects"] >= 1 and stats["overflows"] >= 20, stats  # from storage
    assert stats["catch_ups"] < 10, stats  # twenty subscribers at one place: shared reads
