"""What the hub holds per value, in a fresh process (RSS, not the sizes Python reports:
orjson's bytes objects report 65 bytes while keeping a 4 KiB heap block each)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import gc, os, sys
    from hubdomain.records import Candle
    from actors.cache.ops import encode_candle
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    candles = [Candle(1697529600 + 60 * i, 1.0 + i, 2.0 + i, 0.5 + i, 1.5 + i, 3.0)
               for i in range(50_000)]
    gc.collect()
    before = rss()
    held = [encode_candle(c) for c in candles]
    print((rss() - before) / len(held))
""")


def test_an_encoded_candle_costs_its_size_not_a_heap_page() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          check=True, timeout=120)
    per_candle = float(done.stdout)
    # about 90 bytes each; orjson's own result kept ~4,100 (1,310 MB for 300 hot windows)
    assert per_candle < 400, per_candle
