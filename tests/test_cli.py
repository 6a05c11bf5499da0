"""The wolfhub command: up / status / stats / down against real local servers."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import wolfhub
from wolfhub.servers import free_port


def test_up_status_stats_down(tmp_path: Path) -> None:
    redis_port, influx_port = free_port(), free_port()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "cache_db.yml").write_text(yaml.safe_dump({
        "redis": {"host": "127.0.0.1", "port": redis_port},
        "influxdb": {"url": f"http://127.0.0.1:{influx_port}"},
        "sqlite": {"path": "data/wolfhub.sqlite"},
    }))
    try:
        up = wolfhub("up", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        assert f"127.0.0.1:{redis_port}" in up.stdout
        again = wolfhub("up", cwd=tmp_path)
        assert "already running" in again.stdout
        status = wolfhub("status", cwd=tmp_path)
        assert status.returncode == 0
        assert status.stdout.count(" running ") == 2
        stats = wolfhub("stats", cwd=tmp_path)
        assert stats.returncode == 0, stats.stderr
        assert '"keyspace_hits"' in stats.stdout and '"connected_clients": ' in stats.stdout
    finally:
        down = wolfhub("down", cwd=tmp_path)
    assert "redis" in down.stdout and "influxdb" in down.stdout
    after = wolfhub("status", cwd=tmp_path)
    assert after.returncode == 1 and "no local servers" in after.stdout


def test_help_on_every_verb(tmp_path: Path) -> None:
    for verb in ("up", "down", "status", "stats", "example", "demo", "doctor", "backfill",
                 "export", "delete", "cache", "gaps"):
        result = wolfhub(verb, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "Usage:" in result.stdout, verb


def test_demo_runs_without_servers_configured(tmp_path: Path) -> None:
    result = wolfhub("demo", "--duration", "4", "--products", "2", "--speed", "600",
                     "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wolfhub demo - summary" in result.stdout
    summary = json.loads(result.stdout[result.stdout.index("\n{") + 1:])
    assert summary["candles_processed"] >= 20  # 2 products, a candle every 0.1 s each
    assert summary["indicator_reads"] == summary["candles_processed"] * 10
    assert 0 < summary["near_cache_hit_rate"] <= 1
    assert summary["get_indicator_p50_us"] > 0 and summary["write_candle_p99_us"] > 0
    # every trade the strategies made is stored (the first product's, read back)
    assert summary["trades_stored_for_BANKNIFTY-FUT"] <= summary["trades"]
    # the 5-minute strategies got rollups; the minute the feed dropped was found and
    # filled from its history (its 5m candle comes again as a revision when the repair
    # lands after that candle closed, which depends on the machine's pace)
    assert summary["rollups_5m"] >= 2
    assert summary["gaps_found"] >= 1 and summary["minutes_repaired"] == 1
    assert summary["gaps_left"] == 0


def test_example_and_the_seeds_log_lines(tmp_path: Path) -> None:
    result = wolfhub("-v", "example", "--candles", "120", "--data", str(tmp_path / "d"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["candles_written"] == 240 and summary["trades"] == 1
    assert summary["position"]["size"] == 1.0
    # the seed's connect lines, in the seed's format
    assert "[INFO:actors.backends.redis] Redis connected: 127.0.0.1:" in result.stderr
    assert " db=0" in result.stderr
    assert "[INFO:actors.backends.influx] InfluxDB connected: http://127.0.0.1:" in result.stderr


def test_up_with_a_local_cluster(tmp_path: Path) -> None:
    """`wolfhub up --cluster` starts a 3+3 Redis Cluster beside the servers and says how to
    use it; a hub configured that way works; `status` lists the nodes; `down` stops all."""
    redis_port, influx_port = free_port(), free_port()
    (tmp_path / "config").mkdir()
    base = {"redis": {"host": "127.0.0.1", "port": redis_port},
            "influxdb": {"url": f"http://127.0.0.1:{influx_port}"},
            "sqlite": {"path": "data/wolfhub.sqlite"}}
    (tmp_path / "config" / "cache_db.yml").write_text(yaml.safe_dump(base))
    try:
        up = wolfhub("up", "--cluster", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        snippet = up.stdout[up.stdout.index("redis: {cluster"):].strip()
        cluster = yaml.safe_load(snippet)["redis"]["cluster"]
        status = wolfhub("status", cwd=tmp_path)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(" running ") == 2 + 6
        (tmp_path / "config" / "cache_db.yml").write_text(yaml.safe_dump(
            {**base, "redis": {"cluster": cluster}}))
        doctor = wolfhub("doctor", cwd=tmp_path)
        assert "redis reachable: cluster" in doctor.stdout, doctor.stdout + doctor.stderr
        cleared = wolfhub("cache", "clear", cwd=tmp_path)  # a hub starts on the cluster
        assert cleared.returncode == 0, cleared.stderr
    finally:
        down = wolfhub("down", cwd=tmp_path)
    assert "redis cluster (6 nodes)" in down.stdout
    assert wolfhub("status", cwd=tmp_path).returncode == 1
