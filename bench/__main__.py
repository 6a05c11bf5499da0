"""``python -m bench [--quick] [--out DIR]``."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import click
import uvloop

from bench._backfill import backfill_table
from bench._dropin import dropin
from bench._mailbox import mailbox_vs_stream
from bench._report import markdown, save
from bench._rss import hub_rss
from bench._scale import scale_out
from bench._streams import streams_tables
from bench._suites import Bench, Results, Sizes
from wolfhub.servers import LocalServers, RedisClusterServers


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, loopback"


def commit() -> str | None:
    """The checkout's commit (with ``+changes`` when the tree differs from it), None
    outside a git checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                              capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def goals(r: Results) -> list[dict[str, Any]]:
    t = r.tables
    read = {row["read"]: row for row in t["single_read"]}
    hot, cold = read["hub hot (near cache)"]["p50"], read["hub cold (Redis)"]["p50"]
    raw, lite = read["redis.asyncio GET"]["p50"], read["sqlite PK lookup"]["p50"]
    beside = read["redis.asyncio GET, in turn with the cold reads"]["p50"]
    conc = next(row for row in t["concurrency"] if row["strategies"] == 100)
    cold_conc = next((row for row in t["concurrency"]
                      if str(row["strategies"]).startswith("100, 1,000 distinct")), None)
    writes = {row["writer"]: row["seconds"] for row in t["writes"]}
    hub_w = writes["hub write_candle x N + flush"]
    batch_w = writes["hub write_candles_batch + flush"]
    durable_w = writes["hub write_candles_batch + flush, durable"]
    raw_w = writes["aioinflux 5,000-line batches, prebuilt"]
    seed_w = writes["seed: one POST per point (extrapolated)"]
    q = {row["query"]: row for row in t["candle_queries"]}
    q100, q10k = q["last 100 candles"], q["last 10,000 candles"]
    mem = t["memory"][0]["bytes"]
    rss = next((row for row in t["memory"] if "RSS" in row["store"]), None)
    inv = t["invalidation"][0]

    def goal(name: str, target: str, measured: str, met: bool) -> dict[str, Any]:
        return {"goal": name, "target": target, "measured": measured,
                "met": "yes" if met else "NO"}

    out = [
        goal("hot indicator read p50 vs raw GET p50", "<= 1/20", f"1/{raw / hot:.1f}",
             hot * 20 <= raw),
        goal("hot indicator read p50 vs SQLite lookup", "below", f"{hot / lite:.2f}x",
             hot < lite),
        goal("cold indicator read p50 vs raw GET p50 (taken in turn)", "<= 1.15x",
             f"{cold / beside:.2f}x", cold <= 1.15 * beside),
        goal("100 strategies, wall time vs raw pool", "<= 1/3",
             f"1/{conc['redis.asyncio pool'] / conc['hub']:.1f}",
             conc["hub"] * 3 <= conc["redis.asyncio pool"]),
        *([goal("100 strategies, 1,000 distinct cold keys, vs raw pool", "<= 1/3",
                f"1/{cold_conc['redis.asyncio pool'] / cold_conc['hub']:.1f}",
                cold_conc["hub"] * 3 <= cold_conc["redis.asyncio pool"])]
          if cold_conc is not None else []),
        goal("write_candle x N + flush vs raw aioinflux batches", "<= 2x",
             f"{hub_w / raw_w:.2f}x", hub_w <= 2 * raw_w),
        goal("write_candles_batch + flush vs raw aioinflux batches", "<= 1.25x",
             f"{batch_w / raw_w:.2f}x", batch_w <= 1.25 * raw_w),
        *([{"goal": "  influxd's floor for them: the same candles and their rollups, raw, "
                    "vs raw candles", "target": "(informative)",
            "measured": f"{writes[k0] / raw_w:.2f}x", "met": "-"}]
          if (k0 := "aioinflux 5,000-line batches, prebuilt, with the candles' rollups")
          in writes else []),
        *([goal("  the same two, streams.enabled: false (no rollups, no stream)",
                "<= 2x / <= 1.25x",
                f"{writes[k1] / raw_w:.2f}x / {writes[k2] / raw_w:.2f}x",
                writes[k1] <= 2 * raw_w and writes[k2] <= 1.25 * raw_w)]
          if (k1 := "hub write_candle x N + flush, streams off") in writes
          and (k2 := "hub write_candles_batch + flush, streams off") in writes else []),
        goal("durable write_candles_batch + flush vs memory mode", "<= 1.5x",
             f"{durable_w / batch_w:.2f}x", durable_w <= 1.5 * batch_w),
        goal("candles until queryable vs the seed's per-point writes", ">= 100x faster",
             f"{seed_w / hub_w:.0f}x", seed_w >= 100 * hub_w),
        goal("last 100 candles p50 vs raw InfluxQL", "<= 1/5",
             f"1/{q100['influxql (aioinflux)'] / q100['hub']:.1f}",
             q100["hub"] * 5 <= q100["influxql (aioinflux)"]),
        goal("last 10,000 candles p50 vs raw InfluxQL", "<= 0.6x",
             f"{q10k['hub'] / q10k['influxql (aioinflux)']:.2f}x",
             q10k["hub"] <= 0.6 * q10k["influxql (aioinflux)"]),
        goal("Redis memory, 1,000 candles x 5 products", "< 1 MB", f"{mem / 1e6:.2f} MB",
             mem < 1_000_000),
    ]
    if "backfill" in t:
        biggest = max(row["rows"] for row in t["backfill"])
        bf = {"hub" if row["loader"].startswith("wolfhub") else "raw": row["seconds"]
              for row in t["backfill"] if row["rows"] == biggest
              and "--reader python" not in row["loader"]}
        ratio = bf["hub"] / bf["raw"]
        out.append(goal(f"backfill of a {biggest:,}-row CSV (whole process) vs raw batches",
                        "<= 2x", f"{ratio:.2f}x", ratio <= 2))
    if rss is not None:  # the budget: 150 MB for 300 products x 1,000 candles
        out.append(goal("hub RSS per hot-window candle", "<= 500 B",
                        f"{rss['per_candle']:.0f} B", rss["per_candle"] <= 500))
    if "dropin" in t:
        calls = {row["call"]: row["p50"] for row in t["dropin"]}
        seed = calls["seed: sync redis-py GET + decode"]
        read = calls["drop-in get_indicator, near cache"]
        write = calls["drop-in write_candle (accepted)"]
        out += [
            goal("drop-in hot read p50 vs the seed's sync GET p50", "<= 1/10",
                 f"1/{seed / read:.1f}", read * 10 <= seed),
            goal("drop-in write_candle p50 vs the seed's sync GET p50", "<= 1/4",
                 f"1/{seed / write:.1f}", write * 4 <= seed),
        ]
    if "rollup_latency" in t:
        lat = {row["timeframe"]: row for row in t["rollup_latency"]}
        for tf in ("5m", "1h"):
            out.append(goal(f"{tf} rollup delivered after its closing minute's write, p99",
                            "<= 1 ms", f"{lat[tf]['p99'] * 1e3:.2f} ms", lat[tf]["p99"] <= 1e-3))
        raw = lat.get("raw XADD -> XREAD")
        if raw is not None:  # (older result files have no such row)
            out.append({"goal": "  the floor at the same pace: raw XADD reaching a blocked "
                                "XREAD, p50 / p99", "target": "(informative)",
                        "measured": f"{raw['p50'] * 1e3:.2f} / {raw['p99'] * 1e3:.2f} ms",
                        "met": "-"})
        count = max(row["subscribers"] for row in t["subscribers"])
        subs = {(row["where"], row["subscribers"]): row["writes_per_s"]
                for row in t["subscribers"]}
        alone = subs[("none", 0)]

        def lower(drop: float) -> str:
            return f"{drop * 100:.1f}% lower" if drop >= 0 \
                else f"{-drop * 100:.1f}% higher (noise)"
        drop = 1 - subs[("other process", count)] / alone
        out.append(goal(f"write_candle rate with {count:,} subscribers (strategies' process)",
                        "<= 10% lower", lower(drop), drop <= 0.10))
        if ("other process", 1) in subs:
            out.append({"goal": "  the same with one subscriber there (a process following "
                                "at all)", "target": "(informative)",
                        "measured": lower(1 - subs[("other process", 1)] / alone), "met": "-"})
        if ("other process, busy loop", 0) in subs:  # (older result files have none)
            out.append({"goal": "  the same beside a process that only keeps a core busy "
                                "(no hub, no Redis)", "target": "(informative)",
                        "measured": lower(1 - subs[("other process, busy loop", 0)] / alone),
                        "met": "-"})
        hand = t["handover"][0]
        out.append(goal(f"warm-up of {hand['warmup']:,} + live hand-over, {hand['runs']:,} runs "
                        "racing writes", "0 duplicates, 0 holes",
                        f"{hand['duplicates']} duplicates, {hand['holes']} holes",
                        hand["duplicates"] == 0 and hand["holes"] == 0))
        scan = t["gap_scan"][0]
        out.append(goal(f"gap scan of {scan['candles']:,} 1-minute candles", "< 1 s",
                        f"{scan['p50']:.2f} s ({scan['holes_found']} of {scan['holes_made']} "
                        f"holes; {scan['scans_exact']} of {scan['scans']} scans exact)",
                        scan["p50"] < 1 and scan["scans_exact"] == scan["scans"]))
        if "first_right_after_write" in scan:  # (older result files have none)
            out.append({"goal": "  the first scan, right after the year was written (the "
                                "others once influxd had settled)", "target": "(informative)",
                        "measured": f"{scan['first_right_after_write']:.2f} s "
                                    f"({'exact' if scan['first_exact'] else 'NOT exact'})",
                        "met": "-"})
        for wrong in scan.get("wrong", []):
            out.append({"goal": "  a scan not exact: holes reported not made / made not "
                                "reported, candles read in the first (now; 5 s later)",
                        "target": "(informative)",
                        "measured": f"{wrong['extra']} / {wrong['missed']}, "
                                    f"{wrong['extra_candles_read']}; "
                                    f"{wrong['extra_candles_read_later']}", "met": "-"})
    if "p99" in inv:
        out.append(goal("remote write invalidates the near cache, p99", "< 5 ms",
                        f"{inv['p99'] * 1e3:.2f} ms", inv["p99"] < 0.005))
    else:
        out.append(goal("remote write invalidates the near cache, p99", "< 5 ms",
                        "no near cache", False))
    return out


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes (about a minute).")
@click.option("--out", default="bench/results", show_default=True,
              type=click.Path(file_okay=False), help="Where JSON, Markdown and PNG go.")
