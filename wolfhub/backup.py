"""``wolfhub backup`` / ``restore``: InfluxDB (``influxd backup -portable``), the SQLite
state (positions, strategy state, spool, quarantine) and a Redis snapshot, in one folder.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from hubdomain.config import HubConfig
from hubdomain.errors import BackendUnavailable, HubError
from wolfhub.servers import binary


def default_rpc(config: HubConfig) -> str:
    """influxd's backup/restore service: the HTTP host, port 8088 (influxd's default)."""
    return f"{urlsplit(config.influxdb.url).hostname}:8088"


def _influxd(*args: str) -> None:
    done = subprocess.run([binary("influxd"), *args], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise BackendUnavailable("influxdb", f"influxd {args[0]} failed: "
                                 f"{(done.stderr or done.stdout).strip()[-500:]}")


def _redis_snapshot(config: HubConfig, target: Path) -> str:
    """BGSAVE and copy the RDB file, when the server keeps it on this machine."""
    cfg = config.redis
    client = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, username=cfg.username,
                         password=cfg.password.get_secret_value() if cfg.password else None,
                         ssl=cfg.ssl, ssl_ca_certs=cfg.ssl_ca_certs, socket_timeout=10)
    try:
        before = client.lastsave()
        client.bgsave()
        for _ in range(600):
            if client.lastsave() != before:
                break
            time.sleep(0.1)
        folder = str(client.config_get("dir")["dir"])
        name = str(client.config_get("dbfilename")["dbfilename"])
    except redis.RedisError as exc:
        return f"skipped ({exc}); Redis is a cache and refills"
    finally:
        client.close()
    source = Path(folder) / name
    if not source.exists():
        return f"skipped: {source} is not on this machine; Redis is a cache and refills"
    shutil.copy2(source, target / "dump.rdb")
    return str(target / "dump.rdb")


def backup(config: HubConfig, folder: Path, rpc: str) -> dict[str, Any]:
    """Write the backup into ``folder`` (created; must be empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise HubError(f"{folder} is not empty")
    manifest: dict[str, Any] = {"created": datetime.datetime.now(datetime.UTC).isoformat(),
                                "bucket": config.influxdb.bucket}
    if config.influxdb.enabled:
        _influxd("backup", "-portable", "-db", config.influxdb.bucket, "-host", rpc,
                 str(folder / "influxdb"))
        manifest["influxdb"] = "influxdb/"
    state = Path(config.sqlite.path)
    if state.exists():
        with closing(sqlite3.connect(state)) as source, \
                closing(sqlite3.connect(folder / "wolfhub.sqlite")) as copy:
            source.backup(copy)  # consistent even while a hub writes
        manifest["sqlite"] = "wolfhub.sqlite"
    if config.redis.enabled:
        (folder / "redis").mkdir()
        manifest["redis"] = _redis_snapshot(config, folder / "redis")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def restore(config: HubConfig, folder: Path, rpc: str, database: str | None,
            force: bool) -> list[str]:
    """Restore InfluxDB into ``database`` (default: the config's bucket, which must not
    exist yet) and the SQLite state to the config's path (``force`` replaces it)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    state = Path(config.sqlite.path)
    if "sqlite" in manifest and state.exists() and not force:  # refuse before touching anything
        raise HubError(f"{state} exists: stop the hub and pass --force to replace it")
    done = []
    if "influxdb" in manifest:
        target = database or config.influxdb.bucket
        _influxd("restore", "-portable", "-db", manifest["bucket"], "-newdb", target,
                 "-host", rpc, str(folder / manifest["influxdb"]))
        done.append(f"influxdb database {target!r}")
    if "sqlite" in manifest:
        state.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(state) + suffix).unlink(missing_ok=True)
        shutil.copy2(folder / manifest["sqlite"], state)
        done.append(f"sqlite state {state}")
    return done
