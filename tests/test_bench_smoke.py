"""The benchmark harness runs end to end (tiny sizes, no timing asserted): it must not rot."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import uvloop

from bench.__main__ import goals
from bench._backfill import backfill_table
from bench._dropin import dropin
from bench._mailbox import mailbox_vs_stream
from bench._report import chart, markdown, save
from bench._scale import CLUSTER_WORKLOAD, WORKLOADS, scale_out
from bench._streams import EX, _minute, _wrong_holes, streams_tables
from bench._suites import Bench, Results, Sizes
from hub import Hub
from wolfhub.servers import LocalServers, RedisClusterServers


def test_harness_produces_tables_json_and_chart(tmp_path: Path) -> None:
    sizes = Sizes(repeats=5, candles_per_product=1200, query_sizes=(100, 1000, 10_000),
                  write_points=2000, seed_write_points=50, strategies=(100, 1000),
                  reads_per_strategy=1)
    with LocalServers(tmp_path / "servers") as servers:
        results = asyncio.run(Bench(servers, tmp_path, sizes).run())
        dropin(servers, tmp_path, sizes, results)
        results.tables["backfill"] = backfill_table(servers, tmp_path, (3000,))
        results.tables.update(streams_tables(servers, tmp_path, "tiny"))
        # what the backfill rows timed landed in InfluxDB (two products, and the raw RAW3000)
        loaded = servers_count(servers.influx.url, "bench_bf")
    results.tables["mailbox"] = uvloop.run(mailbox_vs_stream(500, 50, rounds=1))
    assert [row["queue"] for row in results.tables["mailbox"]] == [
        "actors.runtime.Mailbox", "anyio memory object stream"]
    results.meta = {"date": "today", "machine": "test", "quick": True, "sizes": {},
                    "commit": "0123abc", "began": "2026-01-01 10:00 UTC",
                    "ended": "2026-01-01 10:04 UTC"}
    results.goals = goals(results)
    for table in ("indicator_lookup", "single_read", "concurrency", "writes", "batch_sizes",
                  "candle_queries", "memory", "invalidation", "dropin", "dropin_writes"):
        assert results.tables[table], table
    assert len(results.goals) == 27
    # five informative rows beside the goals: influxd's floor with the rollups, raw
    # Redis' floor for a live candle's delivery, one subscriber's process, a busy
    # process, the gap scan right after the write
    assert [g["met"] for g in results.goals].count("-") == 5
    latency = {row["timeframe"]: row for row in results.tables["rollup_latency"]}
    assert list(latency) == ["1m", "5m", "1h", "raw XADD -> XREAD"]
    assert all(row["delivered"] == row["closes"] == 3 for row in latency.values())
    writes = {row["writer"]: row["points"] for row in results.tables["writes"]}
    with_rollups = writes["aioinflux 5,000-line batches, prebuilt, with the candles' rollups"]
    assert 2000 < with_rollups < 2000 * 1.4  # the candles and their closed rollups
    handover = results.tables["handover"][0]
    assert handover["runs"] == 5 and handover["duplicates"] == handover["holes"] == 0
    scan = results.tables["gap_scan"][0]
    assert scan["holes_found"] == 12 and scan["scans_exact"] == scan["scans"] == 5
    assert scan["first_exact"] and scan["first_right_after_write"] > 0
    assert [(row["where"], row["subscribers"] > 1) for row in results.tables["subscribers"]
            ] == [("none", False), ("other process", False), ("other process", True),
                  ("other process, busy loop", False), ("this process", True)]
    # the writer's own CPU per write is measured beside the wall rate (a few µs at least)
    assert all(row["writer_cpu_per_write"] > 1e-6 for row in results.tables["subscribers"])
    loaders = {row["loader"]: row["rows"] for row in results.tables["backfill"]}
    assert loaders == {"aioinflux 5,000-line batches, prebuilt (3,000 rows)": 3000,
                       "wolfhub backfill, whole process (3,000-row CSV)": 3000,
                       "wolfhub backfill --reader python, whole process (3,000-row CSV)": 3000}
    assert loaded == 3 * 3000
    assert results.tables["dropin_writes"][0]["points"] == 200
    text = markdown(results)
    assert "| hub hot (near cache) |" in text and "#### Goals" in text
    assert text.startswith("Run 2026-01-01 10:00 UTC to 10:04 UTC at commit `0123abc` on test")
    assert "| drop-in get_indicator, near cache |" in text
    assert "| anyio memory object stream |" in text
    js, _md, png = save(results, tmp_path / "out")
    assert json.loads(js.read_text())["tables"]["writes"][0]["points"] == 2000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary_of_two_runs(js, tmp_path)


def summary_of_two_runs(js: Path, tmp_path: Path) -> None:
    """``python -m bench.summary`` puts runs side by side: every goal once, each run's
    measurement, in how many runs it was met."""
    from click.testing import CliRunner

    from bench.summary import main as summary

    second = json.loads(js.read_text())
    second["meta"].update(commit="abc1234", began="2026-01-02 03:04 UTC",
                          ended="2026-01-02 03:09 UTC")
    flipped = second["goals"][0]
    first_met = flipped["met"]
    flipped["met"], flipped["measured"] = ("NO" if first_met == "yes" else "yes"), "9.99x"
    other = tmp_path / "second"
    other.mkdir()
    (other / "bench.json").write_text(json.dumps(second))
    done = CliRunner().invoke(summary, [str(js.parent), str(other)])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert "run 2: 2026-01-02 03:04 UTC to 03:09 UTC, commit `abc1234`" in lines[0]
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(second["goals"])
    assert rows[0].endswith("| 9.99x | 1 of 2 |")
    informative = [row for row in rows if row.endswith("| - |")]
    assert len(informative) == 5
    bad = CliRunner().invoke(summary, [str(tmp_path / "servers")])
    assert bad.exit_code != 0 and "not a harness run" in bad.output


@pytest.mark.anyio
async def test_an_inexact_gap_scan_is_read_back(hub: Hub) -> None:
    """When a scan's holes differ from those made, the harness says which, and how many
    candles a read of a wrongly reported hole finds (a store that lacked them for a
    while, or a write that is missing)."""
    await hub.write_candles_batch(EX, "ODD", [_minute(i) for i in range(30) if i != 10],
                                  window=False)
    t = _minute(0).timestamp
    missing, stored = (t + 600, t + 600), (t + 120, t + 240)  # a real hole, three candles
    wrong = await _wrong_holes(hub, "ODD", [stored, missing], [missing, (t, t)], later=0)
    assert wrong == {"extra": [stored], "missed": [(t, t)], "extra_candles_read": [3],
                     "extra_candles_read_later": [3]}
    assert (await _wrong_holes(hub, "ODD", [missing], [missing], later=0))["extra"] == []


def test_scale_out_table_runs_every_workload(tmp_path: Path) -> None:
    """1 and 2 worker processes per workload, on one Redis + InfluxDB and on a cluster:
    every worker reports all its work, and the table renders."""
    with LocalServers(tmp_path / "servers") as servers, \
            RedisClusterServers(tmp_path / "cluster") as cluster:
        config = servers.config_overrides()
        config["influxdb"] = {**config["influxdb"], "bucket": "scale"}
        rows = scale_out(config, tmp_path, (1, 2), candles=200, rounds=2,
                         cluster_nodes=cluster.seeds[:1])
        # the candles of both processes are in InfluxDB, each once
        count = servers_count(servers.influx.url, "scale")
    assert [(r["workload"], r["processes"]) for r in rows] == [
        (name, p) for name in [*WORKLOADS, CLUSTER_WORKLOAD] for p in (1, 2)]
    for row in rows:
        per_process = 200 if row["workload"].startswith("hub write_candle") else 2 * 2 * 50
        assert row["ops"] == per_process * row["processes"]
        assert row["ops_per_s"] > 0
    assert count == 200 + 2 * 200
    results = Results(meta={"date": "today", "machine": "test", "quick": True},
                      tables={"scale_out": rows})
    assert "#### Scaling out" in markdown(results)
    chart(results, tmp_path / "scale.png")  # the third panel draws from these rows
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"


def servers_count(url: str, database: str) -> int:
    query = urllib.parse.urlencode({"db": database, "q": 'SELECT count("close") FROM "candle"'})
    with urllib.request.urlopen(f"{url}/query?{query}", timeout=10) as reply:
        series = json.loads(reply.read())["results"][0]["series"]
    return int(series[0]["values"][0][1])
