"""A hub in a child process, for tests that kill or signal the process itself.

Usage: python tests/_child.py MODE CONFIG_JSON
  trades  - write trades forever, printing each index once its await returned
  candles - write 1-minute candles forever, printing each index once accepted
"""

from __future__ import annotations

import asyncio
import json
import sys

from hub import Hub, HubConfig

T0 = 1697529600


async def main(mode: str, config: HubConfig) -> None:
    async with Hub(config) as hub:
        print("ready", flush=True)
        i = 0
        while True:
            if mode == "trades":
                await hub.write_trade("px", "BANK", T0 + i, "buy", 100.0 + i, 1.0, f"t{i}")
            else:
                await hub.write_candle("px", "BANK", T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, float(i))
                if i % 50 == 0:
                    await asyncio.sleep(0.001)  # a feed, not a busy loop
            print(i, flush=True)
            i += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], HubConfig.from_mapping(json.loads(sys.argv[2]))))
