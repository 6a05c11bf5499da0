"""wolfhub backfill against the session's real servers: formats traders download, resume
markers keyed by destination, bad rows, kill -9 at random moments, Parquet, JSON arrays
(ccxt, freqtrade) and Feather (freqtrade)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub import Candle, Hub, HubConfig
from tests.conftest import redis_command, wolfhub
from tests.test_cli_data import T0, make_config, rows, write_csv
from wolfhub.servers import LocalServers
from wolfhub.tables import BINANCE_KLINE, BadRow, find_layout, parse_batch, product_from_name
from wolfhub.tables import Source as BackfillSource

# The example kline of Binance's REST API documentation (GET /api/v3/klines), the row
# layout of the CSV dumps on data.binance.vision: open time (ms), open, high, low, close,
# volume, close time, quote asset volume, number of trades, taker buy base volume, taker
# buy quote volume, ignore.
BINANCE_EXAMPLE = ["1499040000000", "0.01634790", "0.80000000", "0.01575800", "0.01577100",
                   "148976.11427815", "1499644799999", "2434.19055334", "308",
                   "1756.87402397", "28.46694368", "0"]


def influx(servers: LocalServers, tmp_path: Path, query: str) -> list[list[Any]]:
    """An InfluxQL answer straight from influxd's HTTP API (no hub code in the way)."""
    config = yaml.safe_load((tmp_path / "config" / "cache_db.yml").read_text())
    url = (f"http://127.0.0.1:{servers.influx.port}/query?"
           + urllib.parse.urlencode({"db": config["influxdb"]["bucket"], "q": query}))
    with urllib.request.urlopen(url, timeout=30) as answer:
        result = json.load(answer)["results"][0]
    series = result.get("series", [])
    return series[0]["values"] if series else []


def count(servers: LocalServers, tmp_path: Path, product: str, exchange: str = "px") -> int:
    found = influx(servers, tmp_path, "SELECT count(close) FROM candle WHERE exchange='"
                   f"{exchange}' AND product='{product}'")
    return int(found[0][1]) if found else 0


def _epoch_s(servers: LocalServers, tmp_path: Path, product: str,
             exchange: str) -> list[list[Any]]:
    config = yaml.safe_load((tmp_path / "config" / "cache_db.yml").read_text())
    url = (f"http://127.0.0.1:{servers.influx.port}/query?" + urllib.parse.urlencode({
        "db": config["influxdb"]["bucket"], "epoch": "s",
        "q": "SELECT open, high, low, close, volume FROM candle WHERE "
             f"exchange='{exchange}' AND product='{product}' ORDER BY time"}))
    with urllib.request.urlopen(url, timeout=30) as answer:
        result = json.load(answer)["results"][0]
    series = result.get("series", [])
    return [list(r) for r in series[0]["values"]] if series else []


# ---- parsing, without servers ----------------------------------------------------------

def test_layouts_of_what_traders_download() -> None:
    binance = find_layout(BINANCE_EXAMPLE, "k.csv")
    assert not binance.header and binance.names == BINANCE_KLINE
    parsed = parse_batch([BINANCE_EXAMPLE], binance, 0, "k.csv", 1, False)
    assert parsed.groups[None] == [(1499040000, 0.0163479, 0.8, 0.015758, 0.015771,
                                    148976.11427815)]
    # Binance's futures dumps and pandas' to_csv carry a header; names vary
    header = find_layout(["Open Time", "Open", "High", "Low", "Close", "Volume", "Symbol"],
                         "f.csv")
    assert header.header and (header.time, header.product) == (0, 6)
    with pytest.raises(BadRow, match=r"f\.csv, line 1, column header: no column for high"):
        find_layout(["time", "open", "low", "close", "volume"], "f.csv")


@pytest.mark.parametrize("cell,seconds", [
    ("1499040000", 1499040000), ("1499040000000", 1499040000),  # s, ms
    ("1735689600000000", 1735689600),  # µs: Binance's spot dumps since 2025
    ("1735689600000000000", 1735689600), ("1697529600.0", 1697529600),
    ("2023-10-17T08:00:00Z", 1697529600), ("2023-10-17 08:00:00", 1697529600),
    ("2023-10-17T10:00:00+02:00", 1697529600),
])
def test_times_in_every_unit(cell: str, seconds: int) -> None:
    layout = find_layout(["time", "open", "high", "low", "close", "volume"], "t.csv")
    parsed = parse_batch([[cell, "1", "2", "0.5", "1.5", "3"]], layout, 0, "t.csv", 2, False)
    assert not parsed.bad and parsed.groups[None][0][0] == seconds


