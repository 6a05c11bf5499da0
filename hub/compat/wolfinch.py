"""Synchronous drop-in for Wolfinch's ``db.redis_cache`` / ``db.influx_db`` modules.

Existing code switches by changing its imports::

    from hub.compat.wolfinch import get_influx_db, get_redis_cache, init_influx_db, \\
        init_redis_cache

    init_redis_cache("config/cache_db.yml")   # or a HubConfig, or the parsed YAML
    init_influx_db("config/cache_db.yml")
    redis = get_redis_cache()
    redis.cache_indicator("papertrader", "BANKNIFTY-FUT", "EMA", 20, 44500.0)

Both objects drive ONE shared :class:`hub.Hub` on a background event-loop thread;
there is no second, synchronous implementation. Deviations from the seed, on purpose:
values are JSON, never pickle (a value JSON cannot carry raises ValidationError);
invalid input raises ValidationError instead of returning False; during an outage
writes never raise (InfluxDB writes are kept and retried, Redis writes return False)
and reads return their default.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import orjson

from actors.cache import RedisOp
from hub import _validate as v
from hub._config import HubConfig
from hub._hub import Hub
from hub._records import Candle
from hub.errors import BackendUnavailable, HubError, ValidationError

__all__ = [
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
CALL_TIMEOUT = 60.0  # seconds a synchronous call waits for the hub


class _Runtime:
    """The background loop thread and the one Hub it runs."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.sections: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.hub: Hub | None = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self.thread = threading.Thread(target=run, name="wolfhub-loop", daemon=True)
            self.thread.start()
            ready.wait()
            self.loop = loop
        return self.loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure_loop()
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("the Wolfinch drop-in is synchronous: not callable from the "
                               "hub's own loop; use hub.Hub directly in async code")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(CALL_TIMEOUT)
        except FutureTimeout:
            future.cancel()
            raise BackendUnavailable("hub", f"no answer within {CALL_TIMEOUT:.0f}s") from None

    def configure(self, section: str, config: Any) -> Hub:
        """Merge ``section`` of ``config`` into the shared hub's config and (re)start it."""
        with self.lock:
            full = _as_mapping(config)
            if section in full:
                self.sections.update(full)
            else:  # just the section, as the seed passes it
                self.sections[section] = full
            hub_config = HubConfig.from_mapping(self.sections)
            if self.hub is not None:
                self.run(self.hub.close())
            hub = Hub(hub_config, handle_sigterm=False)
            self.run(hub.start())
            self.hub = hub
            return hub

    def close(self) -> None:
        with self.lock:
            if self.hub is not None and self.loop is not None:
                self.run(self.hub.close())
            self.hub = None
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.loop.stop)
                if self.thread is not None:
                    self.thread.join(10)
                self.loop.close()
            self.loop = None
            self.thread = None
            self.sections = {}


def _as_mapping(config: Any) -> dict[str, Any]:
    if isinstance(config, HubConfig):
        return config.model_dump(exclude_none=True)  # secrets stay SecretStr
    if isinstance(config, (str, os.PathLike)):
        return _as_mapping(HubConfig.load(config))
    if isinstance(config, Mapping):
        return {k: (dict(val) if isinstance(val, Mapping) else val) for k, val in config.items()}
    raise ValidationError("config", "expected a path, a HubConfig or a mapping")


_runtime = _Runtime()
atexit.register(_runtime.close)


class _Facade:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return _runtime.run(coro)

    def close(self) -> None:
        """Close the shared hub (flushing every accepted write) and its loop thread."""
        close_all()


