"""Candle tables as traders have them: CSV files (``.gz``, each member of a ``.zip``),
JSON arrays of candles (ccxt's ``fetch_ohlcv``, freqtrade's json and jsongz data), their
layouts (a header naming the columns, or positional as in Binance's kline dumps), times
in any unit or ISO 8601, and the rows of a batch checked into candles.

Used by ``wolfhub.backfill`` and ``wolfhub.repair`` (and ``wolfhub.columnar`` for Parquet
and Feather): a bad row is a ``BadRow`` naming the source, line and column.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import gzip
import io
import math
import re
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any

import orjson

from hubdomain.errors import HubError
from hubdomain.records import CheckedRows, Row
from hubdomain.validate import MAX_TIMESTAMP, MIN_TIMESTAMP

__all__ = ["BINANCE_KLINE", "UNITS", "BadRow", "Layout", "Parsed", "Source", "Table",
           "csv_table", "find_layout", "json_table", "parse_batch", "product_from_name",
           "sources"]

# header names (lower case, spaces and dashes as underscores) -> the field they hold
_ALIASES = {
    "timestamp": "time", "time": "time", "open_time": "time", "opentime": "time",
    "date": "time", "datetime": "time", "ts": "time", "unix": "time", "time_stamp": "time",
    "open": "open", "open_price": "open", "o": "open",
    "high": "high", "high_price": "high", "h": "high",
    "low": "low", "low_price": "low", "l": "low",
    "close": "close", "close_price": "close", "c": "close",
    "volume": "volume", "vol": "volume", "v": "volume", "base_volume": "volume",
    "product": "product", "symbol": "product", "pair": "product", "ticker": "product",
    "instrument": "product",
}
_REQUIRED = ("time", "open", "high", "low", "close", "volume")
# Binance's spot/futures kline CSV (data.binance.vision): no header, 12 columns
BINANCE_KLINE = ("open_time", "open", "high", "low", "close", "volume", "close_time",
                 "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume",
                 "ignore")
UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_SECONDS_BELOW = 100_000_000_000  # 5138-11-16 in seconds, 1973-03-03 in milliseconds
_BINANCE_NAME = re.compile(r"^(?P<symbol>.+?)-(\d+[smhdwM]|1mo)-\d{4}-\d{2}(-\d{2})?$")
# freqtrade's data files: BTC_USDT-1m.feather, BTC_USDT_USDT-1h-futures.json.gz
_FREQTRADE_NAME = re.compile(r"^(?P<pair>.+?)-\d+[smhdwMy](-(spot|futures|mark|index|"
                             r"premiumIndex))?$")
_SUFFIXES = (".gz", ".zip", ".csv", ".txt", ".parquet", ".json", ".feather", ".arrow")


class BadRow(HubError):
    """A row that cannot be a candle: names the source, line and column."""

    def __init__(self, source: str, line: int, column: str, reason: str) -> None:
        self.source, self.line, self.column, self.reason = source, line, column, reason
        super().__init__(f"{source}, line {line}, column {column}: {reason}")


# ---- sources ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One table of candles: a file, or one member of a zip archive."""

    path: Path
    member: str | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.member is None else f"{self.path} ({self.member})"

    @property
    def key(self) -> str:
        return str(self.path.resolve()) + ("" if self.member is None else "//" + self.member)

    @property
    def kind(self) -> str:
        """``csv``, ``parquet``, ``feather`` (Arrow IPC, freqtrade's default) or ``json``
        (``.json`` or ``.json.gz``), by the name."""
        name = (self.member or self.path.name).lower()
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith((".feather", ".arrow")):
            return "feather"
        if name.endswith((".json", ".json.gz")):
            return "json"
        return "csv"

    def read_bytes(self) -> bytes:
        """The whole content (a ``.gz`` unpacked, a zip member read out)."""
        if self.member is not None:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.member)
        data = self.path.read_bytes()
        return gzip.decompress(data) if self.path.name.lower().endswith(".gz") else data

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @contextlib.contextmanager
    def open(self) -> Iterator[tuple[IO[str], Callable[[], int]]]:
        """The text and a function telling how many bytes of the file were read."""
        with open(self.path, "rb") as raw:
            if self.member is not None:
                with zipfile.ZipFile(raw) as archive, archive.open(self.member) as inner:
                    yield io.TextIOWrapper(inner, encoding="utf-8-sig", newline=""), raw.tell
                return
            binary: IO[bytes] = raw
            if self.path.name.lower().endswith(".gz"):
                binary = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
            yield io.TextIOWrapper(binary, encoding="utf-8-sig", newline=""), raw.tell


