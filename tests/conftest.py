"""Fixtures: real redis-server and influxd on free loopback ports, started once per session.

No fakeredis, no mocked HTTP: integration tests talk to the real servers. Each
test gets its own InfluxDB database, an empty Redis db and its own SQLite file.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.backends.redis import INSTANCE_MARKER
from hub import Candle, Hub, HubConfig
from wolfhub.servers import LocalServers


@pytest.fixture(scope="session", params=[
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Every async test runs on the stdlib loop and on uvloop (what the CLI uses)."""
    value: tuple[str, dict[str, bool]] = request.param
    return value


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServers]:
    """redis-server + influxd for the whole session. In CI they must exist: never skipped."""
    local = LocalServers(tmp_path_factory.mktemp("servers"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(autouse=True)
def _collect_garbage_here() -> Iterator[None]:
    """Collect each test's garbage at its end: an object a test leaks (an unclosed socket
    is a ResourceWarning, an error here) is then reported by that test, not by whichever
    later test the garbage collector happens to run in."""
    yield
    gc.collect()


def wolfhub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `wolfhub` command in a process of its own, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "hub", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=120)


def redis_command(servers: LocalServers, *args: str | bytes) -> bytes:
    """Send one command with a plain socket (no client library in the way)."""
    raw = [a if isinstance(a, bytes) else a.encode() for a in args]
    payload = f"*{len(raw)}\r\n".encode() + b"".join(
        f"${len(a)}\r\n".encode() + a + b"\r\n" for a in raw
    )
    with socket.create_connection(("127.0.0.1", servers.redis.port), timeout=5) as s:
        s.sendall(payload)
        return s.recv(65536)


def keys_in_redis(servers: LocalServers) -> int:
    """How many keys Redis holds besides the hub's instance marker (``wolfhub:instance``,
    set once the hub's keys on a server are vetted)."""
    total = int(redis_command(servers, "DBSIZE")[1:])
    return total - int(redis_command(servers, "EXISTS", INSTANCE_MARKER)[1:])


@pytest.fixture
def config_data(servers: LocalServers, tmp_path: Path) -> dict[str, Any]:
    """A config pointing at the session servers, isolated per test."""
    if not servers.redis.running:
        servers.redis.start()
    if not servers.influx.running:
        servers.influx.start()
    redis_command(servers, "FLUSHALL")
    overrides = servers.config_overrides()
    return {
        "redis": {**overrides["redis"], "timeout": 2.0},
        "influxdb": {
            **overrides["influxdb"],
            "bucket": f"test_{uuid.uuid4().hex[:12]}",
            "batch": {"size": 5000, "flush_interval": 0.05},
        },
        "sqlite": {"path": str(tmp_path / "wolfhub.sqlite")},
    }


@pytest.fixture
def config(config_data: dict[str, Any]) -> HubConfig:
    return HubConfig.from_mapping(config_data, environ={})


@pytest.fixture
async def hub(config: HubConfig) -> AsyncIterator[Hub]:
    async with Hub(config) as opened:
        yield opened


async def eventually(check: Any, within: float = 15.0) -> None:
    """Poll ``check`` (an async predicate) until true; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def subscribed(hub: Any, count: int = 1) -> None:
    """Wait until ``count`` subscriptions of ``hub.candles`` have taken their snapshot
    (each gets every candle written from then on)."""
    async def taken() -> bool:
        return bool((await hub.get_stats())["streams"]["subscribers"] >= count)
    await eventually(taken)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "servers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def pytest_configure(config: pytest.Config) -> None:
    # in CI the real servers must be there; locally a missing binary is a clear error too
    os.environ.setdefault("WOLFHUB_TESTING", "1")


async def failover_under_load(hub: Hub, exchange: str, product: str,
                              kill: Callable[[], None],
                              promoted: Callable[[], Awaitable[bool]]) -> None:
    """Cache a position and an indicator every 10 ms while ``kill`` takes the Redis master
    down and a replica is promoted. Every position write is durable (never lost); once
    the cache is back, the indicator is the last value written or gone, never stale.
    Leaves the indicator at 500.0, read back through the new master."""
    await hub.cache_indicator(exchange, product, "EMA", 20, 1.0)
    assert await hub.get_indicator(exchange, product, "EMA", 20) == 1.0
    written = 0

    async def load() -> None:
        nonlocal written
        for i in range(300):
            await hub.cache_position(exchange, product, {"size": i})
            await hub.cache_indicator(exchange, product, "EMA", 20, float(i))
            written = i
            await asyncio.sleep(0.01)

    task = asyncio.create_task(load())
    await asyncio.sleep(0.5)
    kill()
    await eventually(promoted, within=30)
    await task
    assert written == 299
    assert await hub.get_position(exchange, product) == {"size": 299}

    async def back() -> bool:  # the whole cache, and (on a cluster) every slot
        cache = (await hub.get_stats())["actors"]["cache"]
        return bool(cache["available"]) and cache["unavailable_slots"] == 0
    await eventually(back, within=30)
    assert await hub.get_indicator(exchange, product, "EMA", 20, default="gone") in (
        299.0, "gone")

    async def lands() -> bool:  # a write right after the failover may still meet the
        # promoted replica read-only for a moment (skipped, then read as a miss)
        await hub.cache_indicator(exchange, product, "EMA", 20, 500.0)
        return bool(await hub.get_indicator(exchange, product, "EMA", 20) == 500.0)
    await eventually(lands, within=10)


def influx_candles(hub: Hub, q: str) -> list[Candle]:
    """Candles (time, then open, high, low, close, volume columns), ascending, as influxd
    itself answers ``q`` (newest first) over HTTP: not through the hub."""
    import json
    import urllib.parse
    import urllib.request

    url = hub.config.influxdb.url + "/query?" + urllib.parse.urlencode({
        "db": hub.config.influxdb.bucket, "epoch": "s", "q": q})
    with urllib.request.urlopen(url, timeout=30) as answer:
        series = json.load(answer)["results"][0].get("series", [])
    rows = series[0]["values"] if series else []
    return [Candle(int(t), *map(float, rest)) for t, *rest in reversed(rows)]


def influx_resampled(hub: Hub, exchange: str, product: str, seconds: int, limit: int,
                     start: int, end: int, offset: str = "") -> list[Candle]:
    """The newest ``limit`` buckets of ``seconds`` as influxd itself resamples the stored
    minutes of [start, end] (newest first, as the hub asks): what query_candles(interval)
    answers, asked of the server directly. ``offset``: InfluxQL's ``GROUP BY time()``
    offset (``"4d"`` starts weeks on Mondays)."""
    shift = f",{offset}" if offset else ""
    return influx_candles(hub, (
        'SELECT first("open"), max("high"), min("low"), last("close"), sum("volume") '
        f"FROM candle WHERE exchange='{exchange}' AND product='{product}' "
        f"AND time >= {start}s AND time <= {end}s GROUP BY time({seconds}s{shift}) "
        f"fill(none) ORDER BY time DESC LIMIT {limit}"))
