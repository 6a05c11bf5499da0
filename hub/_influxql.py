"""The only place InfluxQL text is built. Every name is quoted, every value escaped.

Identifiers are double-quoted and string literals single-quoted, with the
escapes InfluxQL's scanner understands (``\\\\``, ``\\"``, ``\\'``). Times are
integer nanoseconds. Also parses the seed's ``delete_data`` arguments.
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from hub._lineproto import seconds_to_ns
from hub.errors import ValidationError

CANDLE_FIELDS = ("open", "high", "low", "close", "volume")
_INTERVAL = re.compile(r"^([1-9][0-9]*)(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^-([0-9]+)(s|m|h|d|w)$")


def ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def where(tags: Mapping[str, str], start: int | float | None = None,
          end: int | float | None = None) -> str:
    """``WHERE "k"='v' AND ... AND time >= ns AND time <= ns`` (both bounds inclusive)."""
    terms = [f"{ident(k)}={literal(v)}" for k, v in tags.items()]
    if start is not None:
        terms.append(f"time >= {seconds_to_ns(start)}")
    if end is not None:
        terms.append(f"time <= {seconds_to_ns(end)}")
    return " WHERE " + " AND ".join(terms) if terms else ""


def interval_seconds(interval: str) -> int:
    """'1m', '5m', '1h', '1d', '1w' ... to seconds; ValidationError otherwise."""
    if not isinstance(interval, str):
        raise ValidationError("interval", f"expected a string like '1h', got {interval!r}")
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValidationError("interval", f"expected <n><s|m|h|d|w> like '5m', got {interval!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def source(measurement: str, rp: str | None) -> str:
    """``"rp"."measurement"`` (the query's database), or the measurement in the default RP."""
    return f"{ident(rp)}.{ident(measurement)}" if rp else ident(measurement)


def select_candles(exchange: str, product: str, start: int | None, end: int | None,
                   limit: int, rp: str | None = None) -> str:
    fields = ",".join(ident(f) for f in CANDLE_FIELDS)
    return (
        f"SELECT {fields} FROM {source('candle', rp)}"
        f"{where({'exchange': exchange, 'product': product}, start, end)}"
        f" ORDER BY time DESC LIMIT {int(limit)}"
    )


def select_candles_resampled(exchange: str, product: str, start: int, end: int,
                             limit: int, interval: str, rp: str | None = None) -> str:
    """OHLCV per bucket: first open, max high, min low, last close, sum volume."""
    seconds = interval_seconds(interval)
    return (
        'SELECT first("open") AS "open", max("high") AS "high", min("low") AS "low", '
        f'last("close") AS "close", sum("volume") AS "volume" FROM {source("candle", rp)}'
        f"{where({'exchange': exchange, 'product': product}, start, end)}"
        f" GROUP BY time({seconds}s) fill(none) ORDER BY time DESC LIMIT {int(limit)}"
    )


def select_candle_bounds(exchange: str, product: str, rp: str | None = None) -> str:
    tags = where({"exchange": exchange, "product": product})
    src = source("candle", rp)
    return f'SELECT first("close") FROM {src}{tags}; SELECT last("close") FROM {src}{tags}'


def select_last_indicator(exchange: str, product: str, name: str, period: str,
                          rp: str | None = None) -> str:
    tags = {"exchange": exchange, "product": product, "name": name, "period": period}
    return f'SELECT last("value") FROM {source("indicator", rp)}{where(tags)}'


def select_trades(exchange: str, product: str, start: int | float | None,
                  end: int | float | None, limit: int, rp: str | None = None) -> str:
    return (
        f'SELECT * FROM {source("trade", rp)}'
        f'{where({"exchange": exchange, "product": product}, start, end)}'
        f" ORDER BY time DESC LIMIT {int(limit)}"
    )


def create_database(database: str) -> str:
    return f"CREATE DATABASE {ident(database)}"


# retention policy per measurement (influxdb.retention with enabled: true)
RP_NAMES = {"candle": "wolfhub_candles", "indicator": "wolfhub_indicators",
            "trade": "wolfhub_trades", "metric": "wolfhub_metrics"}
RP_1H = "wolfhub_candles_1h"
CQ_1H = "wolfhub_candle_1h"


def retention_statements(database: str, durations: Mapping[str, str]) -> list[str]:
    """CREATE each policy, then ALTER it to the configured duration (CREATE of an existing
    policy with other settings fails; ALTER always converges)."""
    out = []
    for rp, duration in durations.items():
        out.append(f"CREATE RETENTION POLICY {ident(rp)} ON {ident(database)} "
                   f"DURATION {duration} REPLICATION 1")
        out.append(f"ALTER RETENTION POLICY {ident(rp)} ON {ident(database)} "
                   f"DURATION {duration}")
    return out


def downsample_query(database: str) -> str:
    """A continuous query: 1-minute candles to 1-hour OHLCV, per exchange and product."""
    db = ident(database)
    return (
        f"CREATE CONTINUOUS QUERY {ident(CQ_1H)} ON {db} BEGIN "
        'SELECT first("open") AS "open", max("high") AS "high", min("low") AS "low", '
        'last("close") AS "close", sum("volume") AS "volume" '
        f'INTO {db}.{ident(RP_1H)}."candle_1h" FROM {db}.{ident(RP_NAMES["candle"])}."candle" '
        "GROUP BY time(1h), * END"
    )


# ---- the seed's delete_data(start, stop, predicate) ----------------------------------

@dataclass(frozen=True, slots=True)
class DeleteSpec:
    """A parsed delete: measurement (or None for all) and tag equalities, time in ns."""

    measurement: str | None
    tags: dict[str, str]
    start_ns: int
    stop_ns: int

    def statement(self) -> str:
        source = f" FROM {ident(self.measurement)}" if self.measurement else ""
        terms = [f"{ident(k)}={literal(v)}" for k, v in self.tags.items()]
        terms += [f"time >= {self.start_ns}", f"time <= {self.stop_ns}"]
        return f"DELETE{source} WHERE " + " AND ".join(terms)


def parse_time(value: object, argument: str, now: float | None = None) -> int:
    """RFC3339, relative (``-7d``), ``now`` or Unix seconds, to nanoseconds."""
    now = _time.time() if now is None else now
    if isinstance(value, bool):
        raise ValidationError(argument, "expected a time, got a bool")
    if isinstance(value, (int, float)):
        return seconds_to_ns(value)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(argument, f"expected RFC3339, '-7d' or 'now', got {value!r}")
    text = value.strip()
    if text == "now":
        return seconds_to_ns(round(now, 6))
    rel = _RELATIVE.match(text)
    if rel:
        return seconds_to_ns(round(now - int(rel.group(1)) * _UNIT_SECONDS[rel.group(2)], 6))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            argument, f"expected RFC3339, '-7d' or 'now', got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise ValidationError(argument, f"RFC3339 time needs a zone (Z or +hh:mm): {value!r}")
    return seconds_to_ns(round(parsed.timestamp(), 6))


_KEY = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)+")\s*=\s*"((?:[^"\\]|\\.)*)"\s*')
_AND = re.compile(r"\s*AND\s*", re.IGNORECASE)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_predicate(predicate: object) -> tuple[str | None, dict[str, str]]:
    """``_measurement="candle" AND product="X"`` -> ("candle", {"product": "X"}).

    Only an AND of equalities is accepted (the seed's syntax); anything else is a
    ValidationError, so no text of the caller's ever reaches InfluxQL unquoted.
    """
    if predicate is None or (isinstance(predicate, str) and not predicate.strip()):
        return None, {}
    if not isinstance(predicate, str):
        raise ValidationError("predicate", f"expected a string, got {type(predicate).__name__}")
    pos, measurement = 0, None
    tags: dict[str, str] = {}
    while True:
        m = _KEY.match(predicate, pos)
        if m is None:
            raise ValidationError(
                "predicate", f'expected key="value" [AND key="value"...] at {predicate[pos:]!r}'
            )
        key = m.group(1)
        key = _unescape(key[1:-1]) if key.startswith('"') else key
        value = _unescape(m.group(2))
        if key == "_measurement":
            if measurement is not None:
                raise ValidationError("predicate", "_measurement given twice")
            measurement = value
        elif key in tags and tags[key] != value:
            raise ValidationError("predicate", f"{key} given twice with different values")
        else:
            tags[key] = value
        pos = m.end()
        if pos == len(predicate):
            return measurement, tags
        a = _AND.match(predicate, pos)
        if a is None or a.end() == pos:
            raise ValidationError("predicate", f"expected AND at {predicate[pos:]!r}")
        pos = a.end()


def delete_spec(start: object, stop: object, predicate: object) -> DeleteSpec:
    now = _time.time()
    start_ns = parse_time(start, "start", now)
    stop_ns = parse_time(stop, "stop", now)
    if stop_ns < start_ns:
        raise ValidationError("stop", "stop is before start")
    measurement, tags = parse_predicate(predicate)
    return DeleteSpec(measurement, tags, start_ns, stop_ns)
