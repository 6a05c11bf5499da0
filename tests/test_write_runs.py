"""write_candle's runs: consecutive calls are delivered together (one line batch, one
window push, one rollup step per product), yet everything the hub does after a call sees
it, in order, and a live feed's single candle goes out without another call."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hub import Candle, Hub, HubConfig, ValidationError
from hub._intake import RUN_CAP
from hubdomain import keys
from tests.conftest import eventually, influx_candles, redis_command, subscribed
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX = "papertrader"
T0 = 1697529600


def stored(hub: Hub, product: str) -> list[Candle]:
    return influx_candles(hub, f"SELECT open, high, low, close, volume FROM candle "
                               f"WHERE exchange='{EX}' AND product='{product}' "
                               f"ORDER BY time DESC")


async def write(hub: Hub, product: str, c: Candle) -> None:
    await hub.write_candle(EX, product, c.timestamp, c.open, c.high, c.low, c.close, c.volume)


async def written_while_followed(
        hub: Hub, other: Hub, product: str, data: list[Candle],
        write_all: Callable[[], Awaitable[None]] | None = None) -> list[Candle]:
    """``data`` written by ``hub`` one call at a time (or by ``write_all``) while
    ``other`` follows the product's 1-minute candles: what ``other``'s subscriber got
    (as many as written)."""
    live = other.candles(EX, product)
    got: list[Candle] = []

    async def follow() -> None:
        async for candle in live:
            got.append(candle.as_candle())
            if len(got) == len(data):
                return
    following = asyncio.ensure_future(follow())
    await subscribed(other)
    if write_all is not None:
        await write_all()
    else:
        for c in data:
            await write(hub, product, c)
    await asyncio.wait_for(following, 10)
    await live.aclose()
    return got


async def test_one_candle_goes_out_without_another_call(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """A live feed writes a candle a minute and then waits for the next: that candle is
    in the Redis window and reaches another process's subscriber with nothing else
    asked of the writing hub (no maintenance job either)."""
    config_data["maintenance"] = {"enabled": False}
    config = HubConfig.from_mapping(config_data, environ={})
    async with Hub(config) as writer, Hub(config) as reader:
        live = reader.candles(EX, "LIVE")
        first = asyncio.ensure_future(anext(live))
        await subscribed(reader)
        c = Candle(T0, 10.0, 12.0, 9.0, 11.0, 5.0)
        await write(writer, "LIVE", c)
        got = await asyncio.wait_for(first, 5)
        assert got.as_candle() == c and got.timeframe == "1m"
        window = redis_command(servers, "ZRANGE", keys.candles(EX, "LIVE"), "0", "-1")
        assert b"[1697529600,10.0,12.0,9.0,11.0,5.0]" in window
        await live.aclose()


@pytest.mark.parametrize("near", [True, False], ids=["near", "no-near"])
async def test_calls_read_back_at_once_and_store_as_written(config_data: dict[str, Any],
                                                            near: bool) -> None:
    """Many calls across products, more than a run holds, going back in time and
    rewriting minutes, on a small window: a read right after a call sees it, the window
    ends with the newest minutes and InfluxDB with the last value written of each."""
    config_data["performance"] = {"near_cache": near, "redis_hot_data_window": 64}
    rnd = random.Random(3)
    expected: dict[str, dict[int, Candle]] = {"A": {}, "B": {}, "C": {}}

    def newest(product: str, count: int) -> list[Candle]:
        return sorted(expected[product].values(), key=lambda x: x.timestamp)[-count:]

    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        for i in range(3 * RUN_CAP + 17):
            product = rnd.choice("ABC")
            # mostly forward, sometimes back in time or the same minute again
            minute = T0 + 60 * (i // 2 + rnd.choice((0, 0, 0, 1, 2, -1, -1, -40, -110)))
            c = Candle(minute, float(i), i + 2.0, i - 1.0, i + 1.0, float(rnd.randrange(99)))
            await write(hub, product, c)
            expected[product][minute] = c
            if i % 37 == 20:  # in the middle of a run
                assert await hub.get_candles(EX, product, 3) == newest(product, 3)
        for product in expected:
            assert await hub.get_candles(EX, product, 1000) == newest(product, 64)
        await hub.flush()
        for product in expected:
            assert stored(hub, product) == newest(product, 1000)
            assert len(stored(hub, product)) > 150


async def test_every_call_reaches_subscribers_once_in_order(config_data: dict[str, Any]
                                                             ) -> None:
    """More calls in a row than the hot window holds: a subscriber in another hub gets
    every minute, in order, once."""
    config_data["performance"] = {"redis_hot_data_window": 64}
    config = HubConfig.from_mapping(config_data, environ={})
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.0 + i, 3.0) for i in range(3 * RUN_CAP)]
    async with Hub(config) as hub, Hub(config) as other:
        assert await written_while_followed(hub, other, "SUB", data) == data


async def test_a_replay_far_past_the_stream_reaches_another_hubs_subscriber_whole(
        config_data: dict[str, Any]) -> None:
    """A replay of 5,000 minutes in a burst, the stream keeping about 1,000 and the
    writing hub posting to InfluxDB once a second (the default): the other hub's reader
    falls behind, Redis trims what it has not read, and its subscriber catches up from
    the window and InfluxDB, getting every minute, in order, once."""
    config_data["streams"] = {"length": 1000}
    writer_data = {**config_data, "influxdb": {**config_data["influxdb"],
                                               "batch": {"size": 5000,
                                                         "flush_interval": 1.0}}}
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.0 + i, 3.0) for i in range(5000)]
    async with Hub(HubConfig.from_mapping(writer_data, environ={})) as hub, \
            Hub(HubConfig.from_mapping(config_data, environ={})) as other:
        live = other.candles(EX, "BURST")
        got: list[Candle] = []

        async def follow() -> None:
            async for candle in live:
                got.append(candle.as_candle())
                if candle.timestamp >= data[-1].timestamp:
                    return
        following = asyncio.ensure_future(follow())
        await subscribed(other)
        for c in data:
            await write(hub, "BURST", c)
        await asyncio.wait_for(following, 30)
        await live.aclose()
        assert [c.timestamp for c in got] == [c.timestamp for c in data]
        assert got == data


async def test_a_correction_after_its_bucket_closed_is_a_revision(config: HubConfig) -> None:
    """Five minutes close a 5m bucket, then one of them is written again, all in one
    burst of calls: the 5m candle goes out, then its revision, as when each call is
    delivered alone."""
    async with Hub(config) as hub, Hub(config) as other:
        live = other.candles(EX, "REV", "5m")
        got: list[Any] = []

        async def follow() -> None:
            async for candle in live:
                got.append(candle)
                if len(got) == 2:
                    return
        following = asyncio.ensure_future(follow())
        await subscribed(other)
        for i in range(5):
            await write(hub, "REV", Candle(T0 + 60 * i, 10.0, 12.0, 9.0, 11.0, 1.0))
        await write(hub, "REV", Candle(T0 + 120, 10.0, 30.0, 9.0, 11.0, 1.0))  # a new high
        await asyncio.wait_for(following, 10)
        assert [(c.timestamp, c.high, c.revision) for c in got] == [
            (T0, 12.0, False), (T0, 30.0, True)]


async def test_one_push_mixing_new_minutes_and_rewrites(config: HubConfig,
                                                       servers: LocalServers) -> None:
    """One window push holding new minutes, a rewrite of a held minute and a minute
    given twice: the window keeps the last value of each, and a subscriber gets each
    minute, a rewrite of one it was given as a revision."""
    c = [Candle(T0 + 60 * i, 10.0 + i, 12.0 + i, 9.0 + i, 11.0 + i, 1.0) for i in range(8)]
    again = {2: Candle(T0 + 120, 1.0, 50.0, 0.5, 2.0, 7.0),
             6: Candle(T0 + 360, 3.0, 60.0, 0.5, 4.0, 8.0)}
    async with Hub(config) as hub, Hub(config) as other:
        await hub.write_candles_batch(EX, "MIX", c[:4])

        async def in_redis() -> bool:  # an accepted write reaches Redis a moment later:
            # the first four are there before anyone follows, so none is live to it
            return redis_command(servers, "ZCARD", keys.candles(EX, "MIX")) == b":4\r\n"
        await eventually(in_redis)
        live = other.candles(EX, "MIX")
        got: list[Any] = []

        async def follow() -> None:
            async for candle in live:
                got.append(candle)
                if len(got) == 6:
                    return
        following = asyncio.ensure_future(follow())
        await subscribed(other)
        # minute 2 is held already; 4-7 are new, 6 comes twice
        await hub.write_candles_batch(EX, "MIX", [c[4], again[2], c[5], c[6], again[6], c[7]])
        await asyncio.wait_for(following, 10)
        want = [c[0], c[1], again[2], c[3], c[4], c[5], again[6], c[7]]
        assert await hub.get_candles(EX, "MIX", 100) == want
        assert [(x.timestamp, x.high, x.revision) for x in got] == [
            # (minute 2 is older than where it subscribed, the window's newest then,
            # minute 3: a revision to it, though it never took minute 2; its candles as
            # they close begin with minute 4)
            (T0 + 120, 50.0, True), (T0 + 240, 16.0, False), (T0 + 300, 17.0, False),
            (T0 + 360, 18.0, False), (T0 + 360, 60.0, True), (T0 + 420, 19.0, False)]


async def test_a_call_and_the_next_write_keep_their_order(hub: Hub) -> None:
    """A minute written by write_candle, then by write_candles_batch, then by
    write_candle again: the last one is what both stores keep; a delete issued after
    a call removes that call's candle."""
    first, second, third = (Candle(T0, v, v + 1, v - 1, v, 1.0) for v in (1.0, 2.0, 3.0))
    await write(hub, "ORD", first)
    await hub.write_candles_batch(EX, "ORD", [second])
    assert await hub.get_candles(EX, "ORD") == [second]
    await write(hub, "ORD", third)
    await hub.cache_indicator(EX, "ORD", "EMA", 20, 1.5)
    assert await hub.get_candles(EX, "ORD") == [third]
    await hub.flush()
    assert stored(hub, "ORD") == [third]

    await write(hub, "DEL", first)
    await hub.delete_data("-3000w", "now", '_measurement="candle" AND product="DEL"')
    await hub.flush()
    assert await hub.get_candles(EX, "DEL") == []
    assert stored(hub, "DEL") == []


