"""What Wolfinch code hands to the drop-in and gets back from it.

Out: :class:`CandleRecord`, read by Wolfinch both as its ``OHLC`` objects
(``c.time``, ``c.close``) and as the seed's dicts (``c['timestamp']``).
In: influxdb-client style records for ``write_api.write``: line protocol text, a
point dict, an object with ``to_line_protocol()`` (influxdb-client's ``Point``), or
an iterable of these; read into points that the hub checks and encodes itself
(``Hub._msg_points``), so no caller text reaches InfluxDB as it came.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from hubdomain import lineproto as lp
from hubdomain import validate as v
from hubdomain.errors import ValidationError
from hubdomain.records import Candle

_KEYS = ("timestamp", "open", "high", "low", "close", "volume")


class CandleRecord(Mapping[str, Any]):
    """One candle: attributes ``time`` (also ``timestamp``), ``open``, ``high``, ``low``,
    ``close``, ``volume``, and the seed's dict keys (``timestamp``, ``open``, ...).

    Equal to the seed's dict of the same candle. ``serialize()`` gives Wolfinch's own
    shape (with ``time``), which its UI sends to the browser.
    """

    __slots__ = ("close", "high", "low", "open", "time", "volume")

    def __init__(self, time: int, open: float, high: float, low: float, close: float,
                 volume: float) -> None:
        self.time = time
        self.open = open
        self.high = high
        self.low = low
        self.close = close
        self.volume = volume

    @classmethod
    def of(cls, candle: Candle) -> CandleRecord:
        return cls(candle.timestamp, candle.open, candle.high, candle.low, candle.close,
                   candle.volume)

    @property
    def timestamp(self) -> int:
        return self.time

    def __getitem__(self, key: str) -> Any:
        if key in ("timestamp", "time"):
            return self.time
        if key in _KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def as_dict(self) -> dict[str, Any]:
        """The seed's keys: timestamp, open, high, low, close, volume."""
        return {key: self[key] for key in _KEYS}

    def serialize(self) -> dict[str, Any]:
        """Wolfinch's ``OHLC.serialize()`` shape: time, open, high, low, close, volume."""
        return {"time": self.time, "open": self.open, "high": self.high, "low": self.low,
                "close": self.close, "volume": self.volume}

    def __repr__(self) -> str:
        return repr(self.as_dict())


def points(record: object, precision: object) -> list[lp.ParsedPoint]:
    """The points of an influxdb-client style ``record``, all read before any is
    returned; raises ValidationError naming what is wrong."""
    return list(_points(record, _precision(precision)))


def _precision(value: object) -> str:
    text = str(getattr(value, "value", value))  # influxdb-client's constants are str
    if text not in lp.PRECISIONS:
        raise ValidationError("write_precision",
                              f"expected one of s, ms, us, ns, got {value!r}")
    return text


def _points(record: object, precision: str) -> Iterator[lp.ParsedPoint]:
    if record is None:
        raise ValidationError("record", "nothing to write")
    if isinstance(record, (bytes, bytearray)):
        try:
            record = bytes(record).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError("record", f"line protocol must be UTF-8 ({exc})") from None
    if isinstance(record, str):
        for line in lp.split_lines(record):
            yield lp.parse_line(line, precision)
    elif isinstance(record, Mapping):
        yield _from_dict(record, precision)
    elif hasattr(record, "to_line_protocol"):
        own = getattr(record, "write_precision", None)  # a Point knows its precision
        text = record.to_line_protocol()
        for line in lp.split_lines(text):  # "" for a point without fields: nothing
            yield lp.parse_line(line, precision if own is None else _precision(own))
    elif isinstance(record, Iterable):
        for item in record:
            yield from _points(item, precision)
    else:
        raise ValidationError(
            "record", f"expected line protocol, a point dict or a Point, got "
                      f"{type(record).__name__}")


def _from_dict(record: Mapping[str, Any], precision: str) -> lp.ParsedPoint:
    """influxdb-client's dict form: measurement, tags, fields, time. As influxdb-client
    does, an int field is an integer field and None values are left out."""
    if "measurement" not in record:
        raise ValidationError("record", "a point dict needs a 'measurement'")
    tags = record.get("tags") or {}
    fields = record.get("fields") or {}
    if not isinstance(tags, Mapping) or not isinstance(fields, Mapping):
        raise ValidationError("record", "'tags' and 'fields' must be mappings")
    values: dict[str, lp.FieldValue] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            values[str(key)] = value
        elif isinstance(value, (bool, str)):
            values[str(key)] = value
        else:
            values[str(key)] = v.number(value, str(key))
    return lp.ParsedPoint(
        str(record["measurement"]),
        {str(k): str(val) for k, val in tags.items() if val is not None and val != ""},
        values,
        _dict_time(record.get("time"), precision),
    )


def _dict_time(value: object, precision: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("record", f"time {value!r} is not ISO 8601") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    if isinstance(value, int) and not isinstance(value, bool):
        return value * lp.PRECISIONS[precision]
    return round(v.number(value, "time") * lp.PRECISIONS[precision])
