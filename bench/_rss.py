"""The hub's own memory: RSS growth of a fresh process that writes a 1,000-candle hot
window for each of N products (write_candles_batch + flush) and reads each window once
(query_candles), so the near cache holds them all."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from wolfhub.servers import LocalServers

PROBE = textwrap.dedent("""
    import asyncio, gc, json, os, sys
    from hub import Candle, Hub, HubConfig

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def main(config, products, per):
        async with Hub(HubConfig.from_mapping(config, environ={})) as hub:
            gc.collect()
            before = rss()
            for p in range(products):
                window = [Candle(1697529600 + 60 * i, 1.0 + i, 2.0 + i, 0.5 + i, 1.5 + i, 3.0)
                          for i in range(per)]
                await hub.write_candles_batch("rss", f"P{p}", window)
            await hub.flush()
            for p in range(products):
                assert len(await hub.query_candles("rss", f"P{p}", limit=per)) == per
            await asyncio.sleep(1)  # a running bot: the writer trims its heap once the
            gc.collect()            # burst is over (quiet a quarter of a second)
            print(json.dumps({"bytes": rss() - before}))

    asyncio.run(main(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
""")


def hub_rss(servers: LocalServers, work: Path, products: int,
            per: int = 1000) -> dict[str, Any]:
    config: dict[str, Any] = {**servers.config_overrides()}
    config["influxdb"] = {**config["influxdb"], "bucket": "rss"}
    config["sqlite"] = {"path": str(work / "rss.sqlite")}
    config["performance"] = {"redis_hot_data_window": per}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(config), str(products),
                           str(per)], capture_output=True, text=True, check=True, timeout=600)
    grown = json.loads(done.stdout.strip().splitlines()[-1])["bytes"]
    return {"store": f"hub process RSS growth, {per:,}-candle hot windows for {products} "
                     f"products (written, read once)", "bytes": grown,
            "per_candle": grown / (products * per)}
