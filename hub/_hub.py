"""The Hub facade: validates, encodes, routes each call to the actor that owns the I/O."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import functools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar

import orjson

from actors.backends.influx import InfluxBackend, InfluxClient, rows
from actors.backends.redis import CommandFailed, RedisBackend, make_client
from actors.cache import (
    NEAR_PREFIXES,
    CacheActor,
    RedisOp,
    WindowAnswer,
    op_barrier,
    op_fill,
    op_get,
    op_get_pttl,
    op_newest_candles,
    op_push_candles,
    op_set,
    op_trim_window,
    op_unlink,
    op_window_all,
    op_window_range,
)
from actors.near import NearCache
from actors.query import Query, QueryActor
from actors.runtime import Call, Supervisor
from actors.state import StateActor
from actors.writer import FLUSH, Lines, WriterActor
from hubdomain import influxql as ql
from hubdomain import keys
from hubdomain import lineproto as lp
from hubdomain import validate as v
from hubdomain.config import HubConfig
from hubdomain.errors import BackendUnavailable, HubClosed, HubError, ValidationError
from hubdomain.fieldtypes import FieldTypes
from hubdomain.records import Candle, Trade

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRADE_TAGS = frozenset({"exchange", "product", "side", "order_id", "price", "size"})
_OWN_FIELDS = {"candle": ql.CANDLE_FIELDS, "indicator": ("value",), "metric": ("value",),
               "trade": ("price", "size")}
_INDICATOR_TAGS = frozenset({"exchange", "product", "name"})
_METRIC_TAGS = frozenset({"name"})


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(slots=True)  # not frozen: built per write on the hot path
class Accepted:
    """A validated, encoded fire-and-forget write: InfluxDB lines and/or one cache op.

    Built synchronously (so bad input raises at the call, before anything is queued)
    and delivered to the actors afterwards; the Wolfinch drop-in builds it on the
    caller's thread and delivers it from the hub's loop.
    """

    lines: list[str]
    cache: RedisOp | None = None


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
        self._cache: CacheActor | None = None
        self._writer: WriterActor | None = None
        self._query: QueryActor | None = None
        self._sqlite: StateActor | None = None
        # the hub's own fields are floats; the rest is learnt at start and from writes
        self._field_types = FieldTypes()
        self._field_types.learn([(m, f, "float") for m, fs in _OWN_FIELDS.items() for f in fs])
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "indicator_cache_hits", "indicator_cache_misses", "indicator_cold_hits",
                "candle_window_hits", "candle_cold_queries", "cache_reads_failed",
                "state_cache_hits", "state_cache_misses",
            ),
            0,
        )

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
        self._sqlite = StateActor(cfg.sqlite.path)
        actors: list[Any] = [self._sqlite]
        if cfg.redis.enabled:
            near = (NearCache(cfg.performance.near_cache_size)
                    if cfg.performance.near_cache else None)
            self._cache = CacheActor(self._redis_backend or make_client(cfg.redis), near)
            actors.append(self._cache)
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
            self._query = QueryActor(factory(), self._cache)
            actors += [self._writer, self._query]
        self._supervisor = Supervisor(**self._supervision)
        try:
            await self._supervisor.start(actors)
        except BaseException:
            self._state = _State.CLOSED
            self._closed.set()
            raise
        self._state = _State.OPEN
        if cfg.metrics.port is not None:
            from hub._metrics import HubMetrics, Observed  # prometheus-client when asked for

            observed = Observed(self._actor_statistics, self._counters, lambda: self.healthy)
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

    async def _learn_field_types(self) -> None:
        """Field types InfluxDB already holds, so a write that would conflict is refused
        at the call. Best effort: while InfluxDB is away, InfluxDB itself finds conflicts
        (the point goes to the quarantine with its reason)."""
        if self._query is None:
            return
        sources = [""]
        if self.config.influxdb.retention.enabled:
            sources += [f" FROM {ql.ident(rp)}./.*/" for rp in ql.RP_NAMES.values()]
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
        self._state = _State.CLOSING
        try:
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
        if self._state is not _State.OPEN:
            raise HubClosed(f"hub is {self._state.value}")

    # ---- plumbing -----------------------------------------------------------------

    async def _redis(self, op: RedisOp) -> Any:
        """Run one op on Redis within the configured deadline."""
        assert self._cache is not None
        try:
            async with asyncio.timeout(self.config.redis.timeout):
                return await self._cache.call(op)
        except TimeoutError:
            raise BackendUnavailable(
                "redis", f"no reply within {self.config.redis.timeout}s") from None

    async def _redis_read(self, op: RedisOp) -> tuple[bool, Any]:
        """(True, value) from Redis, or (False, None) when Redis is off or failing."""
        if self._cache is None:
            return False, None
        try:
            return True, await self._redis(op)
        except (BackendUnavailable, CommandFailed) as exc:
            self._counters["cache_reads_failed"] += 1
            log.debug("redis read failed, falling back: %s", exc)
            return False, None

    async def _redis_write(self, op: RedisOp) -> None:
        """Queue a cache write without waiting for Redis (reads queue behind it, so they
        see it). A write Redis cannot take is counted as skipped, never raised."""
        if self._cache is not None:
            await self._deliver(self._begin(Accepted([], self._near_op(op))))

    def _near_op(self, op: RedisOp) -> RedisOp:
        """``op``, marked for the near cache when it writes keys the near cache holds."""
        if (not op.near and self._near_on and op.writes
                and op.writes[0].startswith(NEAR_PREFIXES)):
            return replace(op, near=True)
        return op

    @property
    def _near_on(self) -> bool:
        return self._cache is not None and self._cache.near is not None

    def _begin(self, accepted: Accepted) -> Accepted:
        """Read-your-writes in this process: from now until the cache op has run, the
        near cache holds nothing for the keys it writes. Synchronous, any thread."""
        op = accepted.cache
        if op is not None and op.near and self._cache is not None and self._cache.near:
            self._cache.near.begin_write(op.writes)
        return accepted

    async def _deliver(self, accepted: Accepted, patient: bool = False) -> None:
        """Queue an accepted write on the actors (waits only for mailbox room).

        When the writer cannot take more (InfluxDB and the spool are both behind), wait
        at most ``influxdb.timeout``, then raise BackendUnavailable saying why; nothing
        of this write is queued then. ``patient``: the write was acknowledged already
        (the Wolfinch drop-in's channel), so it waits as long as it takes."""
        op = accepted.cache
        queued = False
        try:
            if accepted.lines and self._writer is not None:
                message = Lines(accepted.lines, None)
                if patient or not self._writer.mailbox.full:
                    await self._writer.tell(message)
                else:
                    try:
                        async with asyncio.timeout(self.config.influxdb.timeout):
                            await self._writer.tell(message)
                    except TimeoutError:
                        raise BackendUnavailable(
                            "influxdb", "the write cannot be kept now: "
                                        f"{self._writer.blocked_reason()}") from None
            if op is not None and self._cache is not None:
                await self._cache.tell(op)
            queued = True
        finally:
            if not queued and op is not None and op.near and self._cache is not None \
                    and self._cache.near is not None:
                self._cache.near.end_write(op.writes)

    async def _accept(self, accepted: Accepted | None) -> None:
        self._check_open()
        if accepted is not None:
            await self._deliver(self._begin(accepted))

    async def _write_lines(self, lines: list[str], ids: list[int]) -> None:
        """Hand durable lines (in the outbox already) to the writer: never waits, a full
        writer must not hold up a write that is safe on disk."""
        if self._writer is not None:
            self._writer.mailbox.send_past_bound(Call(Lines(lines, ids), None))

    async def _influx(self, query: Query) -> list[dict[str, Any]]:
        if self._query is None:
            raise BackendUnavailable("influxdb", "disabled in the config (influxdb.enabled)")
        result: list[dict[str, Any]] = await self._query.call(query)
        return result

    async def _read_your_writes(self) -> None:
        """Before a cold read: make lines still queued or batching in the writer queryable.
        (The flush request queues behind them, so this is cheap when nothing is pending.)"""
        if self._writer is not None and not self._writer.failing:
            await self.flush()

    @staticmethod
    def _names(exchange: object, product: object) -> tuple[str, str]:
        return v.tag(exchange, "exchange"), v.tag(product, "product")

    @staticmethod
    def _tags(tags: Mapping[str, object], reserved: frozenset[str]) -> dict[str, str]:
        out = {}
        for key, value in tags.items():
            name = v.tag(key, "tags")
            if name in reserved or name == "time":
                raise ValidationError(key, f"{name!r} is set by the hub and cannot be a tag")
            out[name] = v.tag(value, key)
        return out

    # ---- indicators ---------------------------------------------------------------

    async def cache_indicator(self, exchange: str, product: str, indicator: str,
                              period: int | str, value: Any, ttl: int | None = None) -> None:
        """Cache an indicator value (any JSON value) in Redis for ``ttl`` seconds
        (default ``redis.ttl.indicators``). Raises ValidationError, HubClosed."""
        await self._accept(self._msg_cache_indicator(exchange, product, indicator, period,
                                                     value, ttl))

    def _msg_cache_indicator(self, exchange: object, product: object, indicator: object,
                             period: object, value: Any, ttl: object = None) -> Accepted:
        *_, key = _indicator_key(exchange, product, indicator, period, self._tagged)
        data = orjson.dumps(v.json_value(value, "value"))
        seconds = self.config.redis.ttl.indicators if ttl is None else v.positive_int(ttl, "ttl")
        return Accepted([], op_set(key, data, seconds, self._near_on))

    def _hot_indicator(self, exchange: object, product: object, indicator: object,
                       period: object) -> tuple[bool, Any]:
        """(True, value) when the near cache holds the indicator, else (False, None);
        synchronous, so the Wolfinch drop-in answers it on the caller's thread."""
        *_, key = _indicator_key(exchange, product, indicator, period, self._tagged)
        self._check_open()
        near = self._cache.near if self._cache is not None else None
        if near is None:
            return False, None
        return near.get(key)

    async def get_indicator(self, exchange: str, product: str, indicator: str,
                            period: int | str, default: Any = None) -> Any:
        """Read through: Redis, then the latest ``indicator`` point in InfluxDB (which is
        then cached), else ``default``. Raises ValidationError, HubClosed, and
        BackendUnavailable only when no store could answer."""
        held, value = self._hot_indicator(exchange, product, indicator, period)
        if held:
            return value
        exchange, product, name, period_s, key = _indicator_key(exchange, product, indicator,
                                                                period, self._tagged)
        near = self._cache.near if self._cache is not None else None
        if near is not None:
            ticket = near.ticket()
        ok, reply = await self._redis_read(op_get_pttl(key))
        if ok and reply[0] is not None:
            self._counters["indicator_cache_hits"] += 1
            raw, pttl = reply
            if near is not None and pttl > 0:
                near.put(key, raw, pttl / 1000, ticket)
            return orjson.loads(raw)
        self._counters["indicator_cache_misses"] += 1
        if self._query is None:
            return default
        ttl = self.config.redis.ttl.indicators

        def fill(results: list[dict[str, Any]]) -> RedisOp | None:
            found = rows(results[0]) if results else []
            if not found or found[0].get("last") is None:
                return None
            return op_fill(key, orjson.dumps(_number(found[0]["last"])), ttl)

        results = await self._influx(Query(
            ql.select_last_indicator(exchange, product, name, period_s,
                                     self.config.influxdb.rp_for("indicator")),
            key=key, fill=fill if self._cache is not None else None,
        ))
        found = rows(results[0]) if results else []
        if not found or found[0].get("last") is None:
            return default
        self._counters["indicator_cold_hits"] += 1
        return _number(found[0]["last"])

    async def write_indicator(self, exchange: str, product: str, indicator_name: str,
                              timestamp: int | float, value: float, **tags: Any) -> None:
        """Write an ``indicator`` point (tags exchange, product, name, plus ``tags``, e.g.
        ``period=20``). With a ``period`` tag the value is also cached, so
        ``get_indicator`` sees it at once. Acknowledged on enqueue."""
        await self._accept(self._msg_write_indicator(exchange, product, indicator_name,
                                                     timestamp, value, tags))

    def _msg_write_indicator(self, exchange: object, product: object, indicator_name: object,
                             timestamp: object, value: object,
                             tags: Mapping[str, Any]) -> Accepted:
        exchange, product = self._names(exchange, product)
        name = v.tag(indicator_name, "indicator_name")
        ts = v.timestamp(timestamp, "timestamp")
        number = v.number(value, "value")
        extra = self._tags(tags, _INDICATOR_TAGS)
        line = lp.indicator(exchange, product, name, ts, number, extra)
        if "period" not in extra:
            return Accepted([line])
        key = keys.indicator(exchange, product, name, extra["period"], self._tagged)
        return Accepted([line], op_set(key, orjson.dumps(number),
                                       self.config.redis.ttl.indicators, self._near_on))

    # ---- candles ------------------------------------------------------------------

    async def write_candle(self, exchange: str, product: str, timestamp: int,
                           open_price: float, high: float, low: float, close: float,
                           volume: float) -> None:
        """Write one candle: Redis hot window + InfluxDB ``candle`` point.
        Acknowledged on enqueue; :meth:`flush` makes it queryable in InfluxDB."""
        await self._accept(self._msg_write_candle(exchange, product, timestamp, open_price,
                                                  high, low, close, volume))

    def _msg_write_candle(self, exchange: object, product: object, timestamp: object,
                          open_price: object, high: object, low: object, close: object,
                          volume: object) -> Accepted:
        exchange, product = self._names(exchange, product)
        candle = Candle.checked(timestamp, open_price, high, low, close, volume)
        return Accepted([lp.candle(exchange, product, candle)],
                        self._window_op(exchange, product, [candle], None))

    async def write_candles_batch(self, exchange: str, product: str,
                                  candles: Iterable[Candle | Mapping[str, Any]]) -> int:
        """Write many candles (``Candle`` objects, mappings with the seed's keys, or
        objects with candle attributes such as Wolfinch's ``OHLC``). All are validated
        before any is written. Returns the count."""
        accepted, count = self._msg_write_candles(exchange, product, candles)
        await self._accept(accepted)
        return count

    def _msg_write_candles(self, exchange: object, product: object,
                           candles: object) -> tuple[Accepted | None, int]:
        exchange, product = self._names(exchange, product)
        checked = _checked_candles(candles)
        if not checked:
            return None, 0
        return Accepted([lp.candle(exchange, product, c) for c in checked],
                        self._window_op(exchange, product, checked, None)), len(checked)

    def _window_op(self, exchange: str, product: str, candles: list[Candle],
                   window: int | None) -> RedisOp:
        size = window or self.config.performance.redis_hot_data_window
        newest = candles if len(candles) == 1 else sorted(
            candles, key=lambda c: c.timestamp)[-size:]
        return op_push_candles(keys.candles(exchange, product, self._tagged), newest, size,
                               self.config.redis.ttl.candles, self._near_on)

    async def cache_candles(self, exchange: str, product: str,
                            candles: Iterable[Candle | Mapping[str, Any]],
                            max_candles: int | None = None) -> None:
        """Put candles in the Redis hot window only (the seed's list), keeping at most
        ``max_candles`` (default ``performance.redis_hot_data_window``)."""
        await self._accept(self._msg_cache_candles(exchange, product, candles, max_candles))

    def _msg_cache_candles(self, exchange: object, product: object, candles: object,
                           max_candles: object = None) -> Accepted | None:
        exchange, product = self._names(exchange, product)
        checked = _checked_candles(candles)
        window = None if max_candles is None else v.positive_int(max_candles, "max_candles")
        if not checked or self._cache is None:
            return None
        return Accepted([], self._window_op(exchange, product, checked, window))

    async def get_candles(self, exchange: str, product: str, count: int = 100) -> list[Candle]:
        """The newest ``count`` candles of the hot window, ascending. When Redis is down
        or off, the same answer comes from InfluxDB."""
        exchange, product, count, window = self._hot_newest(exchange, product, count)
        if window is not None:
            return window
        key = keys.candles(exchange, product, self._tagged)
        if self._cache is not None and self._cache.near is not None:
            held = await self._near_window(key)
            if held is not None:
                return list(held[-count:])
        else:
            ok, found = await self._redis_read(op_newest_candles(key, count))
            if ok:
                return list(found)
        return await self._cold_candles(exchange, product, None, None, count)

    def _hot_newest(self, exchange: object, product: object, count: object
                    ) -> tuple[str, str, int, list[Candle] | None]:
        """Validated arguments of get_candles, and its answer when the near cache holds
        the product's hot window (synchronous, any thread)."""
        exchange, product = self._names(exchange, product)
        number = v.positive_int(count, "count")
        self._check_open()
        window = self._held_window(exchange, product)
        return exchange, product, number, None if window is None else list(window[-number:])

    def _held_window(self, exchange: str, product: str) -> tuple[Candle, ...] | None:
        if self._cache is None or self._cache.near is None:
            return None
        held, window = self._cache.near.get(keys.candles(exchange, product, self._tagged))
        return window if held else None

    async def _near_window(self, key: str) -> tuple[Candle, ...] | None:
        """The hot window from the near cache, else from Redis (then held in-process until
        a write to it, by anyone, invalidates it); None when Redis cannot answer."""
        assert self._cache is not None and self._cache.near is not None
        near = self._cache.near
        held, window = near.get(key)
        if held:
            result: tuple[Candle, ...] = window
            return result
        ticket = near.ticket()
        ok, reply = await self._redis_read(op_window_all(key))
        if not ok:
            return None
        window, pttl = reply
        if window and pttl > 0:
            near.put(key, b"", pttl / 1000, ticket, value=window)
        return tuple(window)

    async def query_candles(self, exchange: str, product: str,
                            start_time: int | float | None = None,
                            end_time: int | float | None = None,
                            limit: int = 1000, interval: str | None = None) -> list[Candle]:
        """The newest ``limit`` candles with time in [start_time, end_time], ascending.

        Served from the Redis hot window when it holds the whole answer, else from
        InfluxDB. With ``interval`` ('1m', '5m', '1h', '1d'...), InfluxDB resamples:
        first open, max high, min low, last close, summed volume per bucket.
        """
        exchange, product, lo, hi, limit, hot = self._hot_query(
            exchange, product, start_time, end_time, limit, interval)
        if hot is not None:
            return hot
        if interval is not None:
            return await self._resampled(exchange, product, lo, hi, limit, interval)
        key = keys.candles(exchange, product, self._tagged)
        if self._cache is not None and self._cache.near is not None:
            window = await self._near_window(key)
            if window:
                picked = self._pick(window, lo, hi, limit)
                if picked is not None:
                    return picked
            return await self._cold_candles(exchange, product, lo, hi, limit)
        ok, answer = await self._redis_read(op_window_range(key, lo, hi, limit))
        if ok and answer.oldest is not None and self._window_covers(
                len(answer.members), answer.oldest, lo, limit):
            self._counters["candle_window_hits"] += 1
            ranged: WindowAnswer = answer
            return ranged.candles()
        return await self._cold_candles(exchange, product, lo, hi, limit)

    def _hot_query(self, exchange: object, product: object, start_time: object,
                   end_time: object, limit: object, interval: object
                   ) -> tuple[str, str, int | None, int | None, int, list[Candle] | None]:
        """Validated arguments of query_candles, and its answer when the near cache's hot
        window holds all of it (synchronous, any thread)."""
        exchange, product = self._names(exchange, product)
        start = v.optional_timestamp(start_time, "start_time")
        end = v.optional_timestamp(end_time, "end_time")
        count = v.positive_int(limit, "limit")
        lo = None if start is None else math.ceil(start)
        hi = None if end is None else math.floor(end)
        if lo is not None and hi is not None and hi < lo:
            raise ValidationError("end_time", "end_time is before start_time")
        if interval is not None:
            if not isinstance(interval, str):
                raise ValidationError("interval", f"expected a string like '1h', got {interval!r}")
            ql.interval_seconds(interval)  # validates before anything runs
            self._check_open()
            return exchange, product, lo, hi, count, None
        self._check_open()
        window = self._held_window(exchange, product)
        hot = self._pick(window, lo, hi, count) if window else None
        return exchange, product, lo, hi, count, hot

    def _pick(self, window: tuple[Candle, ...], lo: int | None, hi: int | None,
              limit: int) -> list[Candle] | None:
        """The answer from a hot window, or None when the window does not cover it."""
        times = [c.timestamp for c in window]
        first = 0 if lo is None else bisect.bisect_left(times, lo)
        last = len(times) if hi is None else bisect.bisect_right(times, hi)
        picked = window[max(first, last - limit):last]
        if not self._window_covers(len(picked), times[0], lo, limit):
            return None
        self._counters["candle_window_hits"] += 1
        return list(picked)

    @staticmethod
    def _window_covers(found: int, oldest: int, start: int | None, limit: int) -> bool:
        # The window's span [oldest, newest] is complete (see actors.cache.PUSH_CANDLES):
        # it answers when it has `limit` candles in range, or the range starts inside it.
        return found >= limit or (start is not None and start >= oldest)

    async def _cold_candles(self, exchange: str, product: str, lo: int | None,
                            hi: int | None, limit: int) -> list[Candle]:
        if self._query is None:
            return []
        self._counters["candle_cold_queries"] += 1
        await self._read_your_writes()
        results = await self._influx(Query(ql.select_candles(
            exchange, product, lo, hi, limit, self.config.influxdb.rp_for("candle"))))
        return _candles(results)

    async def _resampled(self, exchange: str, product: str, lo: int | None, hi: int | None,
                         limit: int, interval: str) -> list[Candle]:
        if self._query is None:
            raise BackendUnavailable("influxdb", "resampling needs InfluxDB (disabled)")
        await self._read_your_writes()
        if lo is None or hi is None:
            # GROUP BY time() needs both bounds; take them from the data
            bounds = await self._influx(Query(ql.select_candle_bounds(
                exchange, product, self.config.influxdb.rp_for("candle"))))
            first, last = (rows(r) for r in bounds)
            if not first or not last:
                return []
            lo = first[0]["time"] if lo is None else lo
            hi = last[0]["time"] if hi is None else hi
        if hi < lo:
            return []
        results = await self._influx(Query(
            ql.select_candles_resampled(exchange, product, lo, hi, limit, interval,
                                        self.config.influxdb.rp_for("candle"))))
        return _candles(results)

    # ---- trades and metrics -------------------------------------------------------

    async def write_trade(self, exchange: str, product: str, timestamp: int | float,
                          side: str, price: float, size: float, order_id: str | int,
                          **fields: Any) -> None:
        """Write a ``trade`` point. Durable when the await returns: the line is committed
        to SQLite (fsync, shared with concurrent writers) before it is queued for
        InfluxDB, and replayed after a crash."""
        exchange, product = self._names(exchange, product)
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
        ids: list[int] = await self._sqlite.call(("outbox_add", [line], "trade"))
        await self._write_lines([line], ids)

    async def query_trades(self, exchange: str, product: str,
                           start_time: int | float | None = None,
                           end_time: int | float | None = None,
                           limit: int = 1000) -> list[Trade]:
        """The newest ``limit`` trades in [start_time, end_time], ascending by time."""
        exchange, product = self._names(exchange, product)
        start = v.optional_timestamp(start_time, "start_time")
        end = v.optional_timestamp(end_time, "end_time")
        limit = v.positive_int(limit, "limit")
        self._check_open()
        if self._query is None:
            return []
        await self._read_your_writes()
        results = await self._influx(Query(
            ql.select_trades(exchange, product, start, end, limit,
                             self.config.influxdb.rp_for("trade")), epoch="ns"))
        found = [_trade(r, self._field_types) for r in reversed(rows(results[0]))
                 ] if results else []
        return [t for t in found if t is not None]

    async def write_metric(self, metric_name: str, value: float, **tags: Any) -> None:
        """Write a ``metric`` point (tags name plus ``tags``: exchange, product,
        strategy...), time = now. Acknowledged on enqueue."""
        await self._accept(self._msg_write_metric(metric_name, value, tags))

    def _msg_write_metric(self, metric_name: object, value: object,
                          tags: Mapping[str, Any]) -> Accepted:
        name = v.tag(metric_name, "metric_name")
        number = v.number(value, "value")
        extra = self._tags(tags, _METRIC_TAGS)
        return Accepted([lp.metric(name, number, extra, round(time.time(), 6))])

    async def write_point(self, measurement: str, tags: Mapping[str, Any] | None = None,
                          fields: Mapping[str, Any] | None = None,
                          timestamp: int | float | None = None) -> None:
        """Write one point of any measurement (a trade event, a strategy signal...).

        ``tags`` map names to strings or numbers (None values are left out), ``fields``
        to numbers, bools or strings (None values are left out; numbers are stored as
        floats, so a field never changes type); ``timestamp`` is Unix seconds, None for
        now. Acknowledged on enqueue. Raises ValidationError, HubClosed."""
        await self._accept(self._msg_write_point(measurement, tags, fields, timestamp))

    def _msg_write_point(self, measurement: object, tags: object, fields: object,
                         timestamp: object) -> Accepted:
        name = v.measurement(measurement, "measurement")
        tag_values = _point_tags(tags)
        if fields is None or not isinstance(fields, Mapping):
            raise ValidationError("fields", "expected a mapping of field names to values")
        types = self._field_types
        values = {v.field_key(k, "fields"): types.value(name, str(k), val, "fields")
                  for k, val in fields.items() if val is not None}
        if not values:
            raise ValidationError("fields", "a point needs at least one field")
        ts = round(time.time(), 6) if timestamp is None else v.timestamp(timestamp, "timestamp")
        line = lp.any_point(name, tag_values, values, lp.seconds_to_ns(ts))
        types.claim([(name, values)], "fields")
        return Accepted([line])

    def _msg_points(self, points: list[lp.ParsedPoint]) -> Accepted:
        """Points read from a caller's line protocol (the drop-in's write_api): names
        checked, field types checked against InfluxDB's and each other, re-encoded."""
        lines = []
        for point in points:
            measurement = v.measurement(point.measurement, "record")
            tags = {_tag_key(k, "record"): v.tag(val, "record")
                    for k, val in point.tags.items()}
            fields = {v.field_key(k, "record"): val for k, val in point.fields.items()}
            if not fields:
                raise ValidationError("record", f"a point of {measurement!r} has no fields")
            ns = time.time_ns() if point.ns is None else point.ns
            lines.append(lp.any_point(measurement, tags, fields, ns))
        self._field_types.claim([(p.measurement, p.fields) for p in points], "record")
        return Accepted(lines)

    # ---- positions and strategy state ---------------------------------------------

    async def _put_state(self, key: str, value: object, argument: str, ttl: int) -> None:
        data = orjson.dumps(v.mapping(value, argument))
        self._check_open()
        assert self._sqlite is not None
        await self._sqlite.call(("put", key, data))
        await self._redis_write(op_set(key, data, ttl))

    async def _get_state(self, key: str, ttl: int) -> dict[str, Any] | None:
        self._check_open()
        ok, raw = await self._redis_read(op_get(key))
        if ok and raw is not None:
            self._counters["state_cache_hits"] += 1
            result: dict[str, Any] = orjson.loads(raw)
            return result
        self._counters["state_cache_misses"] += 1
        assert self._sqlite is not None
        stored = await self._sqlite.call(("get", key))
        if stored is None:
            return None
        if ok:
            await self._redis_write(op_fill(key, stored, ttl))
        loaded: dict[str, Any] = orjson.loads(stored)
        return loaded

    async def cache_position(self, exchange: str, product: str,
                             position: Mapping[str, Any]) -> None:
        """Store a position (a JSON mapping). Durable in SQLite when the await returns,
        cached in Redis for ``redis.ttl.positions``."""
        exchange, product = self._names(exchange, product)
        await self._put_state(keys.position(exchange, product, self._tagged), position, "position",
                              self.config.redis.ttl.positions)

    async def get_position(self, exchange: str, product: str) -> dict[str, Any] | None:
        """The stored position, or None. Survives a Redis flush or restart."""
        exchange, product = self._names(exchange, product)
        return await self._get_state(keys.position(exchange, product, self._tagged),
                                     self.config.redis.ttl.positions)

    async def cache_strategy_state(self, exchange: str, product: str, strategy: str,
                                   state: Mapping[str, Any]) -> None:
        """Store a strategy's state (a JSON mapping); same durability as positions."""
        exchange, product = self._names(exchange, product)
        key = keys.strategy(exchange, product, v.tag(strategy, "strategy"), self._tagged)
        await self._put_state(key, state, "state", self.config.redis.ttl.strategies)

    async def get_strategy_state(self, exchange: str, product: str,
                                 strategy: str) -> dict[str, Any] | None:
        """The stored strategy state, or None."""
        exchange, product = self._names(exchange, product)
        key = keys.strategy(exchange, product, v.tag(strategy, "strategy"), self._tagged)
        return await self._get_state(key, self.config.redis.ttl.strategies)

    # ---- maintenance --------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every write accepted before the call is queryable in InfluxDB.
        Raises BackendUnavailable if InfluxDB stays unreachable past
        ``influxdb.timeout`` (the writes are kept and retried)."""
        self._check_open()
        if self._writer is not None:  # past the bound: a flush waits for the lines, not room
            await self._writer.call(FLUSH, past_bound=True)

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
        await self._redis(op_barrier())  # cache writes queued before this call land first
        tags = spec.tags
        start_s, stop_s = spec.start_ns / 1e9, spec.stop_ns / 1e9
        if spec.measurement in (None, "candle") and set(tags) <= {"exchange", "product"}:
            found = [k async for k in self._matching("candles", tags, ("exchange", "product"))]
            for i in range(0, len(found), 500):
                await self._redis(op_trim_window(found[i:i + 500], start_s, stop_s))
            assert self._cache is not None
            if self._cache.near is not None:  # not only when Redis' own message arrives
                self._cache.near.invalidate(found)
        parts = ("exchange", "product", "name", "period")
        if spec.measurement in (None, "indicator") and set(tags) <= set(parts):
            found = [k async for k in self._matching("indicator", tags, parts)]
            assert self._cache is not None
            if self._cache.near is not None:
                self._cache.near.invalidate(found)
            for i in range(0, len(found), 500):
                await self._redis(op_unlink(found[i:i + 500]))

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
        async for raw in self._cache.scan(pattern):
            key = raw.decode()
            values = keys.split(key, self._tagged)[1:]
            if len(values) == len(parts) and all(
                values[i] == tags[p] for i, p in enumerate(parts) if p in tags
            ):
                yield key

    async def flush_all(self) -> None:
        """Delete this hub's cache entries from Redis (SCAN + UNLINK, never KEYS).
        Positions and strategy state stay durable in SQLite."""
        self._check_open()
        if self._cache is None:
            return
        if self._cache.near is not None:
            self._cache.near.clear()
        await self._redis(op_barrier())  # cache writes queued before this call land first
        for prefix in keys.PREFIXES:
            batch: list[str] = []
            async for raw in self._cache.scan(keys.glob_literal(prefix) + "*"):
                batch.append(raw.decode())
                if len(batch) >= 500:
                    await self._redis(op_unlink(batch))
                    batch = []
            if batch:
                await self._redis(op_unlink(batch))

    async def _clear_pattern(self, pattern: str) -> int:
        """UNLINK every key matching a Redis glob (SCAN, never KEYS); for ``wolfhub cache
        clear --pattern``. Returns how many were removed."""
        self._check_open()
        if self._cache is None:
            return 0
        v.name(pattern, "pattern")
        await self._redis(op_barrier())
        if self._cache.near is not None:
            self._cache.near.clear()
        removed = 0
        batch: list[str] = []
        async for raw in self._cache.scan(pattern):
            batch.append(raw.decode())
            if len(batch) >= 500:
                removed += int(await self._redis(op_unlink(batch)) or 0)
                batch = []
        if batch:
            removed += int(await self._redis(op_unlink(batch)) or 0)
        return removed

    def _actor_statistics(self) -> dict[str, Any]:
        return self._supervisor.statistics() if self._supervisor is not None else {}

    async def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """Points InfluxDB refused as data (newest first): ``line`` and the server's
        ``reason``. They are kept in the SQLite ``quarantine`` table, never dropped."""
        limit = v.positive_int(limit, "limit")
        self._check_open()
        assert self._sqlite is not None
        found: list[tuple[str, str]] = await self._sqlite.call(("quarantined", limit))
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
                async with asyncio.timeout(self.config.redis.timeout):
                    info = await self._cache.info()
                for key in stats:
                    stats[key] = info.get(key)
            except (BackendUnavailable, TimeoutError) as exc:
                log.debug("redis INFO failed: %s", exc)
        stats["hub"] = dict(self._counters)
        stats["hub"]["cache_writes_skipped"] = self._cache.skipped if self._cache else 0
        assert self._supervisor is not None and self._sqlite is not None
        stats["actors"] = self._supervisor.statistics()
        try:
            stats["sqlite"] = await self._sqlite.call(("counts",))
        except HubError as exc:
            stats["sqlite"] = {"error": str(exc)}
        stats["healthy"] = self.healthy
        return stats


def _checked_candles(candles: object) -> list[Candle]:
    if isinstance(candles, (str, bytes, Mapping)) or not isinstance(candles, Iterable):
        raise ValidationError("candles", "expected an iterable of candles")
    return [Candle.coerce(c, f"candles[{i}]") for i, c in enumerate(candles)]


def _point_tags(tags: object) -> dict[str, str]:
    """write_point's tags: names to strings or numbers; None values are left out."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValidationError("tags", "expected a mapping of tag names to values")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if value is None:
            continue
        name = _tag_key(key, "tags")
        out[name] = v.tag_value(value, name)
    return out


def _tag_key(key: object, argument: str) -> str:
    name = v.tag(key, argument)
    if name == "time":
        raise ValidationError(argument, "'time' cannot be a tag key (InfluxDB refuses it)")
    return name


def _candles(results: list[dict[str, Any]]) -> list[Candle]:
    """Candles, ascending, straight from the series values of a newest-first answer whose
    columns are time, open, high, low, close, volume (both candle queries ask for that)."""
    if not results:
        return []
    out: list[Candle] = []
    for series in results[0].get("series", ()):
        assert series["columns"] == ["time", *ql.CANDLE_FIELDS], series["columns"]
        out.extend(Candle(int(t), float(o), float(h), float(lo), float(c), float(v))
                   for t, o, h, lo, c, v in reversed(series["values"]))
    return out


def _indicator_key(exchange: object, product: object, indicator: object,
                   period: object, tagged: bool) -> tuple[str, str, str, str, str]:
    """Validated names and the Redis key, remembered: a strategy asks for the same few
    indicators over and over, and the hot read should cost a dict lookup."""
    try:
        return _indicator_key_cached(exchange, product, indicator, period, tagged)
    except TypeError:  # unhashable: validate uncached, which raises ValidationError
        return _indicator_key_uncached(exchange, product, indicator, period, tagged)


def _indicator_key_uncached(exchange: object, product: object, indicator: object,
                            period: object, tagged: bool) -> tuple[str, str, str, str, str]:
    ex, pr = v.tag(exchange, "exchange"), v.tag(product, "product")
    name, per = v.tag(indicator, "indicator"), v.tag(period, "period")
    return ex, pr, name, per, keys.indicator(ex, pr, name, per, tagged)


# typed: period 1 and True must not share an entry (True is refused)
_indicator_key_cached = functools.lru_cache(maxsize=65_536, typed=True)(
    _indicator_key_uncached)


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
