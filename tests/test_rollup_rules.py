"""The rollup rules on their own (hubdomain.timeframes): when a bucket closes, what it
holds, and what a timer may and may not close. Pure; the same rules against real
servers are in test_streams.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hubdomain import timeframes
from hubdomain.errors import ValidationError
from hubdomain.timeframes import Book, Closed, Late, aggregate, plan, seconds, volume
from tests._rollup_reference import ReferenceBook

T0 = 1_700_006_400  # a multiple of 1d (a Tuesday): every bucket but a week's starts here
LIVE_DELAY = 2.0  # a live feed writes a minute two seconds after it ends


def minute(i: int, base: float = 100.0, volume: float = 1.0) -> tuple[int, float, float,
                                                                       float, float, float]:
    return (T0 + 60 * i, base + i, base + i + 2, base + i - 1, base + i + 1, volume)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e12, 1e12, allow_nan=False), max_size=1500))
def test_a_rollups_volume_adds_its_minutes_newest_first_one_at_a_time(
        volumes: list[float]) -> None:
    """InfluxDB's sum over a bucket read newest first: plain float additions in that
    order (whatever this Python's sum() does), so a rollup equals its resampling."""
    expected = 0.0
    for v in reversed(volumes):
        expected += v
    assert volume(volumes).hex() == expected.hex()  # to the last bit
    in_order, timeframes._SUM_ADDS_IN_ORDER = timeframes._SUM_ADDS_IN_ORDER, False
    try:  # and the way for Pythons whose sum() compensates
        assert volume(volumes).hex() == expected.hex()
    finally:
        timeframes._SUM_ADDS_IN_ORDER = in_order


def test_timeframes_are_checked() -> None:
    assert seconds("4h") == 14_400
    with pytest.raises(ValidationError, match="timeframe"):
        seconds("90s")
    with pytest.raises(ValidationError, match="1m"):
        plan(["5m", "1h"])
    with pytest.raises(ValidationError, match="same timeframe"):
        plan(["1m", "60m", "1h"])


def test_with_1m_alone_nothing_is_rolled_up() -> None:
    book = Book(["1m"], close_grace=5)
    assert book.add(minute(0), now=T0 + 62) == []
    assert book.add_many([minute(i) for i in range(1, 30)], now=T0 + 1800) == []
    assert book.expire(T0 + 86_400) == [] and book.pending() == 0


def test_the_last_minute_closes_each_bucket_smaller_timeframes_first() -> None:
    book = Book(["1m", "5m", "15m", "1h"], close_grace=5)
    closed = []
    for i in range(60):
        events = book.add(minute(i), now=T0 + 60 * i + 60 + LIVE_DELAY)
        closed += events
        if i in (14, 29, 44):  # a 5m and a 15m bucket end here: 5m comes first
            assert [e.timeframe for e in events] == ["5m", "15m"]
    assert [e.timeframe for e in closed].count("5m") == 12
    assert [e.timeframe for e in closed][-3:] == ["5m", "15m", "1h"]
    hour = closed[-1]
    assert isinstance(hour, Closed) and hour.complete
    assert hour.row == aggregate(T0, [minute(i) for i in range(60)])
    assert hour.row[1] == 100.0 and hour.row[4] == 160.0 and hour.row[5] == 60.0


def test_nothing_is_published_before_its_bucket_is_over() -> None:
    book = Book(["1m", "5m"], close_grace=5)
    for i in range(4):  # minutes 0..3 of a 5m bucket, written live
        assert book.add(minute(i), now=T0 + 60 * i + 60 + LIVE_DELAY) == []
    end = T0 + 300
    # the timer waits for the bucket's end plus the grace
    assert book.expire(end - 1) == []
    assert book.expire(end + 4.9) == []
    (closed,) = book.expire(end + 5)
    assert isinstance(closed, Closed) and closed.start == T0
    assert not closed.complete  # minute 4 never came: recomputed from storage first
    # the minute that was missing arrives late: a revision of the closed bucket
    assert book.add(minute(4), now=end + 30) == [Late("5m", T0)]


def test_a_replay_is_never_cut_by_the_timer() -> None:
    """History written long after it happened is not live: only its own candles close
    its buckets, however long the writer pauses."""
    book = Book(["1m", "5m", "1h"], close_grace=5)
    now = T0 + 10 * 86_400  # ten days later
    for i in range(3):
        assert book.add(minute(i), now=now) == []
    assert book.expire(now + 3600) == []  # a long pause in the replay: nothing closes
    events = book.add(minute(7), now=now + 3601)  # the replay goes on past the bucket
    assert [(e.timeframe, e.start, e.complete) for e in events] == [("5m", T0, False)]


def test_a_later_bucket_closes_the_open_one() -> None:
    book = Book(["1m", "5m", "15m"], close_grace=5)
    book.add(minute(0), now=T0 + 62)
    book.add(minute(1), now=T0 + 122)
    events = book.add(minute(16), now=T0 + 60 * 17 + 2)  # the feed skipped 2..15
    assert [(e.timeframe, e.start) for e in events] == [("5m", T0), ("15m", T0)]
    assert all(isinstance(e, Closed) and not e.complete for e in events)


def test_a_corrected_minute_inside_an_open_bucket_is_recomputed_at_close() -> None:
    book = Book(["1m", "5m"], close_grace=5)
    book.add(minute(0), now=T0 + 62)
    book.add(minute(1), now=T0 + 122)
    book.add(minute(1, base=50.0), now=T0 + 125)  # minute 1 written again, corrected
    for i in (2, 3):
        book.add(minute(i), now=T0 + 60 * i + 62)
    (closed,) = book.add(minute(4), now=T0 + 302)
    assert isinstance(closed, Closed) and not closed.complete  # the stored minutes decide


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 179),
                          st.floats(0, 1e6, allow_nan=False, allow_infinity=False)),
                min_size=1, max_size=120))
