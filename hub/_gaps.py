"""Holes in stored candles, found by InfluxDB in two passes.

A slot of a timeframe (a minute, five minutes...) is present when at least one stored
candle of the product lies in it. Pass one counts the present slots per chunk of 1,440
slots (a day of minutes): a subquery counts the candles per slot, the outer query counts
the non-empty slots per chunk (the range cut in up to four parts, asked at once). A chunk
with every slot present holds no hole and is never read again; an empty chunk is one
hole; only the chunks in between are asked for their present slots (pass two, a few at a
time). A year of 1-minute candles is 366 rows of answer when nothing is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from actors.backends.influx import rows
from actors.query import Query
from hubdomain import influxql as ql
from hubdomain.lineproto import seconds_to_ns

CHUNK_SLOTS = 1440
_CONCURRENT = 4
_PARTS = 4

Influx = Callable[[Query], Awaitable[list[dict[str, Any]]]]
Gap = tuple[int, int]


def _tags(exchange: str, product: str) -> str:
    return ql.where({"exchange": exchange, "product": product})[len(" WHERE "):]


def _slots_per_chunk(exchange: str, product: str, lo: int, hi: int, span: int,
                     rp: str | None) -> str:
    src = ql.source("candle", rp)
    bounds = f"time >= {seconds_to_ns(lo)} AND time <= {seconds_to_ns(hi + span - 1)}"
    inner = (f'SELECT count("close") AS "n" FROM {src} WHERE {_tags(exchange, product)} '
             f"AND {bounds} GROUP BY time({span}s) fill(none)")
    return (f'SELECT count("n") FROM ({inner}) WHERE {bounds} '
            f"GROUP BY time({span * CHUNK_SLOTS}s) fill(0)")


def _present(exchange: str, product: str, lo: int, hi: int, span: int,
             rp: str | None) -> str:
    return (f'SELECT count("close") FROM {ql.source("candle", rp)} '
            f"WHERE {_tags(exchange, product)} AND time >= {seconds_to_ns(lo)} "
            f"AND time <= {seconds_to_ns(hi + span - 1)} GROUP BY time({span}s) fill(none)")


def runs(missing: list[int], span: int) -> list[Gap]:
    """Sorted missing slot starts as (first, last) runs of consecutive slots."""
    out: list[Gap] = []
    for slot in missing:
        if out and out[-1][1] + span == slot:
            out[-1] = (out[-1][0], slot)
        else:
            out.append((slot, slot))
    return out


async def find(influx: Influx, exchange: str, product: str, lo: int, hi: int, span: int,
               rp: str | None) -> list[Gap]:
    """The holes among the slots ``lo, lo + span, ..., hi`` (both slot starts)."""
    if hi < lo:
        return []
    chunk = span * CHUNK_SLOTS
    # pass one in up to four parts at once (whole chunks each): influxd runs them on all
    # its cores (a year of minutes: 1.4 s as one query here, about half in four)
    first = lo - lo % chunk
    chunks = (hi - first) // chunk + 1
    per = max(1, -(-chunks // _PARTS))
    bounds = [(max(lo, first + k * chunk), min(hi, first + (k + per) * chunk - span))
              for k in range(0, chunks, per)]
    answers = await asyncio.gather(*(
        influx(Query(_slots_per_chunk(exchange, product, a, b, span, rp))) for a, b in bounds))
    counted_rows = [row for (answer,) in answers for row in rows(answer)]
    holes: list[Gap] = []
    partial: list[tuple[int, int]] = []
    for row in counted_rows:
        start = max(int(row["time"]), lo)
        end = min(int(row["time"]) + chunk - span, hi)
        if end < start:
            continue
        expected = (end - start) // span + 1
        found = int(row.get("count") or 0)
        if found == 0:
            holes.append((start, end))
        elif found < expected:
            partial.append((start, end))
    for (answer,), (a, b) in zip(answers, bounds, strict=True):
        if not rows(answer):  # nothing at all stored in this part
            holes.append((a, b))
    limit = asyncio.Semaphore(_CONCURRENT)

    async def read(start: int, end: int) -> list[Gap]:
        async with limit:
            (answer,) = await influx(Query(_present(exchange, product, start, end, span, rp)))
        present = {int(r["time"]) for r in rows(answer)}
        return runs([s for s in range(start, end + 1, span) if s not in present], span)

    for found_runs in await asyncio.gather(*(read(s, e) for s, e in partial)):
        holes.extend(found_runs)
    holes.sort()
    merged: list[Gap] = []
    for first, last in holes:  # runs across chunk borders are one hole
        if merged and merged[-1][1] + span == first:
            merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged
