"""Columnar files and frames, with pyarrow (the optional ``columnar`` extra:
``pip install 'wolfinch-hub[columnar]'``): Parquet and Feather backfill, Parquet export,
and candles as a pyarrow Table, pandas or polars DataFrame."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from typing import Any, Protocol

from hubdomain.errors import HubError

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise HubError("Parquet, Feather, DataFrames and --reader arrow need pyarrow: pip install "
                   "'wolfinch-hub[columnar]'") from exc

from hubdomain.records import CheckedRows, Row
from hubdomain.validate import MAX_TIMESTAMP, MIN_TIMESTAMP
from wolfhub.tables import Layout, Parsed, Source, Table, csv_table, find_layout, parse_batch

_UNIT = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _time_column(column: Any) -> list[Any]:
    """Whole Unix seconds from a time column (timestamps of any unit, integers as the
    CSV path reads them, text); what is not a whole second stays text, for the row
    check to name."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        ticks = pc.cast(column, pa.int64())
        unit = _UNIT[kind.unit]
        whole = pc.equal(pc.multiply(pc.divide(ticks, unit), unit), ticks)
        if pc.all(whole).as_py() is not False:
            seconds: list[Any] = pc.divide(ticks, unit).to_pylist()
            return seconds
        return [str(v) for v in column.to_pylist()]
    if pa.types.is_integer(kind):
        whole_numbers: list[Any] = column.to_pylist()
        return whole_numbers
    return [None if v is None else str(v) for v in column.to_pylist()]


@contextlib.contextmanager
def parquet_table(source: Source, done: int, batch: int) -> Iterator[Table | None]:
    """A Parquet source from its row ``done + 1`` on."""
    with open(source.path, "rb") as raw:
        handle: Any = raw
        if source.member is not None:
            import zipfile
            archive = zipfile.ZipFile(raw)
            handle = archive.open(source.member)
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        if parquet.metadata.num_rows == 0:
            yield None
            return
        layout: Layout = find_layout(list(names), source.label)
        wanted = _wanted(layout)

        def chunks() -> Iterator[list[list[Any]]]:
            seen = 0
            for record_batch in parquet.iter_batches(batch_size=batch,
                                                     columns=[names[i] for i in wanted]):
                size = record_batch.num_rows
                if seen + size <= done:
                    seen += size
                    continue
                rows = _rows(record_batch, len(names), wanted, layout)
                if seen < done:
                    rows = rows[done - seen:]
                seen += size
                yield rows

        yield Table(layout, chunks(), done + 1, raw.tell)