def test_complete_rollups_equal_the_aggregate_of_their_minutes(
        picked: list[tuple[int, float]]) -> None:
    """Any subset of three hours of minutes, in time order: every bucket closed as
    complete holds exactly its minutes' aggregate (volume summed in time order, as the
    database does), and is complete exactly when every minute of it was there."""
    chosen = dict(sorted(picked))
    rows = [minute(i, base=1000.0 + (i % 7), volume=vol) for i, vol in chosen.items()]
    book = Book(["1m", "5m", "15m", "1h"], close_grace=5)
    events = []
    for row in rows:
        events += book.add(row, now=row[0] + 60 + LIVE_DELAY)
    spans = {"5m": 300, "15m": 900, "1h": 3600}
    for event in events:
        assert isinstance(event, Closed)
        span = spans[event.timeframe]
        inside = [r for r in rows if event.start <= r[0] < event.start + span]
        assert event.complete == (len(inside) * 60 == span)
        if event.complete:
            assert event.row == aggregate(event.start, inside)


def _by_timeframe(events: list[Any]) -> dict[str, Any]:
    """Each timeframe's closes in order (a complete one with its candle), and the set
    of buckets found late (how many times each is found does not matter)."""
    out: dict[str, Any] = {}
    for e in events:
        closed, late = out.setdefault(e.timeframe, ([], set()))
        if isinstance(e, Closed):
            closed.append((e.start, e.complete, e.row if e.complete else None))
        else:
            late.add(e.start)
    return out


_STEP = st.one_of(
    st.tuples(st.just("minute"), st.integers(0, 600), st.floats(0, 1e4, allow_nan=False),
              st.sampled_from(["live", "replay"])),
    st.tuples(st.just("batch"), st.integers(0, 600), st.integers(1, 40),
              st.sampled_from(["live", "replay"])),
    st.tuples(st.just("expire"), st.integers(0, 700), st.just(0.0), st.just("")),
)


# minute 300 of the steps below at a Monday's midnight (1970-01-05 was a Monday)
_MONDAY_SHIFT = (4 * 86_400 - T0) % 604_800 - 300 * 60


@settings(max_examples=400, deadline=None)
# (found by this test: two chains, buckets found late in the second batch, one chain's
# larger bucket listed before its smaller one of the same end, and the timer between)
@example(steps=[("batch", 186, 40, "live"), ("expire", 241, 0.0, ""),
                ("batch", 200, 40, "live")], case=(["1m", "3m", "5m", "6m", "15m"], 0))
@given(st.lists(_STEP, max_size=60), st.sampled_from([
    (["1m", "5m", "15m", "1h"], 0), (["1m", "5m", "10m", "30m"], 0), (["1m", "3m", "1h"], 0),
    # timeframes whose buckets do not nest (3m in 5m, 2h in 3h, 1d in 2h+: two chains)
    (["1m", "3m", "5m", "15m"], 0), (["1m", "2h", "3h", "6h"], _MONDAY_SHIFT),
    (["1m", "3m", "5m", "6m", "15m"], 0),  # 6m after 3m, 15m after 5m: ends interleave
    # weeks from Monday: 1d nests, 2d does not (its buckets run from the epoch)
    (["1m", "4h", "1d", "1w"], _MONDAY_SHIFT), (["1m", "2h", "2d", "1w"], _MONDAY_SHIFT)]))
