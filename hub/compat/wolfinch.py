"""Synchronous drop-in for Wolfinch's ``db/redis_cache.py`` and ``db/influx_db.py``.

A Wolfinch checkout switches by replacing the bodies of those two modules with::

    from hub.compat.wolfinch import RedisCache, get_redis_cache, init_redis_cache
    from hub.compat.wolfinch import InfluxDB, get_influx_db, init_influx_db

and keeps every call site: ``init_redis_cache(cfg['redis'])``, ``x.is_enabled()``,
``cache_candles(..., candles=[OHLC objects])``, ``query_candles(...)`` read as ``c.time``
or ``c['timestamp']``, ``write_point(...)``, ``write_api.write(bucket=, org=, record=)``,
the seed's constructors and ``default=`` parameters.

Both kinds of object drive ONE :class:`hub.Hub` on a background event-loop thread
(no second, synchronous implementation; see ``_runtime``). Each init starts only its
own backend. Hot reads (an indicator or candles the near cache holds) are answered
on the caller's thread; fire-and-forget writes return once validated and queued, in
order with everything else the thread does. Deviations from the seed, on purpose:
values are JSON, never pickle (a value JSON cannot carry raises ValidationError);
invalid input raises ValidationError instead of returning False; during an outage
writes never raise (they are kept and retried) and reads return their default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import orjson

from hub._hub import Hub
from hub._intake import Accepted
from hub.compat._records import CandleRecord, points
from hub.compat._runtime import runtime
from hubdomain import jsonbytes
from hubdomain import validate as v
from hubdomain.errors import BackendUnavailable, HubClosed, HubError, ValidationError

__all__ = [
    "CandleRecord",
    "HubError",
    "InfluxDB",
    "RedisCache",
    "close_all",
    "get_influx_db",
    "get_redis_cache",
    "init_influx_db",
    "init_redis_cache",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_UNSET: Any = object()


class _Section:
    """An object of one section ('redis' or 'influxdb') of the shared hub."""

    section = ""

    def __init__(self, config: Mapping[str, Any]) -> None:
        runtime.configure(self.section, config)
        self._open = True

    @classmethod
    def _from(cls, config: Any) -> Any:
        obj = cls.__new__(cls)
        _Section.__init__(obj, config)
        return obj

    def is_enabled(self) -> bool:
        """True while this object is open, its section is enabled and the hub serves it
        (an outage does not make it False: writes are kept, reads fall back)."""
        return self._open and runtime.enabled(self.section)

    @property
    def enabled(self) -> bool:
        return self.is_enabled()

    def close(self) -> None:
        """This object stops serving (``is_enabled()`` turns False); the shared hub and
        the other section's objects go on. ``close_all()`` closes the hub itself."""
        self._open = False

    def _serving(self) -> bool:
        """Open, and its section configured and enabled (cheap: no lock, no hub)."""
        section = runtime.sections.get(self.section)
        return self._open and section is not None and section.get("enabled") is not False

    def _call(self, make: Callable[[Hub], Coroutine[Any, Any, T]], default: Any) -> T:
        """Run a hub call and wait; ``default`` when disabled or no store could answer."""
        if not self._serving():
            return default  # type: ignore[no-any-return]
        try:
            return runtime.call(make)
        except (BackendUnavailable, HubClosed) as exc:
            log.debug("%s call answered with its default: %s", self.section, exc)
            return default  # type: ignore[no-any-return]

    def _tell(self, build: Callable[[Hub], Accepted | None]) -> bool:
        """Queue a write validated on this thread; True once accepted."""
        if not self._serving():
            return False
        try:
            return runtime.tell(build)
        except HubClosed:
            return False
        except BackendUnavailable as exc:  # not kept: the seed's answer is False
            log.warning("a write was not taken: %s", exc)
            return False

    def _hot(self) -> Hub | None:
        hub = runtime.hub
        return hub if hub is not None and self._serving() else None

    def get_stats(self) -> dict[str, Any]:
        """The seed's keys (``enabled``, ``keyspace_hits``, ``used_memory_human``, ...) and
        the hub's own counters; ``{"enabled": False}`` when disabled."""
        if not self.is_enabled():
            return {"enabled": False}
        stats = self._call(lambda hub: hub.get_stats(), None)
        return {"enabled": False} if stats is None else {"enabled": True, **stats}


