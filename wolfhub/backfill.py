"""``wolfhub backfill``: candle files into the hub at the pace InfluxDB takes them.

What a run does, per source (a CSV file, a ``.gz`` of one, each CSV member of a
``.zip``, or a Parquet file when pyarrow is installed):

- The layout is read from the first line: a header names the columns (``timestamp``/
  ``time``/``open_time``/``date``, ``open``, ``high``, ``low``, ``close``, ``volume``,
  optionally ``product``/``symbol``); no header means the columns are positional, as in
  Binance's kline dumps (open time, open, high, low, close, volume, then six more).
- Times are Unix seconds, milliseconds, microseconds or nanoseconds (told apart by
  magnitude, or ``--time-unit``), or ISO 8601 text (UTC when no offset is given).
- Rows are parsed a batch at a time (``csv`` in C, no dict per row) and handed to the
  hub, whose writer POSTs while the next batch is parsed; a checkpoint task asks the hub
  to flush about once a second and only then moves the resume marker, so the marker is
  always behind what InfluxDB confirmed. A run killed at any point and started again
  re-sends at most the rows after the last checkpoint; InfluxDB keeps one point per
  series and time, so every row is stored exactly once.
- The marker is kept per source *and destination* (InfluxDB URL, database, exchange,
  product): loading the same file into another product or database starts from its first
  row. ``--restart`` ignores the marker.
- A bad row stops the run with its file, line and column, after the rows before it are
  stored (run again once fixed: it resumes there); ``--skip-bad`` counts and skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import gzip
import io
import json
import math
import os
import re
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any, Protocol

from hubdomain.errors import HubError, ValidationError
from hubdomain.records import CheckedRows, Row
from hubdomain.validate import MAX_TIMESTAMP, MIN_TIMESTAMP

__all__ = ["BadRow", "Layout", "Markers", "Report", "Source", "backfill", "find_layout",
           "parse_batch", "product_from_name", "sources"]

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
_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_SECONDS_BELOW = 100_000_000_000  # 5138-11-16 in seconds, 1973-03-03 in milliseconds
_BINANCE_NAME = re.compile(r"^(?P<symbol>.+?)-(\d+[smhdwM]|1mo)-\d{4}-\d{2}(-\d{2})?$")


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
    def parquet(self) -> bool:
        return (self.member or self.path.name).lower().endswith(".parquet")

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
                    members = sorted(n for n in archive.namelist()
                                     if n.lower().endswith((".csv", ".txt", ".parquet")))
            except zipfile.BadZipFile as exc:
                raise HubError(f"{path}: not a zip archive ({exc})") from None
            if not members:
                raise HubError(f"{path}: the archive holds no .csv file")
            found += [Source(path, m) for m in members]
        else:
            found.append(Source(path))
    return found


def product_from_name(source: Source) -> str:
    """A product named by the file: Binance's ``BTCUSDT-1m-2024-01.csv`` -> ``BTCUSDT``,
    otherwise the name without its extensions (``NIFTY.csv.gz`` -> ``NIFTY``)."""
    name = Path(source.member or source.path.name).name
    for suffix in (".gz", ".zip", ".csv", ".txt", ".parquet"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    match = _BINANCE_NAME.match(name)
    return match.group("symbol") if match else name


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
    """Candles from raw rows. Rows of plain numbers in seconds take the fast path; the rest
    go through ``_check``, which names the column. Without ``skip_bad`` parsing stops at
    the first bad row (``stopped_at``)."""
    ti, oi, hi, li, ci, vi = (layout.time, layout.open, layout.high, layout.low,
                              layout.close, layout.volume)
    pi = layout.product
    plain = CheckedRows()
    groups: dict[str | None, list[Row]] = {None: plain}
    parsed = Parsed(groups)
    fast = unit in (0, 1)
    low_t, high_t = max(MIN_TIMESTAMP, -_SECONDS_BELOW), min(MAX_TIMESTAMP, _SECONDS_BELOW)
    for index, row in enumerate(rows):
        try:
            if not fast:
                raise ValueError
            t = int(row[ti])
            o, h, lo, c, v = (float(row[oi]), float(row[hi]), float(row[li]),
                              float(row[ci]), float(row[vi]))
            total = o + h + lo + c + v
            if (low_t < t < high_t and total - total == 0.0 and h >= lo and v >= 0.0
                    and pi is None):
                plain.append((t, o, h, lo, c, v))
                continue
        except (ValueError, IndexError, TypeError):
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


# ---- resume markers --------------------------------------------------------------------

class Markers:
    """Rows done per (source, destination), in a small JSON file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, int]] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("entries"), dict):
            self.entries = data["entries"]

    def rows(self, key: str) -> tuple[int, int]:
        entry = self.entries.get(key, {})
        return int(entry.get("rows", 0)), int(entry.get("bad", 0))

    def save(self, key: str, rows: int, bad: int) -> None:
        self.entries[key] = {"rows": rows, "bad": bad}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": 2, "entries": self.entries}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, self.path)

    @classmethod
    def beside(cls, source: Source) -> Markers:
        return cls(source.path.with_name(source.path.name + ".wolfhub-progress"))