def test_the_book_agrees_with_the_plain_rules(steps: list[Any],
                                              case: tuple[list[str], int]) -> None:
    """Minutes in order and out of it, written twice, in batches, live and replayed,
    with the timer running: the Book (minutes into the smallest timeframe of each chain,
    buckets up the chain, batches a bucket at a time) closes and flags exactly what
    feeding every timeframe every minute does; and of buckets ending together, the
    smaller timeframe's comes first."""
    timeframes, shift = case
    book = Book(timeframes, close_grace=5)
    plain = ReferenceBook(timeframes, close_grace=5)
    spans = {tf: seconds(tf) for tf in timeframes}
    got: list[Any] = []
    want: list[Any] = []

    def taken(events: list[Any]) -> list[Any]:
        """What one call returned; of the buckets it closes ending together, the
        smaller timeframe's first."""
        by_end: dict[int, list[int]] = {}
        for e in events:
            if isinstance(e, Closed):
                by_end.setdefault(e.start + spans[e.timeframe], []).append(spans[e.timeframe])
        assert all(order == sorted(order) for order in by_end.values()), by_end
        return events

    clock = float(T0 + shift)
    for kind, at, value, how in steps:
        if kind == "expire":
            clock = max(clock, T0 + shift + 60 * at)
            got += taken(book.expire(clock))
            want += plain.expire(clock)
            continue
        count = 1 if kind == "minute" else int(value)
        rows = [(t + shift, *rest) for t, *rest in (
            minute(i, volume=float(value) if kind == "minute" else 1.0 + i % 3)
            for i in range(at, at + count))]
        clock = max(clock, rows[-1][0] + 62.0) if how == "live" else clock
        now = clock if how == "live" else rows[-1][0] + 10 * 86_400
        got += taken(book.add_many(rows, now) if kind == "batch" else book.add(rows[0], now))
        for row in rows:
            want += plain.add(row, now)
    assert _by_timeframe(got) == _by_timeframe(want)


def test_weeks_start_on_monday_and_nest_whole_days() -> None:
    """A week's bucket starts on the Monday at or before the time (00:00 UTC), as
    TradingView draws weeks; InfluxDB is asked for the same (``time(604800s,
    345600s)``), and every other timeframe stays aligned to the epoch."""
    from datetime import UTC, datetime

    from hubdomain.influxql import group_by_time

    for ts in range(T0 - 20 * 86_400, T0 + 20 * 86_400, 3_607):
        start = timeframes.bucket(ts, 604_800)
        day = datetime.fromtimestamp(start, UTC)
        assert (day.weekday(), day.hour, day.minute, day.second) == (0, 0, 0, 0)
        assert start <= ts < start + 604_800
        assert timeframes.bucket(ts, 86_400) == ts - ts % 86_400
        assert timeframes.bucket(ts, 2 * 604_800) in (start, start - 604_800)
    assert group_by_time(604_800) == "time(604800s,345600s)"
    assert group_by_time(3_600) == "time(3600s)"
    assert timeframes.chains(["1m", "5m", "15m", "30m", "1h", "4h", "1d"]) == [
        ["5m", "15m", "30m", "1h", "4h", "1d"]]
    # 1d after the larger of 3m and 5m; 1w after 3m (a 3d bucket is not whole in a week)
    assert timeframes.chains(["1m", "3m", "5m", "1d", "3d", "1w"]) == [
        ["3m", "1w"], ["5m", "1d", "3d"]]


# ---- the shared ring a process's subscribers follow (actors.stream), without Redis ----

def _raw(ms: int, ts: int) -> tuple[bytes, list[bytes]]:
    member = f"[{ts},1.0,2.0,0.5,1.5,1.0]".encode()
    return f"{ms}-0".encode(), [b"t", b"1m", b"c", member, b"r", b"0"]


@pytest.mark.anyio
async def test_a_subscriber_joining_a_shared_ring_gets_exactly_what_follows_its_snapshot(
        ) -> None:
    """Subscribers join a ring other subscribers keep alive, each with the stream id of
    its own snapshot: each gets the entries after that id, none before; one whose
    entries after its id are gone from the ring is told so (and catches up from storage
    in the hub), never handed a ring with a hole."""
    from actors.stream import StreamReader

    class Quiet:  # a backend whose streams never answer: the test feeds the ring itself
        async def read_streams(self, positions: Any, count: int, block_ms: int) -> Any:
            await asyncio.sleep(3600)

    reader = StreamReader(Quiet(), buffer=6)  # type: ignore[arg-type]
    first = reader.follow("s", b"100-0")
    ring = first.ring
    ring.append([_raw(100 + k, T0 + 60 * k) for k in range(1, 4)])  # ids 101..103
    late = reader.follow("s", b"101-0")  # its snapshot saw up to 101
    ahead = reader.follow("s", b"105-0")  # a snapshot newer than what the ring read
    ring.append([_raw(100 + k, T0 + 60 * k) for k in range(4, 7)])  # ids 104..106
    got_first = [e.id[0] for e in await first.take() or []]
    got_late = [e.id[0] for e in await late.take() or []]
    got_ahead = [e.id[0] for e in await ahead.take() or []]
    assert got_first == [101, 102, 103, 104, 105, 106]
    assert got_late == [102, 103, 104, 105, 106]
    assert got_ahead == [106]
    ring.append([_raw(100 + k, T0 + 60 * k) for k in range(7, 20)])  # 13 more: past 6
    stale = reader.follow("s", b"106-0")  # entries after 106 are gone from the ring
    assert await stale.take() is None
    assert await first.take() is None  # it fell behind too: catch up from storage
    for follower in (first, late, ahead, stale):
        follower.close()
    assert reader.rings == {}
    await reader.close()


