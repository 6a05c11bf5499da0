"""The maintenance actor's jobs (``maintenance.*`` in the config; see README,
"Maintenance"): what each does with the hub, built once at start."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from actors.backends.influx import rows
from actors.cache import CacheService
from actors.maintenance import Job
from actors.query import Query
from actors.state import StateActor
from hub._streams import Streams
from hubdomain import influxql as ql
from hubdomain.config import HubConfig
from hubdomain.markets import Market
from hubdomain.records import Candle

log = logging.getLogger(__name__)


class _Hub(Protocol):
    """What the jobs use of the Hub."""

    config: HubConfig

    async def _gaps(self, exchange: str, product: str, start: int | float | None,
                    end: int | float | None, timeframe: str,
                    since_first: bool = False) -> list[tuple[int, int]]: ...
    async def write_metric(self, metric_name: str, value: float, **tags: Any) -> None: ...
    async def flush(self) -> None: ...


class Jobs:
    """The jobs, and what the last gap scan found (for stats and metrics)."""

    def __init__(self, hub: _Hub, streams: Streams, cache: CacheService | None,
                 state: StateActor, influx: Callable[[Query], Awaitable[list[dict[str, Any]]]]
                 | None, actor_statistics: Callable[[], dict[str, Any]],
                 newest: Callable[[str, str], Awaitable[list[Candle]]],
                 taken_over: Callable[[int], None] | None = None) -> None:
        self.hub = hub
        self.taken_over = taken_over  # the writer's: rows moved into this outbox
        self.config = hub.config
        self.streams = streams
        self.cache = cache
        self.state = state
        self.influx = influx
        self.actor_statistics = actor_statistics
        self.newest = newest  # the newest stored 1-minute candle (hot window, else InfluxDB)
        self.products: dict[tuple[str, str], dict[str, Any]] = {}
        self.markets = self.config.calendars()
        # how often the cache had dropped every key when ``rewarm`` last caught up
        self._forgot_seen = 0
        self._rewarmed = {"windows_filled": 0, "windows_held": 0}

    def build(self) -> list[Job]:
        m = self.config.maintenance
        if not m.enabled:
            return []
        jobs = []
        if self.streams.settings.enabled:
            tick = min(1.0, max(0.1, self.config.streams.close_grace / 2))
            jobs.append(Job("rollups", tick, self.streams.expire))
        if m.products and (self.cache is not None or self.influx is not None):
            jobs.append(Job("warm", 0, self.warm, at_start=True))
        if self.cache is not None and self.influx is not None:
            jobs.append(Job("rewarm", 1.0, self.rewarm))
        if self.influx is not None:
            jobs.append(Job("gaps", m.gap_scan_interval, self.scan_gaps))
            jobs.append(Job("health", m.health_interval, self.health))
            jobs.append(Job("check", m.check_interval, self.check, at_start=True))
        jobs.append(Job("prune", m.prune_interval, self.prune, at_start=True))
        if self.taken_over is not None:  # (at start the SQLite store took them over)
            jobs.append(Job("takeover", m.takeover_interval, self.take_over))
        return jobs

    def watched(self) -> list[tuple[str, str]]:
        """The products in config, then those this process wrote."""
        out = [(p.exchange, p.product) for p in self.config.maintenance.products]
        out += [key for key in self.streams.newest if key not in out]
        return out

    async def warm(self) -> dict[str, int]:
        """Hot windows filled from InfluxDB where Redis has none (every timeframe's:
        the rollups' with their closed buckets), then read into the near cache, for the
        products in config."""
        filled = held = 0
        for item in self.config.maintenance.products:
            done = await self.streams.warm(item.exchange, item.product)
            filled, held = filled + done[0], held + done[1]
        return {"windows_filled": filled, "windows_held": held}

    async def rewarm(self) -> dict[str, int]:
        """After the cache dropped every Redis key (the server restarted, perhaps from an
        older snapshot, or failed over), or somebody emptied Redis (FLUSHALL, FLUSHDB,
        seen by the near cache's invalidation link): the hot windows of the products in
        config and of those this process wrote filled again from InfluxDB, once every
        write accepted before is stored there (a candle still in the writer would otherwise be
        a hole behind the window's newest). Checks each second; does nothing otherwise."""
        actor = self.cache.actor if self.cache is not None else None
        forgot, flushes = (actor.forgot_all, actor.flushes) if actor is not None else (0, 0)
        if forgot + flushes != self._forgot_seen:
            await self.hub.flush()
            for exchange, product in self.watched():
                filled, held = await self.streams.warm(exchange, product)
                self._rewarmed["windows_filled"] += filled
                self._rewarmed["windows_held"] += held
            self._forgot_seen = forgot + flushes
        return {"restarts": forgot, "flushes": flushes, **self._rewarmed}

    async def scan_gaps(self) -> dict[str, int]:
        """Holes in the last ``maintenance.gap_scan_span`` seconds of each watched
        product, and the age of its newest candle (for a product of a market in
        ``markets``, the time the market was open since its end: a closed market's
        feed is not stalled); written as ``metric`` points (names ``candle_gaps``,
        ``newest_candle_age``)."""
        span = self.config.maintenance.gap_scan_span
        now = time.time()
        total = 0
        for exchange, product in self.watched():
            newest = await self.newest(exchange, product)
            age = None if not newest else _silence(self.markets.get(exchange, product),
                                                   newest[-1].timestamp + 60, now)
            holes = await self.hub._gaps(exchange, product, int(now) - span, None, "1m",
                                         since_first=True)
            missing = len(holes)
            total += missing
            self.products[(exchange, product)] = {"gaps": missing, "newest_age": age,
                                                  "holes": holes[-10:]}
            await self.hub.write_metric("candle_gaps", missing, exchange=exchange,
                                        product=product)
            if age is not None:
                await self.hub.write_metric("newest_candle_age", age, exchange=exchange,
                                            product=product)
        return {"products": len(self.products), "gaps": total}

    async def health(self) -> int:
        """The hub's own health into the ``metric`` measurement: each actor's mailbox
        depth, the near cache's hit rate, the outbox (spool) size, the gaps found."""
        stats = self.actor_statistics()
        points = 0
        for actor, values in stats.items():
            await self.hub.write_metric("mailbox_depth", values.get("depth", 0), actor=actor)
            points += 1
        near = stats.get("cache", {}).get("near_cache")
        if near and near["hits"] + near["misses"]:
            await self.hub.write_metric("near_cache_hit_rate",
                                        near["hits"] / (near["hits"] + near["misses"]))
            points += 1
        counts = await self.state.counts()
        await self.hub.write_metric("spool_lines", counts["outbox"])
        await self.hub.write_metric("gaps_total", sum(p["gaps"] for p in self.products.values()))
        return points + 2

    async def prune(self) -> dict[str, int]:
        m = self.config.maintenance
        now = time.time()
        return await self.state.prune(
            now - m.quarantine_days * 86_400 if m.quarantine_days else None,
            now - m.outbox_days * 86_400 if m.outbox_days else None)

    async def take_over(self) -> dict[str, int]:
        """The outbox rows of hub processes on this SQLite file that ended before
        InfluxDB took them (their slot's lock is free) become this process's, and its
        writer replays them."""
        assert self.taken_over is not None
        moved, max_id = await self.state.take_over_ended()
        if moved:
            self.taken_over(max_id)
        return {"lines": moved}

    async def check(self) -> dict[str, Any]:
        """Retention policies and the 1h continuous query against the config: what
        differs is reported (stats, a warning); ``wolfhub retention apply`` fixes it."""
        assert self.influx is not None
        cfg = self.config.influxdb
        drift: list[str] = []
        if cfg.retention.enabled:
            (answer,) = await self.influx(Query(
                f"SHOW RETENTION POLICIES ON {ql.ident(cfg.bucket)}"))
            have = {r["name"]: r["duration"] for r in rows(answer)}
            for name, duration in cfg.policies().items():
                if name not in have:
                    drift.append(f"retention policy {name} is missing")
                elif _hours(have[name]) != _hours(duration):
                    drift.append(f"retention policy {name} is {have[name]}, config says {duration}")
            (answer,) = await self.influx(Query("SHOW CONTINUOUS QUERIES"))
            names = {r.get("name") for r in rows(answer)}
            if ql.CQ_1H not in names:
                drift.append(f"continuous query {ql.CQ_1H} is missing")
        if drift:
            log.warning("InfluxDB differs from the config: %s", "; ".join(drift))
        return {"drift": drift}


def _silence(market: Market | None, since: float, now: float) -> float:
    """Seconds from ``since`` to ``now``, counting only the market's open time."""
    if market is None:
        return max(0.0, now - since)
    return market.open_seconds(since, now)


def _hours(duration: str) -> float:
    """'90d' or InfluxDB's '2160h0m0s' as hours."""
    total = 0.0
    number = ""
    units = {"w": 168.0, "d": 24.0, "h": 1.0, "m": 1 / 60, "s": 1 / 3600}
    for ch in duration:
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total += int(number) * units[ch]
            number = ""
    return total