# ---- the run ---------------------------------------------------------------------------

class Sink(Protocol):
    """What backfill needs of a hub."""

    async def write_candles_batch(self, exchange: str, product: str, candles: Any, *,
                                  window: bool = True) -> int: ...

    async def cache_candles(self, exchange: str, product: str, candles: Any) -> None: ...

    async def flush(self) -> None: ...


@dataclass
class Report:
    """What a run did; ``tick`` is called after each batch (for a progress bar)."""

    tick: Callable[[Report], None] = lambda report: None
    bytes_total: int = 0
    bytes_done: int = 0
    rows: int = 0  # rows read this run (stored or skipped)
    stored: int = 0  # candles handed to the hub this run
    bad: list[BadRow] = field(default_factory=list)
    skipped: int = 0
    began: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.began, 1e-9)


class _Checkpoints:
    """Moves a source's marker behind confirmed writes: at most one flush in flight,
    started about once a second, so parsing never waits for it. Candles go to InfluxDB
    only; each checkpoint first puts the newest of those since the last one in the hot
    window (one push per product, not one per batch), so what the marker covers is in
    the window too."""

    def __init__(self, hub: Sink, exchange: str, markers: Markers, key: str, every: float,
                 window: int) -> None:
        self.hub, self.exchange, self.markers, self.key = hub, exchange, markers, key
        self.every, self.window = every, window
        self.task: asyncio.Task[None] | None = None
        self.last = time.monotonic()
        self.tails: dict[str, list[Row]] = {}

    def written(self, product: str, rows: list[Row]) -> None:
        """Candles handed to the hub: keep the newest ``window`` per product."""
        if self.window <= 0:
            return
        tail = self.tails.setdefault(product, [])
        tail += rows[-self.window:]
        if len(tail) > 4 * self.window:
            self.tails[product] = _newest(tail, self.window)

    async def _confirm(self, rows: int, bad: int) -> None:
        tails, self.tails = self.tails, {}
        for product, tail in tails.items():
            await self.hub.cache_candles(self.exchange, product,
                                         CheckedRows(_newest(tail, self.window)))
        await self.hub.flush()
        self.markers.save(self.key, rows, bad)

    def submitted(self, rows: int, bad: int) -> None:
        if self.task is not None and self.task.done():
            self.task.result()  # a failed flush ends the run here
            self.task = None
        if self.task is None and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.task = asyncio.create_task(self._confirm(rows, bad))

    async def final(self, rows: int, bad: int) -> None:
        if self.task is not None:
            await self.task
            self.task = None
        await self._confirm(rows, bad)


def _newest(rows: list[Row], count: int) -> list[Row]:
    ascending = all(rows[i][0] <= rows[i + 1][0] for i in range(len(rows) - 1))
    return (rows if ascending else sorted(rows, key=lambda row: row[0]))[-count:]


