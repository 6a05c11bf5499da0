"""Records handed to and returned by the hub."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hubdomain import validate as v
from hubdomain.errors import ValidationError

__all__ = ["Candle", "CheckedRows", "LiveCandle", "Row", "Trade", "candle_row", "candle_rows",
           "make_candle", "make_live_candle"]

# a checked candle as the write paths carry it: (timestamp, open, high, low, close, volume)
Row = tuple[int, float, float, float, float, float]


class CheckedRows(list[Row]):
    """Rows already held to ``candle_rows``'s rules (a bulk loader's own check):
    ``candle_rows`` takes them as they are instead of checking each again."""


_FIELDS = ("timestamp", "open", "high", "low", "close", "volume")
# the argument names of Hub.write_candle, so its errors name what the caller typed
_WRITE_CANDLE_ARGS = ["timestamp", "open_price", "high", "low", "close", "volume"]


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV candle; ``timestamp`` is Unix seconds (int)."""

    timestamp: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    def as_dict(self) -> dict[str, Any]:
        """The seed's keys: timestamp, open, high, low, close, volume."""
        return {
            "timestamp": self.timestamp,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
        }

    @classmethod
    def checked(
        cls,
        timestamp: object,
        open: object,
        high: object,
        low: object,
        close: object,
        volume: object,
        argument: str = "",
    ) -> Candle:
        """Build a candle from untrusted values; raises ValidationError naming the field."""
        names = _WRITE_CANDLE_ARGS if not argument else [f"{argument}.{n}" for n in _FIELDS]
        candle = cls(
            v.whole_timestamp(timestamp, names[0]),
            v.number(open, names[1]),
            v.number(high, names[2]),
            v.number(low, names[3]),
            v.number(close, names[4]),
            v.non_negative(volume, names[5]),
        )
        if candle.high < candle.low:
            raise ValidationError(names[2], f"high {high!r} is below low {low!r}")
        return candle

    @classmethod
    def coerce(cls, item: object, argument: str) -> Candle:
        """A Candle from a Candle, a mapping or an object with candle attributes.

        The time is ``timestamp`` or ``time`` (Wolfinch's ``OHLC`` objects and their
        ``serialize()`` dicts), the open ``open`` or ``open_price``; the rest are
        ``high``, ``low``, ``close``, ``volume``. Raises ValidationError naming the item.
        """
        if isinstance(item, Candle):
            return cls.checked(item.timestamp, item.open, item.high, item.low, item.close,
                               item.volume, argument=argument)
        if isinstance(item, (tuple, list)):
            if len(item) != 6:
                raise ValidationError(argument, "expected (timestamp, open, high, low, close, "
                                                f"volume), got {len(item)} values")
            ts, o, h, lo, c, vol = item
            return cls.checked(ts, o, h, lo, c, vol, argument=argument)
        if isinstance(item, Mapping):
            def get(*names: str) -> object:
                for n in names:
                    if n in item:
                        return item[n]
                raise ValidationError(argument, f"missing key {names[0]!r}")
        elif isinstance(item, (str, bytes, int, float)) or item is None:
            raise ValidationError(
                argument, f"expected a candle (object or mapping), got {type(item).__name__}")
        else:
            def get(*names: str) -> object:
                for n in names:
                    try:
                        return getattr(item, n)
                    except AttributeError:
                        continue
                raise ValidationError(
                    argument, f"{type(item).__name__} has no attribute {names[0]!r}")
        return cls.checked(get("timestamp", "time"), get("open", "open_price"), get("high"),
                           get("low"), get("close"), get("volume"), argument=argument)


def candle_row(timestamp: object, open: object, high: object, low: object, close: object,
               volume: object) -> Row:
    """One checked row from ``write_candle``'s arguments: plain ints and floats take a
    fast path, anything else (or anything it doubts) ``Candle.checked``, which names
    the argument."""
    if (type(timestamp) is int and v.MIN_TIMESTAMP < timestamp < v.MAX_TIMESTAMP
            and type(open) is float and type(high) is float and type(low) is float
            and type(close) is float and type(volume) is float):
        total = open + high + low + close + volume
        if total - total == 0.0 and high >= low and volume >= 0.0:
            return (timestamp, open, high, low, close, volume)
    c = Candle.checked(timestamp, open, high, low, close, volume)
    return (c.timestamp, c.open, c.high, c.low, c.close, c.volume)