def sources(paths: list[Path]) -> list[Source]:
    """The sources of the given files (each CSV or Parquet member of a zip is one)."""
    found: list[Source] = []
    for path in paths:
        if path.name.lower().endswith(".zip"):
            try:
                with zipfile.ZipFile(path) as archive:
                    members = sorted(n for n in archive.namelist() if n.lower().endswith(
                        (".csv", ".txt", ".parquet", ".json", ".feather", ".arrow")))
            except zipfile.BadZipFile as exc:
                raise HubError(f"{path}: not a zip archive ({exc})") from None
            if not members:
                raise HubError(f"{path}: the archive holds no .csv, .json, .parquet or "
                               ".feather file")
            found += [Source(path, m) for m in members]
        else:
            found.append(Source(path))
    return found


def product_from_name(source: Source) -> str:
    """A product named by the file: Binance's ``BTCUSDT-1m-2024-01.csv`` -> ``BTCUSDT``,
    freqtrade's ``BTC_USDT-1m.feather`` -> ``BTC_USDT``, otherwise the name without its
    extensions (``NIFTY.csv.gz`` -> ``NIFTY``)."""
    name = Path(source.member or source.path.name).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    match = _BINANCE_NAME.match(name) or _FREQTRADE_NAME.match(name)
    return match.group(1) if match else name


# ---- layout and parsing ----------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where each field is in a row; ``names`` are the columns as errors show them."""

    names: tuple[str, ...]
    header: bool
    time: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    product: int | None = None

    @property
    def width(self) -> int:
        return max(i for i in (self.time, self.open, self.high, self.low, self.close,
                               self.volume, self.product) if i is not None) + 1


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def find_layout(first: list[str], label: str) -> Layout:
    """The layout of a table from its first row: a header, or positional columns."""
    if first and all(_is_number(cell) for cell in first[:6]):
        if len(first) < 6:
            raise BadRow(label, 1, "-", f"expected at least 6 columns (time, open, high, low, "
                                        f"close, volume), got {len(first)}")
        names = BINANCE_KLINE if len(first) == len(BINANCE_KLINE) else (
            "time", "open", "high", "low", "close", "volume",
            *(f"column {i + 1}" for i in range(6, len(first))))
        return Layout(tuple(names), False, 0, 1, 2, 3, 4, 5)
    where: dict[str, int] = {}
    for i, cell in enumerate(first):
        alias = _ALIASES.get(cell.strip().lower().replace(" ", "_").replace("-", "_"))
        if alias is not None and alias not in where:
            where[alias] = i
    missing = [name for name in _REQUIRED if name not in where]
    if missing:
        raise BadRow(label, 1, "header", f"no column for {', '.join(missing)} (found "
                                         f"{', '.join(first) or 'nothing'}); expected "
                                         "timestamp, open, high, low, close, volume")
    return Layout(tuple(cell.strip() for cell in first), True, where["time"], where["open"],
                  where["high"], where["low"], where["close"], where["volume"],
                  where.get("product"))


def _seconds(text: str, unit: int) -> int:
    """Unix seconds from a time cell (numbers in ``unit``, 0 = by magnitude, or ISO text)."""
    if text is None or not str(text).strip():
        raise ValueError("no time")
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return _iso_seconds(text)
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"{text!r} is not a whole number of seconds") from None
        value = int(number)
    if unit == 0:
        size = abs(value)
        unit = (1 if size < _SECONDS_BELOW else 1_000 if size < _SECONDS_BELOW * 1_000
                else 1_000_000 if size < _SECONDS_BELOW * 1_000_000 else 1_000_000_000)
    seconds, rest = divmod(value, unit)
    if rest:
        raise ValueError(f"{text} is not a whole second")
    return seconds


def _iso_seconds(text: str) -> int:
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected Unix time or an ISO 8601 date, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    stamp = moment.timestamp()
    if stamp != int(stamp):
        raise ValueError(f"{text} is not a whole second")
    return int(stamp)


