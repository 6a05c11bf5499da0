"""Columnar files and frames, with pyarrow (the optional ``columnar`` extra:
``pip install 'wolfinch-hub[columnar]'``): Parquet and Feather backfill, Parquet export,
and candles as a pyarrow Table, pandas or polars DataFrame."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from hubdomain.errors import HubError

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise HubError("Parquet, Feather and DataFrames need pyarrow: pip install "
                   "'wolfinch-hub[columnar]'") from exc

from wolfhub.tables import Layout, Source, Table, find_layout

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
