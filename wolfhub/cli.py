"""``wolfhub`` command line (click: subcommands, --help and exit codes for free)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from hub import Hub
from hubdomain.config import HubConfig
from hubdomain.errors import HubError
from wolfhub.servers import LocalServers, RedisClusterServers, free_port

DEFAULT_CONFIG = "config/cache_db.yml"

config_option = click.option(
    "--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
    type=click.Path(dir_okay=False), help="Hub config (YAML); used when it exists.")
data_option = click.option(
    "--data", default="data", show_default=True, type=click.Path(file_okay=False),
    help="Directory of the local servers' data, configs and logs.")


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms without it
        return asyncio.run(coro)
    return uvloop.run(coro)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """wolfinch-hub: Redis + InfluxDB + SQLite data hub for Wolfinch."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="[%(levelname)s:%(name)s] %(message)s")


def _local_or_config(fn: Any) -> Any:
    """--config FILE, or local servers started (and stopped) under --data."""
    fn = click.option("--data", default="data", show_default=True,
                      type=click.Path(file_okay=False),
                      help="Where local servers and the SQLite file live when no config "
                           "is given.")(fn)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="Hub config (YAML). Without it, local servers are started "
                             "under --data.")(fn)


def _run_job(config_path: str | None, data: str, name: str, job: Any) -> Any:
    """Run ``job(config)`` on the given config, or on local servers of its own."""
    try:
        if config_path is not None:
            return _run(job(HubConfig.load(config_path)))
        with LocalServers(Path(data) / f"{name}-servers") as servers:
            cfg = HubConfig.from_mapping({
                **servers.config_overrides(),
                "sqlite": {"path": str(Path(data) / f"{name}.sqlite")},
            })
            return _run(job(cfg))
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command()
@_local_or_config
@click.option("--candles", default=600, show_default=True, help="1-minute candles per product.")
def example(config_path: str | None, data: str, candles: int) -> None:
    """Open a hub, write and read candles, indicators, a trade and a position."""
    from wolfhub.example import run

    summary = _run_job(config_path, data, "example", lambda cfg: run(cfg, candles))
    click.echo(json.dumps(summary, indent=2, default=str))


@main.command()
@_local_or_config
@click.option("--duration", default=30.0, show_default=True, help="Seconds to run.")
@click.option("--products", default=3, show_default=True, help="Products to simulate (1-8).")
@click.option("--speed", default=120.0, show_default=True,
              help="Simulated seconds per real second (120: a 1-minute candle every 0.5 s).")
def demo(config_path: str | None, data: str, duration: float, products: int,
         speed: float) -> None:
    """Simulated papertrader feed + EMA/RSI strategies on the hub, with a live view."""
    from wolfhub.demo import run as run_demo

    summary = _run_job(config_path, data, "demo",
                       lambda cfg: run_demo(cfg, duration, products, speed))
    click.echo(json.dumps(summary, indent=2))


@main.command()
@config_option
def doctor(config_path: str) -> None:
    """Check reachability, credentials, versions, database and retention, clock skew, hit
    rate, spool and quarantine, free space under sqlite.path, and the running hub's health
    (with metrics.port); say what to do about each problem. Exit code 1 on a FAIL."""
    from wolfhub.doctor import examine

    try:
        findings = _run(examine(_config_or_default(config_path), config_path))
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for f in findings:
        click.echo(f"[{f.status:>4}] {f.check}: {f.detail}")
        if f.fix:
            click.echo(f"       fix: {f.fix}")
    if any(f.status == "FAIL" for f in findings):
        sys.exit(1)


@main.command("backup")
@config_option
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--influx-rpc", help="influxd's backup service host:port "
              "(default: the InfluxDB host, port 8088).")
def backup_cmd(config_path: str, folder: str, influx_rpc: str | None) -> None:
    """InfluxDB (influxd backup -portable), the SQLite state and a Redis snapshot
    (BGSAVE, when Redis runs on this machine), into one new folder."""
    from wolfhub.backup import backup, default_rpc

    cfg = _config_or_default(config_path)
    try:
        manifest = backup(cfg, Path(folder), influx_rpc or default_rpc(cfg))
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps(manifest, indent=2))