@click.option("--processes", default="1,2,4", show_default=True,
              help="Process counts of the scale-out table ('' to skip it).")
def main(quick: bool, out: str, processes: str) -> None:
    """Measure the hub beside raw clients and SQLite, on local servers it starts."""
    sizes = Sizes.make(quick)
    counts = tuple(int(p) for p in processes.split(",") if p.strip())
    began, measured = utc_now(), commit()  # (the code imported now is what is measured)
    with tempfile.TemporaryDirectory(prefix="wolfhub-bench-") as tmp:
        work = Path(tmp)
        click.echo("starting redis-server and influxd ...")
        with LocalServers(work / "servers") as servers:
            bench = Bench(servers, work, sizes)
            results = uvloop.run(bench.run())  # the loop the hub runs on (the CLI, the demo)
            click.echo("  backfill ...")
            results.tables["backfill"] = backfill_table(
                servers, work, (100_000,) if quick else (100_000, 1_000_000))
            click.echo("  streams ...")
            results.tables.update(streams_tables(servers, work, "quick" if quick else "full"))
            click.echo("  hub RSS ...")
            results.tables["memory"].append(hub_rss(servers, work, 30 if quick else 300))
            click.echo("  mailbox ...")
            results.tables["mailbox"] = uvloop.run(mailbox_vs_stream(
                20_000 if quick else 200_000, 2_000 if quick else 20_000))
            click.echo("  dropin ...")
            dropin(servers, work, sizes, results)
            if counts:
                click.echo("  scale_out ...")
                config = {**servers.config_overrides()}
                config["influxdb"] = {**config["influxdb"], "bucket": "scale"}
                with RedisClusterServers(work / "cluster") as cluster:
                    results.tables["scale_out"] = scale_out(
                        config, work, counts, candles=5_000 if quick else 60_000,
                        rounds=40 if quick else 600, cluster_nodes=cluster.seeds[:1])
    results.meta = {"date": datetime.date.today().isoformat(), "machine": machine(),
                    "quick": quick, "sizes": sizes.__dict__, "commit": measured,
                    "began": began, "ended": utc_now()}
    results.goals = goals(results)
    click.echo(markdown(results))
    js, md, png = save(results, Path(out))
    click.echo(f"wrote {js}, {md}, {png}")


if __name__ == "__main__":
    main()