def _check(row: list[str], layout: Layout, unit: int) -> tuple[Row, str | None]:
    """One row the slow way: the candle, or raises ValueError naming the column."""
    names = layout.names
    if len(row) < layout.width:
        raise _Column("-", f"expected {layout.width} columns, got {len(row)}")
    try:
        ts = _seconds(row[layout.time], unit)
    except (ValueError, TypeError) as exc:
        raise _Column(names[layout.time], str(exc)) from None
    if not MIN_TIMESTAMP < ts < MAX_TIMESTAMP:
        raise _Column(names[layout.time], f"{row[layout.time]} is outside InfluxDB's range "
                                          "(1677-09-21 to 2262-04-11)")
    values = []
    for index in (layout.open, layout.high, layout.low, layout.close, layout.volume):
        try:
            number = float(row[index])
        except (ValueError, TypeError):
            raise _Column(names[index], f"expected a number, got {row[index]!r}") from None
        if not math.isfinite(number):
            raise _Column(names[index], f"must be finite, got {row[index]!r}")
        values.append(number)
    o, h, lo, c, vol = values
    if h < lo:
        raise _Column(names[layout.high], f"high {row[layout.high]} is below low "
                                          f"{row[layout.low]}")
    if vol < 0:
        raise _Column(names[layout.volume], f"volume {row[layout.volume]} is negative")
    product = None
    if layout.product is not None:
        product = row[layout.product].strip()
        if not product:
            raise _Column(names[layout.product], "empty product")
    return (ts, o, h, lo, c, vol), product


class _Column(ValueError):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column, self.reason = column, reason


@dataclass
class Parsed:
    """A batch parsed: candles per product (None: the run's product), bad rows."""

    groups: dict[str | None, list[Row]]
    bad: list[BadRow] = field(default_factory=list)
    stopped_at: int | None = None  # index in the batch of the first bad row, when stopping


def parse_batch(rows: list[list[str]], layout: Layout, unit: int, label: str,
                first_line: int, skip_bad: bool) -> Parsed:
    """Candles from raw rows. Rows of plain numbers take the fast path (times in any unit,
    a product column too); the rest go through ``_check``, which names the column.
    Without ``skip_bad`` parsing stops at the first bad row (``stopped_at``)."""
    ti, oi, hi, li, ci, vi = (layout.time, layout.open, layout.high, layout.low,
                              layout.close, layout.volume)
    pi = layout.product
    plain = CheckedRows()
    groups: dict[str | None, list[Row]] = {None: plain}
    parsed = Parsed(groups)
    low_t, high_t = MIN_TIMESTAMP, MAX_TIMESTAMP
    for index, row in enumerate(rows):
        try:
            t = int(row[ti])
            if unit == 0:
                if not low_t < t < high_t:
                    t = _by_magnitude(t)
            elif unit != 1:
                t, rest = divmod(t, unit)
                if rest:
                    raise ValueError
            o, h, lo, c, v = (float(row[oi]), float(row[hi]), float(row[li]),
                              float(row[ci]), float(row[vi]))
            total = o + h + lo + c + v
            if low_t < t < high_t and total - total == 0.0 and h >= lo and v >= 0.0:
                if pi is None:
                    plain.append((t, o, h, lo, c, v))
                    continue
                name = row[pi].strip()
                if name:
                    group = groups.get(name)
                    if group is None:
                        group = groups[name] = CheckedRows()
                    group.append((t, o, h, lo, c, v))
                    continue
        except (ValueError, IndexError, TypeError, AttributeError):
            if not row:
                continue  # a blank line
        try:
            candle, product = _check(row, layout, unit)
        except _Column as exc:
            bad = BadRow(label, first_line + index, exc.column, exc.reason)
            parsed.bad.append(bad)
            if not skip_bad:
                parsed.stopped_at = index
                break
            continue
        groups.setdefault(product, CheckedRows()).append(candle)
    return parsed


def _by_magnitude(value: int) -> int:
    """Seconds from a time outside the seconds range, as ``_seconds`` reads it; raises
    ValueError when it is not a whole second (the slow path then names the column)."""
    size = abs(value)
    unit = (1 if size < _SECONDS_BELOW else 1_000 if size < _SECONDS_BELOW * 1_000
            else 1_000_000 if size < _SECONDS_BELOW * 1_000_000 else 1_000_000_000)
    seconds, rest = divmod(value, unit)
    if rest:
        raise ValueError
    return seconds