async def test_a_bad_candle_among_good_ones_is_refused_alone(hub: Hub) -> None:
    good = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 3.0) for i in range(10)]
    for c in good[:5]:
        await write(hub, "BAD", c)
    with pytest.raises(ValidationError) as refused:
        await hub.write_candle(EX, "BAD", T0 + 3000, 1.0, 2.0, 0.5, float("nan"), 3.0)
    assert "close" in str(refused.value)
    with pytest.raises(ValidationError) as refused:
        await hub.write_candle(EX, "BAD/" + "x" * 70_000, T0, 1.0, 2.0, 0.5, 1.5, 3.0)
    for c in good[5:]:
        await write(hub, "BAD", c)
    await hub.flush()
    assert stored(hub, "BAD") == good
    assert await hub.get_candles(EX, "BAD", 100) == good


async def test_close_right_after_the_calls_keeps_them(config: HubConfig) -> None:
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5 + i, 3.0) for i in range(5)]
    hub = Hub(config)
    await hub.start()
    for c in data:
        await write(hub, "CLOSE", c)
    await hub.close()  # no flush, no read: the calls were acknowledged
    assert stored(hub, "CLOSE") == data
    async with Hub(config) as again:
        assert await again.get_candles(EX, "CLOSE", 10) == data


async def test_a_fast_producer_lets_the_others_run(hub: Hub, servers: LocalServers) -> None:
    """A replay loop that never waits on anything else: other coroutines run while it
    writes, and its candles reach Redis while it runs, not only once it stops."""
    turns, window_sizes = 0, []
    key = keys.candles(EX, "FAST")

    async def strategy() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1
            if turns % 10 == 0:  # asked of Redis directly, not through the hub
                window_sizes.append(int(redis_command(servers, "ZCARD", key)[1:-2]))

    other = asyncio.ensure_future(strategy())
    try:
        for i in range(20_000):
            await hub.write_candle(EX, "FAST", T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 3.0)
    finally:
        other.cancel()
    assert turns >= 20_000 // RUN_CAP // 2
    assert any(0 < size for size in window_sizes)

    async def all_stored() -> bool:
        await hub.flush()
        return len(stored(hub, "FAST")) == 20_000
    await eventually(all_stored, within=30)


