"""Backfill: ``wolfhub backfill`` of a candle CSV as a user runs it (a process of its
own, interpreter start and file parsing included) beside raw aioinflux POSTing the same
rows as prebuilt 5,000-line batches."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from actors.backends.influx import InfluxClient
from hubdomain.config import HubConfig
from wolfhub.servers import LocalServers

T0 = 1_600_000_020 // 3600 * 3600


def write_csv(path: Path, n: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    price = 20_000.0
    for i in range(n):
        o = price
        c = round(o + ((i * 7919) % 41 - 20) * 0.5, 2)
        rows.append([T0 + 60 * i, o, max(o, c) + 1.5, min(o, c) - 1.5, c,
                     float((i * 31) % 5000)])
        price = c
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "open", "high", "low", "close", "volume"])
        out.writerows(rows)
    return rows


async def raw_seconds(config: HubConfig, rows: list[list[Any]], product: str) -> float:
    influx = InfluxClient(config.influxdb)
    await influx.connect()
    lines = [f"candle,exchange=raw,product={product} open={o!r},high={h!r},low={lo!r},"
             f"close={c!r},volume={v!r} {t}000000000" for t, o, h, lo, c, v in rows]
    began = time.perf_counter()
    for i in range(0, len(lines), 5000):
        await influx.write("\n".join(lines[i:i + 5000]).encode())
    seconds = time.perf_counter() - began
    await influx.close()
    return seconds


def backfill_table(servers: LocalServers, work: Path, sizes: tuple[int, ...]
                   ) -> list[dict[str, Any]]:
    overrides = servers.config_overrides()
    config_data = {**overrides, "influxdb": {**overrides["influxdb"], "bucket": "bench_bf"},
                   "sqlite": {"path": str(work / "backfill.sqlite")}}
    (work / "backfill.yml").write_text(yaml.safe_dump(config_data))
    config = HubConfig.from_mapping(config_data, environ={})
    out = []
    for n in sizes:
        source = work / f"candles_{n}.csv"
        rows = write_csv(source, n)
        raw = asyncio.run(raw_seconds(config, rows, f"RAW{n}"))
        out.append({"loader": f"aioinflux 5,000-line batches, prebuilt ({n:,} rows)",
                    "rows": n, "seconds": raw, "rows_per_s": n / raw})
        # the default (pyarrow's CSV reader, the columnar extra being installed here),
        # then Python's csv module, as without the extra
        for reader, label in (("auto", ""), ("python", " --reader python")):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hub", "backfill", str(source),
                            "--exchange", "bench", "--product", f"BF{n}{reader}",
                            "--reader", reader, "--config", str(work / "backfill.yml")],
                           check=True, capture_output=True, timeout=1800)
            hub = time.perf_counter() - began
            out.append({"loader": f"wolfhub backfill{label}, whole process ({n:,}-row CSV)",
                        "rows": n, "seconds": hub, "rows_per_s": n / hub})
    return out
