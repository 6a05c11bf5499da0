"""Faults injected under a running hub, against real servers: every write the hub
acknowledged is stored once the fault is gone, the hub is healthy again without a
restart of the process, and a write it could not keep got BackendUnavailable saying why.

Each test prints one line (``fault: acknowledged=... stored=...``) for README's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from actors.cache.ops import op_fill
from hub import BackendUnavailable, Candle, Hub, HubConfig
from hubdomain import keys
from tests.conftest import eventually
from wolfhub.servers import LocalServers, RedisServer

pytestmark = pytest.mark.anyio
EX = "papertrader"
T0 = 1697529600


def influx_count(servers: LocalServers, db: str, measurement: str, field: str,
                 where: str = "") -> int:
    q = f'SELECT count("{field}") FROM "{measurement}"{where}'
    body = urllib.parse.urlencode({"db": db, "q": q}).encode()
    url = f"http://127.0.0.1:{servers.influx.port}/query"
    with urllib.request.urlopen(url, body, timeout=10) as answer:
        series = json.loads(answer.read())["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


async def counted(servers: LocalServers, db: str, measurement: str, field: str,
                  where: str = "") -> int:
    return await asyncio.to_thread(influx_count, servers, db, measurement, field, where)


def report(fault: str, acknowledged: int, stored: int, **measured: int) -> None:
    extra = "".join(f" {name}={value}" for name, value in measured.items())
    print(f"\n{fault}: acknowledged={acknowledged} stored={stored} "
          f"lost={acknowledged - stored}{extra}")


@contextlib.contextmanager
def small_disk(directory: Path, size: str = "3m") -> Iterator[Path | None]:
    """A small tmpfs for the SQLite file, when this machine lets the tests mount one
    (None otherwise: the tests then fill SQLite's page limit, the same SQLITE_FULL)."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           str(directory)], capture_output=True, check=False)
    if done.returncode != 0:
        yield None
        return
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def fill(directory: Path, keep: int) -> Path:
    """Fill a filesystem but ``keep`` bytes; returns the filler to remove later."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - keep))
    return filler


def fill_rest(directory: Path) -> Path:
    """Take every byte left, a block at a time until the filesystem refuses."""
    filler = directory / "rest"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    return filler


@pytest.fixture
def fault_config(config_data: dict[str, Any]) -> dict[str, Any]:
    """Short deadlines, so each fault shows within a test's time."""
    config_data["influxdb"].update(spool_after=0.2, max_pending=2000, timeout=1.0)
    return config_data


async def test_spool_disk_full_is_backpressure_and_nothing_acknowledged_is_lost(
        fault_config: dict[str, Any], servers: LocalServers, tmp_path: Path) -> None:
    with small_disk(tmp_path / "small") as disk:
        if disk is not None:
            fault_config["sqlite"]["path"] = str(disk / "hub.sqlite")
        config = HubConfig.from_mapping(fault_config, environ={})
        db = config.influxdb.bucket
        async with Hub(config) as hub:
            store = hub._sqlite.store  # type: ignore[union-attr]
            servers.influx.kill()
            if disk is not None:
                filler = fill(disk, keep=400_000)
            else:  # the same error SQLite gives on a full disk
                pages = store.db.execute("PRAGMA page_count").fetchone()[0]
                store.db.execute(f"PRAGMA max_page_count = {pages + 60}")
            acknowledged, refused = 0, ""
            for i in range(300_000):
                try:
                    await hub.write_candle(EX, "FULL", T0 + 60 * i, 1, 2, 0.5, 1.5, 3)
                except BackendUnavailable as exc:
                    refused = str(exc)
                    break
                acknowledged += 1
            assert "spool" in refused and "full" in refused, refused  # said why
            # the last bytes go too: a trade has nowhere durable to go
            if disk is not None:
                rest = fill_rest(disk)
            else:
                pages = store.db.execute("PRAGMA page_count").fetchone()[0]
                store.db.execute(f"PRAGMA max_page_count = {pages}")
            # trades go on while SQLite finds room in pages it holds, then are refused
            trades, trade_refused = 0, ""
            for i in range(100_000):
                try:
                    await hub.write_trade(EX, "FULL", T0 + i, "buy", 1.0, 1.0, f"t{i}")
                except BackendUnavailable as exc:
                    trade_refused = str(exc)
                    break
                trades += 1
            assert "sqlite" in trade_refused, trade_refused
            stats = (await hub.get_stats())["actors"]["writer"]
            assert stats["spool_error"] and stats["restarts"] == 0
            # the fault goes away: space, then InfluxDB; no restart of the process
            if disk is not None:
                filler.unlink()
                rest.unlink()
            else:
                store.db.execute("PRAGMA max_page_count = 1073741823")
            servers.influx.start()
            await eventually(hub_flushed(hub), within=60)
            stored = await counted(servers, db, "candle", "close")
            assert stored == acknowledged
            await hub.write_trade(EX, "FULL", T0 - 1, "buy", 1.0, 1.0, "after")
            await hub.flush()
            stored_trades = await counted(servers, db, "trade", "price")
            assert stored_trades == trades + 1
            assert hub.healthy
    report("spool disk full", acknowledged + trades + 1, stored + stored_trades)


def hub_flushed(hub: Hub) -> Any:
    async def check() -> bool:
        try:
            await hub.flush()
        except BackendUnavailable:
            return False
        return True
    return check


async def test_sqlite_file_removed_under_a_running_hub(
        fault_config: dict[str, Any], servers: LocalServers) -> None:
    config = HubConfig.from_mapping(fault_config, environ={})
    path = Path(config.sqlite.path)
    async with Hub(config) as hub:
        servers.influx.kill()
        candles = [Candle(T0 + 60 * i, 1, 2, 0.5, 1.5, 3) for i in range(3000)]
        await hub.write_candles_batch(EX, "RM", candles[:2000])
        await hub.cache_position(EX, "RM", {"size": 1})

        async def spooled() -> bool:
            return bool((await hub.get_stats())["sqlite"]["outbox"])
        await eventually(spooled, within=30)
        for suffix in ("", "-wal", "-shm"):  # as `rm data/wolfhub.sqlite*` would
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(path) + suffix)
        await hub.write_candles_batch(EX, "RM", candles[2000:])
        await hub.cache_position(EX, "RM", {"size": 2})
        await hub.write_trade(EX, "RM", T0, "buy", 1.0, 1.0, "o1")
        assert await asyncio.to_thread(path.exists)  # noticed and recreated
        servers.influx.start()
        await eventually(hub_flushed(hub), within=60)
        stored = await counted(servers, config.influxdb.bucket, "candle", "close")
        assert stored == len(candles)
        assert await counted(servers, config.influxdb.bucket, "trade", "price") == 1
        await hub.flush_all()
        assert await hub.get_position(EX, "RM") == {"size": 2}  # from the new file
    async with Hub(config) as again:  # and on disk for the next start
        assert await again.get_position(EX, "RM") == {"size": 2}
    report("SQLite file removed under the hub", len(candles) + 1, stored + 1)