async def backfill(hub: Sink, files: list[Path], exchange: str, product: str | None, *,
                   destination: str, window: int = 1000, batch: int = 5000,
                   skip_bad: bool = False, restart: bool = False, time_unit: str = "auto",
                   checkpoint: float = 1.0, report: Report | None = None) -> Report:
    """Load candle files; see the module's docstring. Raises BadRow (after storing the
    rows before it) unless ``skip_bad``. ``destination`` names where the hub writes (for
    the resume marker's key); ``window`` is the hot window's size."""
    run = _Run(hub, exchange, batch, skip_bad, 0 if time_unit == "auto" else _UNITS[time_unit],
               checkpoint, window, report or Report())
    found = sources(files)
    run.report.bytes_total = sum(s.size for s in {s.path: s for s in found}.values())
    for number, source in enumerate(found):
        key = f"{source.key} -> {destination} exchange={exchange} product=" + (
            product if product is not None else "(from the file)")
        markers = Markers.beside(source)
        done, bad = (0, 0) if restart else markers.rows(key)
        rows, bad, stored = await run.load(source, product or product_from_name(source),
                                           _Checkpoints(hub, exchange, markers, key,
                                                        checkpoint, window), done, bad)
        if number + 1 == len(found) or found[number + 1].path != source.path:
            run.done_bytes += source.size  # an archive counts once its last member is read
        run.report.lines.append(
            f"{source.label}: {rows - bad} of {rows} candles stored ({stored} this run"
            + (f", {bad} bad rows skipped" if bad else "") + ")")
    return run.report


@dataclass
class Table:
    """A source opened: its layout and its rows after those done, a batch at a time."""

    layout: Layout
    chunks: Iterator[list[list[str]]]
    first_line: int  # the file's line (or row number) of the first row of ``chunks``
    position: Callable[[], int]  # bytes of the file read so far


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


@dataclass
class _Run:
    hub: Sink
    exchange: str
    batch: int
    skip_bad: bool
    unit: int
    every: float
    window: int
    report: Report
    done_bytes: int = 0

    async def load(self, source: Source, named: str, checkpoints: _Checkpoints, done: int,
                   bad: int) -> tuple[int, int, int]:
        """(rows in the source, bad rows, candles stored this run)."""
        report, number, stored = self.report, done, 0
        if source.parquet:
            from wolfhub import columnar  # pyarrow: the optional "columnar" extra
            opened = columnar.parquet_table(source, done, self.batch)
        else:
            opened = csv_table(source, done, self.batch)
        with opened as table:
            if table is None:
                await checkpoints.final(0, 0)
                return 0, 0, 0
            line = table.first_line
            for chunk in table.chunks:
                parsed = parse_batch(chunk, table.layout, self.unit, source.label, line,
                                     self.skip_bad)
                count = await self._write(named, parsed, checkpoints)
                stored += count
                report.stored += count
                if parsed.stopped_at is not None:  # what came before it is stored; stop
                    await checkpoints.final(number + parsed.stopped_at, bad)
                    raise parsed.bad[0]
                bad += len(parsed.bad)
                report.bad += parsed.bad
                report.skipped += len(parsed.bad)
                number += len(chunk)
                line += len(chunk)
                report.rows += len(chunk)
                report.bytes_done = self.done_bytes + table.position()
                checkpoints.submitted(number, bad)
                report.tick(report)
            await checkpoints.final(number, bad)
        return number, bad, stored

    async def _write(self, named: str, parsed: Parsed, checkpoints: _Checkpoints) -> int:
        count = 0
        for product, rows in parsed.groups.items():
            if rows:
                name = product or named
                try:
                    count += await self.hub.write_candles_batch(self.exchange, name, rows,
                                                                window=False)
                except ValidationError as exc:  # a name the hub refuses
                    raise HubError(f"product {name!r}: {exc}") from None
                checkpoints.written(name, rows)
        return count
