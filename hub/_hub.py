"""The Hub facade: validates, encodes, routes each call to the actor that owns the I/O."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import orjson

from actors.backends.influx import InfluxBackend, InfluxClient, rows
from actors.backends.redis import RedisBackend, make_client
from actors.cache import MISS, CacheActor, CacheService, NearCache
from actors.cache.ops import RedisOp, op_forget
from actors.maintenance import MaintenanceActor
from actors.query import CsvQuery, Query, QueryActor
from actors.runtime import Actor, Supervisor
from actors.state import StateActor
from actors.stream import StreamReader
from actors.writer import WriterActor
from hub import _gaps
from hub._intake import Accepted, Intake, _indicator_key, _names
from hub._maintenance import Jobs
from hub._streams import Streams
from hubdomain import influxql as ql
from hubdomain import jsonbytes, keys
from hubdomain import lineproto as lp
from hubdomain import timeframes as tfs
from hubdomain import validate as v
from hubdomain.config import HubConfig
from hubdomain.errors import BackendUnavailable, HubClosed, HubError, ValidationError
from hubdomain.fieldtypes import FieldTypes
from hubdomain.records import Candle, LiveCandle, Row, Trade, make_candle
from hubdomain.resample import resample

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRADE_TAGS = frozenset({"exchange", "product", "side", "order_id", "price", "size"})
_OWN_FIELDS = {"candle": ql.CANDLE_FIELDS, "indicator": ("value",), "metric": ("value",),
               "trade": ("price", "size")}


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Hub:
    """The async data hub. ``async with Hub(config) as hub: ...``.

    Every public method is a coroutine; invalid input raises
    :class:`~hub.errors.ValidationError` before anything is written, calls after
    :meth:`close` raise :class:`~hub.errors.HubClosed`.

    ``redis_backend`` / ``influx_backend`` let tests inject in-memory fakes of
    the backend protocols; normally the hub builds real clients from ``config``.

    With ``handle_sigterm`` (the default) a hub started in the main thread, where
    nothing else handles SIGTERM, closes itself gracefully on SIGTERM (flushing or
    spooling every accepted write) and then lets the signal end the process.
    SIGINT needs nothing: ``asyncio.run`` turns it into cancellation, and
    ``async with`` (or ``close()`` in a ``finally``) closes the hub.
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        redis_backend: RedisBackend | None = None,
        influx_backend: Callable[[], InfluxBackend] | None = None,
        handle_sigterm: bool = True,
    ) -> None:
        self.config = config or HubConfig()
        self._state = _State.NEW
        self.close_timeout = 30.0  # bound on close(): drain, flush or spool, disconnect
        self._closed = asyncio.Event()
        self._handle_sigterm = handle_sigterm
        self._sigterm_loop: asyncio.AbstractEventLoop | None = None
        self._terminating: asyncio.Task[None] | None = None
        self._redis_backend = redis_backend
        # Redis Cluster: keys carry a hash tag per product (see hubdomain.keys)
        self._tagged = self.config.redis.cluster is not None
        self._influx_factory = influx_backend
        self._supervisor: Supervisor | None = None
        # restart budget and backoff of the actors (the fault tests shorten them)
        self._supervision: dict[str, float] = {}
        self._metrics: Any = None
        self._cache: CacheService | None = None
        self._writer: WriterActor | None = None
        self._query: QueryActor | None = None
        self._sqlite: StateActor | None = None
        self._maintenance: MaintenanceActor | None = None
        self.streams: Streams | None = None
        self._jobs: Jobs | None = None
        # the hub's own fields are floats; the rest is learnt at start and from writes
        self._field_types = FieldTypes()
        self._field_types.learn([(m, f, "float") for m, fs in _OWN_FIELDS.items() for f in fs])
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "indicator_cache_hits", "indicator_cache_misses", "indicator_cold_hits",
                "candle_window_hits", "candle_cold_queries",
                "state_cache_hits", "state_cache_misses",
            ),
            0,
        )
        # validation, encoding and hot reads, on the caller's thread (see hub._intake)
        self.intake = Intake(self.config, self._field_types, self._counters, self._check_open)
        self._markets = self.intake.markets  # trading sessions (config markets)

    # ---- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect and start the actors; returns once every actor is ready.

        Raises BackendUnavailable when a backend cannot be reached, HubClosed if
        this hub was already started or closed (a hub is not reopened).
        """
        if self._state is not _State.NEW:
            raise HubClosed(f"hub is {self._state.value}; create a new Hub")
        self._state = _State.STARTING
        cfg = self.config
        self._sqlite = StateActor(cfg.sqlite.path, replays=cfg.influxdb.enabled)
        actors: list[Actor] = [self._sqlite]
        cache = None
        if cfg.redis.enabled:
            near = (NearCache(cfg.performance.near_cache_size)
                    if cfg.performance.near_cache else None)
            cache = CacheActor(self._redis_backend or make_client(cfg.redis), near)
            self._cache = self.intake.cache = CacheService(cache, cfg.redis.timeout)
            actors.append(cache)
        if cfg.influxdb.enabled:
            factory = self._influx_factory or (lambda: InfluxClient(cfg.influxdb))
            self._writer = WriterActor(
                factory(), self._sqlite,
                batch_size=cfg.influxdb.batch.size if cfg.influxdb.batch.enabled else 1,
                linger=cfg.influxdb.batch.flush_interval if cfg.influxdb.batch.enabled else 0.0,
                give_up_after=cfg.influxdb.timeout,
                spool_after=cfg.influxdb.spool_after,
                max_pending=cfg.influxdb.max_pending,
                rp_for=cfg.influxdb.rp_for if cfg.influxdb.retention.enabled else None,
            )
            self.intake.writer = self._writer
            self.intake.state = self._sqlite
            self._query = QueryActor(factory())
            actors += [self._writer, self._query]
        self._start_streams(cache)
        if self._maintenance is not None:
            actors.append(self._maintenance)
        self._supervisor = Supervisor(**self._supervision)
        try:
            await self._supervisor.start(actors)
        except BaseException:
            self._state = _State.CLOSED
            self._closed.set()
            raise
        self.intake.start_runs()
        self._state = _State.OPEN
        if cfg.metrics.port is not None:
            from hub._metrics import HubMetrics, Observed  # prometheus-client when asked for

            observed = Observed(self._actor_statistics, self._hub_counters, lambda: self.healthy,
                                lambda: self._jobs.products if self._jobs is not None else {})
            try:
                self._metrics = HubMetrics(observed, cfg.metrics.host, cfg.metrics.port)
            except OSError as exc:
                await self.close()
                raise BackendUnavailable(
                    "metrics", f"cannot serve on {cfg.metrics.host}:{cfg.metrics.port}: {exc}"
                ) from exc
            for actor in actors:
                actor.observe = self._metrics.observer(actor.name)
        if self._handle_sigterm:
            self._install_sigterm()
        await self._learn_field_types()
        if self._maintenance is not None:
            self._maintenance.go.set()

    def _start_streams(self, cache: CacheActor | None) -> None:
        """The live-candle part and the maintenance actor's jobs."""
        cfg = self.config
        service = self._cache
        reader = (StreamReader(cache.backend, cfg.streams.buffer_candles,
                               send=lambda commands: service.perform(
                                   RedisOp(tuple(commands), list)))
                  if cfg.streams.enabled and cache is not None and service is not None
                  else None)
        influx = self._influx if self._query is not None else None
        self.streams = Streams(cfg, self.intake, self._cache, reader,
                               flush=self._flush_accepted, influx=influx,
                               history=self._history)
        if cfg.streams.enabled and (self._cache is not None or self._writer is not None):
            self.intake.rollups = self.streams.feed
            self.intake.minutes_tag = self.streams.minutes_tag
        assert self._sqlite is not None
        self._jobs = Jobs(self, self.streams, self._cache, self._sqlite, influx,
                          self._actor_statistics, self._newest_minute,
                          None if self._writer is None else self._writer.taken_over)
        jobs = self._jobs.build()
        if jobs:
            self._maintenance = MaintenanceActor(jobs)

    async def _learn_field_types(self) -> None:
        """Field types InfluxDB already holds, so a write that would conflict is refused
        at the call. Best effort: while InfluxDB is away, InfluxDB itself finds conflicts
        (the point goes to the quarantine with its reason)."""
        if self._query is None:
            return
        sources = [""]
        if self.config.influxdb.retention.enabled:
            sources += [f" FROM {ql.ident(rp)}./.*/" for rp in dict.fromkeys(ql.RP_NAMES.values())]
        try:
            async with asyncio.timeout(min(5.0, self.config.influxdb.timeout)):
                results = await self._influx(Query(
                    ";".join(f"SHOW FIELD KEYS{src}" for src in sources)))
        except (HubError, TimeoutError) as exc:
            log.info("field types not read from InfluxDB (%s); it reports conflicts itself",
                     exc)
            return
        self._field_types.learn(
            (series["name"], field, kind)
            for result in results for series in result.get("series", ())
            for field, kind in series["values"])

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the application (or another hub) handles it
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        except (NotImplementedError, RuntimeError, ValueError):
            return
        self._sigterm_loop = loop

    def _remove_sigterm(self) -> None:
        if self._sigterm_loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                self._sigterm_loop.remove_signal_handler(signal.SIGTERM)
            self._sigterm_loop = None

    def _on_sigterm(self) -> None:
        log.warning("SIGTERM: closing the hub (every accepted write is flushed or spooled)")
        self._terminating = asyncio.get_running_loop().create_task(self._terminate())

    async def _terminate(self) -> None:
        try:
            await self.close()
        finally:
            self._remove_sigterm()
            os.kill(os.getpid(), signal.SIGTERM)  # default action now: the process ends

    async def close(self) -> None:
        """Stop intake, flush the writer (spooling to SQLite what InfluxDB cannot take),
        stop actors in reverse order, close connections. Idempotent."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            await self._closed.wait()
            return
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            self._closed.set()
            return
        self.intake.seal()  # write_candle's runs not delivered yet
        self._state = _State.CLOSING
        try:
            if self.streams is not None:
                try:  # rollups waiting for a recompute are published before the flush
                    async with asyncio.timeout(self.close_timeout / 3):
                        await self.streams.close()
                except TimeoutError:
                    log.error("close(): rollups still waiting for a recompute were dropped")
            if self._supervisor is not None:
                try:
                    async with asyncio.timeout(self.close_timeout):
                        await self._supervisor.stop()
                except TimeoutError:
                    log.error("close() did not finish in %.0fs; cancelling the actors",
                              self.close_timeout)
                    await self._supervisor.abort()
        finally:
            self._state = _State.CLOSED
            self._closed.set()
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
            if self._terminating is None:
                self._remove_sigterm()

    @property
    def healthy(self) -> bool:
        return self._state is _State.OPEN and bool(self._supervisor and self._supervisor.healthy)

    def _check_open(self) -> None:
        """Raises HubClosed unless open; delivers write_candle's runs first, so what
        follows (a read, another write, flush) sees them, in order."""
        if self._state is not _State.OPEN:
            raise HubClosed(f"hub is {self._state.value}")
        self.intake.seal()

    # ---- plumbing -----------------------------------------------------------------

    async def _accept(self, accepted: Accepted | None) -> None:
        self._check_open()
        if accepted is not None:
            await self.intake.deliver(self.intake.begin(accepted))

    async def _influx(self, query: Query) -> list[dict[str, Any]]:
        if self._query is None:
            raise BackendUnavailable("influxdb", "disabled in the config (influxdb.enabled)")
        return await self._query.run_query(query)

    async def _read_your_writes(self) -> None:
        """Before a cold read: make lines still queued or batching in the writer queryable.
        (The flush request queues behind them, so this is cheap when nothing is pending.)"""
        if self._writer is not None and not self._writer.failing:
            self._check_open()
            await self._writer.flush()

    # ---- indicators ---------------------------------------------------------------

    async def cache_indicator(self, exchange: str, product: str, indicator: str,
                              period: int | str, value: Any, ttl: int | None = None) -> None:
        """Cache an indicator value (any JSON value) in Redis for ``ttl`` seconds
        (default ``redis.ttl.indicators``). Raises ValidationError, HubClosed."""
        await self._accept(self.intake.cache_indicator(exchange, product, indicator, period,
                                                     value, ttl))

    async def get_indicator(self, exchange: str, product: str, indicator: str,
                            period: int | str, default: Any = None) -> Any:
        """Read through: Redis, then the latest ``indicator`` point in InfluxDB (which is
        then cached), else ``default``. Raises ValidationError, HubClosed, and
        BackendUnavailable only when no store could answer."""
        held, value = self.intake.hot_indicator(exchange, product, indicator, period)
        if held:
            return value
        exchange, product, name, period_s, key = _indicator_key(exchange, product, indicator,
                                                                period, self._tagged)
        if self._cache is not None:  # (no await since the look above: still not held)
            _, value = await self._cache.value(key, looked=True)
            if value is not MISS:
                self._counters["indicator_cache_hits"] += 1
                return value
        self._counters["indicator_cache_misses"] += 1
        if self._query is None:
            return default
        ttl = self.config.redis.ttl.indicators

        cache = self._cache

        async def fill(results: list[dict[str, Any]]) -> None:
            found = rows(results[0]) if results else []
            if cache is not None and found and found[0].get("last") is not None:
                await cache.fill(key, jsonbytes.dumps(_number(found[0]["last"])), ttl)

        # the last week's first (an indicator still written has its newest there, and
        # influxd opens only that week's shards), then all of them
        rp = self.config.influxdb.rp_for("indicator")
        for recent in (True, False):
            results = await self._influx(Query(
                ql.select_last_indicator(exchange, product, name, period_s, rp, recent),
                key=f"{key} recent" if recent else key,
                fill=fill if cache is not None else None))
            found = rows(results[0]) if results else []
            if found and found[0].get("last") is not None:
                break
        else:
            return default
        self._counters["indicator_cold_hits"] += 1
        return _number(found[0]["last"])

    async def write_indicator(self, exchange: str, product: str, indicator_name: str,
                              timestamp: int | float, value: float, **tags: Any) -> None:
        """Write an ``indicator`` point (tags exchange, product, name, plus ``tags``, e.g.
        ``period=20``). With a ``period`` tag the value is also cached, so
        ``get_indicator`` sees it at once. Acknowledged on enqueue."""
        await self._accept(self.intake.write_indicator(exchange, product, indicator_name,
                                                     timestamp, value, tags))

    # ---- candles ------------------------------------------------------------------

    async def write_candle(self, exchange: str, product: str, timestamp: int,
                           open_price: float, high: float, low: float, close: float,
                           volume: float) -> None:
        """Write one candle: Redis hot window + InfluxDB ``candle`` point.
        Acknowledged on enqueue; :meth:`flush` makes it queryable in InfluxDB.
        (Consecutive calls are delivered together, on the loop's next turn or before
        anything else this hub does: see ``Intake.gather_candle``.)"""
        if self._state is not _State.OPEN:  # (_check_open would deliver the runs first)
            raise HubClosed(f"hub is {self._state.value}")
        intake = self.intake
        gathered = intake.gather_candle(exchange, product, timestamp, open_price, high, low,
                                        close, volume)
        if gathered is not None:
            if gathered:
                await intake.deliver_runs()
            return
        await self._accept(intake.write_candle(exchange, product, timestamp, open_price,
                                               high, low, close, volume))

    async def write_candles_batch(self, exchange: str, product: str,
                                  candles: Iterable[Candle | Mapping[str, Any]], *,
                                  window: bool = True) -> int:
        """Write many candles (``Candle`` objects, ``(timestamp, open, high, low, close,
        volume)`` tuples, mappings with the seed's keys, or objects with candle attributes
        such as Wolfinch's ``OHLC``). All are validated before any is written. Returns the
        count. ``window=False`` writes InfluxDB only: for bulk loads that put the newest
        candles in the hot window themselves (``cache_candles``), once, at the end; the
        candles of such a batch as new as the oldest any of the product's hot windows
        holds or newer go in as any write's do (a window holds every stored candle, or
        every rollup of them, of its span: reads rely on it).
        A batch of more than 1,000 candles in ascending time is taken 1,000 at a time
        with a turn of the loop between (other coroutines and the writer's next POST
        run meanwhile; a concurrent read may see its first pieces before the rest). Only
        the first piece may wait for the writer (and raise BackendUnavailable, nothing
        of the batch kept); the others follow it without waiting."""
        exchange, product, rows = self.intake.checked_batch(exchange, product, candles)
        parts = [(rows, window)] if window or not rows else \
            await self._bulk_parts(exchange, product, rows)
        first = True
        for part, pushed in parts:
            for accepted in self.intake.row_pieces(exchange, product, part, pushed):
                if first:  # may wait for room, and raise: nothing of the batch kept then
                    first = False
                    await self._accept(accepted)
                    continue
                await asyncio.sleep(0)  # the writer's next POST, and other coroutines
                self._check_open()
                # the batch is accepted once its first piece is: the rest never wait
                self.intake.deliver_now(self.intake.begin(accepted))
        return len(rows)

    async def _bulk_parts(self, exchange: str, product: str,
                          rows: list[Row]) -> list[tuple[list[Row], bool]]:
        """A ``window=False`` batch cut where the product's hot windows begin: a window
        holds every stored candle from its oldest on (a rollup's, the rollups of every
        stored minute from its oldest bucket on), and reads rely on it, so the rows of
        their spans go in as any write's do (``True``: the minutes' window takes them,
        the rollups of buckets closed already are recomputed); the older ones to
        InfluxDB only (``False``)."""
        if self._cache is None:
            return [(rows, False)]
        names = self._window_names(exchange, product)
        found = await asyncio.gather(*(self._cache.window_oldest(k) for k in names))
        oldest = min((t for t in found if t is not None), default=None)
        if oldest is None:
            if not self._cache.actor.available:
                # Redis is away: the windows cannot take these candles; their keys are
                # dropped when it is back, as the keys of the writes it missed are
                await self._accept(Accepted([], op_forget(names)))
            return [(rows, False)]
        return [([row for row in rows if row[0] < oldest], False),
                ([row for row in rows if row[0] >= oldest], True)]

    def _window_names(self, exchange: str, product: str) -> list[str]:
        """The keys of the product's hot windows: its minutes', each rollup's."""
        names = [keys.candles(exchange, product, self._tagged)]
        if self.streams is not None and self.streams.publishing:
            names += [self.streams.window_key(exchange, product, timeframe)
                      for timeframe in self.streams.spans if timeframe != tfs.BASE]
        return names

    async def cache_candles(self, exchange: str, product: str,
                            candles: Iterable[Candle | Mapping[str, Any]],
                            max_candles: int | None = None) -> None:
        """Put candles in the Redis hot window only (the seed's list), keeping at most
        ``max_candles`` (default ``performance.redis_hot_data_window``)."""
        await self._accept(self.intake.cache_candles(exchange, product, candles, max_candles))

    async def get_candles(self, exchange: str, product: str, count: int = 100) -> list[Candle]:
        """The newest ``count`` candles (at most a hot window's worth,
        ``performance.redis_hot_data_window``), ascending, from the hot window. A window
        holding fewer than that while older candles are stored (it expired after a
        pause longer than ``redis.ttl.candles``, or Redis lost it, and minutes were
        written since) is completed from InfluxDB, as is the whole answer when Redis is
        down or off."""
        exchange, product, count, window = self.intake.hot_newest(exchange, product, count)
        if window is not None:
            return window
        if self._cache is not None:
            found = await self._cache.newest(keys.candles(exchange, product, self._tagged),
                                             count)
            if found is not None:
                if self.intake.whole(exchange, product, found, count):
                    return found
                return await self._completed(exchange, product, found, count)
        return await self._cold_candles(exchange, product, None, None, count)

    async def _completed(self, exchange: str, product: str, window: list[Candle],
                         count: int) -> list[Candle]:
        """A short hot window (all of it) with the newest stored candles older than its
        oldest in front, up to ``count`` (at most a window's worth). The window's span
        is whole (the push rule), and a cold read first makes what the writer holds
        queryable, so nothing lies between the two. InfluxDB not answering: the window
        as it is."""
        wanted = min(count, self.config.performance.redis_hot_data_window) - len(window)
        oldest = window[0].timestamp if window else None
        try:
            older = await self._cold_candles(
                exchange, product, None, None if oldest is None else oldest - 1, wanted)
        except BackendUnavailable:
            return window
        if len(older) < wanted:
            self.intake.found_bottom(exchange, product, oldest)
        return older + window

    async def query_candles(self, exchange: str, product: str,
                            start_time: int | float | None = None,
                            end_time: int | float | None = None,
                            limit: int = 1000, interval: str | None = None) -> list[Candle]:
        """The newest ``limit`` candles with time in [start_time, end_time], ascending.

        Served from the Redis hot window when it holds the whole answer, else from
        InfluxDB. With ``interval`` ('1m', '5m', '1h', '1d'...), the minutes are
        resampled: first open, max high, min low, last close, summed volume per bucket
        (from the hot window when it holds every minute the answer needs, the same
        floats InfluxDB computes; else by InfluxDB).
        """
        exchange, product, lo, hi, limit, hot = self.intake.hot_query(
            exchange, product, start_time, end_time, limit, interval)
        if hot is not None:
            return hot
        if interval is not None:
            # (a window the near cache holds was tried by hot_query already; one of N
            # minutes holds at most N buckets: a newest-N read of more, from no start
            # inside it, is InfluxDB's without reading the window first)
            key = keys.candles(exchange, product, self._tagged)
            if self._cache is not None and not self._cache.holds(key) and (
                    lo is not None or limit <= self.config.performance.redis_hot_data_window):
                window = await self._cache.window(key)
                found = resample(window, ql.interval_seconds(interval), lo, hi, limit,
                                 self._markets.shift(exchange, product)) if window else None
                if found is not None:
                    self._counters["candle_window_hits"] += 1
                    return found
            return await self._resampled(exchange, product, lo, hi, limit, interval)
        if self._cache is not None:
            found = await self._cache.window_range(
                keys.candles(exchange, product, self._tagged), lo, hi, limit)
            if found is not None:
                self._counters["candle_window_hits"] += 1
                return found
        return await self._cold_candles(exchange, product, lo, hi, limit)

    async def query_candles_csv(self, exchange: str, product: str,
                                start_time: int | float | None = None,
                                end_time: int | float | None = None,
                                limit: int = 1000) -> bytes:
        """The candles ``query_candles`` selects, as InfluxDB's CSV answer (header
        ``name,tags,time,open,high,low,close,volume``, newest first, times in Unix
        seconds), read from InfluxDB after a flush: for columnar readers, which build
        their arrays from it without a Python object per row (``wolfhub.columnar``)."""
        exchange, product, lo, hi, limit = self.intake.range_args(
            exchange, product, start_time, end_time, limit)
        self._check_open()
        if self._query is None:
            raise BackendUnavailable("influxdb", "disabled in the config (influxdb.enabled)")
        self._counters["candle_cold_queries"] += 1
        await self._read_your_writes()
        rp = self.config.influxdb.rp_for("candle")
        # bounded as query_candles' reads are (one question here: the answer is one CSV),
        # and asked again whole only when the range placed holds fewer than ``limit``
        bound = await self._deep_bound(exchange, product, lo, hi, limit)
        if bound is not None:
            bottom = bound[0]
            body = await self._query.run_csv(CsvQuery(ql.select_candles(
                exchange, product, bottom, hi, limit, rp)))
            if _csv_rows(body) >= limit or (lo is not None and bottom <= lo):
                return body
        return await self._query.run_csv(CsvQuery(ql.select_candles(
            exchange, product, lo, hi, limit, rp)))

    async def _cold_candles(self, exchange: str, product: str, lo: int | None,
                            hi: int | None, limit: int) -> list[Candle]:
        if self._query is None:
            return []
        self._counters["candle_cold_queries"] += 1
        await self._read_your_writes()
        bottom = await self._deep_bound(exchange, product, lo, hi, limit)
        if bottom is not None:
            return await self._deep_candles(exchange, product, lo, hi, limit, *bottom)
        results = await self._influx(Query(ql.select_candles(
            exchange, product, lo, hi, limit, self.config.influxdb.rp_for("candle"))))
        return _candles(results)

    async def _deep_bound(self, exchange: str, product: str, lo: int | None, hi: int | None,
                          limit: int) -> tuple[int, int] | None:
        """For a read InfluxDB answers: (bottom, top), a time range that likely holds
        the newest ``limit`` candles, from the hot window's newest time and spacing, or
        with no window to go by (expired, or history written with ``window=False``)
        from the end asked for, else the newest stored candle's time, a minute apart.
        InfluxDB answers a time-bounded ORDER BY time DESC LIMIT much faster than an
        unbounded one on a long series, which opens every shard it has (measured here
        on 1,000,000 candles: 35 ms against 557 ms for 10,000; 100-115 ms for the
        newest 10). None: nothing is stored."""
        window = None if self._cache is None else await self._cache.window(
            keys.candles(exchange, product, self._tagged))
        if window and len(window) >= 2:
            newest, oldest = window[-1].timestamp, window[0].timestamp
            step = max(1, (newest - oldest) // (len(window) - 1))
        else:
            found = hi if hi is not None else await self._stored_edge(exchange, product,
                                                                      newest=True)
            if found is None:
                return None
            newest, step = found, tfs.BASE_SECONDS
        top = newest if hi is None else min(hi, newest)
        bottom = top - (limit + limit // 10 + 10) * step
        if lo is not None and bottom <= lo:
            bottom = lo
        return max(bottom, v.MIN_TIMESTAMP + 1), top

    async def _deep_candles(self, exchange: str, product: str, lo: int | None,
                            hi: int | None, limit: int, bottom: int, top: int
                            ) -> list[Candle]:
        """The newest ``limit`` candles in [lo, hi], asked as two concurrent time-bounded
        queries (each half of [bottom, hi]: influxd answers them on both cores), then,
        when they hold fewer (a gap in the data) and older candles may exist, one more
        query below ``bottom``. The same answer as the single query, by construction."""
        rp = self.config.influxdb.rp_for("candle")
        middle = bottom + (top - bottom) // 2
        newer, older = await asyncio.gather(
            self._influx(Query(ql.select_candles(exchange, product, middle + 1, hi, limit,
                                                 rp))),
            self._influx(Query(ql.select_candles(exchange, product, bottom, middle, limit,
                                                 rp))))
        found = (_candles(older) + _candles(newer))[-limit:]
        if len(found) < limit and (lo is None or bottom > lo):
            rest = await self._influx(Query(ql.select_candles(
                exchange, product, lo, bottom - 1, limit - len(found), rp)))
            found = _candles(rest) + found
        return found

    async def _resampled(self, exchange: str, product: str, lo: int | None, hi: int | None,
                         limit: int, interval: str) -> list[Candle]:
        if self._query is None:
            raise BackendUnavailable("influxdb", "resampling needs InfluxDB (disabled)")
        self._counters["candle_cold_queries"] += 1
        await self._read_your_writes()
        # GROUP BY time() needs both bounds; the newest stored candle's time when no
        # end is given, the oldest's only when the newest buckets do not fill ``limit``
        if hi is None:
            hi = await self._stored_edge(exchange, product, newest=True)
            if hi is None:
                return []
        if lo is not None and hi < lo:
            return []
        rp = self.config.influxdb.rp_for("candle")
        span = ql.interval_seconds(interval)
        shift = self._markets.shift(exchange, product)
        # InfluxDB groups the whole range before it applies LIMIT: ask first for the
        # buckets the newest ``limit`` most likely lie in (a margin for a few empty
        # ones), then, only when that holds fewer, for the rest below. The split is at a
        # bucket boundary, so the answer is the single query's, by construction.
        bottom = tfs.bucket(hi, span, shift) - (limit + limit // 10 + 1) * span
        if lo is not None and bottom <= lo:
            return await self._resample(exchange, product, lo, hi, limit, interval, rp)
        newer = await self._resample(exchange, product, bottom, hi, limit, interval, rp)
        if len(newer) >= limit:
            return newer
        if lo is None:
            lo = await self._stored_edge(exchange, product, newest=False)
            if lo is None or lo >= bottom:  # (nothing stored below what was asked)
                return newer
        older = await self._resample(exchange, product, lo, bottom - 1, limit - len(newer),
                                     interval, rp)
        return older + newer

    async def _resample(self, exchange: str, product: str, lo: int, hi: int, limit: int,
                        interval: str, rp: str | None) -> list[Candle]:
        """The newest ``limit`` buckets of [lo, hi], ascending. A range of more than
        ``_SPLIT_RESAMPLE`` seconds is asked as two halves at once, split at a bucket's
        start (each bucket whole in one), so influxd resamples them on two cores: 500
        daily candles of 720,000 minutes took 272 ms against 437-460 ms here."""
        span = ql.interval_seconds(interval)
        shift = self._markets.shift(exchange, product)
        middle = tfs.bucket(lo + (hi - lo) // 2, span, shift)
        if hi - lo <= _SPLIT_RESAMPLE or middle <= lo:
            return _candles(await self._influx(Query(ql.select_candles_resampled(
                exchange, product, lo, hi, limit, interval, rp, shift))))
        older, newer = await asyncio.gather(*(self._influx(Query(
            ql.select_candles_resampled(exchange, product, a, b, limit, interval, rp, shift)))
            for a, b in ((lo, middle - 1), (middle, hi))))
        return (_candles(older) + _candles(newer))[-limit:]

    async def _stored_edge(self, exchange: str, product: str, newest: bool) -> int | None:
        """The time of the newest (or the oldest) stored candle; None when none is. The
        newest is looked for among the last week's first (a live product's is there):
        when any is, the newest of all is too."""
        rp = self.config.influxdb.rp_for("candle")
        for recent in (True, False) if newest else (False,):
            results = await self._influx(Query(ql.select_candle_edge(
                exchange, product, newest, recent=recent, rp=rp)))
            found = rows(results[0]) if results else []
            if found:
                return int(found[0]["time"])
        return None

    async def _stored_bounds(self, exchange: str, product: str) -> tuple[int, int] | None:
        """Times of the first and the newest stored candle (asked together); None when
        there is none."""
        first, last = await asyncio.gather(self._stored_edge(exchange, product, False),
                                           self._stored_edge(exchange, product, True))
        if first is None or last is None:
            return None
        return first, last

    # ---- live candles, gaps, maintenance ---------------------------------------------

    def candles(self, exchange: str, product: str, timeframe: str = "1m",
                warmup: int = 0) -> AsyncGenerator[LiveCandle, None]:
        """Closed candles of ``timeframe`` as an async iterator: first the newest
        ``warmup`` stored ones (ascending), then each one as it closes, whichever hub
        process wrote it; no duplicate and no hole at the hand-over. A candle of a time
        already delivered comes again only as a revision (``revision`` True). Arguments
        are checked here (ValidationError); breaking out of the loop releases everything.
        ``timeframe``: one of ``streams.timeframes``."""
        self._check_open()
        assert self.streams is not None
        checked = self.streams.check(exchange, product, timeframe, warmup)
        return self.streams.follow(*checked)

    async def gaps(self, exchange: str, product: str, start: int | float | None = None,
                   end: int | float | None = None,
                   timeframe: str = "1m") -> list[tuple[int, int]]:
        """Holes in the stored candles: ``[(first_missing, last_missing), ...]``, the
        start times of the first and last missing slot of ``timeframe`` in each run,
        ascending. ``start``/``end`` default to the first and newest stored candle. A
        product of a market in ``markets`` has holes only while the market was open. A
        ``start`` before the first stored candle counts the slots from it on (history
        missing there is a hole: ``wolfhub backfill --repair --start`` fills it)."""
        return await self._gaps(exchange, product, start, end, timeframe)

    async def _gaps(self, exchange: str, product: str, start: int | float | None,
                    end: int | float | None, timeframe: str,
                    since_first: bool = False) -> list[tuple[int, int]]:
        """``gaps``; ``since_first``: from the first stored candle on at the earliest (the
        maintenance scan's last day, of a product that began an hour ago: an hour)."""
        exchange, product = _names(exchange, product)
        span = tfs.seconds(timeframe)
        lo = v.optional_timestamp(start, "start")
        hi = v.optional_timestamp(end, "end")
        if lo is not None and hi is not None and hi < lo:
            raise ValidationError("end", "end is before start")
        self._check_open()
        if self._query is None:
            raise BackendUnavailable("influxdb", "gaps are read from InfluxDB (disabled)")
        await self._read_your_writes()
        market = self._markets.get(exchange, product)
        shift = 0 if market is None else market.shift
        if lo is None or hi is None or since_first:
            stored = await self._stored_bounds(exchange, product)
            if stored is None:
                return []
            first_slot = tfs.bucket(stored[0], span, shift)
            lo_slot = first_slot if lo is None else tfs.bucket(int(lo) - 1, span, shift) + span
            if since_first:
                lo_slot = max(first_slot, lo_slot)
            hi = stored[1] if hi is None else hi
        else:
            lo_slot = tfs.bucket(int(lo) - 1, span, shift) + span  # the first slot from lo on
        return await _gaps.find(self._influx, exchange, product, lo_slot,
                                tfs.bucket(int(hi), span, shift), span,
                                self.config.influxdb.rp_for("candle"), market)

    async def warm_windows(self, exchange: str, product: str) -> int:
        """Fill a product's empty hot windows from InfluxDB: the 1-minute window with the
        newest minutes, each rollup timeframe's (streams on) with its newest closed
        buckets, never the one still open. For history loaded with
        ``write_candles_batch(..., window=False)``; ``wolfhub backfill`` calls it, and the
        maintenance actor's ``warm`` job does it at start for ``maintenance.products``.
        A window that holds candles is left alone. Returns the windows filled."""
        exchange, product = _names(exchange, product)
        self._check_open()
        assert self.streams is not None
        filled, _ = await self.streams.warm(exchange, product)
        return filled

    async def run_maintenance(self, job: str) -> dict[str, Any]:
        """Run one maintenance job now; its stats afterwards (``get_stats()["actors"]
        ["maintenance"]["jobs"][job]``)."""
        self._check_open()
        if self._maintenance is None:
            raise BackendUnavailable("maintenance", "disabled in the config (maintenance.enabled)")
        return await self._maintenance.run_now(job)

    async def _history(self, exchange: str, product: str, lo: int | None, hi: int | None,
                       limit: int, interval: str | None) -> list[Candle]:
        if interval is not None:
            return await self._resampled(exchange, product, lo, hi, limit, interval)
        return await self._cold_candles(exchange, product, lo, hi, limit)

    async def _newest_minute(self, exchange: str, product: str) -> list[Candle]:
        if self._cache is not None:
            found = await self._cache.newest(keys.candles(exchange, product, self._tagged), 1)
            if found:
                return found
        return await self._cold_candles(exchange, product, None, None, 1)

    # ---- trades and metrics -------------------------------------------------------

    async def write_trade(self, exchange: str, product: str, timestamp: int | float,
                          side: str, price: float, size: float, order_id: str | int,
                          **fields: Any) -> None:
        """Write a ``trade`` point. Durable when the await returns: the line is committed
        to SQLite (fsync, shared with concurrent writers) before it is queued for
        InfluxDB, and replayed after a crash."""
        exchange, product = _names(exchange, product)
        ts = v.timestamp(timestamp, "timestamp")
        side_s = v.tag(side, "side")
        price_f = v.number(price, "price")
        size_f = v.number(size, "size")
        order = v.tag(order_id, "order_id")
        types = self._field_types
        extra = {v.field_key(k, k, _TRADE_TAGS): types.value("trade", k, val, k)
                 for k, val in fields.items()}
        types.claim([("trade", extra)])
        line = lp.trade(exchange, product, ts, side_s, price_f, size_f, order, extra)
        self._check_open()
        assert self._sqlite is not None
        ids = await self._sqlite.outbox_add([line], "trade")
        if self._writer is not None:
            self._writer.write_durable([line], ids)

    async def query_trades(self, exchange: str, product: str,
                           start_time: int | float | None = None,
                           end_time: int | float | None = None,
                           limit: int = 1000) -> list[Trade]:
        """The newest ``limit`` trades in [start_time, end_time], ascending by time."""
        exchange, product = _names(exchange, product)
        start = v.optional_timestamp(start_time, "start_time")
        end = v.optional_timestamp(end_time, "end_time")
        limit = v.positive_int(limit, "limit")
        self._check_open()
        if self._query is None:
            return []
        await self._read_your_writes()
        # the last week's first, then 4, 16 and 64 weeks back, then the rest: each
        # trade is a series of its own (order_id is a tag), and a question with no time
        # bound opens every shard with all of their series (1.0-1.25 s for the newest
        # 10 of 100,000 trades over a year, measured here). The edges are fixed once,
        # each window's upper one exclusive, so no trade is asked for twice or missed.
        now = int(time.time())
        edges: list[int | None] = [now - ql.RECENT_SECONDS * 4 ** k for k in range(4)]
        found: list[dict[str, Any]] = []
        upper: int | None = None  # the window's exclusive upper edge (None: up to end)
        for floor in [*edges, None]:
            if end is None or floor is None or floor <= end:  # (else: wholly above end)
                low = start if floor is None or (start is not None and start >= floor) \
                    else floor
                found = await self._trade_rows(exchange, product, low, end,
                                               limit - len(found), upper) + found
                if len(found) >= limit or low is None or low == start:
                    break
            upper = floor
        trades = (_trade(r, self._field_types) for r in found)
        return [t for t in trades if t is not None]

    async def _trade_rows(self, exchange: str, product: str, start: int | float | None,
                          end: int | float | None, limit: int, before: int | None = None
                          ) -> list[dict[str, Any]]:
        """The newest ``limit`` trade rows in [start, end] before ``before``, ascending."""
        results = await self._influx(Query(
            ql.select_trades(exchange, product, start, end, limit,
                             self.config.influxdb.rp_for("trade"), before), epoch="ns"))
        return list(reversed(rows(results[0]))) if results else []

    async def write_metric(self, metric_name: str, value: float, **tags: Any) -> None:
        """Write a ``metric`` point (tags name plus ``tags``: exchange, product,
        strategy...), time = now. Acknowledged on enqueue."""
        await self._accept(self.intake.write_metric(metric_name, value, tags))

    async def write_point(self, measurement: str, tags: Mapping[str, Any] | None = None,
                          fields: Mapping[str, Any] | None = None,
                          timestamp: int | float | None = None) -> None:
        """Write one point of any measurement (a trade event, a strategy signal...).

        ``tags`` map names to strings or numbers (None values are left out), ``fields``
        to numbers, bools or strings (None values are left out; numbers are stored as
        floats, so a field never changes type); ``timestamp`` is Unix seconds, None for
        now. Acknowledged on enqueue. Raises ValidationError, HubClosed."""
        await self._accept(self.intake.write_point(measurement, tags, fields, timestamp))

    # ---- positions and strategy state ---------------------------------------------

    async def _put_state(self, key: str, value: object, argument: str, ttl: int) -> None:
        data = jsonbytes.dumps(v.mapping(value, argument))
        self._check_open()
        assert self._sqlite is not None
        await self._sqlite.put(key, data)
        if self._cache is not None:
            await self._cache.put(key, data, ttl)

    async def _get_state(self, key: str, ttl: int) -> dict[str, Any] | None:
        self._check_open()
        answered = False
        if self._cache is not None:
            answered, state = await self._cache.mapping(key)
            if state is not None:
                self._counters["state_cache_hits"] += 1
                return state
        self._counters["state_cache_misses"] += 1
        assert self._sqlite is not None
        stored = await self._sqlite.get(key)
        if stored is None:
            return None
        if answered and self._cache is not None:
            await self._cache.fill(key, stored, ttl, wait=False)
        loaded: dict[str, Any] = orjson.loads(stored)
        return loaded

    async def cache_position(self, exchange: str, product: str,
                             position: Mapping[str, Any]) -> None:
        """Store a position (a JSON mapping). Durable in SQLite when the await returns,
        cached in Redis for ``redis.ttl.positions``."""
        exchange, product = _names(exchange, product)
        await self._put_state(keys.position(exchange, product, self._tagged), position, "position",
                              self.config.redis.ttl.positions)

    async def get_position(self, exchange: str, product: str) -> dict[str, Any] | None:
        """The stored position, or None. Survives a Redis flush or restart."""
        exchange, product = _names(exchange, product)
        return await self._get_state(keys.position(exchange, product, self._tagged),
                                     self.config.redis.ttl.positions)

    async def cache_strategy_state(self, exchange: str, product: str, strategy: str,
                                   state: Mapping[str, Any]) -> None:
        """Store a strategy's state (a JSON mapping); same durability as positions."""
        exchange, product = _names(exchange, product)
        key = keys.strategy(exchange, product, v.tag(strategy, "strategy"), self._tagged)
        await self._put_state(key, state, "state", self.config.redis.ttl.strategies)

    async def get_strategy_state(self, exchange: str, product: str,
                                 strategy: str) -> dict[str, Any] | None:
        """The stored strategy state, or None."""
        exchange, product = _names(exchange, product)
        key = keys.strategy(exchange, product, v.tag(strategy, "strategy"), self._tagged)
        return await self._get_state(key, self.config.redis.ttl.strategies)

    # ---- maintenance --------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every write accepted before the call is queryable in InfluxDB, the
        rollups of its candles included (a bucket closed with minutes missing is
        recomputed from the stored ones first). Raises BackendUnavailable if InfluxDB
        stays unreachable past ``influxdb.timeout`` (the writes are kept and retried)."""
        self._check_open()
        if self.streams is not None and (self._writer is None or not self._writer.failing):
            await self.streams.recomputed()
        if self._writer is not None:
            await self._writer.flush()

    async def _flush_accepted(self) -> None:
        """``flush`` for the hub's own work (a rollup's recompute), also while it
        closes: the rollups waiting for one are published before the writer stops."""
        self.intake.seal()
        if self._writer is not None:
            await self._writer.flush()

    async def delete_data(self, start: str | int | float, stop: str | int | float,
                          predicate: str | None = None) -> None:
        """The seed's delete: ``start``/``stop`` as RFC3339, relative (``-7d``) or ``now``;
        ``predicate`` an AND of equalities, e.g. ``_measurement="candle" AND product="X"``.
        Deletes from InfluxDB and drops the matching hot-window candles and cached
        indicators from Redis."""
        spec = ql.delete_spec(start, stop, predicate)
        if spec.measurement is not None:
            v.name(spec.measurement, "predicate")
        for key, value in spec.tags.items():
            v.name(key, "predicate")
            v.name(value, "predicate")
        self._check_open()
        if self._query is not None:
            await self.flush()
            await self._influx(Query(spec.statement()))
        if self._cache is not None:
            await self._forget_deleted(spec)

    async def _forget_deleted(self, spec: ql.DeleteSpec) -> None:
        assert self._cache is not None
        await self._cache.barrier()  # cache writes queued before this call land first
        tags = spec.tags
        if spec.measurement in (None, "candle") and set(tags) <= {"exchange", "product"}:
            found = [k async for k in self._matching("candles", tags, ("exchange", "product"))]
            await self._cache.trim_windows(found, spec.start_ns / 1e9, spec.stop_ns / 1e9)
        parts = ("exchange", "product", "name", "period")
        if spec.measurement in (None, "indicator") and set(tags) <= set(parts):
            await self._cache.unlink([k async for k in self._matching("indicator", tags, parts)])

    async def _matching(self, kind: str, tags: Mapping[str, str],
                        parts: tuple[str, ...]) -> AsyncIterator[str]:
        assert self._cache is not None
        prefix = []
        for part in parts:  # literal prefix as long as the leading parts are known
            if part not in tags:
                break
            prefix.append(tags[part])
        if len(prefix) == len(parts):  # every part given: exactly one key, no wildcard
            pattern = keys.glob_literal(keys.key(kind, *prefix, tagged=self._tagged))
        else:
            pattern = keys.scan_pattern(kind, *prefix, tagged=self._tagged)
        async for key in self._cache.keys(pattern):
            values = keys.split(key, self._tagged)[1:]
            if len(values) == len(parts) and all(
                values[i] == tags[p] for i, p in enumerate(parts) if p in tags
            ):
                yield key

    async def flush_all(self) -> None:
        """Delete this hub's cache entries from Redis (SCAN + UNLINK, never KEYS).
        Positions and strategy state stay durable in SQLite."""
        self._check_open()
        if self._cache is not None:
            await self._cache.clear_all()

    async def clear_cache(self, pattern: str) -> int:
        """Delete every Redis key matching a glob (SCAN + UNLINK, never KEYS), e.g.
        ``indicator:binance:*``; returns how many were removed. (``flush_all`` clears
        every hub key.)"""
        v.name(pattern, "pattern")
        self._check_open()
        return 0 if self._cache is None else await self._cache.clear(pattern)

    def _hub_counters(self) -> dict[str, int]:
        """The facade's counters and the cache's (``get_stats()["hub"]``, metrics)."""
        counters = dict(self._counters)
        counters["cache_reads_failed"] = self._cache.reads_failed if self._cache else 0
        counters["cache_writes_skipped"] = self._cache.skipped if self._cache else 0
        return counters

    def _actor_statistics(self) -> dict[str, Any]:
        return self._supervisor.statistics() if self._supervisor is not None else {}

    async def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """Points InfluxDB refused as data (newest first): ``line`` and the server's
        ``reason``. They are kept in the SQLite ``quarantine`` table, never dropped."""
        limit = v.positive_int(limit, "limit")
        self._check_open()
        assert self._sqlite is not None
        found = await self._sqlite.quarantined(limit)
        return [{"line": line, "reason": reason} for line, reason in found]

    async def get_stats(self) -> dict[str, Any]:
        """The seed's Redis numbers (``keyspace_hits``, ``keyspace_misses``,
        ``connected_clients``, ``used_memory_human``, ``total_commands_processed``;
        None when Redis is unreachable) plus the hub's own counters."""
        self._check_open()
        stats: dict[str, Any] = dict.fromkeys(
            ("keyspace_hits", "keyspace_misses", "connected_clients", "used_memory_human",
             "total_commands_processed"))
        if self._cache is not None:
            try:
                info = await self._cache.info()
                for key in stats:
                    stats[key] = info.get(key)
            except HubError as exc:
                log.debug("redis INFO failed: %s", exc)
        stats["hub"] = self._hub_counters()
        assert self._supervisor is not None and self._sqlite is not None
        stats["actors"] = self._supervisor.statistics()
        try:
            stats["sqlite"] = await self._sqlite.counts()
        except HubError as exc:
            stats["sqlite"] = {"error": str(exc)}
        if self.streams is not None:
            stats["streams"] = self.streams.statistics()
        if self._jobs is not None:
            stats["gaps"] = {f"{ex}:{pr}": dict(found)
                             for (ex, pr), found in self._jobs.products.items()}
        stats["healthy"] = self.healthy
        return stats


# seconds of minutes beyond which a resampled range is asked as two halves at once
# (200,000 minutes: 240,000 gained little, 720,000 ~1.65x, measured on two cores)
_SPLIT_RESAMPLE = 200_000 * 60


def _csv_rows(body: bytes) -> int:
    """Rows in an InfluxDB CSV answer, its header line aside (empty: none matched)."""
    lines = body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
    return max(0, lines - 1)


def _candles(results: list[dict[str, Any]]) -> list[Candle]:
    """Candles, ascending, straight from the series values of a newest-first answer whose
    columns are time, open, high, low, close, volume (both candle queries ask for that)."""
    if not results:
        return []
    out: list[Candle] = []
    for series in results[0].get("series", ()):
        assert series["columns"] == ["time", *ql.CANDLE_FIELDS], series["columns"]
        out.extend(make_candle(int(t), float(o), float(h), float(lo), float(c), float(v))
                   for t, o, h, lo, c, v in reversed(series["values"]))
    return out


def _field(value: Any, kind: str | None) -> Any:
    """A field as read back: an integer field's ints stay ints (exactly); a float field's
    whole values come as ints in JSON answers and are floats again."""
    if type(value) is int and kind != "integer":
        return float(value)
    return value


def _number(value: Any) -> Any:
    """InfluxDB's JSON prints a whole float without a point (1e16 -> 10000000000000000):
    every numeric field is stored as a float, so read it back as one."""
    return float(value) if type(value) is int else value


def _trade(row: Mapping[str, Any], types: FieldTypes) -> Trade | None:
    """A Trade from a row, or None for a row another client wrote without a price, a
    size or the hub's tags (not a trade the hub can describe)."""
    if any(row.get(k) is None for k in ("price", "size", "exchange", "product", "side",
                                         "order_id")):
        log.debug("a trade row without the hub's fields skipped: %s", row)
        return None
    ns = int(row["time"])
    ts: int | float = ns // 1_000_000_000 if ns % 1_000_000_000 == 0 else round(ns / 1e9, 6)
    known = {"time", "exchange", "product", "side", "price", "size", "order_id"}
    extra = {k: _field(val, types.get("trade", k)) for k, val in row.items()
             if k not in known and val is not None}
    return Trade(row["exchange"], row["product"], ts, row["side"], float(row["price"]),
                 float(row["size"]), row["order_id"], extra)
