"""influxdb.durable: true: every accepted write is in the SQLite outbox before its await
returns, and survives kill -9 at any moment."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from hub import Hub, HubConfig
from hub.compat import wolfinch
from tests.conftest import eventually
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
T0 = 1697529600
CHILD = Path(__file__).with_name("_child.py")


def outbox(path: str, what: str = "sum(lines)") -> dict[str, int]:
    """Outbox lines (or ``count(*)``: rows) per kind, read by a connection of its own
    (what is on disk)."""
    with closing(sqlite3.connect(path)) as db:
        return dict(db.execute(f"SELECT kind, {what} FROM outbox GROUP BY kind").fetchall())


async def test_every_write_is_on_disk_when_its_await_returns(
        config_data: dict[str, Any]) -> None:
    config_data["influxdb"]["durable"] = True
    config_data["influxdb"]["batch"] = {"size": 5000, "flush_interval": 60.0}  # lines linger
    config_data["streams"] = {"enabled": False}  # exactly these lines: no rollups
    path = config_data["sqlite"]["path"]
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.write_candle("px", "D", T0, 1.0, 2.0, 0.5, 1.5, 10.0)
        assert outbox(path) == {"durable": 1}
        await hub.write_candles_batch("px", "D", [(T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0)
                                                  for i in range(1, 2001)])
        await hub.write_indicator("px", "D", "RSI", T0, 55.5, period=14)
        await hub.write_metric("latency_ms", 1.25, strategy="s1")
        await hub.write_trade("px", "D", T0, "buy", 1.0, 1.0, "o1")
        assert outbox(path) == {"durable": 2003, "trade": 1}
        # the batch's 2,000 lines are one row (a POST's worth: influxdb.batch.size)
        assert outbox(path, "count(*)") == {"durable": 4, "trade": 1}
        await hub.flush()

        async def forgotten() -> bool:  # written to InfluxDB, then deleted from the outbox
            return outbox(path) == {}

        await eventually(forgotten, within=5)
        assert len(await hub.query_candles("px", "D", limit=5000)) == 2001


def test_the_drop_in_acknowledges_after_the_outbox_too(config_data: dict[str, Any]) -> None:
    config_data["influxdb"]["durable"] = True
    config_data["influxdb"]["batch"] = {"size": 5000, "flush_interval": 60.0}
    wolfinch.init_influx_db(config_data)
    try:
        db = wolfinch.get_influx_db()
        assert db is not None
        assert db.write_candle("px", "W", T0, 1.0, 2.0, 0.5, 1.5, 3.0) is True
        assert db.write_point("fills", {"exchange": "px"}, {"qty": 2.0}, T0) is True
        assert outbox(config_data["sqlite"]["path"]) == {"durable": 2}
    finally:
        wolfinch.close_all()


def run_and_kill(config_data: dict[str, Any], wait: float) -> int:
    """A child writing candles (one await each), killed with SIGKILL after ``wait``
    seconds of writing; the highest index whose await returned."""
    child = subprocess.Popen([sys.executable, str(CHILD), "candles", json.dumps(config_data)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        began, last = time.monotonic(), -1
        while time.monotonic() - began < wait:
            last = int(child.stdout.readline())
        child.kill()  # SIGKILL: no close, no flush
        child.wait()
        return max([last, *(int(x) for x in child.stdout.read().split())])
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]


async def stored_indices(config_data: dict[str, Any]) -> set[int]:
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.flush()  # a new hub on the same SQLite file replays the outbox first
        await hub.flush_all()  # read InfluxDB, not the hot window
        got = await hub.query_candles("px", "BANK", limit=1_000_000)
    return {int(c.volume) for c in got}


async def test_kill_9_at_random_moments_loses_nothing_acknowledged(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    # lines linger in memory for 5 s: without durable mode a kill loses them
    config_data["influxdb"]["batch"] = {"size": 5000, "flush_interval": 5.0}
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    lost_in_memory_mode, _ = await _killed_once(config_data, rnd.uniform(0.5, 1.5))
    assert lost_in_memory_mode, "memory mode lost nothing: the kill came too late"
    config_data["influxdb"]["durable"] = True
    for _ in range(3):
        lost, last = await _killed_once(config_data, rnd.uniform(0.2, 1.5))
        assert not lost, f"seed {seed}: acknowledged then lost {sorted(lost)[:10]}..."
        assert last > 0


async def _killed_once(config_data: dict[str, Any], wait: float) -> tuple[set[int], int]:
    config_data["influxdb"]["bucket"] = f"test_{uuid.uuid4().hex[:12]}"
    last = run_and_kill(config_data, wait)
    return set(range(last + 1)) - await stored_indices(config_data), last


async def test_a_running_hub_replays_what_a_killed_process_acknowledged(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    """Durable mode, a bot running throughout, a second process on the same file killed
    with SIGKILL while it writes: the bot's `takeover` job writes every candle the killed
    process acknowledged (its outbox rows), beside the bot's own durable writes."""
    config_data["influxdb"]["durable"] = True
    config_data["influxdb"]["batch"] = {"size": 5000, "flush_interval": 5.0}
    config_data["influxdb"]["bucket"] = f"test_{uuid.uuid4().hex[:12]}"
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as bot:  # slot 0
        await bot.write_candle("px", "OWN", T0, 1.0, 2.0, 0.5, 1.5, 1.0)
        last = run_and_kill(config_data, random.uniform(0.3, 1.2))  # the child: slot 1
        assert last > 0
        taken = (await bot.run_maintenance("takeover"))["last_result"]["lines"]
        await bot.write_candle("px", "OWN", T0 + 60, 1.0, 2.0, 0.5, 1.5, 2.0)
        await bot.flush()
        await bot.flush_all()
        got = {int(c.volume) for c in await bot.query_candles("px", "BANK", limit=1_000_000)}
        assert set(range(last + 1)) <= got, f"taken over {taken} lines"
        assert [c.volume for c in await bot.query_candles("px", "OWN")] == [1.0, 2.0]
        assert (await bot.get_stats())["sqlite"]["outbox_all"] == 0
