"""``wolfhub backfill --repair``: fill the holes ``Hub.gaps`` finds, from a fetcher the
user names (``module:function``, an async callable ``(exchange, product, start, end) ->
candles``, both times inclusive) or from candle files. Only candles whose minute is
missing are written: nothing already stored is written again, and a source that holds
more than the holes (a whole day's file, an exchange API page) is fine.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hubdomain.errors import ValidationError
from hubdomain.records import Row, candle_rows
from hubdomain.timeframes import BASE_SECONDS, bucket
from wolfhub.readers import csv_reader_for, open_table
from wolfhub.tables import UNITS, product_from_name, sources

Fetcher = Callable[[str, str, int, int], Awaitable[Any]]


class Repairable(Protocol):
    async def gaps(self, exchange: str, product: str, start: int | float | None = None,
                   end: int | float | None = None,
                   timeframe: str = "1m") -> list[tuple[int, int]]: ...

    async def write_candles_batch(self, exchange: str, product: str, candles: Any, *,
                                  window: bool = True) -> int: ...

    async def flush(self) -> None: ...


@dataclass
class RepairReport:
    holes_before: list[tuple[int, int]] = field(default_factory=list)
    holes_after: list[tuple[int, int]] = field(default_factory=list)
    written: int = 0
    offered: int = 0  # candles the source had (in the holes or not)

    @property
    def missing_before(self) -> int:
        return sum((last - first) // BASE_SECONDS + 1 for first, last in self.holes_before)

    @property
    def missing_after(self) -> int:
        return sum((last - first) // BASE_SECONDS + 1 for first, last in self.holes_after)


def load_fetcher(spec: str) -> Fetcher:
    """``package.module:function`` -> the async callable it names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValidationError("--fetcher", f"expected module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError("--fetcher", f"cannot import {module_name!r}: {exc}") from None
    fetcher = getattr(module, attribute, None)
    if fetcher is None or not callable(fetcher):
        raise ValidationError("--fetcher", f"{module_name} has no callable {attribute!r}")
    if not inspect.iscoroutinefunction(fetcher):
        raise ValidationError("--fetcher", f"{spec} must be an async function "
                                           "(exchange, product, start, end) -> candles")
    result: Fetcher = fetcher
    return result


def _missing(holes: list[tuple[int, int]]) -> set[int]:
    return {slot for first, last in holes for slot in range(first, last + 1, BASE_SECONDS)}


def _only_missing(rows: list[Row], missing: set[int]) -> list[Row]:
    """Rows whose minute is missing, one per minute (the first the source gave)."""
    out: dict[int, Row] = {}
    for row in rows:
        slot = bucket(row[0], BASE_SECONDS)
        if slot in missing and slot not in out:
            out[slot] = row
    return sorted(out.values())


def _file_rows(files: list[Path], product: str, time_unit: str) -> list[Row]:
    unit = 0 if time_unit == "auto" else UNITS[time_unit]
    found: list[Row] = []
    every = sources(files)
    reader = csv_reader_for(every, "auto")
    for source in every:
        named = product_from_name(source)
        with open_table(source, 0, 50_000, reader) as table:
            if table is None:
                continue
            line = table.first_line
            for chunk in table.chunks:
                parsed = table.parse(chunk, table.layout, unit, source.label, line, False)
                if parsed.stopped_at is not None:
                    raise parsed.bad[0]
                for name, rows in parsed.groups.items():
                    if (name or named) == product or table.layout.product is None:
                        found += rows
                line += len(chunk)
    return found


async def repair(hub: Repairable, exchange: str, product: str, *,
                 start: int | float | None = None, end: int | float | None = None,
                 fetcher: Fetcher | None = None, files: list[Path] | None = None,
                 time_unit: str = "auto") -> RepairReport:
    """Fill the 1-minute holes of ``product`` in [start, end] (default: between its
    first and newest stored candle) from ``fetcher`` and/or ``files``."""
    if fetcher is None and not files:
        raise ValidationError("--fetcher", "name a fetcher (module:function) or candle files")
    report = RepairReport(holes_before=await hub.gaps(exchange, product, start, end))
    if not report.holes_before:
        return report
    missing = _missing(report.holes_before)
    offered: list[Row] = []
    if files:
        offered += _file_rows(files, product, time_unit)
    if fetcher is not None:
        for first, last in report.holes_before:
            got = await fetcher(exchange, product, first, last + BASE_SECONDS - 1)
            offered += candle_rows(list(got or ()))
    report.offered = len(offered)
    rows = _only_missing(offered, missing)
    for i in range(0, len(rows), 5000):
        report.written += await hub.write_candles_batch(exchange, product, rows[i:i + 5000])
    await hub.flush()
    report.holes_after = await hub.gaps(exchange, product, start, end)
    return report