def _numbered(ms: int, ts: int, n: int) -> tuple[bytes, list[bytes]]:
    entry_id, fields = _raw(ms, ts)
    return entry_id, [*fields, b"n", str(n).encode()]


@pytest.mark.anyio
async def test_a_snapshot_inside_a_trimmed_stretch_is_caught_up_not_stepped_over() -> None:
    """A reader far behind a fast writer: Redis trimmed entries 4-6 before the ring read
    them, so the ring holds 1-3 and 7-9. A subscriber whose snapshot (a catch-up's, or
    its first) ends at entry 5 must not go on at entry 7 (the id alone would find it:
    the first held id after the snapshot's): it is told it lost continuity and catches
    up from storage. One whose snapshot ends at 3, or at 7, goes on from the ring."""
    from actors.stream import StreamReader

    class Quiet:  # a backend whose streams never answer: the test feeds the ring itself
        async def read_streams(self, positions: Any, count: int, block_ms: int) -> Any:
            await asyncio.sleep(3600)

    reader = StreamReader(Quiet(), buffer=100)  # type: ignore[arg-type]
    keeper = reader.follow("s", b"100-0", 0)
    ring = keeper.ring
    ring.append([_numbered(100 + k, T0 + 60 * k, k) for k in (1, 2, 3)])
    assert ring.append([_numbered(100 + k, T0 + 60 * k, k) for k in (7, 8, 9)]) is False
    inside = reader.follow("s", b"105-0", 5)
    assert await inside.take() is None  # lost: catch up from storage
    before = reader.follow("s", b"103-0", 3)
    assert before._place((103, 0), 3) == -1  # entries 4-6 are gone: lost as well
    after = reader.follow("s", b"107-0", 7)
    assert [e.id[0] for e in await after.take() or []] == [108, 109]
    # a restart after a catch-up is held to the same rule
    inside.restart((105, 0), 5)
    assert await inside.take() is None
    inside.restart((109, 0), 9)
    ring.append([_numbered(110, T0 + 600, 10)])
    assert [e.id[0] for e in await inside.take() or []] == [110]
    # placed before the stretch: the entries up to it, then lost (its notice by the
    # reader may have come before a restart, so the numbers decide)
    two = reader.follow("s", b"102-0", 2)
    assert [e.id[0] for e in await two.take() or []] == [103]
    assert await two.take() is None
    assert [e.id[0] for e in await keeper.take() or []] == [101, 102, 103]
    assert await keeper.take() is None
    for follower in (keeper, inside, before, after, two):
        follower.close()
    await reader.close()


@pytest.mark.parametrize("timeframes", [None, ["1m", "5m"], ["1m", "3m", "1h", "1w"]])
def test_streams_buffer_holds_its_minutes_rollups_and_all(timeframes: list[str] | None
                                                           ) -> None:
    """``streams.buffer`` minutes count whole: the candles any 600 consecutive minutes
    publish, the rollups they close included, fit in what the config sizes for them,
    however the minutes fall on the buckets (a share per minute, rounded up, fell short:
    794 candles against 793 at one start). (``streams.length`` is counted in minutes
    by the stream itself: tests/test_write_runs.py.)"""
    from hubdomain.config import StreamsConfig

    config = StreamsConfig() if timeframes is None else StreamsConfig(timeframes=timeframes)
    n, day = 600, 1_700_006_400 - 1_700_006_400 % 604_800  # a week's start
    most = 0
    for start in range(0, 2 * 1440, 7):
        book = Book(config.timeframes, 5.0)
        rows = [(day + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0) for i in range(start + n)]
        if start:
            book.add_many(rows[:start], 0.0)
        closed = [e for e in book.add_many(rows[start:], 0.0) if isinstance(e, Closed)]
        most = max(most, n + len(closed))
    assert most <= StreamsConfig(buffer=n, timeframes=config.timeframes).buffer_candles