class RedisCache(_Section):
    """The seed's ``RedisCache``: indicator, candle, position and strategy caching, plus
    the generic commands, on the shared hub."""

    section = "redis"

    def __init__(self, host: str = "localhost", port: int = 6379, db: int = 0,
                 password: str | None = None, enabled: bool = True, **options: Any) -> None:
        super().__init__({"host": host, "port": port, "db": db, "password": password,
                          "enabled": enabled, **options})

    @property
    def client(self) -> _RedisClient | None:
        """A small stand-in for the seed's redis-py client (``keys`` uses SCAN)."""
        return _RedisClient(self) if self.is_enabled() else None

    # ---- the seed's domain methods ----
    def cache_indicator(self, exchange: str, product: str, indicator: str, period: Any,
                        value: Any, ttl: int | None = None) -> bool:
        return self._tell(lambda hub: hub.intake.cache_indicator(
            exchange, product, indicator, period, value, ttl or None))

    def get_indicator(self, exchange: str, product: str, indicator: str, period: Any,
                      default: Any = None) -> Any:
        hub = self._hot()
        if hub is not None:
            try:
                held, value = hub.intake.hot_indicator(exchange, product, indicator, period)
                if held:
                    return value
            except HubClosed:  # the hub is being restarted: ask the new one
                pass
        return self._call(
            lambda hub: hub.get_indicator(exchange, product, indicator, period, default),
            default)

    def cache_candles(self, exchange: str, product: str, candles: Iterable[Any],
                      max_candles: int | None = None) -> bool:
        return self._tell(lambda hub: hub.intake.cache_candles(exchange, product, candles,
                                                             max_candles))

    def get_candles(self, exchange: str, product: str, count: int = 100
                    ) -> list[CandleRecord]:
        hub = self._hot()
        if hub is not None:
            try:
                window = hub.intake.hot_newest(exchange, product, count)[3]
                if window is not None:
                    return [CandleRecord.of(c) for c in window]
            except HubClosed:
                pass
        found = self._call(lambda hub: hub.get_candles(exchange, product, count), [])
        return [CandleRecord.of(c) for c in found]

    def cache_position(self, exchange: str, product: str, position: Mapping[str, Any]
                       ) -> bool:
        return self._done(lambda hub: hub.cache_position(exchange, product, position))

    def get_position(self, exchange: str, product: str) -> dict[str, Any] | None:
        return self._call(lambda hub: hub.get_position(exchange, product), None)

    def cache_strategy_state(self, exchange: str, product: str, strategy: str,
                             state: Mapping[str, Any]) -> bool:
        return self._done(lambda hub: hub.cache_strategy_state(exchange, product, strategy,
                                                               state))

    def get_strategy_state(self, exchange: str, product: str, strategy: str
                           ) -> dict[str, Any] | None:
        return self._call(lambda hub: hub.get_strategy_state(exchange, product, strategy),
                          None)

    def _done(self, make: Callable[[Hub], Coroutine[Any, Any, None]]) -> bool:
        """A durable write: True once it is committed (False when disabled)."""
        if not self.is_enabled():
            return False
        return self._call(lambda hub: _true(make(hub)), False)

    def flush_all(self) -> bool:
        return self._call(lambda hub: _true(hub.flush_all()), False)

    # ---- generic commands on raw keys (values are JSON) ----
    def _command(self, *command: Any, decode: Any = None, default: Any = None) -> Any:
        if not self.is_enabled():
            return default
        try:
            return runtime.call(lambda hub: hub.intake.command(command, decode or _same))
        except HubError as exc:
            if isinstance(exc, ValidationError):
                raise
            log.debug("redis %s failed: %s", command[0], exc)
            return default

    @staticmethod
    def _key(key: object, argument: str = "key") -> str:
        return v.name(key, argument)

    @staticmethod
    def _dump(value: Any) -> bytes:
        return jsonbytes.dumps(v.json_value(value, "value"))

    @staticmethod
    def _load(raw: bytes | None) -> Any:
        return None if raw is None else orjson.loads(raw)

    def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        """Store a JSON value; ``ttl`` seconds (None or 0: no expiry, as in the seed)."""
        if not self.is_enabled():
            return False
        key, data = self._key(key), self._dump(value)
        cmd: tuple[Any, ...] = ("SET", key, data)
        if ttl:
            cmd += ("EX", v.positive_int(ttl, "ttl"))
        return bool(self._command(*cmd, decode=lambda r: r == b"OK", default=False))

    def get(self, key: str, default: Any = None) -> Any:
        found = self._command("GET", self._key(key), decode=self._load, default=None)
        return default if found is None else found

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(self._command("DEL", *(self._key(k) for k in keys), default=0))

    def exists(self, key: str) -> bool:
        return bool(self._command("EXISTS", self._key(key), default=0))

    def expire(self, key: str, ttl: int) -> bool:
        return bool(self._command("EXPIRE", self._key(key), v.positive_int(ttl, "ttl"),
                                  default=0))

    def lpush(self, key: str, *values: Any) -> int:
        return int(self._command("LPUSH", self._key(key), *(self._dump(x) for x in values),
                                 default=0))

    def rpush(self, key: str, *values: Any) -> int:
        return int(self._command("RPUSH", self._key(key), *(self._dump(x) for x in values),
                                 default=0))

    def lrange(self, key: str, start: int, end: int) -> list[Any]:
        found = self._command("LRANGE", self._key(key), int(start), int(end),
                              decode=lambda items: [orjson.loads(i) for i in items],
                              default=[])
        return list(found)

    def ltrim(self, key: str, start: int, end: int) -> bool:
        return bool(self._command("LTRIM", self._key(key), int(start), int(end),
                                  decode=lambda r: r == b"OK", default=False))

    def hset(self, name: str, key: str, value: Any) -> int:
        return int(self._command("HSET", self._key(name, "name"), self._key(key),
                                 self._dump(value), default=0))

    def hget(self, name: str, key: str, default: Any = None) -> Any:
        found = self._command("HGET", self._key(name, "name"), self._key(key),
                              decode=self._load, default=None)
        return default if found is None else found

    def hgetall(self, name: str) -> dict[str, Any]:
        def decode(flat: Any) -> dict[str, Any]:
            if isinstance(flat, dict):
                return {k.decode(): orjson.loads(x) for k, x in flat.items()}
            return {flat[i].decode(): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        found = self._command("HGETALL", self._key(name, "name"), decode=decode, default={})
        return dict(found)


class _RedisClient:
    """What scripts written for the seed do with ``redis.client``: ping, info, keys."""

    def __init__(self, cache: RedisCache) -> None:
        self._cache = cache

    def ping(self) -> bool:
        return self._cache._command("PING", decode=lambda r: r in (b"PONG", "PONG", True),
                                    default=False) is True

    def keys(self, pattern: str = "*") -> list[bytes]:
        """Keys matching ``pattern``, found with SCAN (never KEYS, which blocks Redis)."""
        v.name(pattern, "pattern")

        async def scan(hub: Hub) -> list[bytes]:
            return [key.encode() for key in await hub.intake.matching(pattern)]
        found: list[bytes] = self._cache._call(scan, [])
        return found

    def info(self, section: str | None = None) -> dict[str, Any]:
        async def info(hub: Hub) -> dict[str, Any]:
            return await hub.intake.redis_info()
        result: dict[str, Any] = self._cache._call(info, {})
        return result

    def close(self) -> None:
        self._cache.close()


class InfluxDB(_Section):
    """The seed's ``InfluxDB``: candles, indicators, trades, metrics and any point, on
    the shared hub. Writes return True once accepted (see the hub's guarantees); they
    never raise during an outage."""

    section = "influxdb"

    def __init__(self, url: str = "http://localhost:8086", token: str | None = None,
                 org: str = "wolfinch", bucket: str = "trading", enabled: bool = True,
                 **options: Any) -> None:
        super().__init__({"url": url, "token": token, "org": org, "bucket": bucket,
                          "enabled": enabled, **options})

    @property
    def bucket(self) -> str:
        """The InfluxDB 1.x database the hub writes to (``influxdb.bucket``)."""
        return str(runtime.setting("influxdb", "bucket", "trading"))

    @property
    def org(self) -> str:
        return str(runtime.setting("influxdb", "org", "wolfinch"))

    @property
    def write_api(self) -> WriteApi | None:
        """influxdb-client's ``write_api`` as Wolfinch's trade logger uses it."""
        return WriteApi(self) if self.is_enabled() else None

    @property
    def query_api(self) -> _FluxQueryApi | None:
        return _FluxQueryApi() if self.is_enabled() else None

    @property
    def client(self) -> _InfluxClient | None:
        return _InfluxClient(self) if self.is_enabled() else None

    def write_candle(self, exchange: str, product: str, timestamp: int, open_price: float,
                     high: float, low: float, close: float, volume: float) -> bool:
        return self._tell(lambda hub: hub.intake.write_candle(
            exchange, product, timestamp, open_price, high, low, close, volume))

    def write_candles_batch(self, exchange: str, product: str, candles: Iterable[Any]
                            ) -> bool:
        return self._tell(lambda hub: hub.intake.write_candles(exchange, product, candles)[0])

    def write_indicator(self, exchange: str, product: str, indicator_name: str,
                        timestamp: float, value: float, **tags: Any) -> bool:
        return self._tell(lambda hub: hub.intake.write_indicator(
            exchange, product, indicator_name, timestamp, value, tags))

    def write_trade(self, exchange: str, product: str, timestamp: float, side: str,
                    price: float, size: float, order_id: str, **fields: Any) -> bool:
        """Durable: returns once the trade is committed to SQLite (then written)."""
        if not self.is_enabled():
            return False
        return self._call(lambda hub: _true(hub.write_trade(
            exchange, product, timestamp, side, price, size, order_id, **fields)), False)

    def write_metric(self, metric_name: str, value: float, **tags: Any) -> bool:
        return self._tell(lambda hub: hub.intake.write_metric(metric_name, value, tags))

    def write_point(self, measurement: str, tags: Mapping[str, Any] | None = None,
                    fields: Mapping[str, Any] | None = None,
                    timestamp: float | None = None) -> bool:
        """Any point, as Wolfinch's indicator logger writes them (timestamp in seconds,
        None for now)."""
        return self._tell(lambda hub: hub.intake.write_point(measurement, tags, fields,
                                                           timestamp))

    def query_candles(self, exchange: str, product: str, start_time: float | None = None,
                      end_time: float | None = None, limit: int = 1000,
                      interval: str | None = None) -> list[CandleRecord]:
        hub = self._hot()
        if hub is not None:
            try:
                hot = hub.intake.hot_query(exchange, product, start_time, end_time, limit,
                                     interval)[5]
                if hot is not None:
                    return [CandleRecord.of(c) for c in hot]
            except HubClosed:
                pass
        found = self._call(lambda hub: hub.query_candles(exchange, product, start_time,
                                                         end_time, limit, interval), [])
        return [CandleRecord.of(c) for c in found]

    def query_trades(self, exchange: str, product: str, start_time: float | None = None,
                     end_time: float | None = None, limit: int = 1000
                     ) -> list[dict[str, Any]]:
        found = self._call(lambda hub: hub.query_trades(exchange, product, start_time,
                                                        end_time, limit), [])
        return [t.as_dict() for t in found]

    def delete_data(self, start: str, stop: str, predicate: str | None = None) -> bool:
        return self._call(lambda hub: _true(hub.delete_data(start, stop, predicate)), False)

    def flush(self) -> bool:
        """True once every write accepted before it is queryable in InfluxDB."""
        return self._call(lambda hub: _true(hub.flush()), False)


class WriteApi:
    """influxdb-client's ``WriteApi.write`` on the hub: batched like every other write."""

    def __init__(self, influx: InfluxDB) -> None:
        self._influx = influx

    def write(self, bucket: str | None = None, org: str | None = None, record: Any = None,
              write_precision: Any = "ns", **kwargs: Any) -> None:
        """Write line protocol (str/bytes, ``write_precision`` applies), a point dict
        (``measurement``, ``tags``, ``fields``, ``time``), an object with
        ``to_line_protocol()`` such as influxdb-client's ``Point`` (its own precision
        applies), or an iterable of these. Raises ValidationError for a bad record or a
        bucket other than the hub's database."""
        if bucket is not None and str(bucket) != self._influx.bucket:
            raise ValidationError("bucket", f"the hub writes to {self._influx.bucket!r} "
                                            f"(influxdb.bucket), not {bucket!r}")
        read = points(record, write_precision)
        if read:
            self._influx._tell(lambda hub: hub.intake.points(read))

    def flush(self) -> None:
        self._influx.flush()

    def close(self) -> None:
        """Nothing to release: the hub's writer sends the batches."""

    def __enter__(self) -> WriteApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FluxQueryApi:
    def query(self, query: str, org: str | None = None, **kwargs: Any) -> Any:
        raise HubError("Flux queries need InfluxDB 2.x; the hub speaks InfluxQL to "
                       "InfluxDB 1.x: use query_candles/query_trades, `wolfhub export`, or "
                       "`influx -execute` for InfluxQL")

    query_stream = query_data_frame = query


class _InfluxClient:
    """What code written for influxdb-client asks of ``influx.client``."""

    def __init__(self, influx: InfluxDB) -> None:
        self._influx = influx

    def ping(self) -> bool:
        return self._influx.is_enabled()

    def health(self) -> Any:
        from types import SimpleNamespace

        up = self._influx.is_enabled()
        return SimpleNamespace(status="pass" if up else "fail",
                               message="served by wolfinch-hub" if up else "disabled")

    def write_api(self, write_options: Any = None, **kwargs: Any) -> WriteApi:
        return WriteApi(self._influx)

    def query_api(self, **kwargs: Any) -> _FluxQueryApi:
        return _FluxQueryApi()

    def close(self) -> None:
        self._influx.close()


async def _true(coro: Coroutine[Any, Any, Any]) -> bool:
    await coro
    return True


_globals: dict[str, Any] = {}


def init_redis_cache(config: Any) -> RedisCache:
    """Start Redis on the shared hub: ``config`` is a path to the YAML, a HubConfig,
    the parsed YAML or just its ``redis`` section (as Wolfinch passes it). Only Redis
    starts; InfluxDB starts with ``init_influx_db``. Raises ValidationError for a bad
    config; a backend that cannot start is logged and ``is_enabled()`` is False."""
    cache: RedisCache = RedisCache._from(config)
    _globals["redis"] = cache
    return cache


def init_influx_db(config: Any) -> InfluxDB:
    """Start InfluxDB on the shared hub (``config`` as for ``init_redis_cache``)."""
    influx: InfluxDB = InfluxDB._from(config)
    _globals["influxdb"] = influx
    return influx


def get_redis_cache() -> RedisCache | None:
    """The object of the last ``init_redis_cache``; None before it (or once closed)."""
    cache: RedisCache | None = _globals.get("redis")
    return cache if cache is not None and cache._open else None


def get_influx_db() -> InfluxDB | None:
    """The object of the last ``init_influx_db``; None before it (or once closed)."""
    influx: InfluxDB | None = _globals.get("influxdb")
    return influx if influx is not None and influx._open else None


def close_all() -> None:
    """Close the shared hub (flushing every accepted write) and stop its loop thread;
    every object of the drop-in is closed."""
    for obj in _globals.values():
        obj._open = False
    _globals.clear()
    runtime.close()


def _same(reply: Any) -> Any:
    return reply