@main.command("restore")
@config_option
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--influx-rpc", help="influxd's backup service host:port "
              "(default: the InfluxDB host, port 8088).")
@click.option("--as", "database", help="Restore InfluxDB into this new database "
              "(default: the config's bucket, which must not exist).")
@click.option("--force", is_flag=True, help="Replace the SQLite state file.")
def restore_cmd(config_path: str, folder: str, influx_rpc: str | None, database: str | None,
                force: bool) -> None:
    """Restore what `backup` wrote (stop hubs using the SQLite file first). Redis is a
    cache and refills by itself."""
    from wolfhub.backup import default_rpc, restore

    cfg = _config_or_default(config_path)
    try:
        done = restore(cfg, Path(folder), influx_rpc or default_rpc(cfg), database, force)
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo("restored: " + ", ".join(done))


@main.group()
def retention() -> None:
    """InfluxDB retention policies per measurement."""


@retention.command("apply")
@config_option
def retention_apply(config_path: str) -> None:
    """Create (or update) one retention policy per measurement from influxdb.retention
    (candles 90d, indicators 30d, trades 365d, metrics 180d by default) and a continuous
    query that downsamples 1-minute candles to 1 hour. Hubs write and read there when
    influxdb.retention.enabled is true."""
    from actors.backends.influx import InfluxClient, QueryFailed, rows
    from hubdomain import influxql as ql

    cfg = _config_or_default(config_path)
    db = cfg.influxdb.bucket

    async def work() -> list[dict[str, Any]]:
        client = InfluxClient(cfg.influxdb)
        try:
            await client.connect()
            await client.query(";".join([ql.create_database(db), *ql.retention_statements(
                db, cfg.influxdb.policies())]))
            try:
                await client.query(f"DROP CONTINUOUS QUERY {ql.ident(ql.CQ_1H)} ON "
                                   f"{ql.ident(db)}")
            except QueryFailed:
                pass  # not there yet
            await client.query(ql.downsample_query(db))
            return rows((await client.query(f"SHOW RETENTION POLICIES ON {ql.ident(db)}"))[0])
        finally:
            await client.close()

    try:
        policies = _run(work())
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for p in policies:
        click.echo(f"{p['name']:22} {p['duration']:>12}{'  (default)' if p['default'] else ''}")
    click.echo(f"continuous query {ql.CQ_1H}: 1m candles -> {ql.RP_1H}.candle_1h, hourly")
    if not cfg.influxdb.retention.enabled:
        click.echo("note: set influxdb.retention.enabled: true so hubs write and read there")


def _config_or_default(path: str) -> HubConfig:
    if Path(path).exists():
        return HubConfig.load(path)
    return HubConfig()


