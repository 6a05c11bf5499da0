"""Prometheus exposition of the hub's counters and call latencies (off by default).

``metrics.port`` in the config turns it on: prometheus-client serves ``/metrics`` from
a thread of its own; the collector reads the actors' counters when scraped, so the
hub's hot paths pay nothing for it (only mailbox calls are timed, into a histogram).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class Observed:
    """What the collector reads at each scrape (the hub hands these over)."""

    actor_statistics: Callable[[], dict[str, dict[str, Any]]]
    counters: Callable[[], Mapping[str, int]]
    healthy: Callable[[], bool]
    # per (exchange, product): the last gap scan's holes and newest candle age
    products: Callable[[], Mapping[tuple[str, str], Mapping[str, Any]]] | None = None

_COUNTERS = {
    "writer": ("points_written", "posts", "retries", "quarantined", "spooled", "replayed"),
    "cache": ("round_trips", "commands", "skipped", "reconnects"),
    "state": ("commits",),
    "query": ("queries", "shared"),
}


class _HubCollector(Collector):
    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    def collect(self) -> Iterator[Any]:
        stats = self.observed.actor_statistics()
        depth = GaugeMetricFamily("wolfhub_mailbox_depth", "Messages waiting", labels=["actor"])
        restarts = CounterMetricFamily("wolfhub_actor_restarts", "Crash restarts",
                                       labels=["actor"])
        down = GaugeMetricFamily("wolfhub_actor_down",
                                 "1 while the actor crashed and waits to restart",
                                 labels=["actor"])
        for actor, values in stats.items():
            depth.add_metric([actor], values["depth"])
            restarts.add_metric([actor], values["restarts"])
            down.add_metric([actor], int(values["down"] is not None))
        yield depth
        yield restarts
        yield down
        for actor, names in _COUNTERS.items():
            for name in names:
                if actor in stats and name in stats[actor]:
                    family = CounterMetricFamily(f"wolfhub_{actor}_{name}", f"{actor} {name}")
                    family.add_metric([], stats[actor][name])
                    yield family
        if "writer" in stats:
            yield GaugeMetricFamily("wolfhub_writer_pending", "Lines waiting in memory",
                                    value=stats["writer"]["pending"])
            yield GaugeMetricFamily("wolfhub_writer_spooling", "1 while writes go to the spool",
                                    value=int(stats["writer"]["spooling"]))
            yield GaugeMetricFamily(
                "wolfhub_writer_spool_blocked",
                "1 while the SQLite spool cannot take lines (disk full, read-only)",
                value=int(stats["writer"]["spool_error"] is not None))
        if "cache" in stats:
            yield GaugeMetricFamily("wolfhub_cache_available", "1 while Redis is in use",
                                    value=int(stats["cache"]["available"]))
            yield GaugeMetricFamily(
                "wolfhub_cache_unavailable_slots",
                "Redis Cluster slots whose master is down (served again once replaced)",
                value=stats["cache"]["unavailable_slots"])
            yield GaugeMetricFamily(
                "wolfhub_cache_stale_keys",
                "Keys whose write Redis refused (OOM, READONLY), read as misses until deleted",
                value=stats["cache"]["stale_keys_pending"])
        near = stats.get("cache", {}).get("near_cache")
        if near:
            for name in ("hits", "misses", "invalidations"):
                family = CounterMetricFamily(f"wolfhub_near_cache_{name}", f"near cache {name}")
                family.add_metric([], near[name])
                yield family
            yield GaugeMetricFamily("wolfhub_near_cache_entries", "Values held in-process",
                                    value=near["entries"])
        jobs = stats.get("maintenance", {}).get("jobs")
        if jobs:
            runs = CounterMetricFamily("wolfhub_job_runs", "Maintenance job runs", labels=["job"])
            failures = CounterMetricFamily("wolfhub_job_failures", "Maintenance job failures",
                                           labels=["job"])
            seconds = GaugeMetricFamily("wolfhub_job_last_seconds",
                                        "Duration of the job's last run", labels=["job"])
            last = GaugeMetricFamily("wolfhub_job_last_run_timestamp",
                                     "Unix time the job last ran", labels=["job"])
            failing = GaugeMetricFamily("wolfhub_job_failing", "1 while the job fails",
                                        labels=["job"])
            for job, values in jobs.items():
                runs.add_metric([job], values["runs"])
                failures.add_metric([job], values["failures"])
                seconds.add_metric([job], values["last_duration"] or 0.0)
                last.add_metric([job], values["last_run"] or 0.0)
                failing.add_metric([job], int(values["failing"]))
            yield from (runs, failures, seconds, last, failing)
        products: Mapping[tuple[str, str], Mapping[str, Any]] = (
            self.observed.products() if self.observed.products else {})
        if products:
            holes = GaugeMetricFamily("wolfhub_candle_gaps", "Holes in the stored 1-minute "
                                      "candles (last gap scan)", labels=["exchange", "product"])
            age = GaugeMetricFamily("wolfhub_newest_candle_age_seconds", "Seconds since the "
                                    "newest stored 1-minute candle ended (a stalled feed grows it)",
                                    labels=["exchange", "product"])
            for (exchange, product), found in products.items():
                holes.add_metric([exchange, product], found["gaps"])
                if found.get("newest_age") is not None:
                    age.add_metric([exchange, product], found["newest_age"])
            yield from (holes, age)
        for name, value in self.observed.counters().items():
            family = CounterMetricFamily(f"wolfhub_{name}", name.replace("_", " "))
            family.add_metric([], value)
            yield family
        yield GaugeMetricFamily("wolfhub_healthy", "1 while every actor runs and none "
                                "crashed more than 5 times in the last minute",
                                value=int(self.observed.healthy()))


class HubMetrics:
    """The registry, the latency histogram and the HTTP server of one hub."""

    def __init__(self, observed: Observed, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "wolfhub_call_seconds", "Mailbox round trip of a call, by actor", ["actor"],
            registry=self.registry,
            buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2, 0.25, 1.0, 5.0))
        self.registry.register(_HubCollector(observed))
        self.server, self.thread = start_http_server(port, host, registry=self.registry)

    def observer(self, actor: str) -> Any:
        return self.latency.labels(actor).observe

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