async def test_sqlite_read_only_refuses_durable_writes_and_recovers(
        fault_config: dict[str, Any], servers: LocalServers) -> None:
    # SQLITE_READONLY as a file whose permissions or filesystem changed would give it
    # (a filesystem cannot be remounted read-only under a file open for writing)
    config = HubConfig.from_mapping(fault_config, environ={})
    async with Hub(config) as hub:
        store = hub._sqlite.store  # type: ignore[union-attr]
        await hub.write_trade(EX, "RO", T0, "buy", 1.0, 1.0, "before")
        store.db.execute("PRAGMA query_only = ON")
        with pytest.raises(BackendUnavailable, match="sqlite"):
            await hub.write_trade(EX, "RO", T0 + 1, "buy", 1.0, 1.0, "refused")
        with pytest.raises(BackendUnavailable, match="sqlite"):
            await hub.cache_position(EX, "RO", {"size": 9})
        await hub.write_candle(EX, "RO", T0, 1, 2, 0.5, 1.5, 3)  # InfluxDB takes these
        await hub.flush()
        assert hub.healthy  # a refusing file is not a crash
        store.db.execute("PRAGMA query_only = OFF")
        await hub.write_trade(EX, "RO", T0 + 2, "buy", 1.0, 1.0, "after")
        await hub.flush()
        orders = [t.order_id for t in await hub.query_trades(EX, "RO")]
        assert orders == ["before", "after"]
        assert await hub.get_position(EX, "RO") is None  # the refused one never landed
        candles = await hub.query_candles(EX, "RO")
        assert len(candles) == 1
    report("SQLite read-only", 3, len(orders) + len(candles))


