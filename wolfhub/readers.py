"""Which reader opens a candle source: ``wolfhub.tables`` for CSV (the csv module) and
JSON, ``wolfhub.columnar`` (pyarrow, the optional ``columnar`` extra) for Parquet,
Feather and large CSV runs. Used by ``wolfhub.backfill`` and ``wolfhub.repair``; it sits
above both readers, so neither imports the other's way back."""

from __future__ import annotations

import contextlib

from hubdomain.errors import HubError
from wolfhub.tables import Source, Table, csv_table, json_table

__all__ = ["ARROW_FROM_BYTES", "csv_reader_for", "open_table"]

# pyarrow's CSV reader pays for itself from about 300,000 rows: importing it and its
# first batches cost a loader ~0.5 s, reading saves ~1.5 us a row (measured 2026-11-27:
# whole-process loads of 100,000 rows 1.5-1.9 s against 1.3-1.6 s by the csv module,
# of 1,000,000 rows 4.8-6.6 s against 5.7-7.6 s)
ARROW_FROM_BYTES = 24_000_000


def csv_reader_for(found: list[Source], reader: str) -> str:
    """``reader`` for a run's sources: "auto" becomes "python" below
    ``ARROW_FROM_BYTES`` of CSV (compressed files counted four times their size)."""
    if reader != "auto":
        return reader
    files = {s.path: s for s in found if s.kind == "csv"}.values()
    size = sum(s.size * (4 if s.member is not None or s.path.name.lower().endswith(".gz")
                         else 1) for s in files)
    return "auto" if size >= ARROW_FROM_BYTES else "python"


def open_table(source: Source, done: int, batch: int, reader: str = "auto"
               ) -> contextlib.AbstractContextManager[Table | None]:
    """The source's rows from ``done + 1`` on, by its kind (Parquet and Feather with the
    optional ``columnar`` extra, pyarrow). A CSV goes through pyarrow's CSV reader when
    it is installed (``reader`` "auto" or "arrow"; "python": the ``csv`` module)."""
    if source.kind in ("parquet", "feather"):
        from wolfhub import columnar  # pyarrow: the optional "columnar" extra

        return (columnar.parquet_table if source.kind == "parquet"
                else columnar.feather_table)(source, done, batch)
    if source.kind == "json":
        return json_table(source, done, batch)
    if reader != "python":
        try:
            from wolfhub import columnar
        except HubError:
            if reader == "arrow":
                raise
        else:
            return columnar.csv_table_arrow(source, done, batch)
    return csv_table(source, done, batch)