def _free_or_any(port: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _port(url: str) -> int:
    return urlsplit(url).port or 8086


@main.command()
@config_option
@data_option
@click.option("--cluster", is_flag=True,
              help="Also start a Redis Cluster (3 masters + 3 replicas) to try redis.cluster.")
def up(config_path: str, data: str, cluster: bool) -> None:
    """Start local redis-server and influxd on the config's ports (loopback only, generated
    configs under --data, no /etc files, no docker). They keep running until `down`."""
    try:
        cfg = _config_or_default(config_path)
        servers_dir = Path(data) / "servers"
        running = LocalServers.saved(servers_dir)
        if running and all(e["running"] for e in running.values()):
            click.echo(f"already running: redis :{running['redis']['port']}, "
                       f"influxd :{running['influxdb']['port']}")
        else:
            influx_port = _port(cfg.influxdb.url)
            servers = LocalServers(servers_dir, redis_port=cfg.redis.port,
                                   influx_port=influx_port,
                                   # influxd's own default (8086 -> 8088), as backup expects
                                   influx_rpc_port=_free_or_any(influx_port + 2))
            servers.start()
            servers.save_state()
            click.echo(f"redis-server on 127.0.0.1:{servers.redis.port}, influxd on "
                       f"127.0.0.1:{servers.influx.port}; data in {servers_dir}")
        if cluster:
            _cluster_up(servers_dir / "cluster")
    except (HubError, OSError, subprocess.SubprocessError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _cluster_up(directory: Path) -> None:
    nodes = LocalServers.saved(directory)
    if nodes and all(e["running"] for e in nodes.values()):
        seeds = [f"127.0.0.1:{e['port']}" for e in nodes.values()]
        click.echo("Redis Cluster already running: " + ", ".join(seeds))
        return
    LocalServers.stop_saved(directory)
    if directory.exists():  # a cache: a cluster that was stopped starts afresh
        shutil.rmtree(directory)
    cluster = RedisClusterServers(directory)
    cluster.start()
    cluster.save_state()
    click.echo(f"Redis Cluster (3 masters + 3 replicas) on {', '.join(cluster.seeds)}; "
               f"to use it, put in the config:\n"
               f"  redis: {{cluster: {{nodes: ['{cluster.seeds[0]}', '{cluster.seeds[1]}']}}}}")


@main.command()
@data_option
def down(data: str) -> None:
    """Stop the servers `up` started."""
    stopped = LocalServers.stop_saved(Path(data) / "servers")
    nodes = LocalServers.stop_saved(Path(data) / "servers" / "cluster")
    if nodes:
        stopped.append(f"redis cluster ({len(nodes)} nodes)")
    click.echo("stopped: " + ", ".join(stopped) if stopped else "nothing was running")


@main.command()
@data_option
def status(data: str) -> None:
    """Show the servers `up` started. Exit code 1 when one is not running."""
    state = LocalServers.saved(Path(data) / "servers")
    if not state:
        click.echo("no local servers (start them with `wolfhub up`)")
        sys.exit(1)
    nodes = LocalServers.saved(Path(data) / "servers" / "cluster")
    state.update({f"cluster {name}": entry for name, entry in nodes.items()})
    for name, entry in state.items():
        word = "running" if entry["running"] else "NOT running"
        click.echo(f"{name:13} {word:12} 127.0.0.1:{entry['port']}  pid {entry['pid']}")
    if not all(entry["running"] for entry in state.values()):
        sys.exit(1)


@main.command()
@config_option
def stats(config_path: str) -> None:
    """The seed's monitoring numbers (Redis hits, misses, memory...) and the hub's own."""
    async def collect() -> dict[str, Any]:
        async with Hub(_config_or_default(config_path), handle_sigterm=False) as hub:
            return await hub.get_stats()

    try:
        found = _run(collect())
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    hits, misses = found["keyspace_hits"], found["keyspace_misses"]
    if hits is not None and misses is not None and hits + misses:
        found["hit_rate_percent"] = round(hits / (hits + misses) * 100, 2)
    click.echo(json.dumps(found, indent=2, default=str))


def _with_hub(config_path: str, work: Any) -> Any:
    """Open a hub on the config, run ``work(hub)``, map errors to exit code 1."""
    async def go() -> Any:
        async with Hub(_config_or_default(config_path), handle_sigterm=False) as hub:
            return await work(hub)

    try:
        return _run(go())
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.group()
def cache() -> None:
    """The Redis cache."""


@cache.command("clear")
@config_option
@click.option("--pattern", help="A Redis glob (e.g. 'indicator:papertrader:*'); "
              "default: every key of the hub's schema.")
def cache_clear(config_path: str, pattern: str | None) -> None:
    """Delete cached keys with SCAN + UNLINK (never KEYS). Positions and strategy state
    stay durable in SQLite."""
    async def work(hub: Hub) -> int:
        if pattern is None:
            await hub.flush_all()
            return -1
        return await hub.clear_cache(pattern)

    removed = _with_hub(config_path, work)
    click.echo("cleared the hub's keys" if removed < 0 else f"removed {removed} keys")


@main.command()
@config_option
@click.option("--start", required=True, help="RFC3339, relative (-7d) or now.")
@click.option("--stop", required=True, help="RFC3339, relative (-7d) or now.")
@click.option("--predicate", default="", help='e.g. _measurement="candle" AND product="X"')
def delete(config_path: str, start: str, stop: str, predicate: str) -> None:
    """The seed's delete: points in [start, stop] matching the predicate, in InfluxDB, and
    the matching hot-window candles and cached indicators in Redis."""
    async def work(hub: Hub) -> None:
        await hub.delete_data(start, stop, predicate or None)

    _with_hub(config_path, work)
    click.echo("deleted")


CSV_FIELDS = ("timestamp", "open", "high", "low", "close", "volume")


@main.command()
@config_option
@click.argument("exchange")
@click.argument("product")
@click.option("--start", type=float, help="Unix seconds (inclusive).")
@click.option("--end", type=float, help="Unix seconds (inclusive).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv",
              show_default=True, help="parquet needs the 'columnar' extra (pyarrow).")
@click.option("--out", default="-", show_default=True, help="File to write ('-': stdout).")
def export(config_path: str, exchange: str, product: str, start: float | None,
           end: float | None, fmt: str, out: str) -> None:
    """Candles to CSV (timestamp,open,high,low,close,volume) or Parquet, ascending."""
    if fmt == "parquet":
        try:
            from wolfhub import columnar
        except HubError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

        async def frame(hub: Hub) -> Any:
            return await columnar.candles_table(hub, exchange, product, start, end)

        table = _with_hub(config_path, frame)
        columnar.write_parquet(table, sys.stdout.buffer if out == "-" else out)
        return

    async def work(hub: Hub) -> list[Any]:
        return await hub.query_candles(exchange, product, start, end, limit=100_000_000)

    found = _with_hub(config_path, work)
    with contextlib.ExitStack() as stack:
        fh = sys.stdout if out == "-" else stack.enter_context(
            open(out, "w", newline="", encoding="utf-8"))
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for c in found:
            writer.writerow([c.timestamp, c.open, c.high, c.low, c.close, c.volume])


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M")


@main.command()
@config_option
@click.argument("exchange")
@click.argument("product")
@click.option("--start", type=float, help="Unix seconds (default: the first stored candle).")
@click.option("--end", type=float, help="Unix seconds (default: the newest stored candle).")
@click.option("--timeframe", default="1m", show_default=True,
              help="Slot size: a slot is missing when no candle lies in it.")
def gaps(config_path: str, exchange: str, product: str, start: float | None,
         end: float | None, timeframe: str) -> None:
    """Holes in the stored candles of one product: first and last missing slot of each."""
    from hubdomain.timeframes import seconds

    async def work(hub: Hub) -> list[tuple[int, int]]:
        return await hub.gaps(exchange, product, start, end, timeframe)

    try:
        span = seconds(timeframe)
        config = _config_or_default(config_path)
        found = _with_hub_raising(config, work)
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    missing = 0
    for first, last in found:
        slots = (last - first) // span + 1
        missing += slots
        click.echo(f"{first}\t{last}\t{_when(first)} .. {_when(last)} UTC\t{slots} missing")
    market = config.calendars().get(exchange, product)
    within = f" (only while market {market.name} was open)" if market is not None else ""
    click.echo(f"{len(found)} gaps, {missing} {timeframe} slots missing{within}", err=True)


@main.command()
@config_option
@click.argument("files", nargs=-1,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--exchange", required=True)
@click.option("--product", help="The product of every row. Default: a product/symbol column, "
                                "else the file's name (BTCUSDT-1m-2024-01.csv -> BTCUSDT, "
                                "BTC_USDT-1m.feather -> BTC_USDT).")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="Rows parsed and written at a time (the writer still POSTs "
                   "influxdb.batch.size lines; smaller parses let it start the next POST "
                   "sooner).")
@click.option("--skip-bad", is_flag=True, help="Skip and count bad rows instead of stopping.")
@click.option("--restart", is_flag=True, help="Ignore the resume marker: load every row.")
@click.option("--time-unit", type=click.Choice(["auto", "s", "ms", "us", "ns"]),
              default="auto", show_default=True,
              help="Unit of numeric times (auto: by magnitude).")
@click.option("--reader", type=click.Choice(["auto", "arrow", "python"]), default="auto",
              show_default=True,
              help="How CSV files are read: pyarrow's CSV reader (auto: when the 'columnar' "
                   "extra is installed and the files are large, 24 MB or more) or Python's "
                   "csv module. The same candles and bad rows either way.")
@click.option("--repair", is_flag=True, help="Fill only the holes `wolfhub gaps` finds, from "
                                             "FILES and/or --fetcher; nothing stored is "
                                             "written again.")
@click.option("--fetcher", metavar="MODULE:FUNCTION",
              help="With --repair: an async (exchange, product, start, end) -> candles.")
@click.option("--start", type=float, help="With --repair: Unix seconds (default: first stored).")
@click.option("--end", type=float, help="With --repair: Unix seconds (default: newest stored).")
def backfill(config_path: str, files: tuple[Path, ...], exchange: str, product: str | None,
             batch: int, skip_bad: bool, restart: bool, time_unit: str, reader: str,
             repair: bool, fetcher: str | None, start: float | None,
             end: float | None) -> None:
    """Load candles from CSV files (.csv, .gz, .zip; a header row naming timestamp, open,
    high, low, close, volume and optionally product, or no header as in Binance's kline
    dumps), JSON arrays of candles (.json, .json.gz: ccxt's fetch_ohlcv, freqtrade's
    json data) or Parquet and Feather files (with the 'columnar' extra; Feather is
    freqtrade's default). Resumable per file and destination: rows already stored are
    skipped when run again."""
    if repair:
        _repair(config_path, list(files), exchange, product, fetcher, start, end, time_unit)
        return
    if fetcher is not None or start is not None or end is not None:
        click.echo("error: --fetcher, --start and --end go with --repair", err=True)
        sys.exit(2)
    if not files:
        click.echo("error: name at least one file (or --repair with --fetcher)", err=True)
        sys.exit(2)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from wolfhub.backfill import BadRow, Report
    from wolfhub.backfill import backfill as load

    config = _config_or_default(config_path)
    destination = f"{config.influxdb.url}/{config.influxdb.bucket}"
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.percentage:>3.0f}%"),
                        TextColumn("{task.fields[rows]:>12,} rows  {task.fields[rate]:>9,.0f}/s"),
                        TimeRemainingColumn(), console=Console(stderr=True))
    task = progress.add_task(f"{exchange}", total=None, rows=0, rate=0.0)

    def tick(report: Report) -> None:
        progress.update(task, total=report.bytes_total, completed=report.bytes_done,
                        rows=report.rows, rate=report.rate)

    report = Report(tick=tick)

    async def work(hub: Hub) -> Report:
        with progress:
            return await load(hub, list(files), exchange, product, destination=destination,
                              batch=batch, skip_bad=skip_bad, restart=restart,
                              time_unit=time_unit, report=report, reader=reader)

    try:
        _with_hub_raising(config, work)
    except BadRow as exc:
        for line in report.lines:
            click.echo(line)
        click.echo(f"error: {exc}", err=True)
        click.echo("the rows before it are stored; fix it and run again to resume there, "
                   "or pass --skip-bad", err=True)
        sys.exit(1)
    except (HubError, OSError) as exc:
        for line in report.lines:
            click.echo(line)
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for line in report.lines:
        click.echo(line)
    for bad in report.bad[:5]:
        click.echo(f"skipped: {bad}", err=True)
    if report.skipped > 5:
        click.echo(f"skipped: ... and {report.skipped - 5} more", err=True)
    click.echo(f"{report.stored:,} candles in {time.monotonic() - report.began:.1f}s "
               f"({report.rate:,.0f} rows/s)" + (f"; {report.skipped:,} bad rows skipped"
                                                 if report.skipped else ""))


def _repair(config_path: str, files: list[Path], exchange: str, product: str | None,
            fetcher: str | None, start: float | None, end: float | None,
            time_unit: str) -> None:
    from wolfhub.repair import RepairReport, load_fetcher, repair

    if product is None:
        click.echo("error: --repair needs --product", err=True)
        sys.exit(2)

    async def work(hub: Hub) -> RepairReport:
        return await repair(hub, exchange, product, start=start, end=end,
                            fetcher=load_fetcher(fetcher) if fetcher else None,
                            files=files, time_unit=time_unit)

    try:
        report = _with_hub_raising(_config_or_default(config_path), work)
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{len(report.holes_before)} gaps ({report.missing_before} minutes) before; "
               f"{report.written} candles written of {report.offered} offered; "
               f"{len(report.holes_after)} gaps ({report.missing_after} minutes) left")


def _with_hub_raising(config: HubConfig, work: Any) -> Any:
    async def go() -> Any:
        async with Hub(config, handle_sigterm=False) as hub:
            return await work(hub)

    return _run(go())


if __name__ == "__main__":  # pragma: no cover
    main()
