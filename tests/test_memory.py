"""What the hub holds per value, in a fresh process (RSS, not the sizes Python reports:
orjson's bytes objects report 65 bytes while keeping a 4 KiB heap block each)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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


TRIM_PROBE = textwrap.dedent("""
    import asyncio, os
    from actors.heap import Trimmer
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    async def main():
        trimmer = Trimmer(after=1000)
        if not trimmer.available:
            print("unavailable")
            return
        burst = [bytes(1024) for _ in range(150_000)]  # past pymalloc: glibc's heap
        kept = bytes(1024)  # allocated last, it pins the heap's top
        before = rss()
        del burst
        freed = rss()
        trimmer.count(999, idle=True)  # not enough done yet
        trimmer.count(1, idle=False)  # enough, but still busy
        await trimmer.close()
        assert trimmer.trims == 0
        trimmer.count(1, idle=True)
        await trimmer.close()
        print((before - freed) // 2**20, (before - rss()) // 2**20, trimmer.trims, len(kept))
    asyncio.run(main())
""")


def test_a_burst_of_writes_gives_its_memory_back_once_written() -> None:
    """Freed heap memory stays in the process (glibc keeps it for reuse) until the
    writer, idle again after many lines, trims the heap: RSS falls by what the burst
    used. Not while lines still wait, and not before enough were written."""
    done = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True,
                          check=True, timeout=120)
    if done.stdout.strip() == "unavailable":
        pytest.skip("not glibc: no malloc_trim")
    freed_by_free, freed_by_trim, trims, _ = map(int, done.stdout.split())
    assert trims == 1
    assert freed_by_free < 20, freed_by_free  # MiB: free() alone gives back next to nothing
    assert freed_by_trim > 100, freed_by_trim  # the burst was ~150 MiB