@contextlib.contextmanager
def feather_table(source: Source, done: int, batch: int) -> Iterator[Table | None]:
    """A Feather (Arrow IPC) source from its row ``done + 1`` on: freqtrade's default
    data format (``date`` as a UTC timestamp, open, high, low, close, volume), pandas'
    ``to_feather``. Read whole (memory-mapped from a file)."""
    import pyarrow.feather as feather

    if source.member is None and source.size == 0:
        yield None  # (freqtrade leaves empty files for pairs it found no data for)
        return
    try:
        table = feather.read_table(
            str(source.path) if source.member is None
            else pa.BufferReader(source.read_bytes()), memory_map=source.member is None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise HubError(f"{source.label}: not a Feather file ({exc})") from None
    if table.num_rows == 0:
        yield None
        return
    names = table.column_names
    layout: Layout = find_layout(list(names), source.label)
    wanted = _wanted(layout)
    picked = table.select([names[i] for i in wanted]).slice(done)
    total, size, read = table.num_rows, source.size, [done]

    def chunks() -> Iterator[list[list[Any]]]:
        for record_batch in picked.to_batches(max_chunksize=batch):
            read[0] += record_batch.num_rows
            yield _rows(record_batch, len(names), wanted, layout)

    yield Table(layout, chunks(), done + 1, lambda: size * read[0] // total)


def _wanted(layout: Layout) -> list[int]:
    """The columns a table's candles are read from, in the file's order."""
    return sorted({i for i in (layout.time, layout.open, layout.high, layout.low,
                               layout.close, layout.volume, layout.product) if i is not None})


def _rows(record_batch: Any, width: int, wanted: list[int], layout: Layout
          ) -> list[list[Any]]:
    """A record batch of the ``wanted`` columns as rows of ``width`` cells (the others
    None), times as whole seconds where they are (see :func:`_time_column`)."""
    size = record_batch.num_rows
    columns: list[Any] = [None] * width
    for i, name in zip(wanted, record_batch.schema.names, strict=True):
        column = record_batch.column(name)
        columns[i] = _time_column(column) if i == layout.time else column.to_pylist()
    return [list(r) for r in zip(*(c if c is not None else [None] * size
                                   for c in columns), strict=True)]


# ---- CSV through pyarrow's reader ------------------------------------------------------
# The csv module and a check per row take ~2 us a row of the loader's process (measured:
# 2.06 s for 1,000,000 rows); pyarrow reads the columns in C++ and the checks run on whole
# columns (0.54 s with the rows built). A batch whose checks do not all pass, and every
# row after a cell pyarrow cannot convert (ISO times, "1_000", a short row...), go the
# csv module's way, which names the file, line and column as before: pyarrow accepts a
# number only where float()/int() read the same value (held against 200,000 random
# decimal strings, and in tests/test_backfill.py).

class _Block:
    """A batch of rows as pyarrow read them, and where they start among the data rows."""

    __slots__ = ("batch", "row")

    def __init__(self, batch: Any, row: int) -> None:
        self.batch = batch
        self.row = row

    def __len__(self) -> int:
        return int(self.batch.num_rows)


class _ArrowCsv:
    """The state a pyarrow-read CSV shares between its batches and their parse (which
    takes the run's layout: ``--product`` drops the product column)."""

    def __init__(self, source: Source, names: list[str]) -> None:
        self.source = source
        self.names = names
        self.python = False  # a batch went the csv module's way: the rest goes too

    def parse(self, chunk: Any, layout: Layout, unit: int, label: str, line: int,
              skip_bad: bool) -> Parsed:
        if not isinstance(chunk, _Block):  # rows the csv module read
            return parse_batch(chunk, layout, unit, label, line, skip_bad)
        groups = _checked(chunk.batch, self.names, layout, unit)
        if groups is not None:
            return Parsed(groups)
        # a row to name, or to skip and count: this batch again, the csv module's way
        self.python = True
        with csv_table(self.source, chunk.row, len(chunk)) as again:
            assert again is not None
            rows = next(again.chunks)
        return parse_batch(rows, layout, unit, label, line, skip_bad)


def _checked(batch: Any, names: list[str], layout: Layout, unit: int
             ) -> dict[str | None, list[Row]] | None:
    """The batch's candles by product when every row passes ``parse_batch``'s checks
    (times converted the same way); None when one does not."""
    times = batch.column(names[layout.time])
    if times.null_count or (len(times) and pc.min(times).as_py() < 0):
        return None  # (before 1970: the csv module's way, floor division and all)
    if unit == 0:  # by magnitude, as _by_magnitude: seconds as they are when in range
        units = pc.if_else(pc.less(times, MAX_TIMESTAMP), 1, pc.if_else(
            pc.less(times, 10**11), 1, pc.if_else(pc.less(times, 10**14), 1_000, pc.if_else(
                pc.less(times, 10**17), 1_000_000, 1_000_000_000))))
    else:
        units = pa.scalar(unit, pa.int64())
    seconds = pc.divide(times, units)
    ok = pc.and_(pc.equal(pc.multiply(seconds, units), times),
                 pc.and_(pc.greater(seconds, MIN_TIMESTAMP), pc.less(seconds, MAX_TIMESTAMP)))
    values = [batch.column(names[i]) for i in (layout.open, layout.high, layout.low,
                                                layout.close, layout.volume)]
    for column in values:
        ok = pc.and_(ok, pc.is_finite(column))
    ok = pc.and_(ok, pc.and_(pc.greater_equal(values[1], values[2]),
                             pc.greater_equal(values[4], 0.0)))
    if pc.all(ok).as_py() is not True:
        return None
    rows = CheckedRows(zip(seconds.to_pylist(), *(c.to_pylist() for c in values),
                           strict=True))
    if layout.product is None:
        return {None: rows}
    groups: dict[str | None, list[Row]] = {}
    for name, row in zip(batch.column(names[layout.product]).to_pylist(), rows,
                         strict=True):
        name = name.strip()
        if not name:
            return None  # an empty product: named by the csv module's way
        group = groups.get(name)
        if group is None:
            group = groups[name] = CheckedRows()
        group.append(row)
    return groups


@contextlib.contextmanager
def csv_table_arrow(source: Source, done: int, batch: int) -> Iterator[Table | None]:
    """``tables.csv_table`` read by pyarrow's CSV reader (see above); the same layout,
    rows, resume offsets and bad rows."""
    import pyarrow.csv as pcsv

    with source.open() as (text, _):  # the layout, from the first row as csv reads it
        first = next(csv.reader(text), None)
    if first is None:
        yield None
        return
    layout = find_layout(first, source.label)
    names = [f"c{i}" for i in range(len(first))]
    types = {names[layout.time]: pa.int64(),
             **{names[i]: pa.float64() for i in (layout.open, layout.high, layout.low,
                                                 layout.close, layout.volume)}}
    if layout.product is not None:
        types[names[layout.product]] = pa.string()
    state = _ArrowCsv(source, names)
    with open(source.path, "rb") as raw:
        inner: Any = raw
        archive = None
        if source.member is not None:
            import zipfile
            archive = zipfile.ZipFile(raw)
            inner = archive.open(source.member)
        stream: Any = pa.PythonFile(inner, mode="r")
        if source.member is None and source.path.name.lower().endswith(".gz"):
            stream = pa.CompressedInputStream(stream, "gzip")
        reading = [raw.tell]

        def blocks(row: list[int]) -> Iterator[_Block]:
            """pyarrow's batches, ``batch`` rows at a time, until one goes the csv
            module's way; raises ArrowInvalid where a cell does not convert."""
            reader = pcsv.open_csv(
                stream,
                read_options=pcsv.ReadOptions(column_names=names,
                                              skip_rows=int(layout.header) + done),
                # a blank line is a row to the csv module: never skipped here
                parse_options=pcsv.ParseOptions(ignore_empty_lines=False),
                convert_options=pcsv.ConvertOptions(
                    column_types=types, include_columns=list(types), null_values=[],
                    strings_can_be_null=False, quoted_strings_can_be_null=False))
            for record_batch in reader:
                for start in range(0, record_batch.num_rows, batch):
                    block = _Block(record_batch.slice(start, batch), row[0])
                    row[0] += len(block)
                    yield block
                    if state.python:
                        return

        def chunks() -> Iterator[Any]:
            row = [done]
            try:
                yield from blocks(row)
            except pa.ArrowInvalid:
                state.python = True
            if not state.python:
                return
            # the rest the csv module's way, from the row where pyarrow stopped
            with csv_table(source, row[0], batch) as rest:
                if rest is None:
                    return
                reading[0] = rest.position
                yield from rest.chunks

        try:
            yield Table(layout, chunks(), 1 + int(layout.header) + done,
                        lambda: reading[0](), state.parse)
        finally:
            if archive is not None:
                archive.close()


def _candle_schema() -> Any:
    return pa.schema([("timestamp", pa.timestamp("s", tz="UTC")), ("open", pa.float64()),
                      ("high", pa.float64()), ("low", pa.float64()), ("close", pa.float64()),
                      ("volume", pa.float64())])


class _Hub(Protocol):
    async def query_candles_csv(self, exchange: str, product: str,
                                start_time: int | float | None = None,
                                end_time: int | float | None = None,
                                limit: int = 1000) -> bytes: ...


async def candles_table(hub: _Hub, exchange: str, product: str,
                        start: int | float | None = None, end: int | float | None = None,
                        limit: int = 100_000_000) -> Any:
    """The newest ``limit`` candles in [start, end] as a pyarrow Table (timestamp as UTC
    seconds, open/high/low/close/volume as float64), ascending: InfluxDB's CSV answer read
    by pyarrow's CSV reader, never a Python object per row. ``.to_pandas()`` or
    ``polars.from_arrow(table)`` make it a DataFrame."""
    import pyarrow.csv as pcsv

    body = await hub.query_candles_csv(exchange, product, start, end, limit)
    schema = _candle_schema()
    if not body.strip():
        return schema.empty_table()
    read = pcsv.read_csv(pa.py_buffer(body), convert_options=pcsv.ConvertOptions(
        column_types={"time": pa.int64(), **{n: pa.float64() for n in schema.names[1:]}},
        include_columns=["time", *schema.names[1:]]))
    newest_first = read.rename_columns(["timestamp", *schema.names[1:]])
    table = newest_first.take(pa.array(range(newest_first.num_rows - 1, -1, -1)))
    return table.set_column(0, schema.field(0),
                            pc.cast(table.column(0), schema.field(0).type))


async def candles_frame(hub: _Hub, exchange: str, product: str,
                        start: int | float | None = None, end: int | float | None = None,
                        limit: int = 100_000_000, *, kind: str = "pandas") -> Any:
    """``candles_table`` as a pandas (``kind='pandas'``) or polars DataFrame (either
    library installed by the user)."""
    table = await candles_table(hub, exchange, product, start, end, limit)
    if kind == "polars":
        import polars

        return polars.from_arrow(table)
    if kind != "pandas":
        raise ValueError(f"kind: expected 'pandas' or 'polars', got {kind!r}")
    return table.to_pandas()


def write_parquet(table: Any, where: Any) -> None:
    """Write a table (zstd-compressed Parquet) to a path or binary file."""
    pq.write_table(table, where, compression="zstd")