class RedisCache(_Facade):
    """The seed's ``RedisCache``: indicator, candle, position and strategy caching, plus
    the generic commands, on the shared hub."""

    # ---- the seed's domain methods ----
    def cache_indicator(self, exchange: str, product: str, indicator: str, period: Any,
                        value: Any, ttl: int | None = None) -> bool:
        self._run(self._hub.cache_indicator(exchange, product, indicator, period, value, ttl))
        return True

    def get_indicator(self, exchange: str, product: str, indicator: str, period: Any) -> Any:
        try:
            return self._run(self._hub.get_indicator(exchange, product, indicator, period))
        except BackendUnavailable:
            return None

    def cache_candles(self, exchange: str, product: str,
                      candles: Iterable[Mapping[str, Any] | Candle],
                      max_candles: int | None = None) -> bool:
        self._run(self._hub.cache_candles(exchange, product, candles, max_candles))
        return True

    def get_candles(self, exchange: str, product: str, count: int = 100
                    ) -> list[dict[str, Any]]:
        try:
            found = self._run(self._hub.get_candles(exchange, product, count))
        except BackendUnavailable:
            return []
        return [c.as_dict() for c in found]

    def cache_position(self, exchange: str, product: str, position: Mapping[str, Any]
                       ) -> bool:
        self._run(self._hub.cache_position(exchange, product, position))
        return True

    def get_position(self, exchange: str, product: str) -> dict[str, Any] | None:
        try:
            return self._run(self._hub.get_position(exchange, product))
        except BackendUnavailable:
            return None

    def cache_strategy_state(self, exchange: str, product: str, strategy: str,
                             state: Mapping[str, Any]) -> bool:
        self._run(self._hub.cache_strategy_state(exchange, product, strategy, state))
        return True

    def get_strategy_state(self, exchange: str, product: str, strategy: str
                           ) -> dict[str, Any] | None:
        try:
            return self._run(self._hub.get_strategy_state(exchange, product, strategy))
        except BackendUnavailable:
            return None

    def flush_all(self) -> bool:
        try:
            self._run(self._hub.flush_all())
        except BackendUnavailable:
            return False
        return True

    def get_stats(self) -> dict[str, Any]:
        return self._run(self._hub.get_stats())

    # ---- generic commands on raw keys (values are JSON) ----
    def _command(self, *command: Any, decode: Any = None, default: Any = None) -> Any:
        op = RedisOp((command,), (lambda r: decode(r[0])) if decode else (lambda r: r[0]))
        try:
            return self._run(self._hub._redis(op))
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
        v.json_value(value, "value")
        return orjson.dumps(value)

    @staticmethod
    def _load(raw: bytes | None) -> Any:
        return None if raw is None else orjson.loads(raw)

    def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        key, data = self._key(key), self._dump(value)
        cmd: tuple[Any, ...] = ("SET", key, data)
        if ttl is not None:
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

    def expire(self, key: str, seconds: int) -> bool:
        return bool(self._command("EXPIRE", self._key(key), v.positive_int(seconds, "seconds"),
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

    def hget(self, name: str, key: str) -> Any:
        return self._command("HGET", self._key(name, "name"), self._key(key),
                             decode=self._load, default=None)

    def hgetall(self, name: str) -> dict[str, Any]:
        def decode(flat: Any) -> dict[str, Any]:
            if isinstance(flat, dict):
                return {k.decode(): orjson.loads(x) for k, x in flat.items()}
            return {flat[i].decode(): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        found = self._command("HGETALL", self._key(name, "name"), decode=decode, default={})
        return dict(found)


class InfluxDB(_Facade):
    """The seed's ``InfluxDB``: candles, indicators, trades and metrics, on the shared hub.
    Writes return True once accepted (see the hub's guarantees); they never raise during
    an outage."""

    def write_candle(self, exchange: str, product: str, timestamp: int, open_price: float,
                     high: float, low: float, close: float, volume: float) -> bool:
        self._run(self._hub.write_candle(exchange, product, timestamp, open_price, high, low,
                                         close, volume))
        return True

    def write_candles_batch(self, exchange: str, product: str,
                            candles: Iterable[Mapping[str, Any] | Candle]) -> int:
        return self._run(self._hub.write_candles_batch(exchange, product, candles))

    def write_indicator(self, exchange: str, product: str, indicator_name: str,
                        timestamp: float, value: float, **tags: Any) -> bool:
        self._run(self._hub.write_indicator(exchange, product, indicator_name, timestamp,
                                            value, **tags))
        return True

    def write_trade(self, exchange: str, product: str, timestamp: float, side: str,
                    price: float, size: float, order_id: str, **fields: Any) -> bool:
        self._run(self._hub.write_trade(exchange, product, timestamp, side, price, size,
                                        order_id, **fields))
        return True

    def write_metric(self, metric_name: str, value: float, **tags: Any) -> bool:
        self._run(self._hub.write_metric(metric_name, value, **tags))
        return True

    def query_candles(self, exchange: str, product: str, start_time: float | None = None,
                      end_time: float | None = None, limit: int = 1000,
                      interval: str | None = None) -> list[dict[str, Any]]:
        try:
            found = self._run(self._hub.query_candles(exchange, product, start_time, end_time,
                                                      limit, interval))
        except BackendUnavailable:
            return []
        return [c.as_dict() for c in found]

    def query_trades(self, exchange: str, product: str, start_time: float | None = None,
                     end_time: float | None = None, limit: int = 1000
                     ) -> list[dict[str, Any]]:
        try:
            found = self._run(self._hub.query_trades(exchange, product, start_time, end_time,
                                                     limit))
        except BackendUnavailable:
            return []
        return [t.as_dict() for t in found]

    def delete_data(self, start: str, stop: str, predicate: str | None = None) -> bool:
        try:
            self._run(self._hub.delete_data(start, stop, predicate))
        except BackendUnavailable:
            return False
        return True

    def flush(self) -> bool:
        try:
            self._run(self._hub.flush())
        except BackendUnavailable:
            return False
        return True


def init_redis_cache(config: Any) -> RedisCache:
    """Start (or reconfigure) the shared hub with this Redis config: a path to the
    YAML, a HubConfig, the parsed YAML, or just its ``redis`` section."""
    return RedisCache(_runtime.configure("redis", config))


def init_influx_db(config: Any) -> InfluxDB:
    """Start (or reconfigure) the shared hub with this InfluxDB config (as above)."""
    return InfluxDB(_runtime.configure("influxdb", config))


def get_redis_cache() -> RedisCache:
    """The shared hub's RedisCache (``init_redis_cache`` first). Raises HubError if none."""
    if _runtime.hub is None:
        raise HubError("call init_redis_cache(config) first")
    return RedisCache(_runtime.hub)


def get_influx_db() -> InfluxDB:
    """The shared hub's InfluxDB (``init_influx_db`` first). Raises HubError if none."""
    if _runtime.hub is None:
        raise HubError("call init_influx_db(config) first")
    return InfluxDB(_runtime.hub)


def close_all() -> None:
    """Close the shared hub (flushing every accepted write) and stop its loop thread."""
    _runtime.close()