def test_a_stated_unit_and_a_product_column_on_the_fast_path() -> None:
    layout = find_layout(["open_time", "symbol", "open", "high", "low", "close", "volume"],
                         "u.csv")
    rows = [["1499040000000", "BTCUSDT", "1", "2", "0.5", "1.5", "3"],
            ["1499040060000", " ETHUSDT ", "1", "2", "0.5", "1.5", "3"],
            ["1499040120000", "BTCUSDT", "1", "2", "0.5", "1.5", "3"]]
    parsed = parse_batch(rows, layout, 1000, "u.csv", 2, False)
    assert parsed.groups["BTCUSDT"] == [(1499040000, 1.0, 2.0, 0.5, 1.5, 3.0),
                                        (1499040120, 1.0, 2.0, 0.5, 1.5, 3.0)]
    assert parsed.groups["ETHUSDT"] == [(1499040060, 1.0, 2.0, 0.5, 1.5, 3.0)]
    odd = parse_batch([["1499040000500", "BTCUSDT", "1", "2", "0.5", "1.5", "3"]], layout,
                      1000, "u.csv", 2, False)
    assert (odd.bad[0].line, odd.bad[0].column) == (2, "open_time")
    assert "not a whole second" in odd.bad[0].reason
    empty = parse_batch([["1499040000000", "  ", "1", "2", "0.5", "1.5", "3"]], layout,
                        1000, "u.csv", 2, False)
    assert (empty.bad[0].column, empty.bad[0].reason) == ("symbol", "empty product")


@pytest.mark.parametrize("row,column,reason", [
    (["1499040000500", "1", "2", "0.5", "1", "1"], "time", "not a whole second"),
    (["x", "1", "2", "0.5", "1", "1"], "time", "expected Unix time or an ISO 8601 date"),
    (["1499040000", "1", "2", "0.5", "nan", "1"], "close", "must be finite"),
    (["1499040000", "1", "0.4", "0.5", "1", "1"], "high", "below low"),
    (["1499040000", "1", "2", "0.5", "1", "-1"], "volume", "negative"),
    (["1499040000", "1", "2", "0.5", "one", "1"], "close", "expected a number"),
    (["1499040000", "1", "2"], "-", "expected 6 columns"),
    (["9000000000000000000000", "1", "2", "0.5", "1", "1"], "time", "outside InfluxDB's range"),
])
def test_a_bad_row_is_named_by_line_and_column(row: list[str], column: str,
                                               reason: str) -> None:
    layout = find_layout(["time", "open", "high", "low", "close", "volume"], "b.csv")
    good = ["1499040060", "1", "2", "0.5", "1", "1"]
    stopped = parse_batch([good, row, good], layout, 0, "b.csv", 10, skip_bad=False)
    assert stopped.stopped_at == 1 and stopped.groups[None] == [(1499040060, 1.0, 2.0, 0.5,
                                                                 1.0, 1.0)]
    bad = stopped.bad[0]
    assert (bad.source, bad.line, bad.column) == ("b.csv", 11, column) and reason in bad.reason
    skipped = parse_batch([good, row, good], layout, 0, "b.csv", 10, skip_bad=True)
    assert len(skipped.groups[None]) == 2 and [b.line for b in skipped.bad] == [11]


def test_products_named_by_the_file() -> None:
    def name(path: str, member: str | None = None) -> str:
        return product_from_name(BackfillSource(Path(path), member))

    assert name("BTCUSDT-1m-2024-01.zip", "BTCUSDT-1m-2024-01.csv") == "BTCUSDT"
    assert name("data/ETHUSDT-1h-2024-03-15.csv") == "ETHUSDT"
    assert name("NIFTY-FUT.csv.gz") == "NIFTY-FUT"
    assert name("1000SHIBUSDT-5m-2023-12.csv") == "1000SHIBUSDT"


# ---- the command, on the real servers --------------------------------------------------

