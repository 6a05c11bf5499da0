"""The benchmark harness runs end to end (tiny sizes, no timing asserted): it must not rot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench.__main__ import goals
from bench._report import markdown, save
from bench._suites import Bench, Sizes
from hub._servers import LocalServers


def test_harness_produces_tables_json_and_chart(tmp_path: Path) -> None:
    sizes = Sizes(repeats=5, candles_per_product=1200, query_sizes=(100, 1000, 10_000),
                  write_points=2000, seed_write_points=50, strategies=(100, 1000),
                  reads_per_strategy=1)
    with LocalServers(tmp_path / "servers") as servers:
        results = asyncio.run(Bench(servers, tmp_path, sizes).run())
    results.meta = {"date": "today", "machine": "test", "quick": True, "sizes": {}}
    results.goals = goals(results)
    for table in ("indicator_lookup", "single_read", "concurrency", "writes", "batch_sizes",
                  "candle_queries", "memory", "invalidation"):
        assert results.tables[table], table
    assert len(results.goals) == 10
    text = markdown(results)
    assert "| hub hot (near cache) |" in text and "#### Goals" in text
    js, _md, png = save(results, tmp_path / "out")
    assert json.loads(js.read_text())["tables"]["writes"][0]["points"] == 2000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
