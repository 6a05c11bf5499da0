"""InfluxDB line protocol encoding for the hub's four measurements.

Callers pass validated values only (see ``_validate``): names hold no control
characters and no backslash that line protocol would misread, numbers are finite.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from hub._records import Candle

_TAG_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def escape_tag(text: str) -> str:
    """Escape a tag key, tag value or field key."""
    return text.translate(_TAG_ESCAPES)


def field(value: float | bool | str) -> str:
    """Render one field value. Numbers are always floats, so a field never changes type."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    return repr(float(value))


def seconds_to_ns(timestamp: int | float) -> int:
    """Unix seconds to InfluxDB nanoseconds (floats keep microsecond precision)."""
    if isinstance(timestamp, int):
        return timestamp * 1_000_000_000
    return round(timestamp * 1_000_000) * 1_000


def tag_set(tags: Mapping[str, str]) -> str:
    """``,k=v,k2=v2`` sorted by key (InfluxDB's preferred order), empty tags skipped."""
    return "".join(
        f",{escape_tag(key)}={escape_tag(tags[key])}" for key in sorted(tags) if tags[key] != ""
    )


def point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, float | bool | str],
    timestamp: int | float,
) -> str:
    body = ",".join(f"{escape_tag(k)}={field(val)}" for k, val in fields.items())
    return f"{measurement}{tag_set(tags)} {body} {seconds_to_ns(timestamp)}"


@lru_cache(maxsize=4096)
def _candle_prefix(exchange: str, product: str) -> str:
    return "candle" + tag_set({"exchange": exchange, "product": product}) + " "


def candle(exchange: str, product: str, c: Candle) -> str:
    return (
        f"{_candle_prefix(exchange, product)}open={c.open!r},high={c.high!r},low={c.low!r},"
        f"close={c.close!r},volume={c.volume!r} {c.timestamp}000000000"
    )


def indicator(
    exchange: str, product: str, name: str, timestamp: int | float, value: float,
    tags: Mapping[str, str],
) -> str:
    return point(
        "indicator",
        {**tags, "exchange": exchange, "product": product, "name": name},
        {"value": value},
        timestamp,
    )


def trade(
    exchange: str, product: str, timestamp: int | float, side: str, price: float, size: float,
    order_id: str, fields: Mapping[str, float | bool | str],
) -> str:
    return point(
        "trade",
        {"exchange": exchange, "product": product, "side": side, "order_id": order_id},
        {"price": price, "size": size, **fields},
        timestamp,
    )


def metric(name: str, value: float, tags: Mapping[str, str], timestamp: int | float) -> str:
    return point("metric", {**tags, "name": name}, {"value": value}, timestamp)