@dataclass
class Table:
    """A source opened: its layout and its rows after those done, a batch at a time, and
    how a batch becomes candles (``parse_batch``'s arguments; a reader whose batches are
    columns brings its own)."""

    layout: Layout
    chunks: Iterator[Any]
    first_line: int  # the file's line (or row number) of the first row of ``chunks``
    position: Callable[[], int]  # bytes of the file read so far
    parse: Callable[[Any, Layout, int, str, int, bool], Parsed] = field(default=parse_batch)


@contextlib.contextmanager
def csv_table(source: Source, done: int, batch: int) -> Iterator[Table | None]:
    """A CSV source from its row ``done + 1`` on (None when it is empty)."""
    with source.open() as (text, position):
        reader = csv.reader(text)
        first = next(reader, None)
        if first is None:
            yield None
            return
        layout = find_layout(first, source.label)
        rows: Iterator[list[str]] = reader if layout.header else chain([first], reader)
        deque(islice(rows, done), maxlen=0)  # confirmed by an earlier run

        def chunks() -> Iterator[list[list[str]]]:
            while chunk := list(islice(rows, batch)):
                yield chunk

        yield Table(layout, chunks(), 1 + layout.header + done, position)


@contextlib.contextmanager
def json_table(source: Source, done: int, batch: int) -> Iterator[Table | None]:
    """A JSON source from its candle ``done + 1`` on (None when it holds none): an array
    of candles, each an array ``[time, open, high, low, close, volume, ...]`` (ccxt's
    ``fetch_ohlcv``, freqtrade's json and jsongz data: millisecond times) or an object
    whose keys name its fields as a CSV header would. Read whole (orjson); a row's
    "line" in errors is the candle's place in the array, from 1."""
    data = source.read_bytes()
    if not data.strip():
        yield None
        return
    try:
        candles = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRow(source.label, 1, "-", f"not JSON ({exc})") from None
    if not isinstance(candles, list):
        raise BadRow(source.label, 1, "-", "expected a JSON array of candles, got "
                                           f"{type(candles).__name__}")
    if not candles:
        yield None
        return
    first = candles[0]
    if isinstance(first, dict):
        names = [str(name) for name in first]
        layout = find_layout(names, source.label)
    elif isinstance(first, list):
        names = []
        layout = find_layout([_cell(value) for value in first], source.label)
    else:
        raise BadRow(source.label, 1, "-", "expected each candle to be an array or an "
                                           f"object, got {type(first).__name__}")
    numbers = [layout.open, layout.high, layout.low, layout.close, layout.volume]
    size, count = source.size, len(candles)
    read = [done]

    def chunks() -> Iterator[list[list[Any]]]:
        for start in range(done, count, batch):
            rows = [_json_row(candle, names, layout.time, numbers, layout.product)
                    for candle in candles[start:start + batch]]
            read[0] = start + len(rows)
            yield rows

    yield Table(layout, chunks(), 1 + done, lambda: size * read[0] // count)


def _cell(value: Any) -> Any:
    """A value of the first candle as ``find_layout`` reads it: numbers as they are,
    anything else as text."""
    kind = type(value)
    return value if kind is int or kind is float else str(value)


def _json_row(candle: Any, names: list[str], time: int, numbers: list[int],
              product: int | None) -> list[Any]:
    """A candle's cells as ``parse_batch`` takes them: ints and floats as they are, but a
    time that is not an int goes as text (so a fraction of a second is refused, not cut
    off by ``int()``), and any other value as text (``true`` is no price: refused, with
    its column named, as in a CSV)."""
    if names:  # objects: their fields in the header's order
        if not isinstance(candle, dict):
            return [repr(candle)]  # (too few columns: the check names it)
        row = [candle.get(name) for name in names]
    elif isinstance(candle, list):
        row = list(candle)
    else:
        return [repr(candle)]
    width = len(row)
    if time < width and type(row[time]) is not int:
        row[time] = str(row[time])
    for i in numbers:
        if i < width:
            kind = type(row[i])
            if kind is not float and kind is not int:
                row[i] = str(row[i])
    if product is not None and product < width and type(row[product]) is not str:
        row[product] = str(row[product])
    return row

