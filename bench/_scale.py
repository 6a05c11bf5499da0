"""Scaling out: N hub processes on one Redis and one InfluxDB, side by side with N
processes of raw redis.asyncio doing the same Redis work.

Each worker is a process of its own (``python -m bench._scale``) with its own product
and SQLite file. It starts its hub, says ``ready``, waits for ``go`` on stdin, runs the
workload and prints its count as JSON. The parent times from the moment every worker
got ``go`` until the last one answered, so the figure is the aggregate throughput of
all processes together, start-up excluded.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from hub import Hub, HubConfig

EX = "benchx"
T0 = 1_600_000_020 // 3600 * 3600
STRATEGIES = 50  # concurrent strategy coroutines per process in the Redis workload

WORKLOADS = {
    "hub write_candle x N + flush": "candles",
    "hub cache_indicator + get_indicator (Redis, no near cache)": "indicators",
    "redis.asyncio SET + GET": "raw",
}
CLUSTER_WORKLOAD = "hub cache_indicator + get_indicator (3-master Redis Cluster, no near cache)"


async def _candles(config: HubConfig, product: str, n: int) -> None:
    async with Hub(config, handle_sigterm=False) as hub:
        _ready_and_wait()
        for i in range(n):
            await hub.write_candle(EX, product, T0 + 60 * i, 1.0, 2.0, 0.5, 1.5, 10.0)
        await hub.flush()  # all of them queryable
        _done(n)


async def _indicators(config: HubConfig, product: str, n: int) -> None:
    async with Hub(config, handle_sigterm=False) as hub:
        _ready_and_wait()

        async def strategy(s: int) -> None:
            for i in range(n):
                await hub.cache_indicator(EX, product, "EMA", s, float(i))
                await hub.get_indicator(EX, product, "EMA", s)

        await asyncio.gather(*(strategy(s) for s in range(STRATEGIES)))
        _done(2 * n * STRATEGIES)


async def _raw(config: HubConfig, product: str, n: int) -> None:
    client = aioredis.Redis(host=config.redis.host, port=config.redis.port)
    await client.ping()
    _ready_and_wait()

    async def strategy(s: int) -> None:
        key = f"indicator:{EX}:{product}:EMA:{s}"
        for i in range(n):
            await client.set(key, orjson.dumps(float(i)), ex=300)
            orjson.loads(await client.get(key))

    await asyncio.gather(*(strategy(s) for s in range(STRATEGIES)))
    _done(2 * n * STRATEGIES)
    await client.aclose()


def _ready_and_wait() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go")


def _done(count: int) -> None:
    """Report the work done (before shutting down, which is not timed)."""
    print(json.dumps({"count": count}), flush=True)


def worker(kind: str, config: dict[str, Any], product: str, n: int) -> None:
    cfg = HubConfig.from_mapping(config, environ={})
    run = {"candles": _candles, "indicators": _indicators, "raw": _raw}[kind]
    asyncio.run(run(cfg, product, n))


def run_processes(kind: str, config: dict[str, Any], workdir: Path, processes: int,
                  n: int, tag: str) -> dict[str, Any]:
    """Start ``processes`` workers, release them together, time until all are done."""
    workers = []
    for p in range(processes):
        cfg = {**config, "sqlite": {"path": str(workdir / f"scale-{tag}-{p}.sqlite")}}
        if kind == "indicators":
            cfg["performance"] = {"near_cache": False}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "bench._scale", kind, json.dumps(cfg), f"P{tag}-{p}",
             str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONHASHSEED": "0"}))
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready", kind
        began = time.perf_counter()
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        counts = []
        for w in workers:
            assert w.stdout is not None
            counts.append(json.loads(w.stdout.readline())["count"])
        seconds = time.perf_counter() - began
        for w in workers:
            if w.wait(60) != 0:
                raise RuntimeError(f"{kind} worker exited with {w.returncode}")
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
            for pipe in (w.stdin, w.stdout):
                if pipe is not None:
                    pipe.close()
    total = sum(counts)
    return {"ops": total, "seconds": seconds, "ops_per_s": total / seconds,
            "per_process": total / seconds / processes}


def scale_out(config: dict[str, Any], workdir: Path, counts: tuple[int, ...],
              candles: int, rounds: int,
              cluster_nodes: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (workload, process count); with ``cluster_nodes``, the Redis workload
    once more on a Redis Cluster."""
    runs = [(name, kind, config) for name, kind in WORKLOADS.items()]
    if cluster_nodes:
        runs.append((CLUSTER_WORKLOAD, "indicators",
                     {**config, "redis": {"cluster": {"nodes": cluster_nodes}}}))
    rows = []
    for i, (name, kind, cfg) in enumerate(runs):
        n = candles if kind == "candles" else rounds
        for processes in counts:
            print(f"    {processes} x {name} ...", flush=True)
            row = run_processes(kind, cfg, workdir, processes, n, f"{i}-{processes}")
            rows.append({"workload": name, "processes": processes, **row})
    return rows


if __name__ == "__main__":
    worker(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
