"""A hub in a child process, for tests that kill or signal the process itself.

Usage: python tests/_child.py MODE CONFIG_JSON [PEER_ID PEERS]
  trades  - write trades forever, printing each index once its await returned
  candles - write 1-minute candles forever, printing each index once accepted
  peer    - one of several hub processes: writes the same 100 candles and its own
            indicator, then answers "read EXPECTED_JSON" lines on stdin by reading every
            peer's indicator until they equal EXPECTED_JSON (printing what it read)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from hub import Hub, HubConfig

T0 = 1697529600


async def peer(config: HubConfig, me: int, peers: int) -> None:
    loop = asyncio.get_running_loop()
    async with Hub(config) as hub:
        await hub.write_candles_batch("px", "SHARED", [
            {"timestamp": T0 + 60 * i, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
             "volume": float(i)} for i in range(100)])
        await hub.cache_indicator("px", "SHARED", "EMA", me, float(me))
        await hub.flush()
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            expected = json.loads(line.split(" ", 1)[1])
            deadline = loop.time() + 10
            while True:
                seen = [await hub.get_indicator("px", "SHARED", "EMA", i)
                        for i in range(peers)]
                if seen == expected or loop.time() > deadline:
                    break
                await asyncio.sleep(0.005)
            print(json.dumps(seen), flush=True)


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
    # a process started from a background job inherits SIGINT ignored; the tests send it
    # SIGINT as a user's Ctrl-C would, so take it as Python does by default
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = HubConfig.from_mapping(json.loads(sys.argv[2]))
    if sys.argv[1] == "peer":
        asyncio.run(peer(settings, int(sys.argv[3]), int(sys.argv[4])))
    else:
        asyncio.run(main(sys.argv[1], settings))