def candle_rows(items: object, argument: str = "candles") -> list[Row]:
    """Checked rows from candles in any shape ``Candle.coerce`` takes. Candles and
    6-tuples of plain ints and floats take a fast path (a backfill's hundred thousand
    rows a second); anything else, or anything the fast path doubts, goes through
    ``Candle.coerce``, which names what is wrong."""
    if type(items) is CheckedRows:
        return items
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise ValidationError(argument, "expected an iterable of candles")
    rows: list[Row] = []
    append = rows.append
    earliest, latest = v.MIN_TIMESTAMP, v.MAX_TIMESTAMP
    for i, item in enumerate(items):
        kind = type(item)
        if kind is Candle:
            ts, o, h, lo, c, vol = (item.timestamp, item.open, item.high, item.low,
                                    item.close, item.volume)
        elif kind is tuple and len(item) == 6:
            ts, o, h, lo, c, vol = item
        else:
            ts = None
        if (type(ts) is int and earliest < ts < latest and type(o) is float
                and type(h) is float and type(lo) is float and type(c) is float
                and type(vol) is float):
            total = o + h + lo + c + vol
            if total - total == 0.0 and h >= lo and vol >= 0.0:  # all finite (or doubt)
                append((ts, o, h, lo, c, vol))
                continue
        checked = Candle.coerce(item, f"{argument}[{i}]")
        append((checked.timestamp, checked.open, checked.high, checked.low, checked.close,
                checked.volume))
    return rows


@dataclass(frozen=True, slots=True)
class LiveCandle(Candle):
    """A closed candle from ``Hub.candles``: a :class:`Candle` with its ``timeframe``
    and ``revision`` (True: it is not newer than a candle delivered before, or than
    where the subscription began: a candle corrected since it was delivered, or a
    minute, or a bucket holding one, that arrived late, a gap filled). ``as_candle()``
    drops the two."""

    timeframe: str = "1m"
    revision: bool = False

    def as_candle(self) -> Candle:
        return Candle(self.timestamp, self.open, self.high, self.low, self.close,
                      self.volume)


# Candles built in bulk from stored values (a window read from Redis, an InfluxDB
# answer, the entries of a stream): a frozen dataclass's __init__ sets each field
# through object.__setattr__, which costs as much again as the object; these set the
# slots directly (the same object: eq, hash, repr and immutability are unchanged).
_new = object.__new__
_SET_TS, _SET_OPEN, _SET_HIGH, _SET_LOW, _SET_CLOSE, _SET_VOLUME = (
    Candle.__dict__[name].__set__ for name in _FIELDS)
_SET_TIMEFRAME = LiveCandle.__dict__["timeframe"].__set__
_SET_REVISION = LiveCandle.__dict__["revision"].__set__
_C = TypeVar("_C", bound=Candle)


def make_candle(timestamp: int, open: float, high: float, low: float, close: float,
                volume: float) -> Candle:
    """``Candle(...)`` of values of the right types (int, five floats), unchecked."""
    return _filled(_new(Candle), timestamp, open, high, low, close, volume)


def make_live_candle(timestamp: int, open: float, high: float, low: float, close: float,
                     volume: float, timeframe: str, revision: bool) -> LiveCandle:
    """``LiveCandle(...)`` of values of the right types, unchecked."""
    c = _filled(_new(LiveCandle), timestamp, open, high, low, close, volume)
    _SET_TIMEFRAME(c, timeframe)
    _SET_REVISION(c, revision)
    return c


def _filled(c: _C, timestamp: int, open: float, high: float, low: float, close: float,
            volume: float) -> _C:
    _SET_TS(c, timestamp)
    _SET_OPEN(c, open)
    _SET_HIGH(c, high)
    _SET_LOW(c, low)
    _SET_CLOSE(c, close)
    _SET_VOLUME(c, volume)
    return c


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade. ``fields`` holds the extra fields (fee, profit, ...)."""

    exchange: str
    product: str
    timestamp: int | float
    side: str
    price: float
    size: float
    order_id: str
    fields: Mapping[str, float | bool | str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The seed's keys plus every extra field."""
        return {
            "exchange": self.exchange,
            "product": self.product,
            "timestamp": self.timestamp,
            "side": self.side,
            "price": self.price,
            "size": self.size,
            "order_id": self.order_id,
            **self.fields,
        }