class Turns:
    """Another coroutine on the loop, counting the turns it gets."""

    def __init__(self) -> None:
        self.count = 0
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.count += 1

    def stop(self) -> None:
        self._task.cancel()


async def test_a_loop_of_batch_writes_lets_the_writer_keep_up(hub: Hub) -> None:
    """A bulk load that never waits on anything else (parse 1,000 rows, write them,
    parse the next): the writer takes each batch in before the next is written, so its
    POSTs run while the producer works and its memory bound holds, instead of the
    batches piling up in its mailbox until the loop ends."""
    batches = [[Candle(T0 + 60 * (1000 * b + i), 1.0, 2.0, 0.5, 1.5, 3.0)
                for i in range(1000)] for b in range(60)]
    other = Turns()
    try:
        for batch in batches:
            await hub.write_candles_batch(EX, "BULK", batch, window=False)
    finally:
        other.stop()
    assert other.count >= 55  # a turn after each batch (before: none in 256 of them)
    await hub.flush()
    assert len(stored(hub, "BULK")) == 60_000


async def test_nobody_follows_nothing_is_published(config: HubConfig,
                                                    servers: LocalServers) -> None:
    """Writes to a product no hub process follows fill its window and add no stream
    entries; from a subscription on, each minute is published (the three minutes of one
    run in one entry)."""
    stream = keys.key("candlestream", EX, "QUIET")
    async with Hub(config) as hub, Hub(config) as other:
        for i in range(50):
            await write(hub, "QUIET", Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 3.0))
        assert len(await hub.get_candles(EX, "QUIET", 100)) == 50
        assert redis_command(servers, "XLEN", stream) == b":0\r\n"
        live = other.candles(EX, "QUIET", warmup=2)
        got = [(await anext(live)).timestamp for _ in range(2)]
        for i in range(50, 53):
            await write(hub, "QUIET", Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 3.0))
        got += [(await asyncio.wait_for(anext(live), 5)).timestamp for _ in range(3)]
        assert got == [T0 + 60 * i for i in range(48, 53)]
        assert redis_command(servers, "XLEN", stream) == b":1\r\n"
        await live.aclose()


