"""Live candles in the harness: rollup delivery latency, the writer's rate under 1,000
subscribers, warm-up hand-overs racing writes, and a gap scan of a year of minutes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._suites import pct
from hub import Candle, Hub, HubConfig
from wolfhub.servers import LocalServers

EX = "bench"
T0 = 1_600_000_000 - 1_600_000_000 % 86_400


def _config_data(servers: LocalServers, work: Path, name: str) -> dict[str, Any]:
    overrides = servers.config_overrides()
    return {**overrides, "sqlite": {"path": str(work / f"{name}.sqlite")},
            "influxdb": {**overrides["influxdb"], "bucket": f"bench_{name}"}}


def _minute(i: int, t0: int = T0) -> Candle:
    return Candle(t0 + 60 * i, 100.0 + i % 50, 101.0 + i % 50, 99.0 + i % 50,
                  100.5 + i % 50, 1.0)


async def _write(hub: Hub, product: str, c: Candle) -> None:
    await hub.write_candle(EX, product, c.timestamp, c.open, c.high, c.low, c.close, c.volume)


async def rollup_latency(hub: Hub, closes: int,
                         redis_url: str) -> list[dict[str, Any]]:
    """A live feed writes minutes; a subscriber follows each timeframe. Latency: from
    the call writing the minute that closes a bucket to the subscriber holding it."""
    rows = []
    for timeframe, span in (("1m", 60), ("5m", 300), ("1h", 3600)):
        product = f"LAT{timeframe}"
        arrived: dict[int, float] = {}
        follower = asyncio.create_task(_note_arrivals(hub.candles(EX, product, timeframe),
                                                      arrived))
        await asyncio.sleep(0.2)
        per = span // 60
        sent: dict[int, float] = {}
        for i in range(closes * per):
            c = _minute(i)
            closing = (i + 1) % per == 0
            if closing:  # a live feed: the minutes before it were handled long ago
                await asyncio.sleep(0.005)
                sent[c.timestamp - (per - 1) * 60] = time.perf_counter()
            await _write(hub, product, c)
            if closing:  # and it waits on its socket for the next one
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        waits = [arrived[t] - s for t, s in sent.items() if t in arrived]
        rows.append({"timeframe": timeframe, "closes": len(sent), "delivered": len(waits),
                     "p50": statistics.median(waits), "p99": pct(waits, 0.99),
                     "max": max(waits)})
    rows.append(await _raw_stream_latency(redis_url, closes))
    return rows


async def _raw_stream_latency(redis_url: str, closes: int) -> dict[str, Any]:
    """The floor beside it, at the same pace: raw redis.asyncio, an XADD on one
    connection reaching an XREAD BLOCK waiting on another (two hops between processes,
    each after the machine idled 5 ms, as a live feed's are; none of the hub's work)."""
    import redis.asyncio as aioredis

    writer, reader = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    key = f"bench:rawlatency:{time.time_ns()}"
    arrived: dict[bytes, float] = {}

    async def read() -> None:
        last = b"$"
        while True:
            for _, entries in await reader.xread({key: last}, block=0):
                for entry_id, _ in entries:
                    arrived[entry_id] = time.perf_counter()
                    last = entry_id

    task = asyncio.create_task(read())
    await asyncio.sleep(0.2)
    sent: dict[bytes, float] = {}
    try:
        for _ in range(closes):
            await asyncio.sleep(0.005)
            began = time.perf_counter()
            sent[await writer.xadd(key, {"c": b"[0,1.0,1.0,1.0,1.0,1.0]"})] = began
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.delete(key)
        await writer.aclose()
        await reader.aclose()
    waits = [arrived[i] - s for i, s in sent.items() if i in arrived]
    return {"timeframe": "raw XADD -> XREAD", "closes": len(sent), "delivered": len(waits),
            "p50": statistics.median(waits), "p99": pct(waits, 0.99), "max": max(waits)}


async def _note_arrivals(stream: Any, arrived: dict[int, float]) -> None:
    async for candle in stream:
        arrived[candle.timestamp] = time.perf_counter()


class _Tally:
    def __init__(self, goal: int) -> None:
        self.count, self.goal, self.done = 0, goal, asyncio.Event()

    async def consume(self, stream: Any) -> None:
        async for _ in stream:
            self.count += 1
            if self.count >= self.goal:
                self.done.set()


async def _timed_writes(hub: Hub, product: str, n: int,
                        cpu: list[float] | None = None) -> float:
    """Wall seconds of ``n`` writes and the flush; ``cpu`` gets this process's CPU
    seconds for them (what the writer's own path costs, apart from the cores it shares)."""
    began, used = time.perf_counter(), time.process_time()
    for i in range(n):
        await _write(hub, product, _minute(i))
    await hub.flush()
    if cpu is not None:
        cpu.append(time.process_time() - used)
    return time.perf_counter() - began


async def _followers(config: dict[str, Any], product: str, count: int, n: int) -> None:
    """(In a process of its own) ``count`` subscribers on ``product``; prints "ready"
    once all follow, then the candles they received once each has ``n``."""
    async with Hub(HubConfig.from_mapping(config, environ={}), handle_sigterm=False) as hub:
        tally = _Tally(count * n)
        tasks = [asyncio.create_task(tally.consume(hub.candles(EX, product, "1m")))
                 for _ in range(count)]
        await _until_subscribed(hub, count)
        print("ready", flush=True)
        try:
            await asyncio.wait_for(tally.done.wait(), 300)
        finally:
            print(tally.count, flush=True)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _until_subscribed(hub: Hub, count: int) -> None:
    for _ in range(1200):  # a minute at most
        if (await hub.get_stats())["streams"]["subscribers"] >= count:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{count} subscribers did not start in a minute")


_BUSY_LOOP = "print('ready', flush=True)\nwhile True:\n    pass"


async def subscribers_cost(hub: Hub, config: dict[str, Any], n: int,
                           count: int = 1000) -> list[dict[str, Any]]:
    """write_candle x n + flush on one product: alone, with one and with ``count``
    subscribers in another hub process (the strategies' process), beside a process that
    only keeps a core busy, and with ``count`` subscribers in this process (sharing the
    writer's thread; once), interleaved five times (the machine drifts, and n writes
    take only about a tenth of a second)."""
    places = ("none", "other process, one", "other process", "other process, busy loop",
              "this process")
    runs: dict[str, list[float]] = {where: [] for where in places}
    cpu: dict[str, list[float]] = {where: [] for where in places}
    delivered: dict[str, int] = dict.fromkeys(places, 0)
    followers = {"other process, one": 1, "other process": count}
    for run in range(5):
        runs["none"].append(await _timed_writes(hub, f"SUBS{run}N", n, cpu["none"]))
        # the same subscribers' process with one subscriber: what a process following
        # the product costs the writer at all, apart from how many subscribe there
        for where, many in followers.items():
            product = f"SUBS{run}P{many}"
            child = subprocess.Popen(  # noqa: ASYNC220 - read from a thread
                [sys.executable, "-m", "bench._streams", json.dumps(config), product,
                 str(many), str(n)], stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None
            assert (await asyncio.to_thread(child.stdout.readline)).strip() == "ready"
            runs[where].append(await _timed_writes(hub, product, n, cpu[where]))
            delivered[where] = int(await asyncio.to_thread(child.stdout.readline))
            await asyncio.to_thread(child.wait, 60)
            child.stdout.close()
        # a process that only keeps one core busy (no hub, no Redis): what any busy
        # second process costs the writer on this machine, apart from what it does
        burner = subprocess.Popen(  # noqa: ASYNC220 - read from a thread
            [sys.executable, "-c", _BUSY_LOOP], stdout=subprocess.PIPE, text=True)
        assert burner.stdout is not None
        assert (await asyncio.to_thread(burner.stdout.readline)).strip() == "ready"
        try:
            runs["other process, busy loop"].append(await _timed_writes(
                hub, f"SUBS{run}B", n, cpu["other process, busy loop"]))
        finally:
            burner.kill()
            await asyncio.to_thread(burner.wait, 60)
            burner.stdout.close()
        if run == 0:  # the same subscribers on the writer's own loop, once
            product = f"SUBS{run}T"
            tally = _Tally(count * n)
            tasks = [asyncio.create_task(tally.consume(hub.candles(EX, product, "1m")))
                     for _ in range(count)]
            await _until_subscribed(hub, count)
            runs["this process"].append(await _timed_writes(hub, product, n,
                                                            cpu["this process"]))
            await asyncio.wait_for(tally.done.wait(), 300)
            delivered["this process"] = tally.count
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return [{"subscribers": {"none": 0, "other process, one": 1,
                             "other process, busy loop": 0}.get(where, count),
             "where": where.replace(", one", ""), "candles": n,
             "seconds": statistics.median(times), "writes_per_s": n / statistics.median(times),
             "delivered": delivered[where],
             "writer_cpu_per_write": statistics.median(cpu[where]) / n}
            for where, times in runs.items()]


async def handovers(hub: Hub, runs: int, warmup: int) -> list[dict[str, Any]]:
    """``runs`` subscriptions with a ``warmup`` while a writer keeps writing: every run
    checks its candles are consecutive minutes (no duplicate, no hole)."""
    product = "HANDOVER"
    for i in range(0, warmup + 100, 5000):
        await hub.write_candles_batch(EX, product, [_minute(j) for j in
                                                    range(i, min(i + 5000, warmup + 100))])
    written = [warmup + 100]
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await _write(hub, product, _minute(written[0]))
            written[0] += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    duplicates = holes = 0
    began = time.perf_counter()
    try:
        for _ in range(runs):
            got: list[int] = []
            stream = hub.candles(EX, product, "1m", warmup=warmup)
            async for candle in stream:
                got.append(candle.timestamp)
                if len(got) >= warmup + 5:
                    break
            await stream.aclose()
            for a, b in itertools.pairwise(got):
                if b <= a:
                    duplicates += 1
                elif b - a > 60:
                    holes += (b - a) // 60 - 1
    finally:
        stop.set()
        await task
    return [{"runs": runs, "warmup": warmup, "duplicates": duplicates, "holes": holes,
             "seconds": time.perf_counter() - began}]


async def gap_scan(hub: Hub, days: int = 365,
                   settled: Callable[[], float] | None = None) -> list[dict[str, Any]]:
    """A year of 1-minute candles of one product with 12 holes; hub.gaps over all of it:
    once right after the write, then five times once ``settled`` (run in a thread) says
    the servers are done with it (influxd compacts what it was just given, and what the
    tables before gave it: the scans are influxd's work on the same two cores)."""
    product = "YEAR"
    total = days * 1440
    missing = {int(total * k / 13) + d for k in range(1, 13) for d in range(k)}
    batch: list[Candle] = []
    for i in range(total):
        if i in missing:
            continue
        batch.append(_minute(i, T0 - days * 86_400))
        if len(batch) == 5000:
            await hub.write_candles_batch(EX, product, batch, window=False)
            batch = []
    if batch:
        await hub.write_candles_batch(EX, product, batch, window=False)
    await hub.flush()
    made: list[tuple[int, int]] = []  # the holes as (first, last) missing minute
    for i in sorted(missing):
        at = T0 - days * 86_400 + 60 * i
        if made and made[-1][1] + 60 == at:
            made[-1] = (made[-1][0], at)
        else:
            made.append((at, at))
    began = time.perf_counter()
    first = await hub.gaps(EX, product)
    first_s = time.perf_counter() - began
    waited = await asyncio.to_thread(settled) if settled is not None else 0.0
    times = []
    found: list[tuple[int, int]] = []
    exact = 0
    wrong: list[dict[str, Any]] = []  # what an inexact scan got wrong, read back
    for _ in range(5):
        began = time.perf_counter()
        found = await hub.gaps(EX, product)
        times.append(time.perf_counter() - began)
        exact += found == made
        if found != made and len(wrong) < 3:
            wrong.append(await _wrong_holes(hub, product, found, made))
    return [{"candles": total - len(missing), "holes_found": len(found),
             "holes_made": len(made), "scans_exact": exact, "scans": len(times),
             "p50": statistics.median(times), "max": max(times),
             "first_right_after_write": first_s, "first_exact": first == made,
             "servers_settled_s": round(waited, 1),
             **({"wrong": wrong} if wrong else {})}]


async def _wrong_holes(hub: Hub, product: str, found: list[tuple[int, int]],
                       made: list[tuple[int, int]], later: float = 5.0) -> dict[str, Any]:
    """The holes a scan reported that were not made, and those made it missed, each
    with the candles a read of its slots returns right away and ``later`` seconds later
    (whether the store lacked them for a while or a write is missing)."""
    async def stored(hole: tuple[int, int]) -> int:
        return len(await hub.query_candles(EX, product, hole[0], hole[1], limit=100_000))

    extra = [h for h in found if h not in made]
    lost = [h for h in made if h not in found]
    now = [await stored(h) for h in extra]
    await asyncio.sleep(later)
    return {"extra": extra, "missed": lost, "extra_candles_read": now,
            "extra_candles_read_later": [await stored(h) for h in extra]}


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:  # utime and stime, in clock ticks
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def settle(pids: list[int], share: float = 0.05, within: float = 120.0) -> float:
    """Wait until the servers (process ids ``pids``) together use less than ``share`` of
    a core (influxd compacts for a while after the tables before wrote a million rows:
    what it does then shares the two cores with what is measured next). Returns the
    wait."""
    began = time.perf_counter()
    while time.perf_counter() - began < within:
        used = _cpu_seconds(pids)
        time.sleep(1.0)
        if _cpu_seconds(pids) - used < share:
            break
    return time.perf_counter() - began


def streams_tables(servers: LocalServers, work: Path, size: str) -> dict[str, Any]:
    """The four tables, measured in a process of their own (as the backfill and memory
    rows are: a fresh interpreter, not one holding the other tables' data for its
    garbage collector to walk), once the servers are idle; ``size``: "full", "quick" or
    "tiny" (the smoke test)."""
    pids = [s.process.pid for s in (servers.redis, servers.influx) if s.process is not None]
    waited = settle(pids)
    done = subprocess.run(
        [sys.executable, "-m", "bench._streams", "tables", json.dumps(_config_data(
            servers, work, "streams")), str(work), size, json.dumps(pids)],
        capture_output=True, text=True, check=True, timeout=1800)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for row in result["rollup_latency"]:
        row["servers_settled_s"] = round(waited, 1)
    return result


def _tables_here(config: dict[str, Any], work: Path, size: str,
                 pids: list[int]) -> dict[str, Any]:
    import uvloop

    # (writes to 1,000 subscribers stay within streams.buffer: past it each subscriber
    # catches up from storage, which tests/test_streams.py covers; here the writer's rate)
    closes, writes, runs, days = {"full": (300, 8_000, 1000, 365),
                                  "quick": (50, 5_000, 100, 30),
                                  "tiny": (3, 300, 5, 2)}[size]

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Hub(HubConfig.from_mapping(config, environ={}),
                       handle_sigterm=False) as hub:
            redis = config["redis"]
            out["rollup_latency"] = await rollup_latency(
                hub, closes, f"redis://{redis['host']}:{redis['port']}")
            out["subscribers"] = await subscribers_cost(
                hub, config, writes, 1000 if size != "tiny" else 20)
            out["handover"] = await handovers(hub, runs, 1000)
            out["gap_scan"] = await gap_scan(hub, days, lambda: settle(pids))
        return out

    result: dict[str, Any] = uvloop.run(run())
    return result

if __name__ == "__main__":
    if sys.argv[1] == "tables":  # streams_tables' process
        print(json.dumps(_tables_here(json.loads(sys.argv[2]), Path(sys.argv[3]),
                                      sys.argv[4], json.loads(sys.argv[5]))))
    else:  # the other process of subscribers_cost
        import uvloop

        uvloop.run(_followers(json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                              int(sys.argv[4])))
