"""wolfhub backfill / export / delete / cache clear against the session's real servers."""

from __future__ import annotations

import csv
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import redis_command, wolfhub
from wolfhub.servers import LocalServers

T0 = 1697529600


def make_config(servers: LocalServers, tmp_path: Path) -> None:
    if not servers.redis.running:
        servers.redis.start()
    if not servers.influx.running:
        servers.influx.start()
    (tmp_path / "config").mkdir(exist_ok=True)
    overrides = servers.config_overrides()
    (tmp_path / "config" / "cache_db.yml").write_text(yaml.safe_dump({
        "redis": overrides["redis"],
        "influxdb": {**overrides["influxdb"], "bucket": f"cli_{uuid.uuid4().hex[:8]}"},
        "sqlite": {"path": str(tmp_path / "hub.sqlite")},
    }))


def write_csv(path: Path, data: list[list[object]]) -> None:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["timestamp", "open", "high", "low", "close", "volume"],
                                  *data])


def backfilled(servers: LocalServers, tmp_path: Path, product: str, n: int) -> None:
    """A config for the session servers and ``n`` candles of ``product`` loaded by the CLI."""
    make_config(servers, tmp_path)
    source = tmp_path / "c.csv"
    write_csv(source, rows(n))
    assert wolfhub("backfill", str(source), "--exchange", "px", "--product", product,
                   cwd=tmp_path).returncode == 0


def rows(n: int) -> list[list[object]]:
    return [[T0 + 60 * i, 100.0 + i, 102.0 + i, 99.0 + i, 101.0 + i, float(i)] for i in range(n)]


def test_delete_and_cache_clear(servers: LocalServers, tmp_path: Path) -> None:
    backfilled(servers, tmp_path, "Q", 10)
    redis_command(servers, "SET", "indicator:px:Q:EMA:20", "1.5")
    redis_command(servers, "SET", "other:key", "1")
    cleared = wolfhub("cache", "clear", "--pattern", "indicator:px:*", cwd=tmp_path)
    assert cleared.returncode == 0 and "removed 1 keys" in cleared.stdout
    assert redis_command(servers, "EXISTS", "other:key") == b":1\r\n"
    deleted = wolfhub("delete", "--start", "2000-01-01T00:00:00Z", "--stop", "now",
                      "--predicate", '_measurement="candle" AND product="Q"', cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    out = wolfhub("export", "px", "Q", cwd=tmp_path)
    assert out.stdout.strip().splitlines() == ["timestamp,open,high,low,close,volume"]
    bad = wolfhub("delete", "--start", "-1d", "--stop", "now", "--predicate", "x OR y",
                  cwd=tmp_path)
    assert bad.returncode == 1 and "predicate" in bad.stderr


def test_doctor_all_well_then_names_a_stopped_influxdb(servers: LocalServers,
                                                       tmp_path: Path) -> None:
    make_config(servers, tmp_path)
    well = wolfhub("doctor", cwd=tmp_path)
    assert well.returncode == 0, well.stdout + well.stderr
    assert "[  ok] redis reachable" in well.stdout and "redis 7." in well.stdout
    assert "[  ok] influxdb reachable" in well.stdout and "influxdb 1.6" in well.stdout
    assert "redis clock" in well.stdout and "sqlite state" in well.stdout
    servers.influx.stop()
    try:
        sick = wolfhub("doctor", cwd=tmp_path)
    finally:
        servers.influx.start()
    assert sick.returncode == 1
    assert "[FAIL] influxdb reachable" in sick.stdout
    assert "fix: start it: `wolfhub up`" in sick.stdout
    assert "systemctl start influxdb" in sick.stdout
    assert "[  ok] redis reachable" in sick.stdout


def test_backup_then_restore_into_a_new_database(servers: LocalServers, tmp_path: Path) -> None:
    backfilled(servers, tmp_path, "B", 300)
    rpc = f"127.0.0.1:{servers.influx.rpc_port}"
    made = wolfhub("backup", str(tmp_path / "bk"), "--influx-rpc", rpc, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "bk" / "influxdb").is_dir() and (tmp_path / "bk" / "wolfhub.sqlite").exists()
    assert (tmp_path / "bk" / "redis" / "dump.rdb").exists()
    # restore into a new database and a new SQLite path, then read it through a hub
    config = yaml.safe_load((tmp_path / "config" / "cache_db.yml").read_text())
    new_db = f"restored_{uuid.uuid4().hex[:6]}"
    config["influxdb"]["bucket"] = new_db
    config["sqlite"]["path"] = str(tmp_path / "restored.sqlite")
    (tmp_path / "config" / "cache_db.yml").write_text(yaml.safe_dump(config))
    back = wolfhub("restore", str(tmp_path / "bk"), "--influx-rpc", rpc, cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert new_db in back.stdout and "restored.sqlite" in back.stdout
    redis_command(servers, "FLUSHALL")
    out = wolfhub("export", "px", "B", cwd=tmp_path)
    assert len(out.stdout.strip().splitlines()) == 301  # header + every candle
    again = wolfhub("restore", str(tmp_path / "bk"), "--influx-rpc", rpc, "--as",
                    new_db + "x", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr


def test_retention_apply_and_routing(servers: LocalServers, tmp_path: Path) -> None:
    import asyncio

    from actors.query import Query
    from hub import Hub, HubConfig

    make_config(servers, tmp_path)
    path = tmp_path / "config" / "cache_db.yml"
    config = yaml.safe_load(path.read_text())
    config["influxdb"]["retention"] = {"enabled": True, "candles": "30d", "trades": "400d"}
    path.write_text(yaml.safe_dump(config))
    applied = wolfhub("retention", "apply", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "wolfhub_candles" in applied.stdout and "720h0m0s" in applied.stdout
    assert "wolfhub_trades" in applied.stdout and "9600h0m0s" in applied.stdout
    assert "continuous query wolfhub_candle_1h" in applied.stdout

    recent = int(time.time()) // 60 * 60 - 3600  # inside every policy's duration

    async def scenario() -> tuple[Any, ...]:
        async with Hub(HubConfig.from_mapping(config, environ={})) as hub:
            await hub.write_candles_batch("px", "R", [
                {"timestamp": recent + 60 * i, "open": 1, "high": 2, "low": 1, "close": 1,
                 "volume": 1} for i in range(5)])
            await hub.write_trade("px", "R", T0, "buy", 1.0, 1.0, "o1")  # 2023: beyond 400d
            await hub.write_trade("px", "R", recent, "buy", 1.0, 1.0, "o2")
            await hub.flush()
            await hub.flush_all()
            assert hub._query is not None
            routed = await hub._query.run_query(Query('SELECT count("close") FROM '
                                                 '"wolfhub_candles"."candle"'))
            default = await hub._query.run_query(Query('SELECT count("close") FROM "candle"'))
            cqs = await hub._query.run_query(Query("SHOW CONTINUOUS QUERIES"))
            quarantined = await hub.quarantined()
            return (len(await hub.query_candles("px", "R")),
                    len(await hub.query_trades("px", "R")), routed, default, cqs, quarantined)

    candles, trades, routed, default, cqs, quarantined = asyncio.run(scenario())
    assert [q["reason"] for q in quarantined] == [
        "partial write: points beyond retention policy dropped=1"]
    # the hub reads where it writes; the 2023 trade is older than the policy: InfluxDB
    # refused it, and the hub kept it in the quarantine (never dropped silently)
    assert (candles, trades) == (5, 1)
    assert routed[0]["series"][0]["values"][0][1] == 5
    assert not default[0].get("series")  # nothing in the default policy
    assert "wolfhub_candle_1h" in str(cqs)