async def test_a_lapsed_presence_is_caught_up_from_storage(
        config: HubConfig, servers: LocalServers, monkeypatch: pytest.MonkeyPatch) -> None:
    """The followers' set loses this process's reader (it stalled past its presence, or
    Redis lost the key): writes publish nothing meanwhile, and the reader, finding its
    presence lapsed at its next renewal, has its subscribers catch up from storage: no
    hole, no duplicate."""
    import actors.stream

    monkeypatch.setattr(actors.stream, "PRESENCE", 1.2)  # renewed every 0.2 s
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.0 + i, 3.0) for i in range(8)]
    async with Hub(config) as hub, Hub(config) as other:
        live = other.candles(EX, "LAPSE")
        first = asyncio.ensure_future(anext(live))
        await subscribed(other)
        await write(hub, "LAPSE", data[0])
        got = [(await asyncio.wait_for(first, 5)).as_candle()]
        redis_command(servers, "DEL", keys.followers(keys.key("candlestream", EX, "LAPSE")))
        for c in data[1:6]:  # published to nobody
            await write(hub, "LAPSE", c)
        await hub.get_candles(EX, "LAPSE")  # (delivered now)
        assert redis_command(servers, "XLEN", keys.key("candlestream", EX, "LAPSE")) == \
            b":1\r\n"
        got += [(await asyncio.wait_for(anext(live), 5)).as_candle() for _ in range(5)]
        for c in data[6:]:
            await write(hub, "LAPSE", c)
        got += [(await asyncio.wait_for(anext(live), 5)).as_candle() for _ in range(2)]
        assert got == data
        assert (await other.get_stats())["streams"]["presence_lapses"] >= 1
        await live.aclose()


