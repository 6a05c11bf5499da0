"""Markdown tables, JSON and a PNG chart from one run's Results."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench._suites import Results


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value < 1e-3:
            return f"{value * 1e6:.1f} µs"
        if value < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.2f} s"
    if isinstance(value, int) and value > 9999:
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]], formats: dict[str, Any] | None = None) -> str:
    if not rows:
        return ""
    formats = formats or {}
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(formats.get(c, fmt)(row[c]) for c in cols) + " |")
    return "\n".join(out)


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def markdown(results: Results) -> str:
    t = results.tables
    meta = results.meta
    when = f"{meta['began']} to {meta['ended'][-9:]}" if "began" in meta else meta["date"]
    at = f" at commit `{meta['commit']}`" if meta.get("commit") else ""
    parts = [f"Run {when}{at} on {meta['machine']} "
             f"({'quick' if meta['quick'] else 'full'} sizes).", ""]
    sections = [
        ("Indicator lookup (median wall time to read N indicators one after another)",
         "indicator_lookup", {}),
        ("Single indicator read latency", "single_read", {}),
        ("Concurrent strategies reading indicators (median wall time)", "concurrency", {}),
        ("Candle queries (median)", "candle_queries", {}),
        ("Writes until queryable", "writes",
         {"points_per_s": lambda v: f"{v:,.0f}/s"}),
        ("Backfill of a candle CSV", "backfill", {"rows_per_s": lambda v: f"{v:,.0f}/s"}),
        ("Writer batch size (write_candles_batch + flush, one hub per size)", "batch_sizes",
         {"points_per_s": lambda v: f"{v:,.0f}/s"}),
        ("Memory and disk", "memory", {"bytes": size}),
        ("Remote write to near-cache invalidation", "invalidation", {}),
        ("Synchronous callers: the Wolfinch drop-in beside the seed's calls (per call)",
         "dropin", {}),
        ("Synchronous candle writes until queryable", "dropin_writes",
         {"points_per_s": lambda v: f"{v:,.0f}/s"}),
        ("The actors' mailbox beside anyio's memory object stream (uvloop)", "mailbox",
         {"tells_per_s": lambda v: f"{v:,.0f}/s"}),
        ("Scaling out: N processes on one Redis and one InfluxDB (aggregate)", "scale_out",
         {"ops_per_s": lambda v: f"{v:,.0f}/s", "per_process": lambda v: f"{v:,.0f}/s"}),
        ("Live candles: from the write of the minute that closes a candle to a subscriber "
         "holding it", "rollup_latency", {}),
        ("Live candles: write_candle x N + flush on a product with subscribers (each "
         "consuming every candle)", "subscribers",
         {"writes_per_s": lambda v: f"{v:,.0f}/s"}),
        ("Live candles: warm-up then live, subscriptions racing a writer", "handover", {}),
        ("Gap scan of one product's 1-minute candles (hub.gaps, 5 runs)", "gap_scan", {}),
    ]
    for title, key, formats in sections:
        if key in t:
            parts += [f"#### {title}", "", table(t[key], formats), ""]
    if results.goals:
        parts += ["#### Goals", "", table(results.goals), ""]
    return "\n".join(parts)


def chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = results.tables.get("scale_out", [])
    fig, axes = plt.subplots(1, 3 if scale else 2, figsize=(21 if scale else 14, 5.5))
    left, right = axes[0], axes[1]
    names = [n for n in ("hub hot read", "hub cold read (Redis)", "redis.asyncio GET",
                         "sqlite PK lookup", "remote write -> near cache invalidated",
                         "drop-in hot read", "drop-in write_candle", "seed sync redis-py GET")
             if n in results.samples]
    data = [[s * 1e6 for s in results.samples[n]] for n in names]
    left.boxplot(data, orientation="horizontal", showfliers=False)
    left.set_yticks(range(1, len(names) + 1), names)
    left.set_xscale("log")
    left.set_xlabel("latency per operation (µs, log scale; whiskers 1.5 IQR)")
    left.set_title("Latency per call (reads; the drop-in's write_candle)")
    writes = results.tables.get("writes", [])
    right.barh([w["writer"] for w in writes], [w["points_per_s"] for w in writes],
               color="tab:green")
    right.set_xscale("log")
    right.set_xlabel("candles per second until queryable (log scale)")
    right.set_title("Write throughput")
    if scale:
        third = axes[2]
        for workload in dict.fromkeys(row["workload"] for row in scale):
            rows = [row for row in scale if row["workload"] == workload]
            third.plot([row["processes"] for row in rows], [row["ops_per_s"] for row in rows],
                       marker="o", label=textwrap.fill(workload, 48))
        third.set_xticks(sorted({row["processes"] for row in scale}))
        third.set_ylim(bottom=0)
        third.set_xlabel("processes")
        third.set_ylabel("operations per second, all processes")
        third.set_title("Scaling out")
        third.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle(f"wolfinch-hub bench, {results.meta['date']}, {results.meta['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def save(results: Results, out: Path) -> tuple[Path, Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md, png = out / "bench.json", out / "bench.md", out / "bench.png"
    js.write_text(json.dumps(asdict(results), indent=1))
    md.write_text(markdown(results))
    chart(results, png)
    return js, md, png
