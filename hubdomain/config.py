"""HubConfig: the seed's ``config/cache_db.yml`` plus ``sqlite``, validated with pydantic.

Unknown keys and wrong types raise :class:`hub.errors.ValidationError` naming the
key path (``redis.ttl.candles``). Secrets may come from the environment and are
held as ``SecretStr`` so they never appear in reprs or logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import pydantic
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hubdomain import markets as mk
from hubdomain.errors import ValidationError
from hubdomain.influxql import RP_1H, RP_NAMES
from hubdomain.timeframes import DEFAULT_TIMEFRAMES, plan, seconds

__all__ = ["HubConfig"]

_DURATION = re.compile(r"^([0-9]+)(s|m|h|d|w)$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RedisTTL(_Model):
    indicators: int = Field(300, gt=0)
    candles: int = Field(600, gt=0)
    positions: int = Field(3600, gt=0)
    strategies: int = Field(3600, gt=0)


def _host_ports(nodes: list[str]) -> list[str]:
    for node in nodes:
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected 'host:port', got {node!r}")
    return nodes


class RedisCluster(_Model):
    # a few seed nodes; the others are discovered
    nodes: list[str] = Field(min_length=1)
    _check_nodes = field_validator("nodes")(_host_ports)


class RedisSentinel(_Model):
    nodes: list[str] = Field(min_length=1)
    service_name: str = "mymaster"
    _check_nodes = field_validator("nodes")(_host_ports)


class RedisConfig(_Model):
    enabled: bool = True
    # redis://[user[:password]@]host[:port][/db] or rediss://... (TLS); sets the keys below
    url: str | None = None
    host: str = "localhost"
    port: int = Field(6379, ge=1, le=65535)
    db: int = Field(0, ge=0)
    username: str | None = None  # an ACL user
    password: SecretStr | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None  # CA bundle that signed the server's certificate
    ssl_certfile: str | None = None  # client certificate, when the server asks for one
    ssl_keyfile: str | None = None
    ttl: RedisTTL = RedisTTL()
    cluster: RedisCluster | None = None
    sentinel: RedisSentinel | None = None
    # how long a call waits for Redis before it counts as unavailable
    timeout: float = Field(2.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not data.get("url"):
            return data
        parts = urlsplit(str(data["url"]))
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"url: expected redis:// or rediss://, got {parts.scheme}://")
        merged = dict(data)
        merged["host"] = parts.hostname
        merged["port"] = parts.port or 6379
        merged["ssl"] = parts.scheme == "rediss"
        if parts.path.strip("/"):
            merged["db"] = parts.path.strip("/")
        if parts.username:
            merged["username"] = unquote(parts.username)
        if parts.password:
            merged["password"] = unquote(parts.password)
            # keep the URL for display, never the secret in it
            host = parts.netloc.rsplit("@", 1)[1]
            user = f"{parts.username}@" if parts.username else ""
            merged["url"] = f"{parts.scheme}://{user}{host}{parts.path}"
        return merged

    @model_validator(mode="after")
    def _one_mode(self) -> RedisConfig:
        if self.cluster is not None and self.sentinel is not None:
            raise ValueError("cluster and sentinel: set one of them, not both")
        if self.cluster is not None and self.db != 0:
            raise ValueError("db: Redis Cluster has only database 0")
        return self


class Retention(_Model):
    # true: each measurement lives in a retention policy of its own (created/updated at
    # start and by `wolfhub retention apply`); writes and queries go there
    enabled: bool = False
    candles: str = "90d"
    indicators: str = "30d"
    trades: str = "365d"
    metrics: str = "180d"
    candles_1h: str = "730d"  # what the continuous query downsamples 1m candles into

    @field_validator("candles", "indicators", "trades", "metrics", "candles_1h")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"expected a duration like '90d', got {value!r}")
        return value


class Batch(_Model):
    enabled: bool = True
    size: int = Field(5000, gt=0, le=100_000)
    flush_interval: float = Field(1.0, gt=0)


class InfluxConfig(_Model):
    enabled: bool = True
    url: str = "http://localhost:8086"
    token: SecretStr | None = None
    org: str = "wolfinch"
    bucket: str = Field("trading", min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    retention: Retention = Retention()
    batch: Batch = Batch()
    timeout: float = Field(10.0, gt=0)
    # after this many seconds of failed writes, pending lines move to the SQLite spool
    spool_after: float = Field(5.0, ge=0)
    # lines allowed to wait in memory before they move to the spool
    max_pending: int = Field(200_000, gt=0)
    # every accepted write is committed to the SQLite outbox before its await returns
    # (as trades always are): nothing acknowledged is lost to kill -9 or power loss
    durable: bool = False

    def policies(self) -> dict[str, str]:
        """Retention policy name -> duration, for every policy the hub manages."""
        r = self.retention
        return {RP_NAMES["candle"]: r.candles, RP_NAMES["indicator"]: r.indicators,
                RP_NAMES["trade"]: r.trades, RP_NAMES["metric"]: r.metrics, RP_1H: r.candles_1h}

    def rp_for(self, measurement: str) -> str | None:
        """Where ``measurement`` is written and read (None: the database's default)."""
        return RP_NAMES.get(measurement) if self.retention.enabled else None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http(s)://host:port, got {value!r}")
        return value


class Performance(_Model):
    redis_hot_data_window: int = Field(1000, gt=0)
    # in-process copy of indicator values, kept coherent by Redis invalidations
    near_cache: bool = True
    near_cache_size: int = Field(100_000, gt=0)
    influxdb_cold_storage: bool = True
    hybrid_mode: bool = True


class MetricsConfig(_Model):
    # serve Prometheus metrics on this port (None: off)
    port: int | None = Field(None, ge=1, le=65535)
    host: str = "127.0.0.1"


class StreamsConfig(_Model):
    # live candle streams (hub.candles) and rollups of the 1-minute candles written
    enabled: bool = True
    timeframes: list[str] = Field(default_factory=lambda: list(DEFAULT_TIMEFRAMES))
    # a live bucket whose minutes stop coming closes this many seconds after its end
    close_grace: float = Field(5.0, ge=0)
    # 1-minute candles this process keeps per followed product for its subscribers,
    # with the rollups published between them; one further behind catches up from
    # storage (counted as an overflow)
    buffer: int = Field(10_000, gt=0)
    # 1-minute candles each product's Redis stream keeps, with their rollups (at
    # least; up to half as many again, trimmed now and then by the entries' counts)
    length: int = Field(10_000, gt=0)
    # rollups also written to InfluxDB (measurement candle_rollup), beside their hot
    # windows; false: Redis only (deep warm-ups resample the minutes either way)
    store_rollups: bool = True

    @field_validator("timeframes")
    @classmethod
    def _timeframes(cls, value: list[str]) -> list[str]:
        plan(value)  # raises naming what is wrong
        return value

    @property
    def buffer_candles(self) -> int:
        """Candles of every timeframe ``buffer`` consecutive minutes publish, at most."""
        return self._candles_in(self.buffer)

    def _candles_in(self, minutes: int) -> int:
        # n minutes close at most n // k + 1 buckets of a k-minute timeframe (k > 1)
        spans = [seconds(tf) // 60 for tf in self.timeframes]
        return sum(minutes if k == 1 else minutes // k + 1 for k in spans)


class Product(_Model):
    exchange: str = Field(min_length=1)
    product: str = Field(min_length=1)


class MaintenanceConfig(_Model):
    # the maintenance actor's periodic jobs; an interval of 0 turns a job off
    enabled: bool = True
    # products whose hot windows and near cache are warmed at start, and whose gaps
    # are scanned (products this process writes are scanned too)
    products: list[Product] = Field(default_factory=list)
    # the hub's own health (mailboxes, hit rates, spool, gaps) into the metric measurement
    health_interval: float = Field(60.0, ge=0)
    gap_scan_interval: float = Field(300.0, ge=0)
    # how far back each scan looks, in seconds (a day by default)
    gap_scan_span: int = Field(86_400, gt=0)
    # quarantined lines older than this many days are deleted (0: kept)
    quarantine_days: float = Field(30.0, ge=0)
    # outbox rows older than this many days are deleted (0: never; they are writes
    # InfluxDB has not taken yet, so this loses them on purpose)
    outbox_days: float = Field(0.0, ge=0)
    prune_interval: float = Field(3600.0, ge=0)
    # outbox rows of hub processes on the same SQLite file that ended before InfluxDB
    # took them are taken over and replayed by this one (at start, and this often)
    takeover_interval: float = Field(60.0, ge=0)
    # retention policies and the continuous query checked against influxdb.retention
    check_interval: float = Field(3600.0, ge=0)


class MarketConfig(_Model):
    """A market's trading sessions (see hubdomain.markets): products of ``exchanges``
    (only ``products`` of them, when listed) trade only then. Gaps are looked for only
    while it is open, a feed's silence counts only then, and a rollup bucket closes when
    the market closes for the rest of it."""

    name: str = Field(min_length=1)
    exchanges: list[str] = Field(min_length=1)
    products: list[str] = Field(default_factory=list)
    timezone: str = "UTC"  # an IANA zone: Asia/Kolkata, America/New_York
    # a trading day's sessions in local time; an end at or before the start is the
    # next day's ("18:00-17:00"); "00:00-24:00" a whole day
    hours: list[str] = Field(default_factory=lambda: ["00:00-24:00"], min_length=1)
    weekdays: list[str] = Field(default_factory=lambda: list(mk.WEEKDAYS[:5]), min_length=1)
    holidays: list[date] = Field(default_factory=list)
    # days of their own: an early close, a special session ([] is a holiday too)
    days: dict[date, list[str]] = Field(default_factory=dict)
    # where rollup and resampled buckets start: "epoch" (InfluxDB's alignment, as for
    # products of no market) or "open" (the first session's open: 1h candles 09:15-10:15
    # as exchange charts draw them; a zone on one UTC offset all year)
    align: Literal["epoch", "open"] = "epoch"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        mk.zone(value)
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: list[str]) -> list[str]:
        mk.parse_sessions(value)
        return value

    @field_validator("weekdays")
    @classmethod
    def _weekdays(cls, value: list[str]) -> list[str]:
        for day in value:
            if day not in mk.WEEKDAYS:
                raise ValueError(f"expected weekdays among {list(mk.WEEKDAYS)}, got {day!r}")
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: dict[date, list[str]]) -> dict[date, list[str]]:
        for spans in value.values():
            mk.parse_sessions(spans)
        return value

    @field_validator("align")
    @classmethod
    def _alignable(cls, value: str, info: ValidationInfo) -> str:
        zone = info.data.get("timezone")
        if value == "open" and zone and mk.fixed_offset(mk.zone(zone)) is None:
            raise ValueError(f"'open' needs a time zone on one UTC offset all year; "
                             f"{zone} changes its clocks")
        return value

    def rule(self) -> mk.Rule:
        return mk.Rule(frozenset(self.exchanges), frozenset(self.products),
                       mk.Market.build(self.name, self.timezone, self.hours, self.weekdays,
                                       self.holidays, dict(self.days),
                                       align=self.align == "open"))


class SQLiteConfig(_Model):
    path: str = "data/wolfhub.sqlite"


class HubConfig(_Model):
    """The whole configuration. Build with :meth:`load`, :meth:`from_mapping` or defaults."""

    redis: RedisConfig = RedisConfig()
    influxdb: InfluxConfig = InfluxConfig()
    performance: Performance = Performance()
    sqlite: SQLiteConfig = SQLiteConfig()
    metrics: MetricsConfig = MetricsConfig()
    streams: StreamsConfig = StreamsConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    # trading sessions of the markets that do not trade around the clock
    markets: list[MarketConfig] = Field(default_factory=list)

    @field_validator("markets")
    @classmethod
    def _market_names(cls, value: list[MarketConfig]) -> list[MarketConfig]:
        names = [m.name for m in value]
        if len(set(names)) != len(names):
            raise ValueError("two markets of the same name")
        return value

    def calendars(self) -> mk.Markets:
        """Each product's market (:class:`hubdomain.markets.Markets`)."""
        return mk.Markets([m.rule() for m in self.markets])

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HubConfig:
        """Read a YAML file. Raises ValidationError (naming the key) or OSError."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValidationError(str(path), f"not valid YAML: {exc}") from None
        return cls.from_mapping(data or {})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
                     ) -> HubConfig:
        """Validate a mapping (the parsed YAML); secrets from ``environ`` fill empty keys."""
        if not isinstance(data, Mapping):
            raise ValidationError("config", f"expected a mapping, got {type(data).__name__}")
        env = os.environ if environ is None else environ
        merged: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v)
                                  for k, v in data.items()}
        for section, key, var in (
            ("redis", "password", "WOLFHUB_REDIS_PASSWORD"),
            ("influxdb", "token", "WOLFHUB_INFLUXDB_TOKEN"),
            ("influxdb", "password", "WOLFHUB_INFLUXDB_PASSWORD"),
        ):
            if env.get(var):
                merged.setdefault(section, {})
                if isinstance(merged[section], dict) and not merged[section].get(key):
                    merged[section][key] = env[var]
        try:
            return cls.model_validate(merged)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "config"
            if first["type"] == "extra_forbidden":
                message = "unknown key"
            else:
                message = first["msg"]
            raise ValidationError(where, message) from None
