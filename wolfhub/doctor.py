"""``wolfhub doctor``: the seed's troubleshooting section, automated.

Each check says what it found and, when something is wrong, what to do about it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from actors.backends.influx import InfluxClient, QueryFailed, rows
from actors.backends.redis import RedisUnreachable, make_client
from hubdomain.config import HubConfig
from hubdomain.errors import BackendUnavailable

SKEW_LIMIT = 2.0  # seconds
LOW_DISK = 256 * 2**20  # bytes free under the SQLite file before doctor warns


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str
    fix: str = ""


async def examine(config: HubConfig, config_path: str) -> list[Finding]:
    out: list[Finding] = []
    if config.redis.enabled:
        out += await _redis(config, config_path)
    if config.influxdb.enabled:
        out += await _influx(config, config_path)
    out += _sqlite(config)
    out += _disk(config)
    if config.metrics.port is not None:
        out += await asyncio.to_thread(_running_hub, config)
    return out


async def _redis(config: HubConfig, config_path: str) -> list[Finding]:
    where = f"{config.redis.host}:{config.redis.port}"
    if config.redis.cluster is not None:
        where = "cluster " + ",".join(config.redis.cluster.nodes)
    elif config.redis.sentinel is not None:
        where = "sentinels " + ",".join(config.redis.sentinel.nodes)
    client = make_client(config.redis)
    try:
        await client.connect()
    except RedisUnreachable as exc:
        return [Finding("redis reachable", "FAIL", f"{where}: {exc}",
                        "start it: `wolfhub up` (local servers) or `sudo systemctl start "
                        f"redis-server`; or fix redis.host/port in {config_path}")]
    except BackendUnavailable as exc:
        return [Finding("redis credentials", "FAIL", str(exc),
                        "set redis.password (or WOLFHUB_REDIS_PASSWORD) / redis.username "
                        f"in {config_path}")]
    try:
        info = await client.info()
        seconds, micros = (await client.pipeline([("TIME",)]))[0]
        out = [Finding("redis reachable", "ok", f"{where}, redis {info['redis_version']}")]
        major = int(str(info["redis_version"]).split(".")[0])
        out.append(Finding("redis version", "ok" if major >= 7 else "warn",
                           str(info["redis_version"]),
                           "" if major >= 7 else "Redis >= 7 is needed for near-cache "
                           "invalidations (CLIENT TRACKING over RESP3); upgrade"))
        skew = abs(int(seconds) + int(micros) / 1e6 - time.time())
        out.append(_skew("redis clock", skew))
        hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
        rate = hits / (hits + misses) if hits + misses else None
        low = rate is not None and hits + misses > 1000 and rate < 0.5
        out.append(Finding(
            "redis hit rate", "warn" if low else "ok",
            "no reads yet" if rate is None else f"{rate * 100:.1f} % of {hits + misses:,}",
            "raise redis.ttl.indicators or performance.redis_hot_data_window" if low else ""))
        return out
    finally:
        await client.close()


async def _influx(config: HubConfig, config_path: str) -> list[Finding]:
    client = InfluxClient(config.influxdb)
    url = config.influxdb.url
    try:
        try:
            headers = await client.ping()
        except BackendUnavailable as exc:
            return [Finding("influxdb reachable", "FAIL", f"{url}: {exc}",
                            "start it: `wolfhub up` (local servers) or `sudo systemctl start "
                            f"influxdb`; or fix influxdb.url in {config_path}. Writes meanwhile "
                            "wait in the SQLite spool")]
        version = headers.get("X-Influxdb-Version", "?")
        out = [Finding("influxdb reachable", "ok", f"{url}, influxdb {version}")]
        if "Date" in headers:
            out.append(_skew("influxdb clock", abs(
                parsedate_to_datetime(headers["Date"]).timestamp() - time.time())))
        bucket = config.influxdb.bucket
        try:
            dbs = {r["name"] for r in rows((await client.query("SHOW DATABASES"))[0])}
        except QueryFailed as exc:
            out.append(Finding("influxdb credentials", "FAIL", str(exc),
                               "set influxdb.username/password (WOLFHUB_INFLUXDB_PASSWORD) or "
                               f"influxdb.token in {config_path}"))
            return out
        if bucket not in dbs:
            out.append(Finding("influxdb database", "warn", f"{bucket!r} does not exist yet",
                               "it is created when a hub starts; run the hub once"))
            return out
        out.append(Finding("influxdb database", "ok", repr(bucket)))
        policies = rows((await client.query(f'SHOW RETENTION POLICIES ON "{_q(bucket)}"'))[0])
        described = ", ".join(f"{p['name']}={p['duration']}{' (default)' if p['default'] else ''}"
                              for p in policies)
        forever = any(p["default"] and p["duration"] in ("0s", "0") for p in policies)
        out.append(Finding(
            "influxdb retention", "warn" if forever else "ok", described,
            "the default policy keeps data forever; the config asks for "
            f"candles {config.influxdb.retention.candles}, trades "
            f"{config.influxdb.retention.trades}: create policies to match" if forever else ""))
        return out
    finally:
        await client.close()


def _q(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def _skew(check: str, skew: float) -> Finding:
    bad = skew > SKEW_LIMIT
    return Finding(check, "warn" if bad else "ok", f"{skew:.2f} s from this machine",
                   "synchronise clocks (chrony/ntpd): candle times come from this machine"
                   if bad else "")


def _sqlite(config: HubConfig) -> list[Finding]:
    path = Path(config.sqlite.path)
    if not path.exists():
        return [Finding("sqlite state", "ok", f"{path} not created yet")]
    try:
        # (closing: a connection's own "with" commits, and leaves it open)
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            # (a row holds several lines since the 'lines' column; one before)
            outbox = db.execute("SELECT coalesce(sum(lines), 0) FROM outbox" if "lines" in
                                columns else "SELECT count(*) FROM outbox").fetchone()[0]
            quarantined = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    except sqlite3.Error as exc:
        return [Finding("sqlite state", "FAIL", f"{path}: {exc}",
                        "check the file's permissions and free disk space")]
    out = [Finding("sqlite spool", "warn" if outbox else "ok",
                   f"{outbox} lines waiting for InfluxDB",
                   "start a hub with InfluxDB reachable: it replays them first" if outbox
                   else "")]
    out.append(Finding("sqlite quarantine", "warn" if quarantined else "ok",
                       f"{quarantined} points InfluxDB refused",
                       "inspect them with `await hub.quarantined()` (field type conflicts "
                       "mean one field was written as two types)" if quarantined else ""))
    return out


def _disk(config: HubConfig) -> list[Finding]:
    """Room for the spool: InfluxDB outages are spooled to the disk under sqlite.path."""
    directory = Path(config.sqlite.path).absolute().parent
    while not directory.exists():
        directory = directory.parent
    if not os.access(directory, os.W_OK):
        return [Finding("sqlite disk", "FAIL", f"{directory} is not writable",
                        "durable writes and the spool need it: fix its permissions or "
                        "mount, or point sqlite.path elsewhere")]
    free = shutil.disk_usage(directory).free
    if free < LOW_DISK:
        return [Finding("sqlite disk", "warn", f"{free / 2**20:.0f} MiB free under {directory}",
                        "an InfluxDB outage spools there; when it is full, writes are "
                        "refused with BackendUnavailable: free space")]
    return [Finding("sqlite disk", "ok", f"{free / 2**30:.1f} GiB free under {directory}")]


def _running_hub(config: HubConfig) -> list[Finding]:
    """The hub serving metrics on metrics.port: is it healthy, which actor is down."""
    host = config.metrics.host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.metrics.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            text = answer.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        return [Finding("running hub", "ok", f"none serving metrics at {url} ({exc})")]
    samples = {(s.name, s.labels.get("actor", "")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    down = sorted(actor for (name, actor), value in samples.items()
                  if name == "wolfhub_actor_down" and value)
    problems = [f"actor {actor} is down (restarting)" for actor in down]
    if samples.get(("wolfhub_writer_spool_blocked", "")):
        problems.append("the SQLite spool cannot take lines (disk full or read-only)")
    stale = samples.get(("wolfhub_cache_stale_keys", ""), 0)
    if stale:
        problems.append(f"{stale:.0f} Redis keys stale (Redis refused writes: OOM or READONLY)")
    healthy = samples.get(("wolfhub_healthy", ""), 1) == 1
    if not healthy and not down:
        problems.append("an actor crashed more than 5 times in the last minute")
    if not problems:
        return [Finding("running hub", "ok", f"healthy ({url})")]
    return [Finding("running hub", "warn" if healthy else "FAIL", "; ".join(problems),
                    "the hub's log says why (tracebacks of the crashes, the Redis or SQLite "
                    "error); it recovers by itself once the cause is gone")]