def test_a_bad_row_stops_after_the_rows_before_it_then_the_run_resumes(
        servers: LocalServers, tmp_path: Path) -> None:
    make_config(servers, tmp_path)
    data = rows(1200)
    source = tmp_path / "candles.csv"
    bad = [r[:] for r in data]
    bad[899][2] = 1.0  # row 900 (line 901): high below low
    write_csv(source, bad)
    first = wolfhub("backfill", str(source), "--exchange", "px", "--product", "P",
                    "--batch", "500", cwd=tmp_path)
    assert first.returncode == 1
    assert f"{source}, line 901, column high: high 1.0 is below low 998.0" in first.stderr
    assert count(servers, tmp_path, "P") == 899  # every row before it, no more
    write_csv(source, data)  # fixed; run again: resumes at row 900
    second = wolfhub("backfill", str(source), "--exchange", "px", "--product", "P",
                     "--batch", "500", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "1200 of 1200 candles stored (301 this run)" in second.stdout
    assert _epoch_s(servers, tmp_path, "P", "px") == data
    # the hot window holds the newest candles, as after live writes
    assert redis_command(servers, "ZCARD", "candles:px:P") == b":1000\r\n"
    redis_command(servers, "FLUSHALL")  # so export reads InfluxDB
    out = tmp_path / "out.csv"
    exported = wolfhub("export", "px", "P", "--out", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    with out.open() as fh:
        got = list(csv.reader(fh))
    assert got[0] == ["timestamp", "open", "high", "low", "close", "volume"]
    assert [[int(r[0]), *map(float, r[1:])] for r in got[1:]] == data


def test_the_marker_is_kept_per_destination(servers: LocalServers, tmp_path: Path) -> None:
    make_config(servers, tmp_path)
    source = tmp_path / "c.csv"
    write_csv(source, rows(300))
    for product in ("A", "B"):  # the same file for another product loads every row
        done = wolfhub("backfill", str(source), "--exchange", "px", "--product", product,
                       cwd=tmp_path)
        assert "300 of 300 candles stored (300 this run)" in done.stdout, done.stderr
        assert count(servers, tmp_path, product) == 300
    again = wolfhub("backfill", str(source), "--exchange", "px", "--product", "A",
                    cwd=tmp_path)
    assert "300 of 300 candles stored (0 this run)" in again.stdout
    # another database: everything again
    config = yaml.safe_load((tmp_path / "config" / "cache_db.yml").read_text())
    config["influxdb"]["bucket"] += "_other"
    (tmp_path / "config" / "cache_db.yml").write_text(yaml.safe_dump(config))
    other = wolfhub("backfill", str(source), "--exchange", "px", "--product", "A",
                    cwd=tmp_path)
    assert "300 of 300 candles stored (300 this run)" in other.stdout, other.stderr
    assert count(servers, tmp_path, "A") == 300
    restarted = wolfhub("backfill", str(source), "--exchange", "px", "--product", "A",
                        "--restart", cwd=tmp_path)
    assert "(300 this run)" in restarted.stdout


def test_a_backfill_over_a_live_window_is_what_the_bots_reads_answer(
        servers: LocalServers, tmp_path: Path) -> None:
    """A live feed dropped ten minutes, and the hot window a bot keeps writing spans
    them. ``wolfhub backfill`` of the exchange's file for those hours (which has the ten,
    and other values for the minutes around them) is what the bot reads afterwards,
    not the window's older picture."""
    make_config(servers, tmp_path)
    config = HubConfig.load(tmp_path / "config" / "cache_db.yml")
    data = rows(300)
    candles = [Candle(int(r[0]), *map(float, r[1:])) for r in data]
    exchange_file = [[*r[:5], float(r[5]) + 0.5] for r in data[150:250]]
    write_csv(tmp_path / "exchange.csv", exchange_file)
    expected = candles[:150] + [Candle(int(r[0]), *map(float, r[1:]))
                                for r in exchange_file] + candles[250:]

    async def live() -> tuple[list[Candle], list[Candle]]:
        async with Hub(config) as hub:
            await hub.write_candles_batch("px", "LIVE", candles[:200] + candles[210:])
            await hub.flush()
            done = await asyncio.to_thread(
                wolfhub, "backfill", str(tmp_path / "exchange.csv"), "--exchange", "px",
                "--product", "LIVE", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            return (await hub.get_candles("px", "LIVE", 1000),
                    await hub.query_candles("px", "LIVE", start_time=candles[190].timestamp,
                                            end_time=candles[220].timestamp))
    window, around = asyncio.run(live())
    assert window == expected
    assert around == expected[190:221]


def test_backfill_fills_the_rollups_windows_with_closed_buckets(servers: LocalServers,
                                                                tmp_path: Path) -> None:
    """History loaded writes no rollups; at its end the backfill fills each empty rollup
    window with its closed buckets (as the warm job would at start), so a 5m or 1h
    warm-up is served from Redis at once; the bucket still open is never there."""
    make_config(servers, tmp_path)
    source = tmp_path / "r.csv"
    write_csv(source, rows(307))  # 08:00 to 13:06: the 13:05 5m and 13:00 1h are open
    done = wolfhub("backfill", str(source), "--exchange", "px", "--product", "ROLL",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    def held(timeframe: str) -> list[int]:
        key = "candles:px:ROLL" + ("" if timeframe == "1m" else f":{timeframe}")
        raw = redis_command(servers, "ZRANGE", key, "0", "-1", "WITHSCORES")
        return [int(float(x)) for x in raw.split(b"\r\n")[2::2][1::2]]
    assert held("5m") == [T0 + 300 * k for k in range(61)]  # 13:05 is open
    assert held("1h") == [T0 + 3600 * k for k in range(5)]
    assert held("4h") == [T0]  # 08:00 to 12:00; 12:00 to 16:00 is open
    assert held("1d") == []
    assert held("1m")[-1] == T0 + 60 * 306


def test_a_long_backfill_stays_history_all_the_way(servers: LocalServers,
                                                   tmp_path: Path) -> None:
    """Many checkpoints: the first one's push into the hot window must not turn the rest
    of the load into live writes (each later batch taken into the window, its rollups
    recomputed and stored: twice the time for 1,000,000 rows). No rollup is stored, and
    the windows hold the newest candles and closed buckets at the end."""
    from wolfhub.backfill import backfill

    make_config(servers, tmp_path)
    config = HubConfig.load(tmp_path / "config" / "cache_db.yml")
    source = tmp_path / "long.csv"
    data = rows(6000)
    write_csv(source, data)

    async def load() -> tuple[int, list[Candle], list[Candle]]:
        async with Hub(config) as hub:
            report = await backfill(hub, [source], "px", "LONG", destination="here",
                                    batch=500, checkpoint=0.0)
            assert report.lines == [f"{source}: 6000 of 6000 candles stored (6000 this run)"]
            return (await hub.get_stats())["streams"]["rollups_published"], \
                await hub.get_candles("px", "LONG", 1000), \
                await hub.query_candles("px", "LONG", limit=3, interval="1h")
    published, window, hours = asyncio.run(load())
    assert published == 0
    assert influx(servers, tmp_path, "SELECT count(close) FROM candle_rollup") == []
    assert [c.timestamp for c in window] == [int(r[0]) for r in data[-1000:]]
    assert hours[-1].timestamp == T0 + 99 * 3600  # (6,000 minutes from T0: 100 hours)


def test_binance_zip_gzip_and_a_product_column_in_one_run(servers: LocalServers,
                                                          tmp_path: Path) -> None:
    make_config(servers, tmp_path)
    # a data.binance.vision monthly archive: no header, ms open times, 12 columns
    klines = []
    for i in range(500):
        row = BINANCE_EXAMPLE[:]
        row[0] = str(1499040000000 + 60_000 * i)
        row[6] = str(1499040000000 + 60_000 * i + 59_999)
        klines.append(row)
    member = "BTCUSDT-1m-2017-07.csv"
    with zipfile.ZipFile(tmp_path / "BTCUSDT-1m-2017-07.zip", "w",
                         zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, "\n".join(",".join(r) for r in klines) + "\n")
    # a gzip'd CSV with a header, a symbol column and µs times, two products interleaved
    with gzip.open(tmp_path / "mixed.csv.gz", "wt", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["open_time", "symbol", "open", "high", "low", "close", "volume"])
        for i in range(200):
            for symbol, base in (("ETHUSDT", 2000.0), ("SOLUSDT", 20.0)):
                out.writerow([(1735689600 + 60 * i) * 10**6, symbol, base + i, base + i + 2,
                              base + i - 1, base + i + 1, 10.0])
    done = wolfhub("backfill", str(tmp_path / "BTCUSDT-1m-2017-07.zip"),
                   str(tmp_path / "mixed.csv.gz"), "--exchange", "binance", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"({member}): 500 of 500 candles stored" in done.stdout
    assert "mixed.csv.gz: 400 of 400 candles stored" in done.stdout
    btc = _epoch_s(servers, tmp_path, "BTCUSDT", "binance")
    assert len(btc) == 500 and btc[0] == [1499040000, 0.0163479, 0.8, 0.015758, 0.015771,
                                          148976.11427815]
    eth = _epoch_s(servers, tmp_path, "ETHUSDT", "binance")
    assert len(eth) == 200 and eth[-1] == [1735689600 + 60 * 199, 2199.0, 2201.0, 2198.0,
                                           2200.0, 10.0]
    assert count(servers, tmp_path, "SOLUSDT", "binance") == 200
    # --product names every row's product, the column notwithstanding
    given = wolfhub("backfill", str(tmp_path / "mixed.csv.gz"), "--exchange", "binance",
                    "--product", "ALL", cwd=tmp_path)
    assert given.returncode == 0, given.stderr
    assert count(servers, tmp_path, "ALL", "binance") == 200  # two rows per time, one point


def test_skip_bad_counts_and_names_them(servers: LocalServers, tmp_path: Path) -> None:
    make_config(servers, tmp_path)
    data: list[list[object]] = [list(r) for r in rows(100)]
    data[10][4] = "n/a"
    data[20][1] = "nan"
    data[30][0] = "yesterday"
    source = tmp_path / "dirty.csv"
    write_csv(source, data)
    done = wolfhub("backfill", str(source), "--exchange", "px", "--product", "D",
                   "--skip-bad", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "97 of 100 candles stored (97 this run, 3 bad rows skipped)" in done.stdout
    assert f"{source}, line 12, column close: expected a number, got 'n/a'" in done.stderr
    assert f"{source}, line 22, column open: must be finite" in done.stderr
    assert f"{source}, line 32, column timestamp" in done.stderr
    assert count(servers, tmp_path, "D") == 97


def test_parquet_in_and_out(servers: LocalServers, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    make_config(servers, tmp_path)
    data = rows(12_345)
    table = pa.table({
        "timestamp": pa.array([r[0] * 1000 for r in data], pa.timestamp("ms", tz="UTC")),
        "open": [r[1] for r in data], "high": [r[2] for r in data],
        "low": [r[3] for r in data], "close": [r[4] for r in data],
        "volume": [r[5] for r in data]})
    pq.write_table(table, tmp_path / "NIFTY.parquet", row_group_size=5000)
    done = wolfhub("backfill", str(tmp_path / "NIFTY.parquet"), "--exchange", "px",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "12345 of 12345 candles stored" in done.stdout
    assert _epoch_s(servers, tmp_path, "NIFTY", "px") == data
    redis_command(servers, "FLUSHALL")
    out = tmp_path / "out.parquet"
    exported = wolfhub("export", "px", "NIFTY", "--format", "parquet", "--out", str(out),
                       cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    back = pq.read_table(out)
    assert back.column_names == ["timestamp", "open", "high", "low", "close", "volume"]
    assert [[int(t.timestamp()), *rest] for t, *rest in zip(
        *(back.column(n).to_pylist() for n in back.column_names), strict=True)] == data


def test_killed_at_random_moments_every_row_is_stored_once(servers: LocalServers,
                                                           tmp_path: Path) -> None:
    """kill -9 mid-run, three times, then a run to the end: the marker never claims a row
    InfluxDB lacks, and in the end every row is there with its values, once. The runs
    take turns between pyarrow's CSV reader and the csv module (each resuming where the
    other's marker stopped), when pyarrow is installed."""
    make_config(servers, tmp_path)
    n = 400_000
    data = rows(n)
    source = tmp_path / "big.csv"
    write_csv(source, data)
    marker = tmp_path / "big.csv.wolfhub-progress"
    seed = int.from_bytes(os.urandom(4), "big")
    rnd = random.Random(seed)
    claims = []
    try:
        import pyarrow  # noqa: F401
        readers = ["arrow", "python", "arrow", "python"]
    except ImportError:
        readers = ["python"] * 4
    for reader in readers[:3]:
        run = subprocess.Popen([sys.executable, "-m", "hub", "backfill", str(source),
                                "--exchange", "px", "--product", "K", "--reader", reader],
                               cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.4, 1.4))
        run.send_signal(signal.SIGKILL)
        run.wait()
        claimed = 0
        if marker.exists():
            entries = json.loads(marker.read_text())["entries"]
            claimed = next(iter(entries.values()))["rows"] if entries else 0
        present = influx(servers, tmp_path, "SELECT count(close) FROM candle WHERE "
                         f"product='K' AND time < {(T0 + 60 * claimed) * 10**9}")
        assert (int(present[0][1]) if present else 0) == claimed, f"seed {seed}"
        claims.append(claimed)
    assert min(claims) < n, f"no kill landed mid-run: {claims}"
    finished = wolfhub("backfill", str(source), "--exchange", "px", "--product", "K",
                       "--reader", readers[3], cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert f"{n} of {n} candles stored" in finished.stdout
    assert count(servers, tmp_path, "K") == n
    got = _epoch_s(servers, tmp_path, "K", "px")
    assert got == data, f"seed {seed}"


@pytest.mark.anyio
async def test_candles_as_an_arrow_table_match_query_candles(hub: Any) -> None:
    pytest.importorskip("pyarrow")
    from hub import ValidationError
    from wolfhub.columnar import candles_table

    data = rows(3000)
    await hub.write_candles_batch("px", "T", [tuple(r) for r in data])
    table = await candles_table(hub, "px", "T", limit=2500)
    assert table.column_names == ["timestamp", "open", "high", "low", "close", "volume"]
    got = [[int(t.timestamp()), *rest] for t, *rest in zip(
        *(table.column(n).to_pylist() for n in table.column_names), strict=True)]
    expected = [[c.timestamp, c.open, c.high, c.low, c.close, c.volume]
                for c in await hub.query_candles("px", "T", limit=2500)]
    assert got == expected == data[-2500:]
    ranged = await candles_table(hub, "px", "T", T0 + 60, T0 + 120)
    assert ranged.num_rows == 2 and ranged.column("open").to_pylist() == [101.0, 102.0]
    empty = await candles_table(hub, "px", "nothing")
    assert empty.num_rows == 0 and empty.schema == table.schema
    with pytest.raises(ValidationError, match="limit"):
        await candles_table(hub, "px", "T", limit=0)


# ---- JSON (ccxt, freqtrade) and Feather (freqtrade, pandas) ---------------------------
# ccxt's fetch_ohlcv answers [[open time in ms, open, high, low, close, volume], ...];
# freqtrade keeps its data as that array (its "json"/"jsongz" formats, pandas'
# to_json(orient="values")) or as Feather (its default; pandas' to_feather, which is
# pyarrow.feather.write_feather: a `date` column of UTC timestamps, then open, high, low,
# close, volume), in files named PAIR-TIMEFRAME (BTC_USDT-1m.json, ...-1h-futures.feather).

def _ms_arrays(data: list[list[object]]) -> list[list[object]]:
    return [[int(r[0]) * 1000, *r[1:]] for r in data]  # type: ignore[call-overload]


def test_json_arrays_and_objects_as_ccxt_and_freqtrade_keep_them(servers: LocalServers,
                                                                 tmp_path: Path) -> None:
    import orjson

    make_config(servers, tmp_path)
    data = rows(3000)
    (tmp_path / "BTC_USDT-1m.json").write_bytes(orjson.dumps(_ms_arrays(data)))
    with gzip.open(tmp_path / "ETH_USDT_USDT-1m-futures.json.gz", "wb") as fh:
        fh.write(orjson.dumps(_ms_arrays(data[:500])))
    # objects naming their fields, a symbol each: two products in one file
    objects = [{"timestamp": int(r[0]) * 1000, "symbol": s, "open": r[1], "high": r[2],  # type: ignore[call-overload]
                "low": r[3], "close": r[4], "volume": r[5]}
               for r in data[:200] for s in ("SOL", "ADA")]
    (tmp_path / "mixed.json").write_bytes(orjson.dumps(objects))
    files = [str(tmp_path / n) for n in ("BTC_USDT-1m.json", "ETH_USDT_USDT-1m-futures.json.gz",
                                         "mixed.json")]
    done = wolfhub("backfill", *files, "--exchange", "ft", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "BTC_USDT-1m.json: 3000 of 3000 candles stored (3000 this run)" in done.stdout
    assert "futures.json.gz: 500 of 500 candles stored" in done.stdout
    assert "mixed.json: 400 of 400 candles stored" in done.stdout
    assert _epoch_s(servers, tmp_path, "BTC_USDT", "ft") == data
    assert _epoch_s(servers, tmp_path, "ETH_USDT_USDT", "ft") == data[:500]
    assert _epoch_s(servers, tmp_path, "SOL", "ft") == data[:200]
    assert _epoch_s(servers, tmp_path, "ADA", "ft") == data[:200]
    again = wolfhub("backfill", *files, "--exchange", "ft", cwd=tmp_path)
    assert "BTC_USDT-1m.json: 3000 of 3000 candles stored (0 this run)" in again.stdout


def test_bad_json_candles_are_named_and_nothing_is_cut_off(servers: LocalServers,
                                                           tmp_path: Path) -> None:
    """A price that is `true` or text, a time with a fraction of a second (int() would
    have cut it off), a candle that is not an array: each named by its place and column;
    a file that is not an array of candles stops with the file named."""
    import orjson

    make_config(servers, tmp_path)
    candles: list[object] = _ms_arrays(rows(20))
    candles[4][4] = True  # type: ignore[index]
    candles[8][5] = "lots"  # type: ignore[index]
    candles[11][0] = 1697529600000.5  # type: ignore[index]
    candles[15] = "not a candle"
    source = tmp_path / "dirty.json"
    source.write_bytes(orjson.dumps(candles))
    done = wolfhub("backfill", str(source), "--exchange", "px", "--product", "J",
                   "--skip-bad", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "16 of 20 candles stored (16 this run, 4 bad rows skipped)" in done.stdout
    assert f"{source}, line 5, column close: expected a number, got 'True'" in done.stderr
    assert f"{source}, line 9, column volume: expected a number, got 'lots'" in done.stderr
    assert f"{source}, line 12, column time: " in done.stderr
    assert f"{source}, line 16, column -: expected 6 columns, got 1" in done.stderr
    assert count(servers, tmp_path, "J") == 16
    (tmp_path / "object.json").write_bytes(orjson.dumps({"BTC": _ms_arrays(rows(3))}))
    refused = wolfhub("backfill", str(tmp_path / "object.json"), "--exchange", "px",
                      cwd=tmp_path)
    assert refused.returncode != 0
    assert "object.json, line 1, column -: expected a JSON array of candles, got dict" \
        in refused.stderr


def test_feather_as_freqtrade_writes_it_and_repair_from_it(servers: LocalServers,
                                                           tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    feather = pytest.importorskip("pyarrow.feather")
    make_config(servers, tmp_path)
    data = rows(4321)
    table = pa.table({
        "date": pa.array([int(r[0]) * 10**9 for r in data],  # type: ignore[call-overload]
                         pa.timestamp("ns", tz="UTC")),
        **{name: [r[k] for r in data] for k, name in enumerate(
            ("open", "high", "low", "close", "volume"), 1)}})
    feather.write_feather(table, tmp_path / "XRP_ETH-1m.feather", compression="lz4")
    (tmp_path / "NXT_BTC-5m.feather").write_bytes(b"")  # freqtrade leaves such files
    done = wolfhub("backfill", str(tmp_path / "XRP_ETH-1m.feather"),
                   str(tmp_path / "NXT_BTC-5m.feather"), "--exchange", "ft", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "XRP_ETH-1m.feather: 4321 of 4321 candles stored (4321 this run)" in done.stdout
    assert "NXT_BTC-5m.feather: 0 of 0 candles stored" in done.stdout
    assert _epoch_s(servers, tmp_path, "XRP_ETH", "ft") == data
    # resumed from a marker: only the rows after it
    marker = tmp_path / "XRP_ETH-1m.feather.wolfhub-progress"
    state = json.loads(marker.read_text())
    (key,) = state["entries"]
    state["entries"][key]["rows"] = 4000
    marker.write_text(json.dumps(state))
    resumed = wolfhub("backfill", str(tmp_path / "XRP_ETH-1m.feather"), "--exchange", "ft",
                      cwd=tmp_path)
    assert "4321 of 4321 candles stored (321 this run)" in resumed.stdout, resumed.stdout
    # holes in another product, filled from a Feather file by --repair
    partial = [r for i, r in enumerate(data[:300]) if not 100 <= i < 110]
    write_csv(tmp_path / "partial.csv", partial)
    assert wolfhub("backfill", str(tmp_path / "partial.csv"), "--exchange", "ft",
                   "--product", "HOLEY", cwd=tmp_path).returncode == 0
    filled = wolfhub("backfill", "--repair", str(tmp_path / "XRP_ETH-1m.feather"),
                     "--exchange", "ft", "--product", "HOLEY", cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr
    assert "10 candles written" in filled.stdout, filled.stdout
    assert _epoch_s(servers, tmp_path, "HOLEY", "ft") == data[:300]


def test_freqtrade_and_ccxt_file_names_name_the_product() -> None:
    for name, product in (("BTC_USDT-1m.json", "BTC_USDT"),
                          ("BTC_USDT_USDT-1h-futures.feather", "BTC_USDT_USDT"),
                          ("ETH_BTC-5m.json.gz", "ETH_BTC"), ("BTC-USD.json", "BTC-USD"),
                          ("BTCUSDT-1m-2024-01.zip", "BTCUSDT"), ("NIFTY.csv.gz", "NIFTY")):
        assert product_from_name(BackfillSource(Path(name))) == product, name


# ---- pyarrow's CSV reader against the csv module's ------------------------------------

def _read_all(path: Path, reader: str, done: int = 0, unit: int = 0,
              skip_bad: bool = True) -> tuple[dict[str | None, list[Any]], list[str], int]:
    """Every candle of a file by product, the bad rows' messages, and the rows counted,
    read a batch at a time as the backfill does."""
    from wolfhub.readers import open_table
    from wolfhub.tables import sources

    groups: dict[str | None, list[Any]] = {}
    bad: list[str] = []
    counted = 0
    for source in sources([path]):
        with open_table(source, done, 700, reader) as table:
            if table is None:
                continue
            line = table.first_line
            for chunk in table.chunks:
                parsed = table.parse(chunk, table.layout, unit, source.label, line, skip_bad)
                for product, found in parsed.groups.items():
                    if found:  # (an empty group is written as nothing)
                        groups.setdefault(product, []).extend(found)
                bad += [str(b) for b in parsed.bad]
                if parsed.stopped_at is not None:
                    return groups, bad, counted + parsed.stopped_at
                counted += len(chunk)
                line += len(chunk)
    return groups, bad, counted


def test_pyarrow_reads_every_csv_as_the_csv_module_does(tmp_path: Path) -> None:
    """Numbers of every shape (shortest reprs, 17 digits, exponents, integers), times in
    s/ms/µs, headerless Binance rows, a symbol column, bad rows of each kind, ISO times,
    a blank line, .gz and .zip, resumed from the middle: the same candles, bad rows,
    messages and row counts either way."""
    pytest.importorskip("pyarrow")
    rng = random.Random(11)

    def price() -> str:
        k = rng.random()
        if k < 0.4:
            return repr(rng.uniform(1, 1e5))
        if k < 0.6:
            return f"{rng.uniform(0, 1):.{rng.randint(1, 19)}f}"
        if k < 0.8:
            return f"{rng.randint(1, 10**15)}e{rng.randint(-12, 3)}"
        return str(rng.randint(1, 10**6))

    def candle(i: int, scale: int = 1) -> list[str]:
        o, c, a, b = price(), price(), price(), price()
        hi, lo = (a, b) if float(a) >= max(float(o), float(c), float(b)) else (
            repr(max(float(o), float(c), float(a), float(b))), b)
        if float(lo) > min(float(o), float(c)):
            lo = repr(min(float(o), float(c), float(lo)))
        return [str((T0 + 60 * i) * scale), o, hi, lo, c, price()]

    files: dict[str, list[list[str]]] = {}
    files["plain.csv"] = [["timestamp", "open", "high", "low", "close", "volume"],
                          *(candle(i) for i in range(3000))]
    files["binance.csv"] = [[*candle(i, 1000), "0", "1.0", "5", "0.5", "0.25", "0"]
                            for i in range(2000)]
    files["symbols.csv"] = [["open_time", "symbol", "open", "high", "low", "close", "volume"],
                            *([c[0], s, *c[1:]] for i in range(1500)
                              for s, c in (("A", candle(i, 10**6)), ("B", candle(i, 10**6))))]
    dirty = [["timestamp", "open", "high", "low", "close", "volume"],
             *(candle(i) for i in range(2500))]
    dirty[100][4] = "n/a"
    dirty[900][1] = "nan"
    dirty[1400][0] = "yesterday"
    dirty[1800][5] = "-1"
    dirty[2100][2] = "1_000"  # float() reads it, pyarrow does not: the csv module decides
    files["dirty.csv"] = dirty
    files["iso.csv"] = [["date", "open", "high", "low", "close", "volume"],
                        *([f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00Z", *candle(i)[1:]]
                          for i in range(1200))]
    blank = [["timestamp", "open", "high", "low", "close", "volume"],
             *(candle(i) for i in range(1600))]
    blank[800] = []
    files["blank.csv"] = blank
    for name, table in files.items():
        with (tmp_path / name).open("w", newline="") as fh:
            csv.writer(fh).writerows(table)
    with gzip.open(tmp_path / "plain.csv.gz", "wt", newline="") as fh:
        csv.writer(fh).writerows(files["plain.csv"])
    with zipfile.ZipFile(tmp_path / "two.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(tmp_path / "binance.csv", "BTCUSDT-1m-2024-01.csv")
        archive.write(tmp_path / "symbols.csv", "symbols.csv")
    names = [*files, "plain.csv.gz", "two.zip"]
    for name in names:
        for done in (0, 1111):
            python = _read_all(tmp_path / name, "python", done)
            arrow = _read_all(tmp_path / name, "arrow", done)
            assert arrow == python, (name, done)
            assert sum(map(len, python[0].values())) > 0, name
    # (and pyarrow did read them: its batches are not the csv module's lists of cells,
    # but for a file whose times are ISO text, which goes the csv module's way)
    from wolfhub.readers import open_table
    from wolfhub.tables import sources

    for name, by_pyarrow in (("plain.csv", True), ("plain.csv.gz", True),
                             ("two.zip", True), ("iso.csv", False)):
        with open_table(sources([tmp_path / name])[0], 0, 700, "arrow") as table:
            assert table is not None
            assert (not isinstance(next(table.chunks), list)) is by_pyarrow, name
    plain = _read_all(tmp_path / "plain.csv", "arrow")[0][None]
    assert plain == [(int(r[0]), *map(float, r[1:])) for r in files["plain.csv"][1:]]
    _, bad, _ = _read_all(tmp_path / "dirty.csv", "arrow")
    assert len(bad) == 4 and "dirty.csv, line 101, column close: expected a number" in bad[0]
    # stopping at the first bad row: the same row either way
    assert _read_all(tmp_path / "dirty.csv", "arrow", skip_bad=False) == \
        _read_all(tmp_path / "dirty.csv", "python", skip_bad=False)
    assert _read_all(tmp_path / "binance.csv", "arrow", unit=1000) == \
        _read_all(tmp_path / "binance.csv", "python", unit=1000)


def test_pyarrow_reads_only_csv_large_enough_to_pay_for_it(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    """Importing pyarrow and its first batches cost a loader ~0.5 s: "auto" takes the
    csv module below ARROW_FROM_BYTES of CSV (a compressed file counting four times its
    size); a reader named is kept."""
    from wolfhub import readers, tables

    monkeypatch.setattr(readers, "ARROW_FROM_BYTES", 1000)
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    write_csv(small, rows(5))
    write_csv(big, rows(40))
    with gzip.open(tmp_path / "packed.csv.gz", "wt") as fh:
        fh.write("timestamp,open,high,low,close,volume\n" + "\n".join(
            ",".join(map(str, r)) for r in rows(40)))
    assert small.stat().st_size < 1000 < big.stat().st_size
    assert (tmp_path / "packed.csv.gz").stat().st_size < 1000
    assert readers.csv_reader_for(tables.sources([small]), "auto") == "python"
    assert readers.csv_reader_for(tables.sources([big]), "auto") == "auto"
    assert readers.csv_reader_for(tables.sources([small, small]), "auto") == "python"
    assert readers.csv_reader_for(tables.sources([tmp_path / "packed.csv.gz"]),
                                 "auto") == "auto"
    assert readers.csv_reader_for(tables.sources([small]), "arrow") == "arrow"