class FlakyInflux:
    """A tiny HTTP proxy in front of influxd: passes requests on, or answers 503 with
    Retry-After, or answers late."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mode = "pass"
        self.unavailable = 0
        self.failed = 0
        self.late = 0
        self.unavailable_at: list[float] = []  # when each 503 went out
        self.listen = 0  # the proxy's port, once started
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.listen = int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            write = b"/write" in head.split(b"\r\n", 1)[0]
            if self.mode == "503" and write:
                self.unavailable += 1
                self.unavailable_at.append(asyncio.get_running_loop().time())
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            elif self.mode == "500" and write:  # as influxd answers a write that timed out
                self.failed += 1
                answer = b'{"error":"timeout"}'
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(answer), answer))
            else:
                if self.mode == "slow":
                    self.late += write
                    await asyncio.sleep(2.5)
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
                request = head.replace(b"Connection: keep-alive", b"Connection: close")
                if b"connection:" not in request.lower():
                    request = request[:-2] + b"Connection: close\r\n\r\n"
                up_writer.write(request + body)
                answer = await up_reader.read()
                up_writer.close()
                writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def flaky(servers: LocalServers) -> AsyncIterator[FlakyInflux]:
    proxy = FlakyInflux(servers.influx.port)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_influxdb_answering_500_503_and_late(fault_config: dict[str, Any],
                                                   servers: LocalServers,
                                                   flaky: FlakyInflux) -> None:
    fault_config["influxdb"].update(url=f"http://127.0.0.1:{flaky.listen}", timeout=2.0,
                                    spool_after=30.0)
    config = HubConfig.from_mapping(fault_config, environ={})
    acknowledged = 0
    seen = {"500": lambda: flaky.failed, "503": lambda: flaky.unavailable,
            "slow": lambda: flaky.late}
    async with Hub(config) as hub:
        for mode in ("500", "503", "slow", "pass"):
            flaky.mode = mode
            for i in range(2000):
                await hub.write_candle(EX, "FLAKY", T0 + 60 * acknowledged, 1, 2, 0.5, 1.5, i)
                acknowledged += 1
            if mode in seen:  # the writer met this answer (a few times for the 503)
                target = 3 if mode == "503" else 1

                async def met(count: Any = seen[mode], target: int = target) -> bool:
                    return bool(count() >= target)
                await eventually(met, within=30)
        await eventually(hub_flushed(hub), within=60)
        writer = (await hub.get_stats())["actors"]["writer"]
        assert writer["retries"] >= 1 and writer["restarts"] == 0
        # Retry-After: 1 was heeded: never two attempts within the second it asked for
        gaps = [b - a for a, b in itertools.pairwise(flaky.unavailable_at)]
        assert gaps and min(gaps) >= 0.95, gaps
    stored = await counted(servers, config.influxdb.bucket, "candle", "close")
    assert stored == acknowledged
    assert flaky.failed >= 1
    report("InfluxDB 500, then 503 with Retry-After, then slow", acknowledged, stored,
           answered_500=flaky.failed, answered_503=flaky.unavailable)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    yield server
    server.kill()


def redis_cli(server: RedisServer, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(server.port), *args], capture_output=True,
                          text=True, timeout=60, check=False)
    return done.stdout.strip()


class ReadBack:
    """Writes an indicator point and a position, reads both back; counts the writes
    acknowledged and the reads that answered an older value."""

    def __init__(self, hub: Hub, product: str) -> None:
        self.hub, self.product = hub, product
        self.acknowledged = self.stale = self.positions_kept = 0
        self.value = 0.0
        self.position: dict[str, float] = {}

    async def write(self, value: float) -> None:
        self.value = value
        await self.hub.write_indicator(EX, self.product, "EMA", T0 + int(value) * 60, value,
                                       period=20)
        self.position = {"size": value}
        await self.hub.cache_position(EX, self.product, self.position)
        self.acknowledged += 2

    async def cache(self, value: float) -> None:
        self.value = value
        await self.hub.cache_indicator(EX, self.product, "EMA", 20, value)

    async def check(self, reads: int = 3) -> None:
        """Read both back ``reads`` times; a position read back right counts as kept."""
        position = None
        for _ in range(reads):
            indicator = await self.hub.get_indicator(EX, self.product, "EMA", 20)
            position = await self.hub.get_position(EX, self.product)
            self.stale += (indicator != self.value) + (position != self.position)
        self.positions_kept += position == self.position

    async def stored(self, servers: LocalServers, db: str) -> int:
        """Indicator points in InfluxDB plus positions read back; SQLite holds the last."""
        where = f" WHERE \"product\"='{self.product}'"
        points = await counted(servers, db, "indicator", "value", where)
        state = self.hub._sqlite
        assert state is not None
        last = await state.get(keys.position(EX, self.product, False))
        assert last is not None and orjson.loads(last) == self.position
        return points + self.positions_kept


async def test_redis_out_of_memory_and_read_only_serve_nothing_stale(
        fault_config: dict[str, Any], servers: LocalServers, own_redis: RedisServer,
        tmp_path: Path) -> None:
    fault_config["redis"].update(port=own_redis.port, timeout=0.5)
    config = HubConfig.from_mapping(fault_config, environ={})
    async with Hub(config) as hub:
        probe = ReadBack(hub, "OOM")
        await probe.write(1.0)
        await hub.flush()
        await probe.check()
        # out of memory: Redis answers, but refuses every write
        await asyncio.to_thread(redis_cli, own_redis, "CONFIG", "SET", "maxmemory", "1")
        await probe.write(2.0)
        await hub.flush()
        await probe.check()  # never the old value Redis still holds: InfluxDB / SQLite answer
        await asyncio.to_thread(redis_cli, own_redis, "CONFIG", "SET", "maxmemory", "0")
        # read only: a replica (of an empty master) refuses writes and reads the master's data
        master = RedisServer(tmp_path / "master")
        await asyncio.to_thread(master.start)
        try:
            await asyncio.to_thread(redis_cli, own_redis, "REPLICAOF", "127.0.0.1",
                                    str(master.port))
            await asyncio.sleep(0.5)
            await probe.write(3.0)
            await hub.flush()
            await probe.check()
            await asyncio.to_thread(redis_cli, own_redis, "REPLICAOF", "NO", "ONE")
            # a write after the fault reads back at once (the stale key it replaced is
            # current again), and a read-through fill never overwrites it
            await probe.cache(3.5)
            assert await hub.get_indicator(EX, "OOM", "EMA", 20) == 3.5
        finally:
            await asyncio.to_thread(master.kill)
        assert probe.stale == 0
        assert hub.healthy
        stored = await probe.stored(servers, config.influxdb.bucket)
    assert stored == probe.acknowledged == 6
    report("Redis OOM, then READONLY", probe.acknowledged, stored, stale_reads=probe.stale)


async def test_a_read_through_fill_never_overwrites_a_newer_write(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """get_* read the old value from InfluxDB/SQLite, a write lands, then the fill with
    the old value arrives: the write stays."""
    config = HubConfig.from_mapping(config_data, environ={})
    async with Hub(config) as hub:
        cache = hub._cache
        assert cache is not None
        await hub.cache_indicator(EX, "FILL", "EMA", 20, 4.0)
        await hub.cache_position(EX, "FILL", {"size": 4})
        await cache.perform(op_fill(keys.indicator(EX, "FILL", "EMA", "20", False), b"3.0", 60))
        await cache.perform(op_fill(keys.position(EX, "FILL", False), b'{"size":3}', 60))
        assert await hub.get_indicator(EX, "FILL", "EMA", 20) == 4.0
        assert await hub.get_position(EX, "FILL") == {"size": 4}
        await hub.flush_all()  # on a miss the fill does land
        await cache.perform(op_fill(keys.position(EX, "FILL", False), b'{"size":3}', 60))
        assert await hub.get_position(EX, "FILL") == {"size": 3}


class LoadingRedis(RedisServer):
    def ready(self) -> bool:  # started: answering, LOADING included
        return super().ready() or self._loading()

    def _loading(self) -> bool:
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"-LOADING")
        except OSError:
            return False


async def test_redis_loading_its_dataset(fault_config: dict[str, Any], servers: LocalServers,
                                         tmp_path: Path) -> None:
    redis = LoadingRedis(tmp_path / "loading", extra=[
        "--save", "", "--dbfilename", "d.rdb", "--enable-debug-command", "yes"])
    await asyncio.to_thread(redis.start)
    try:
        # a dataset that takes a moment to load
        await asyncio.to_thread(redis_cli, redis, "DEBUG", "POPULATE", "1500000", "filler",
                                "100")
        await asyncio.to_thread(redis_cli, redis, "SAVE")
        fault_config["redis"].update(port=redis.port, timeout=0.5)
        config = HubConfig.from_mapping(fault_config, environ={})
        async with Hub(config) as hub:
            probe = ReadBack(hub, "LOAD")
            await probe.write(1.0)
            await hub.flush()
            await probe.check()
            await asyncio.to_thread(redis.kill)
            await asyncio.to_thread(redis.start)  # LOADING to every command meanwhile
            loading = await asyncio.to_thread(redis._loading)
            await probe.write(2.0)  # durable: SQLite; InfluxDB
            await hub.flush()
            await probe.check()

            async def back() -> bool:
                stats = (await hub.get_stats())["actors"]["cache"]
                return bool(stats["available"]) and not await asyncio.to_thread(redis._loading)
            await eventually(back, within=60)
            await probe.write(3.0)
            await hub.flush()
            await probe.check()
            assert probe.stale == 0
            assert hub.healthy
            stored = await probe.stored(servers, config.influxdb.bucket)
    finally:
        await asyncio.to_thread(redis.kill)
    assert loading, "the dataset loaded before the hub could see LOADING"
    assert stored == probe.acknowledged == 6
    report("Redis LOADING its dataset", probe.acknowledged, stored, stale_reads=probe.stale)


@pytest.mark.parametrize("actor", ["writer", "cache", "state", "query"])
async def test_a_crash_in_each_actor_loses_nothing_acknowledged(
        fault_config: dict[str, Any], servers: LocalServers, actor: str) -> None:
    config = HubConfig.from_mapping(fault_config, environ={})
    hub = Hub(config)
    hub._supervision = {"window": 2.0, "max_backoff": 0.3}
    async with hub:
        target = {"writer": hub._writer, "cache": hub._cache and hub._cache.actor,
                  "state": hub._sqlite,
                  "query": hub._query}[actor]
        assert target is not None
        handle = target.handle
        crashes = 0

        async def crashing(batch: Any) -> None:
            nonlocal crashes
            if crashes < 7:  # past the budget of 5 a window: unhealthy, still restarted
                crashes += 1
                raise RuntimeError("injected crash")
            await handle(batch)

        target.handle = crashing  # type: ignore[method-assign]
        acknowledged = trades = i = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 40
        after = 0  # calls made once the crashes are over
        while after < 20:
            assert loop.time() < deadline, f"only {crashes} crashes happened"
            i += 1
            after += crashes == 7
            try:
                await hub.write_candle(EX, "CRASH", T0 + 60 * i, 1, 2, 0.5, 1.5, 3)
                acknowledged += 1
                await hub.write_trade(EX, "CRASH", T0 + i, "buy", 1.0, 1.0, f"o{i}")
                trades += 1
                await hub.cache_position(EX, "CRASH", {"size": i})
                await hub.get_indicator(EX, "CRASH", "EMA", 20)
                await hub.query_candles(EX, "CRASH", limit=2)
            except BackendUnavailable:
                pass  # refused while the actor was down: not acknowledged
            await asyncio.sleep(0.02)
        assert crashes == 7

        async def healthy() -> bool:
            return hub.healthy
        await eventually(healthy, within=30)
        await eventually(hub_flushed(hub), within=30)
        stored = await counted(servers, config.influxdb.bucket, "candle", "close")
        assert stored == acknowledged and acknowledged > 0
        assert await counted(servers, config.influxdb.bucket, "trade", "price") == trades
    report(f"crash injected in the {actor} actor (x7)", acknowledged + trades,
           stored + trades)


async def test_an_actor_crashing_past_its_budget_shows_in_stats_metrics_and_doctor(
        fault_config: dict[str, Any], servers: LocalServers) -> None:
    from wolfhub.doctor import examine
    from wolfhub.servers import free_port

    fault_config["metrics"] = {"port": free_port()}
    config = HubConfig.from_mapping(fault_config, environ={})
    hub = Hub(config)
    hub._supervision = {"window": 3.0, "max_backoff": 0.5}
    async with hub:
        writer = hub._writer
        assert writer is not None
        handle = writer.handle
        broken, crashes = True, 0

        async def crashing(batch: Any) -> None:
            nonlocal crashes
            if broken:
                crashes += 1
                raise RuntimeError("injected crash")
            await handle(batch)

        writer.handle = crashing  # type: ignore[method-assign]
        acknowledged = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while crashes < 9:  # past the budget of 5: restarted all the same
            assert loop.time() < deadline, f"restarts stopped after {crashes} crashes"
            await hub.write_candle(EX, "BUDGET", T0 + 60 * acknowledged, 1, 2, 0.5, 1.5, 3)
            acknowledged += 1
            await asyncio.sleep(0.05)
        assert not hub.healthy and not (await hub.get_stats())["healthy"]
        running = next(f for f in await examine(config, "") if f.check == "running hub")
        assert running.status == "FAIL", running
        assert "writer" in running.detail or "crashed more than 5" in running.detail
        broken = False  # the cause goes away: healthy again by itself

        async def healthy() -> bool:
            return hub.healthy
        await eventually(healthy, within=30)
        await eventually(hub_flushed(hub), within=30)
        running = next(f for f in await examine(config, "") if f.check == "running hub")
        assert running.status == "ok", running
        assert writer.restarts >= 9
        stored = await counted(servers, config.influxdb.bucket, "candle", "close")
    assert stored == acknowledged
    report("writer crashing for ever (until the cause is gone)", acknowledged, stored)


async def test_doctor_warns_of_a_small_or_read_only_disk_under_sqlite(
        fault_config: dict[str, Any], tmp_path: Path) -> None:
    from wolfhub.doctor import examine

    with small_disk(tmp_path / "doctor", size="8m") as disk:
        if disk is None:
            pytest.skip("this machine does not let the tests mount a tmpfs")
        fault_config["sqlite"]["path"] = str(disk / "hub.sqlite")
        config = HubConfig.from_mapping(fault_config, environ={})
        found = next(f for f in await examine(config, "") if f.check == "sqlite disk")
        assert found.status == "warn" and "MiB free" in found.detail, found
        await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,ro", str(disk)],
                                check=True)
        found = next(f for f in await examine(config, "") if f.check == "sqlite disk")
        assert found.status == "FAIL" and "not writable" in found.detail, found


def minutes(first: int, end: int) -> list[Candle]:
    return [Candle(T0 + i * 60, 1.0, 2.0, 0.5, 1.0 + i, 1.0) for i in range(first, end)]


async def snapshotting_redis(tmp_path: Path, fault_config: dict[str, Any]
                             ) -> tuple[RedisServer, HubConfig]:
    """A redis-server of its own that saves its snapshot only when told (SAVE), and the
    config of a hub using it."""
    redis = RedisServer(tmp_path / "snapshot", extra=["--save", "", "--dbfilename", "d.rdb"])
    await asyncio.to_thread(redis.start)
    fault_config["redis"].update(port=redis.port, timeout=0.5)
    return redis, HubConfig.from_mapping(fault_config, environ={})


async def written_around_a_snapshot(hub: Hub, redis: RedisServer) -> ReadBack:
    """An indicator, a position and minutes 0-99, the snapshot, then newer values of
    both and minutes 100-149: what Redis loses when it restarts from that snapshot."""
    probe = ReadBack(hub, "SNAP")
    await probe.write(1.0)
    await hub.write_candles_batch(EX, "SNAP", minutes(0, 100))
    await hub.flush()
    await probe.check()
    await asyncio.to_thread(redis_cli, redis, "SAVE")  # the snapshot
    await probe.write(2.0)
    await hub.write_candles_batch(EX, "SNAP", minutes(100, 150))
    await hub.flush()
    await probe.check()
    return probe


async def test_redis_restarting_from_an_older_snapshot_serves_nothing_rolled_back(
        fault_config: dict[str, Any], servers: LocalServers, tmp_path: Path) -> None:
    """Redis crashes and restarts from its last snapshot (RDB), taken before the hub's
    newest writes: it acknowledged them, then lost them. What it now holds for those
    keys (an indicator, a position, a hot window) is older than what the hub wrote;
    none of it may be served: the hub notices the server's new run_id and drops every
    cached key before Redis serves again."""
    redis, config = await snapshotting_redis(tmp_path, fault_config)
    try:
        async with Hub(config) as hub:
            probe = await written_around_a_snapshot(hub, redis)
            assert len(await hub.get_candles(EX, "SNAP", 1000)) == 150
            await asyncio.to_thread(redis.kill)  # a crash: what came after SAVE is gone
            await asyncio.to_thread(redis.start)  # loads the snapshot
            assert await asyncio.to_thread(redis_cli, redis, "EXISTS",
                                           keys.candles(EX, "SNAP")) == "1"
            await probe.check()  # (the first reads meet the new server)

            async def forgotten() -> bool:
                cache = (await hub.get_stats())["actors"]["cache"]
                return bool(cache["available"]) and cache["stale_keys_pending"] == 0
            await eventually(forgotten, within=30)
            await probe.check()

            async def rewarmed() -> bool:  # the maintenance job filled the window again
                jobs = (await hub.get_stats())["actors"]["maintenance"]["jobs"]
                return (jobs["rewarm"]["last_result"] or {}).get("restarts", 0) >= 1
            await eventually(rewarmed, within=30)
            refilled = await hub.get_candles(EX, "SNAP", 1000)
            await hub.write_candles_batch(EX, "SNAP", minutes(150, 160))
            await hub.flush()
            newest = await hub.query_candles(EX, "SNAP", limit=60)
            window = await hub.get_candles(EX, "SNAP", 1000)
            await probe.check()
            stored = sum([await counted(servers, config.influxdb.bucket, measurement, field,
                                        " WHERE product='SNAP'")
                          for measurement, field in (("indicator", "value"),
                                                     ("candle", "close"))])
    finally:
        await asyncio.to_thread(redis.kill)
    assert probe.stale == 0
    assert stored == 2 + 160  # the two indicator points and every candle
    assert [c.timestamp for c in newest] == [T0 + i * 60 for i in range(100, 160)]
    # the window is whole again, from InfluxDB, with none of the minutes Redis lost
    # skipped, and the writes after the restart join it
    assert [c.timestamp for c in refilled] == [T0 + i * 60 for i in range(150)]
    assert [c.timestamp for c in window] == [T0 + i * 60 for i in range(160)]
    report("Redis restarted from an older snapshot", 2 + 160, stored,
           stale_reads=probe.stale, window_candles_after=len(window))


async def test_a_hub_started_after_redis_restarted_from_a_snapshot_serves_nothing_rolled_back(
        fault_config: dict[str, Any], servers: LocalServers, tmp_path: Path) -> None:
    """The machine loses power: Redis and the bot go down together, and both start
    again, Redis from its last snapshot. The new hub process never saw the server
    before, so the run_id cannot tell it; the instance marker the snapshot holds can."""
    redis, config = await snapshotting_redis(tmp_path, fault_config)
    try:
        async with Hub(config) as hub:
            probe = await written_around_a_snapshot(hub, redis)
        await asyncio.to_thread(redis.kill)  # the power goes
        await asyncio.to_thread(redis.start)  # loads the snapshot
        assert await asyncio.to_thread(redis_cli, redis, "GET",
                                       keys.position(EX, "SNAP")) == '{"size":1.0}'
        async with Hub(config) as hub:  # the bot starts again
            probe.hub = hub
            await probe.check()
            await hub.write_candles_batch(EX, "SNAP", minutes(150, 160))
            await hub.flush()
            newest = await hub.query_candles(EX, "SNAP", limit=60)
            window = await hub.get_candles(EX, "SNAP", 1000)
            await probe.check()
            forgot = (await hub.get_stats())["actors"]["cache"]["forgot_all"]
            stored = sum([await counted(servers, config.influxdb.bucket, measurement, field,
                                        " WHERE product='SNAP'")
                          for measurement, field in (("indicator", "value"),
                                                     ("candle", "close"))])
        async with Hub(config) as hub:  # and once more: the keys are its own now
            again = (await hub.get_stats())["actors"]["cache"]["forgot_all"]
            position = await hub.get_position(EX, "SNAP")
    finally:
        await asyncio.to_thread(redis.kill)
    assert probe.stale == 0
    assert [c.timestamp for c in newest] == [T0 + i * 60 for i in range(100, 160)]
    assert [c.timestamp for c in window] == [T0 + i * 60 for i in range(160)]
    assert (forgot, again) == (1, 0)
    assert position == {"size": 2.0}
    assert stored == 2 + 160
    report("Redis and the hub restarted together, Redis from an older snapshot", 2 + 160,
           stored, stale_reads=probe.stale)


async def test_redis_emptied_under_a_running_hub_gets_its_windows_and_marker_back(
        fault_config: dict[str, Any], tmp_path: Path) -> None:
    """An operator empties Redis (FLUSHALL) under a running hub: the hot window is
    filled again from InfluxDB, and the server is marked vetted again, so the next
    hub process to start drops nothing."""
    redis, config = await snapshotting_redis(tmp_path, fault_config)
    window = keys.candles(EX, "FLUSH")
    try:
        async with Hub(config) as hub:
            await hub.write_candles_batch(EX, "FLUSH", minutes(0, 100))
            await hub.flush()
            marker = await asyncio.to_thread(redis_cli, redis, "GET", "wolfhub:instance")
            await asyncio.to_thread(redis_cli, redis, "FLUSHALL")

            async def refilled() -> bool:
                return await asyncio.to_thread(redis_cli, redis, "ZCARD", window) == "100"
            await eventually(refilled, within=30)

            async def reported() -> bool:  # (the job's result is kept once it returns)
                job = (await hub.get_stats())["actors"]["maintenance"]["jobs"]["rewarm"]
                return bool(job["last_result"]) and job["last_result"]["flushes"] >= 1
            await eventually(reported, within=30)
            again = await asyncio.to_thread(redis_cli, redis, "GET", "wolfhub:instance")
            rewarm = (await hub.get_stats())["actors"]["maintenance"]["jobs"]["rewarm"]
        async with Hub(config) as hub:
            forgot = (await hub.get_stats())["actors"]["cache"]["forgot_all"]
            candles = await hub.get_candles(EX, "FLUSH", 1000)
        info = await asyncio.to_thread(redis_cli, redis, "INFO", "server")
    finally:
        await asyncio.to_thread(redis.kill)
    assert f"run_id:{marker}" in info and again == marker
    assert forgot == 0
    assert rewarm["last_result"]["flushes"] == 1
    assert [c.timestamp for c in candles] == [T0 + i * 60 for i in range(100)]