async def test_a_reader_behind_a_trimmed_stream_catches_up(
        config_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer far ahead of a reader (here the reader stalls: its next XREAD waits
    until the writer is done): Redis trims the stream (streams.length minutes) past
    entries the reader had not read yet. The reader finds out (the entries' numbers
    jump) and its subscriber catches up from storage: every minute, once, in order."""
    config_data["streams"] = {"length": 50}
    config = HubConfig.from_mapping(config_data, environ={})
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.0 + i, 3.0) for i in range(600)]
    async with Hub(config) as hub, Hub(config) as other:
        async def while_the_reader_stalls() -> None:
            assert other.streams is not None and other.streams.reader is not None
            backend = other.streams.reader._backend
            read, go = backend.read_streams, asyncio.Event()

            async def stalled(*args: Any, **kwargs: Any) -> Any:
                await go.wait()
                return await read(*args, **kwargs)
            monkeypatch.setattr(backend, "read_streams", stalled)
            for i in range(0, len(data), 100):  # six script calls of 100 minutes each
                await hub.write_candles_batch(EX, "TRIM", data[i:i + 100])
                await hub.get_candles(EX, "TRIM", 1)
            go.set()
        assert await written_while_followed(hub, other, "TRIM", data,
                                            while_the_reader_stalls) == data
        assert (await other.get_stats())["streams"]["trimmed_unread"] >= 1


async def test_a_followed_stream_keeps_about_streams_length_candles(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """While a product is followed, the minutes of a run go out as one stream entry (a
    subscriber reads every one: see the tests above); the stream is still trimmed to
    about ``streams.length`` 1-minute candles (at least that many, with their rollups
    beside them), not entries (which hold up to a run each)."""
    import orjson
    import redis

    config_data["streams"] = {"length": 1000}
    config = HubConfig.from_mapping(config_data, environ={})
    stream = keys.key("candlestream", EX, "LONG")
    client = redis.Redis(port=servers.redis.port)
    try:
        async with Hub(config) as hub:
            # followed by a reader of another process, as its snapshot marks it
            client.zadd(keys.followers(stream), {"reader-elsewhere": 4_000_000_000_000})
            for i in range(5000):
                await write(hub, "LONG", Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 3.0))
            await hub.flush()
        entries = client.xrange(stream)
    finally:
        client.close()
    minutes = [orjson.loads(f[b"cs"]) if b"cs" in f else [orjson.loads(f[b"c"])]
               for _, f in entries if f[b"t"] == b"1m"]
    held = [m[0] for pack in minutes for m in pack]
    assert len(minutes) < len(held) / 10  # many minutes an entry
    assert 1000 <= len(held) <= 2 * 1000 + 2 * RUN_CAP  # about streams.length
    assert held == list(range(T0 + 60 * (5000 - len(held)), T0 + 60 * 5000, 60))


async def test_a_stream_of_entries_of_every_size_keeps_streams_length_candles(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """Three hundred entries of two candles, then one of 500: the stream still holds the
    newest ``streams.length`` candles at least, whatever the newest entry holds (a
    reader that far behind goes on from the stream), and not much more."""
    import orjson
    import redis

    config_data["streams"] = {"length": 1000, "timeframes": ["1m"]}
    config = HubConfig.from_mapping(config_data, environ={})
    stream = keys.key("candlestream", EX, "MIXED")
    client = redis.Redis(port=servers.redis.port)
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 3.0) for i in range(1100)]
    try:
        async with Hub(config) as hub:
            # followed by a reader of another process, as its snapshot marks it
            client.zadd(keys.followers(stream), {"reader-elsewhere": 4_000_000_000_000})
            for i in range(0, 600, 2):
                await hub.write_candles_batch(EX, "MIXED", data[i:i + 2])
                await hub.get_candles(EX, "MIXED", 1)  # (each batch its own script call)
            await hub.write_candles_batch(EX, "MIXED", data[600:])
            await hub.flush()
        entries = client.xrange(stream)
    finally:
        client.close()
    held = [m[0] for _, f in entries
            for m in (orjson.loads(f[b"cs"]) if b"cs" in f else [orjson.loads(f[b"c"])])]
    assert 1000 <= len(held) <= 1500 + 500
    assert held == [c.timestamp for c in data[-len(held):]]


async def test_a_trim_keeps_streams_length_minutes_not_only_their_rollups(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """Batches of 452 minutes with every default timeframe: each script call publishes
    a 452-minute entry, then the rollups it closed. The stream keeps the newest
    ``streams.length`` minutes at least, with every rollup published after the oldest
    of them (trimmed by counting every candle, it kept the rollups of a batch whose
    minutes it had taken, and 904 minutes instead of 1,000; under load, runs of
    write_candle calls did the same)."""
    import orjson
    import redis

    config_data["streams"] = {"length": 1000}
    config = HubConfig.from_mapping(config_data, environ={})
    stream = keys.key("candlestream", EX, "BATCHES")
    client = redis.Redis(port=servers.redis.port)
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 3.0) for i in range(5 * 452)]
    try:
        async with Hub(config) as hub:
            # followed by a reader of another process, as its snapshot marks it
            client.zadd(keys.followers(stream), {"reader-elsewhere": 4_000_000_000_000})
            for i in range(0, len(data), 452):
                await hub.write_candles_batch(EX, "BATCHES", data[i:i + 452])
                await hub.get_candles(EX, "BATCHES", 1)  # (each batch its own script call)
            await hub.flush()
        entries = client.xrange(stream)
    finally:
        client.close()
    packs = [(f[b"t"], orjson.loads(f[b"cs"]) if b"cs" in f else [orjson.loads(f[b"c"])])
             for _, f in entries]
    minutes = [m[0] for timeframe, pack in packs if timeframe == b"1m" for m in pack]
    assert 1000 <= len(minutes) <= 1500 + 452
    assert minutes == [c.timestamp for c in data[-len(minutes):]]
    # the 5m rollups held: every bucket after the oldest minute held, once, in order
    fives = [m[0] for timeframe, pack in packs if timeframe == b"5m" for m in pack]
    last_closed = (data[-1].timestamp + 60) // 300 * 300 - 300
    assert fives[-1] == last_closed and fives == sorted(set(fives))
    assert fives[0] <= minutes[0] + 300


@pytest.mark.parametrize("window", [300, 1500])  # the window's candles in one piece, two
async def test_a_big_batch_lets_the_others_run_and_lands_whole(
        config_data: dict[str, Any], window: int) -> None:
    """write_candles_batch of 5,000 minutes: other coroutines get turns while it is
    accepted (it is taken a piece at a time), and what lands is the batch, whole: every
    candle in InfluxDB, the newest in the hot window, the 5m rollups of all of it (also
    in the hot window), and a subscriber gets every minute: the stream says how many
    older ones the window's newest came after, and the subscriber catches up from
    storage there."""
    config_data.setdefault("performance", {})["redis_hot_data_window"] = window
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub, \
            Hub(HubConfig.from_mapping(config_data, environ={})) as other:
        data = [Candle(T0 + 60 * i, 10.0 + i % 7, 20.0 + i % 5, 1.0 + i % 3, 12.0 + i % 4,
                       float(i % 11)) for i in range(5000)]
        live = other.candles(EX, "BIG")
        got: list[Candle] = []

        async def follow() -> None:
            async for candle in live:
                got.append(candle.as_candle())
        following = asyncio.ensure_future(follow())
        await subscribed(other)
        ticking = Turns()
        await asyncio.sleep(0)
        before = ticking.count
        assert await hub.write_candles_batch(EX, "BIG", data) == 5000
        during = ticking.count - before
        ticking.stop()
        assert during >= 4  # a turn between each two of its five pieces
        await hub.flush()
        assert stored(hub, "BIG") == data
        assert await hub.get_candles(EX, "BIG", count=2000) == data[-window:]
        assert hub.streams is not None
        await hub.streams.settle()
        await hub.flush()
        # every 5m bucket of the batch, stored and published whole: the warm-up (the
        # hot window's, InfluxDB's rollups before them) equals the resampling
        five = await hub.query_candles(EX, "BIG", limit=5000, interval="5m")
        assert len(five) == 1000
        warm = hub.candles(EX, "BIG", "5m", warmup=1000)
        assert [(await anext(warm)).as_candle() for _ in range(1000)] == five
        await warm.aclose()

        async def delivered() -> bool:
            return len(got) >= len(data)
        await eventually(delivered, within=20)
        await asyncio.sleep(0.2)
        assert got == data  # every minute, once, in order
        assert (await other.get_stats())["streams"]["withheld_notices"] == 1
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await live.aclose()


async def test_a_batch_is_kept_whole_or_not_at_all_when_the_writer_is_behind(
        config_data: dict[str, Any]) -> None:
    """The writer taking nothing (held here) and its mailbox with room for one piece: a
    batch whose first piece got room is accepted whole (its later pieces never wait, so
    the call never raises after part of it was kept); a batch that finds no room waits
    influxdb.timeout, raises BackendUnavailable, and none of it is stored. Once the
    writer takes again, exactly the accepted candles are stored."""
    from hub import BackendUnavailable

    config_data["influxdb"]["timeout"] = 0.5
    data = [Candle(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, float(i)) for i in range(5000)]
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        writer = hub._writer
        assert writer is not None
        mailbox = writer.mailbox
        taking = asyncio.Event()
        receive = mailbox.receive_batch

        async def held(limit: int) -> Any:
            await taking.wait()
            return await receive(limit)
        mailbox.receive_batch = held  # type: ignore[method-assign]
        bound = mailbox.maxsize
        try:
            await hub.write_candles_batch(EX, "FIRST", data[:10])  # the writer's last take
            await asyncio.sleep(0.1)
            mailbox.maxsize = len(mailbox._items) + 1  # room for one piece
            assert await hub.write_candles_batch(EX, "WHOLE", data) == 5000
            with pytest.raises(BackendUnavailable):
                await hub.write_candles_batch(EX, "REFUSED", data)
        finally:
            taking.set()
            mailbox.maxsize = bound
        await hub.flush()
        assert len(stored(hub, "WHOLE")) == 5000
        assert stored(hub, "REFUSED") == []
