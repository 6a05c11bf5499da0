"""Actor logic with in-memory fakes of the backend protocols (real servers: other files)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.backends.influx import WriteRejected
from actors.heap import Trimmer
from actors.query import Query, QueryActor
from actors.runtime import Actor, Envelope, Mailbox, MailboxFull, Request, Supervisor, resolve
from actors.state import StateActor
from actors.writer import Lines, WriterActor
from hub.errors import BackendUnavailable, HubClosed

pytestmark = pytest.mark.anyio


class FakeInflux:
    """InfluxBackend in memory: can be told to be down, or to reject lines with 'BAD'."""

    def __init__(self) -> None:
        self.posts: list[list[str]] = []
        self.down = 0  # fail this many writes as unavailable
        self.queries: list[str] = []
        self.query_gate: asyncio.Event | None = None

    async def connect(self) -> None:
        pass

    async def write(self, body: bytes, rp: str | None = None) -> None:
        lines = body.decode().split("\n")
        if self.down:
            self.down -= 1
            raise BackendUnavailable("influxdb", "connection refused")
        if any("BAD" in line for line in lines):
            raise WriteRejected(400, "field type conflict")
        self.posts.append(lines)

    async def query(self, text: str, epoch: str = "s") -> list[dict[str, Any]]:
        self.queries.append(text)
        if self.query_gate is not None:
            await self.query_gate.wait()
        return [{"series": [{"columns": ["time", "last"], "values": [[0, len(self.queries)]]}]}]

    async def close(self) -> None:
        pass

    @property
    def written(self) -> list[str]:
        return [line for post in self.posts for line in post]


async def started_writer(fake: FakeInflux, **options: Any
                         ) -> tuple[WriterActor, StateActor, Supervisor]:
    """A StateActor on :memory: and a WriterActor on ``fake``, started."""
    state = StateActor(":memory:")
    settings: dict[str, Any] = {"batch_size": 100, "linger": 0.01, "give_up_after": 30,
                                **options}
    writer = WriterActor(fake, state, **settings)
    sup = Supervisor()
    await sup.start([state, writer])
    return writer, state, sup


@pytest.fixture
async def writer_env() -> AsyncIterator[tuple[WriterActor, FakeInflux, StateActor]]:
    fake = FakeInflux()
    writer, state, sup = await started_writer(fake, linger=0.05, give_up_after=0.5)
    yield writer, fake, state
    await sup.stop()


async def test_mailbox_is_bounded() -> None:
    box: Mailbox[int] = Mailbox("t", 2)
    box.send_nowait(1)
    box.send_nowait(2)
    with pytest.raises(MailboxFull):
        box.send_nowait(3)
    blocked = asyncio.create_task(box.send(3))
    await asyncio.sleep(0)
    assert box.statistics() == {"depth": 2, "maxsize": 2, "waiting_senders": 1}
    assert await box.receive_batch(10) == [1, 2]
    await blocked
    assert await box.receive_batch(10) == [3]
    box.close()
    with pytest.raises(HubClosed):
        await box.send(4)
    assert await box.receive_batch(10) == []


async def test_writer_batches_by_size_and_keeps_order(writer_env: Any) -> None:
    writer, fake, _ = writer_env
    for i in range(250):
        await writer.tell(Lines([f"m v={i} {i}"]))
    await writer.flush()
    assert fake.written == [f"m v={i} {i}" for i in range(250)]
    assert [len(p) for p in fake.posts][:2] == [100, 100]


async def test_writer_linger_sends_a_partial_batch_without_flush(writer_env: Any) -> None:
    writer, fake, _ = writer_env
    await writer.tell(Lines(["m v=1 1"]))
    for _ in range(100):
        if fake.posts:
            break
        await asyncio.sleep(0.01)
    assert fake.posts == [["m v=1 1"]]


async def test_writer_retries_transient_failures_in_order(writer_env: Any) -> None:
    writer, fake, _ = writer_env
    fake.down = 3
    await writer.tell(Lines([f"m v={i} {i}" for i in range(10)]))
    await writer.tell(Lines([f"m v={i} {i}" for i in range(10, 20)]))
    await writer.flush()
    assert fake.written == [f"m v={i} {i}" for i in range(20)]
    assert writer.statistics()["retries"] == 3


async def test_retry_after_is_honoured() -> None:
    from actors.backends.influx import Unavailable

    class Busy(FakeInflux):
        def __init__(self) -> None:
            super().__init__()
            self.attempts: list[float] = []

        async def write(self, body: bytes, rp: str | None = None) -> None:
            self.attempts.append(asyncio.get_running_loop().time())
            if len(self.attempts) == 1:
                raise Unavailable("HTTP 429: slow down", retry_after=0.4)
            await super().write(body, rp)

    fake = Busy()
    writer, _, sup = await started_writer(fake)
    await writer.tell(Lines(["m v=1 1"]))
    await writer.flush()
    assert fake.written == ["m v=1 1"]
    # not before the server allowed (the default backoff here is 0.05-0.1 s; 10 ms is for
    # the loop clock, which uvloop keeps in milliseconds)
    assert fake.attempts[1] - fake.attempts[0] >= 0.39
    await sup.stop()


async def test_flush_reports_a_long_outage(writer_env: Any) -> None:
    writer, fake, _ = writer_env
    fake.down = 10_000
    await writer.tell(Lines(["m v=1 1"]))
    with pytest.raises(BackendUnavailable, match="kept and retried"):
        await writer.flush()
    fake.down = 0
    await writer.flush()
    assert fake.written == ["m v=1 1"]


async def test_rejected_points_are_isolated_and_quarantined(writer_env: Any) -> None:
    writer, fake, state = writer_env
    lines = [f"m v={i} {i}" for i in range(9)]
    lines[4] = "m BAD=1 4"
    await writer.tell(Lines(lines))
    await writer.flush()
    assert sorted(fake.written) == sorted(lines[:4] + lines[5:])
    assert await state.quarantined(10) == [("m BAD=1 4", "field type conflict")]
    assert writer.statistics()["quarantined"] == 1


async def test_after_a_spooled_outage_flush_works_again() -> None:
    fake = FakeInflux()
    writer, _, sup = await started_writer(fake, spool_after=0.0)
    fake.down = 3
    await writer.tell(Lines([f"m v={i} {i}" for i in range(10)]))
    await writer.flush()  # spooled, replayed, flushed
    assert writer.statistics()["spooled"] == 10 and writer.statistics()["replayed"] == 10
    for _ in range(100):  # the sender finds the outbox empty and leaves spool mode
        if not writer.statistics()["spooling"]:
            break
        await asyncio.sleep(0.01)
    assert writer.statistics()["spooling"] is False
    await writer.tell(Lines(["m v=10 10"]))
    await asyncio.wait_for(writer.flush(), 5)
    assert fake.written == [f"m v={i} {i}" for i in range(11)]
    await sup.stop()


async def test_outbox_lines_are_deleted_once_written_and_replayed_at_start() -> None:
    fake = FakeInflux()
    state = StateActor(":memory:")
    sup = Supervisor()
    await sup.start([state])
    ids = await state.outbox_add(["t v=1 1", "t v=2 2"], "trade")
    # a new writer replays the outbox before anything else
    writer = WriterActor(fake, state, batch_size=100, linger=0.01, give_up_after=1)
    sup2 = Supervisor()
    await sup2.start([writer])
    await writer.tell(Lines(["t v=3 3"], None))
    await writer.flush()
    assert fake.written == ["t v=1 1", "t v=2 2", "t v=3 3"]
    assert await state.outbox_load(0, 10) == []
    assert ids == [1, 2]
    await sup2.stop()
    await sup.stop()


async def outbox_emptied(state: StateActor) -> bool:
    """Whether the outbox empties within a second (deletes are told, not asked)."""
    for _ in range(100):
        if not await state.outbox_load(0, 100):
            return True
        await asyncio.sleep(0.01)
    return False


class PostsThenDown(FakeInflux):
    """Takes ``allow`` POSTs, then is unavailable."""

    def __init__(self, allow: int) -> None:
        super().__init__()
        self.allow = allow

    async def write(self, body: bytes, rp: str | None = None) -> None:
        if self.allow <= 0:
            raise BackendUnavailable("influxdb", "connection refused")
        self.allow -= 1
        await super().write(body, rp)


async def test_a_row_of_durable_lines_leaves_the_outbox_once_its_last_line_is_written(
        ) -> None:
    """Durable lines three to an outbox row, POSTed two at a time, InfluxDB gone after
    two POSTs: only the first row (its last line in the second POST) is deleted; a new
    writer on the same outbox replays the others whole, and every line reaches InfluxDB."""
    state = StateActor(":memory:")
    sup = Supervisor()
    await sup.start([state])
    first = PostsThenDown(allow=2)
    writer = WriterActor(first, state, batch_size=2, linger=0.01, give_up_after=30)
    sup_w = Supervisor()
    await sup_w.start([writer])
    lines = [f"m v={i} {i}" for i in range(7)]
    rows = await state.outbox_add(lines, "durable", 3)
    assert rows == [1, 2, 3]
    writer.write_durable(lines, rows, 3)
    for _ in range(500):
        if first.allow == 0 and len(await state.outbox_load(0, 100)) < 3:
            break
        await asyncio.sleep(0.01)
    assert first.written == lines[:4]
    await asyncio.sleep(0.05)  # (a wrong delete would have come by now)
    assert await state.outbox_load(0, 100) == [(2, lines[3:6]), (3, lines[6:])]
    await sup_w.stop()  # InfluxDB still down: the rows stay
    second = FakeInflux()
    again = WriterActor(second, state, batch_size=2, linger=0.01, give_up_after=30)
    sup_w = Supervisor()
    await sup_w.start([again])
    await asyncio.wait_for(again.flush(), 5)
    assert second.written == lines[3:]
    assert await outbox_emptied(state)
    await sup_w.stop()
    await sup.stop()


async def test_rejected_lines_of_durable_rows_are_quarantined_and_the_rows_let_go() -> None:
    """A rejected line before a row's last one, and a rejected last line: both are
    quarantined, the others written, and neither row stays in the outbox."""
    fake = FakeInflux()
    writer, state, sup = await started_writer(fake)
    lines = ["m v=0 0", "BAD v=1 1", "m v=2 2", "m v=3 3", "m v=4 4", "BAD v=5 5"]
    rows = await state.outbox_add(lines, "durable", 3)
    writer.write_durable(lines, rows, 3)
    await asyncio.wait_for(writer.flush(), 5)
    assert sorted(fake.written) == sorted(line for line in lines if "BAD" not in line)
    assert sorted(line for line, _ in await state.quarantined(10)) == [
        "BAD v=1 1", "BAD v=5 5"]
    assert await outbox_emptied(state)
    await sup.stop()


@pytest.mark.parametrize("group", [1, 1000])
@pytest.mark.parametrize("lines", [
    [f"m v={i} {i}" for i in range(3000)],  # one json_each statement
    ['t note="a\x00b" 1', "t v=2 2"],  # a NUL: the row-by-row path
    ['t note="\u2028 é \\ \" \\u0000 end" 1', "t v=2 2", "t v=3 3"],
    ['t note="two\nlines" 1', "t v=2 2", 't note="\n" 3'],  # newlines inside strings
])
async def test_outbox_keeps_every_line_exactly_with_consecutive_ids(
        tmp_path: Path, lines: list[str], group: int) -> None:
    """Durable lines go into the SQLite outbox as one statement (json_each) when they
    can, or ``group`` to a row: each comes back exactly as given, in order, in the rows
    outbox_add returned, after the file is opened again; a load takes as many rows as
    hold the lines asked for."""
    state = StateActor(str(tmp_path / "s.sqlite"))
    sup = Supervisor()
    await sup.start([state])
    await state.outbox_add(["t v=0 0"], "trade")
    ids = await state.outbox_add(lines, "durable", group)
    await sup.stop()
    again = StateActor(str(tmp_path / "s.sqlite"))
    sup = Supervisor()
    await sup.start([again])
    parts = [lines[i:i + group] for i in range(0, len(lines), group)]
    assert ids == list(range(2, 2 + len(parts)))
    assert await again.outbox_load(1, 10_000) == list(zip(ids, parts, strict=True))
    assert await again.outbox_bounds() == (1 + len(lines), ids[-1])
    assert [row_id for row_id, _ in await again.outbox_load(1, 1)] == [2]
    await sup.stop()


async def test_close_spools_what_influx_cannot_take() -> None:
    fake = FakeInflux()
    fake.down = 10_000
    writer, state, sup = await started_writer(fake, give_up_after=1)
    await writer.tell(Lines(["m v=1 1", "m v=2 2"]))
    writer.mailbox.close()
    await sup._tasks[writer]
    assert await state.outbox_load(0, 10) == [(1, ["m v=1 1"]), (2, ["m v=2 2"])]
    await sup.stop()


async def test_query_singleflight_shares_one_query() -> None:
    fake = FakeInflux()
    fake.query_gate = asyncio.Event()
    query = QueryActor(fake)
    sup = Supervisor()
    await sup.start([query])
    calls = [asyncio.create_task(query.run_query(Query("SELECT 1", key="k"))) for _ in range(50)]
    other = asyncio.create_task(query.run_query(Query("SELECT 2", key="other")))
    await asyncio.sleep(0.01)
    fake.query_gate.set()
    results = await asyncio.gather(*calls, other)
    assert fake.queries == ["SELECT 1", "SELECT 2"]
    assert all(r == results[0] for r in results[:50])
    assert query.statistics()["shared"] == 49
    await sup.stop()


@dataclass(frozen=True)
class Echo(Request[Any]):
    value: Any


class Crashy(Actor):
    name = "crashy"

    def __init__(self) -> None:
        super().__init__(mailbox_size=100)
        self.setups = 0

    async def setup(self) -> None:
        self.setups += 1

    async def handle(self, batch: Any) -> None:
        for call in batch:
            if call.message.value == "boom":
                raise RuntimeError("bug")
            resolve(call.future, call.message.value * 2)


async def _restarted(actor: Actor) -> None:
    for _ in range(500):
        if actor.down is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the actor was not restarted")


async def test_supervisor_restarts_a_crashed_actor_and_callers_never_hang() -> None:
    actor = Crashy()
    sup = Supervisor(max_restarts=2, window=1.0, max_backoff=0.3)
    await sup.start([actor])
    with pytest.raises(BackendUnavailable, match="crashed"):
        await actor.ask(Echo("boom"))
    # while it waits to restart, a call fails at once (no hang), a tell waits its turn
    with pytest.raises(BackendUnavailable, match="restarting"):
        await actor.ask(Echo(1))
    await _restarted(actor)
    assert await actor.ask(Echo(21)) == 42
    assert actor.setups == 2 and actor.restarts == 1
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await actor.ask(Echo("boom"))
        await _restarted(actor)
    # past the budget: unhealthy, yet still restarted; never given up, never HubClosed
    assert sup.healthy is False
    assert await asyncio.wait_for(actor.ask(Echo(5)), 5) == 10
    assert actor.mailbox.closed is False
    await asyncio.sleep(1.1)  # a window without a crash: healthy again by itself
    assert sup.healthy is True
    await sup.stop()


async def test_cancelled_caller_leaves_no_pending_reply() -> None:
    gate = asyncio.Event()

    class Slow(Actor):
        name = "slow"

        async def handle(self, batch: Any) -> None:
            await gate.wait()
            for call in batch:
                resolve(call.future, "late")

    actor = Slow()
    sup = Supervisor()
    await sup.start([actor])
    task = asyncio.create_task(actor.ask(Echo("x")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    assert await actor.ask(Echo("y")) == "late"  # the actor carried on; no InvalidStateError
    await sup.stop()


class Holding(Actor):
    """Answers each call at once, but the ones whose value is "hold" only once released."""

    name = "holding"

    def __init__(self) -> None:
        super().__init__(mailbox_size=100_000)
        self.held: list[Envelope] = []

    async def handle(self, batch: Any) -> None:
        for call in batch:
            if call.message.value == "hold":
                self.held.append(call)
            else:
                resolve(call.future, call.message.value)

    def release(self) -> None:
        for call in self.held:
            resolve(call.future, "released")
        self.held.clear()


async def test_a_call_left_unanswered_fails_after_its_seconds_and_answered_ones_are_not_kept(
        ) -> None:
    actor = Holding()
    sup = Supervisor()
    await sup.start([actor])
    loop = asyncio.get_running_loop()
    try:
        began = loop.time()
        with pytest.raises(TimeoutError):
            await actor.ask_within(Echo("hold"), 0.1)
        assert 0.09 <= loop.time() - began < 1.0
        # answered calls are let go as new ones come: memory does not grow with calls
        for i in range(20_000):
            assert await actor.ask_within(Echo(i), 5.0) == i
        assert actor._deadlines.pending() <= 2
        # one answered just in time is not failed after its answer
        slow = asyncio.ensure_future(actor.ask_within(Echo("hold"), 0.2))
        await asyncio.sleep(0.1)
        actor.release()
        assert await slow == "released"
        await asyncio.sleep(0.2)  # past its deadline: nothing raised anywhere
        assert slow.result() == "released"
    finally:
        actor.release()
        await sup.stop()


async def test_a_short_deadline_is_kept_behind_a_long_one() -> None:
    """A call with a short timeout made while one with a long timeout waits fails on its
    own time, not the long one's; the long one still has its whole time."""
    actor = Holding()
    sup = Supervisor()
    await sup.start([actor])
    loop = asyncio.get_running_loop()
    try:
        long = asyncio.ensure_future(actor.ask_within(Echo("hold"), 30.0))
        await asyncio.sleep(0)
        began = loop.time()
        with pytest.raises(TimeoutError):
            await actor.ask_within(Echo("hold"), 0.1)
        assert loop.time() - began < 1.0
        assert not long.done()
        actor.release()
        assert await long == "released"
    finally:
        actor.release()
        await sup.stop()


async def test_setup_failure_fails_start() -> None:
    class Broken(Actor):
        name = "broken"

        async def setup(self) -> None:
            raise BackendUnavailable("redis", "connection refused")

    sup = Supervisor()
    with pytest.raises(BackendUnavailable, match="connection refused"):
        await sup.start([StateActor(":memory:"), Broken()])


async def test_close_is_bounded_even_when_an_actor_hangs() -> None:
    from hub import Hub, HubConfig

    class Hang(Actor):
        name = "hang"

        async def handle(self, batch: Any) -> None:
            await asyncio.Event().wait()

    hub = Hub(HubConfig.from_mapping({"redis": {"enabled": False},
                                      "influxdb": {"enabled": False},
                                      "sqlite": {"path": ":memory:"}}, environ={}))
    await hub.start()
    assert hub._supervisor is not None
    hang = Hang()
    hub._supervisor._tasks[hang] = asyncio.create_task(hub._supervisor._supervise(
        hang, asyncio.get_running_loop().create_future()))
    await hang.tell("x")
    hub.close_timeout = 0.2
    await asyncio.wait_for(hub.close(), 5)
    with pytest.raises(HubClosed):
        await hub.get_position("e", "p")


def test_window_pushes_to_one_key_are_coalesced_in_order() -> None:
    from actors.cache.ops import coalesce, decode_candle, op_get, op_push_candles

    def c(ts: int, close: float) -> tuple[int, float, float, float, float, float]:
        return (ts, 1.0, 2.0, 0.5, close, 1.0)

    batch = [
        Envelope(op_push_candles("k", [c(120, 1.0)], 10, 60), None),
        Envelope(op_get("other"), None),
        Envelope(op_push_candles("k2", [c(60, 9.0)], 10, 60), None),
        Envelope(op_push_candles("k", [c(60, 2.0), c(120, 3.0)], 10, 60), None),
    ]
    out = coalesce(batch)
    assert len(out) == 3  # k's two pushes became one, placed where the first one was
    merged = out[0].message
    assert merged.commands[0][:7] == ("EVALSHA", merged.commands[0][1], 1, "k", 10, 60, 120)
    items = merged.items
    pairs = [(items[i], decode_candle(items[i + 1]).close) for i in range(0, len(items), 2)]
    # in the order written: the later write of 120 comes last, 60 after the first 120
    assert pairs == [(120, 1.0), (60, 2.0), (120, 3.0)]
    assert merged.fallback[0][0] == "EVAL"


def test_merged_window_pushes_keep_the_order_they_were_written_in() -> None:
    """A feed's pushes one after another, pushes meeting at one time, and pushes out of
    order: the merged call holds every candle in the order written (a late one after
    the newer ones before it, so that it is published as a late candle, not inside a
    run of new ones)."""
    import random

    from actors.cache.ops import coalesce, decode_candle, op_push_candles

    rng = random.Random(7)
    for case in range(200):
        runs, start, written = [], rng.randrange(10), []
        for _ in range(rng.randrange(2, 6)):
            size = rng.randrange(1, 5)
            times = sorted(60 * (start + rng.randrange(4)) + 60 * k for k in range(size))
            start = times[-1] // 60 + (rng.randrange(-3, 2) if case % 2 else 0)
            rows = [(t, 1.0, 2.0, 0.5, float(len(written) + k), 1.0)
                    for k, t in enumerate(times)]
            written += rows
            runs.append(Envelope(op_push_candles("k", rows, 100, 60), None))
        (merged,) = coalesce(runs)
        items = merged.message.items
        got = [(items[i], decode_candle(items[i + 1]).close) for i in range(0, len(items), 2)]
        assert got == [(r[0], r[4]) for r in written]


def test_a_merged_script_call_holds_redis_for_a_bounded_time() -> None:
    """A writer far ahead of Redis queues many pushes to one window: they are merged into
    calls of at most MERGE_CAP candles each, in order, none lost."""
    from actors.cache.ops import MERGE_CAP, coalesce, op_publish_many, op_push_candles

    def c(ts: int) -> tuple[int, float, float, float, float, float]:
        return (ts, 1.0, 2.0, 0.5, 1.5, 1.0)

    batch = []
    for run in range(10):
        minutes = [c(60 * (256 * run + i)) for i in range(256)]
        batch.append(Envelope(op_push_candles("w1m", minutes, 1000, 60, stream="s",
                                              length=100), None))
        batch.append(Envelope(op_publish_many("s", 100, [("w5m", 1000, 360, "5m",
                                                          [c(300 * run)])]), None))
    out = coalesce(batch)
    sizes = [sum(len(g[4]) for g in e.message.publish[2]) // 2 for e in out]
    assert max(sizes) <= MERGE_CAP and sum(sizes) == 10 * 256 + 10
    minutes_sent = [t for e in out for g in e.message.publish[2] if g[3] == "1m"
                    for t in g[4][::2]]
    assert minutes_sent == [60 * i for i in range(2560)]


async def test_a_minute_and_the_rollups_it_closes_go_out_in_one_script_call() -> None:
    """Queued together, they reach Redis as one PUBLISH_MANY (the minute's entry first),
    so a stream reader gets the closing minute and its rollups in one XREAD reply."""
    from actors.cache.ops import coalesce, op_get, op_publish_many, op_push_candles

    def c(ts: int) -> tuple[int, float, float, float, float, float]:
        return (ts, 1.0, 2.0, 0.5, 1.5, 1.0)

    minute = op_push_candles("w1m", [c(240)], 10, 60, stream="s", length=100)
    rollups = op_publish_many("s", 100, [("w5m", 10, 360, "5m", [c(0)]),
                                         ("w15m", 10, 960, "15m", [c(0)])], tag="p-3")
    other = op_push_candles("x1m", [c(240)], 10, 60, stream="t", length=100)
    out = coalesce([Envelope(minute, None), Envelope(rollups, None), Envelope(other, None)])
    assert len(out) == 2
    joined = out[0].message
    command = joined.commands[0]
    # the stream, who follows it, then the windows
    assert command[2:8] == (5, "s", "candlefollowers:s", "w1m", "w5m", "w15m")
    # the stream's length, the rollups' tag (the joined call's entries carry it), then
    # the minute's group first
    assert command[8:14] == (100, "p-3", 10, 60, "1m", 1)
    assert [g[3] for g in joined.publish[2]] == ["1m", "5m", "15m"]
    assert set(joined.writes) == {"w1m", "w5m", "w15m", "s"}
    assert joined.fallback[0][2:] == command[2:]
    assert out[1].message is other  # another product's stream stays apart
    # an awaited op in between keeps them apart (nothing moves across a read)
    apart = coalesce([Envelope(minute, None), Envelope(op_get("w1m"),
                                                   asyncio.get_running_loop().create_future()),
                      Envelope(rollups, None)])
    assert len(apart) == 3


async def test_slow_influx_means_backpressure_not_spooling() -> None:
    gate = asyncio.Event()

    class Slow(FakeInflux):
        async def write(self, body: bytes, rp: str | None = None) -> None:
            await gate.wait()
            await super().write(body, rp)

    fake = Slow()
    writer, _, sup = await started_writer(fake, batch_size=5, max_pending=10)
    for i in range(0, 40, 5):  # a feed: a few lines at a time
        await writer.tell(Lines([f"m v={j} {j}" for j in range(i, i + 5)]))
        await asyncio.sleep(0.01)
    stats = writer.statistics()
    assert stats["spooled"] == 0 and stats["pending"] <= 10 + 5
    assert stats["depth"] > 0  # the rest waits in the mailbox
    gate.set()
    await writer.flush()
    assert fake.written == [f"m v={i} {i}" for i in range(40)]
    await sup.stop()


async def test_concurrent_master_discovery_keeps_every_sentinel_once() -> None:
    """After a failover the first sentinel may still report the old master down, and
    several connections ask at once. Each moves the sentinel that answered to the front;
    the list keeps every sentinel exactly once (a sentinel dropped from it is never asked
    again, and its connections are never closed), and close() closes each of them."""
    from actors.backends.redis import RedisClient
    from hubdomain.config import RedisConfig

    client = RedisClient(RedisConfig.model_validate({"sentinel": {
        "nodes": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], "service_name": "m"}}))
    sentinels = client._sentinel
    assert sentinels is not None
    closed: list[int] = []

    def answer(i: int, healthy: bool) -> Any:
        async def sentinel_masters() -> dict[str, Any]:
            for _ in range(i + 1):  # answers arrive in a different order each time
                await asyncio.sleep(0)
            return {"m": {"is_master": True, "is_sdown": not healthy, "is_odown": False,
                          "num-other-sentinels": 2, "ip": "127.0.0.1", "port": 7000}}
        return sentinel_masters

    async def closing(i: int) -> None:
        closed.append(i)

    for i, node in enumerate(sentinels.clients):
        node.sentinel_masters = answer(i, healthy=i > 0)
        node.aclose = lambda i=i: closing(i)
    found = await asyncio.gather(*(sentinels.discover_master("m") for _ in range(20)))
    assert set(found) == {("127.0.0.1", 7000)}
    assert sorted(map(id, sentinels.sentinels)) == sorted(map(id, sentinels.clients))
    assert sentinels.sentinels[0] is not sentinels.clients[0]  # the healthy one is asked first
    client._client.aclose = lambda: closing(-1)  # type: ignore[method-assign]
    await client.close()
    assert sorted(closed) == [-1, 0, 1, 2]


async def test_closing_a_sentinel_client_closes_everything_when_one_part_fails() -> None:
    """A connection to a dead master can time out while closing (a busy machine): the
    pool and every sentinel's connections are closed all the same, then it is raised."""
    from actors.backends.redis import RedisClient
    from hubdomain.config import RedisConfig

    client = RedisClient(RedisConfig.model_validate({"sentinel": {
        "nodes": ["127.0.0.1:1", "127.0.0.1:2"], "service_name": "m"}, "timeout": 0.5}))
    closed: list[str] = []

    class Dead:
        async def disconnect(self) -> None:
            closed.append("pipelines")
            raise TimeoutError("Timed out closing connection after 0.5")

    async def closing(name: str) -> None:
        closed.append(name)

    client._conn = Dead()
    client._client.aclose = lambda: closing("pool")  # type: ignore[method-assign]
    for i, node in enumerate(client._sentinel.sentinels):
        node.aclose = lambda i=i: closing(f"sentinel {i}")
    with pytest.raises(TimeoutError, match="closing connection"):
        await client.close()
    assert closed == ["pipelines", "pool", "sentinel 0", "sentinel 1"]
    assert client._conn is None


async def test_the_heap_is_trimmed_once_the_burst_is_quiet() -> None:
    """Idle moments between a burst's batches do not trim; a quiet period after it does,
    once."""
    trimmer = Trimmer(after=100, quiet=0.2)
    if not trimmer.available:
        pytest.skip("not glibc: no malloc_trim")
    for _ in range(6):  # idle after each batch, the next one 0.1 s later
        trimmer.count(100, idle=True)
        await asyncio.sleep(0.1)
    assert trimmer.trims == 0
    await asyncio.sleep(0.3)
    await trimmer.close()
    assert trimmer.trims == 1
    trimmer.count(100, idle=True)
    await trimmer.close(pending=False)  # the process ends: no trim for it
    assert trimmer.trims == 1


async def test_the_writer_trims_the_heap_once_a_burst_is_written() -> None:
    """After many lines, once nothing waits any more, the writer gives the heap's freed
    memory back (once per burst; a trickle of writes never triggers it)."""
    fake = FakeInflux()
    writer, _, sup = await started_writer(fake, batch_size=5000)
    writer.heap.after = 20_000
    await writer.tell(Lines([f"m v={i} {i}" for i in range(10_000)]))
    await asyncio.wait_for(writer.flush(), 10)
    await writer.heap.close()
    assert writer.statistics()["heap_trims"] == 0  # not enough yet
    for k in range(5):
        await writer.tell(Lines([f"m v={i} {i}" for i in range(k * 6000, (k + 1) * 6000)]))
    await asyncio.wait_for(writer.flush(), 10)
    await writer.heap.close()
    assert writer.statistics()["heap_trims"] == (1 if writer.heap.available else 0)
    assert sum(len(p) for p in fake.posts) == 40_000
    await sup.stop()


class FakeRedis:
    """The parts of RedisBackend a value read uses: GET and PTTL of a dict. ``gate``
    holds every pipeline until set; ``trips`` counts them."""

    multi_key_scripts = False
    lone_reads = True
    forget_all_on_reconnect = False
    restarted = False
    unavailable_slots = 0

    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values
        self.trips = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.turn = asyncio.Lock()
        self.delay = 0.0  # seconds each trip takes (0: answered without waiting)

    async def connect(self) -> None:
        pass

    async def forgot_all(self) -> None:
        pass

    async def flushed(self) -> None:
        pass

    async def pipeline(self, commands: Any) -> list[Any]:
        async with self.turn:  # one at a time, as the real one
            self.trips += 1
            await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            out: list[Any] = []
            for command in commands:
                if command[0] == "SET":
                    self.values[command[1]] = command[2]
                out.append(self.values.get(command[1]) if command[0] in ("GET", "SET")
                           else 60_000)
            return out

    async def close(self) -> None:
        pass


async def test_a_lone_read_skips_the_mailbox_but_never_a_stale_or_queued_write() -> None:
    """A cold read while the cache actor is idle runs on the caller's task; it answers
    a miss for a key whose write Redis refused (not the older value Redis holds), and a
    read while a write is queued goes behind the write, through the actor."""
    from actors.cache import CacheActor
    from actors.cache.ops import op_set
    from actors.cache.service import MISS, CacheService

    backend = FakeRedis({"indicator:a": b"1.5", "indicator:b": b"2.5"})
    actor = CacheActor(backend)  # type: ignore[arg-type]
    sup = Supervisor()
    await sup.start([actor])
    try:
        service = CacheService(actor, timeout=1.0)
        handled = actor.round_trips
        assert await service.value("indicator:a") == (True, 1.5)
        actor._dirty.add("indicator:b")  # a write of it was refused: Redis holds 2.5
        assert await service.value("indicator:b") == (True, MISS)
        assert actor.round_trips == handled + 2
        # a write queued and not yet run: the read after it goes behind it
        for i in range(20):
            await actor.tell(op_set("indicator:c", str(i).encode(), 60))
            assert await service.value("indicator:c") == (True, i)
        # reads while a lone read is out queue up and share the actor's next trip
        backend.gate.clear()
        trips = backend.trips
        first = asyncio.create_task(service.value("indicator:a"))
        await asyncio.sleep(0)
        others = [asyncio.create_task(service.value("indicator:b")) for _ in range(10)]
        await asyncio.sleep(0.01)
        backend.gate.set()
        assert await first == (True, 1.5)
        assert [await read for read in others] == [(True, MISS)] * 10
        assert backend.trips - trips == 2
    finally:
        await sup.stop()


async def test_concurrent_callers_cold_reads_share_one_trip_a_round() -> None:
    """Strategies reading cold keys one after another, concurrently: once the actor has
    answered their reads together, each one's next read joins the others' in one trip
    (none goes alone first, which would make every round two trips)."""
    from actors.cache import CacheActor
    from actors.cache.service import CacheService

    backend = FakeRedis({f"indicator:{i}": str(i).encode() for i in range(200)})
    backend.delay = 0.002  # a round trip
    actor = CacheActor(backend)  # type: ignore[arg-type]
    sup = Supervisor()
    await sup.start([actor])
    try:
        service = CacheService(actor, timeout=5.0)

        async def strategy(i: int) -> list[Any]:
            return [(await service.value(f"indicator:{i * 10 + j}"))[1] for j in range(10)]

        trips = backend.trips
        answers = await asyncio.gather(*(strategy(i) for i in range(20)))
        assert answers == [[i * 10 + j for j in range(10)] for i in range(20)]
        # ten rounds of twenty reads: ten trips, and the first read of all going alone
        assert backend.trips - trips <= 11
    finally:
        await sup.stop()


class _NeverReads:
    """A Redis backend whose stream reads never answer (the test feeds the ring)."""

    async def read_streams(self, positions: Any, count: int, block_ms: int) -> Any:
        await asyncio.Event().wait()


def _entry(tag: str, timeframe: str, ts: int, n: int) -> list[bytes]:
    return [b"o", tag.encode(), b"t", timeframe.encode(),
            b"c", f"[{ts},1.0,2.0,0.5,1.5,1.0]".encode(), b"r", b"0", b"n", str(n).encode(),
            b"k", b"0"]


async def test_a_rollup_goes_to_followers_here_early_only_when_it_overtakes_none_of_ours(
) -> None:
    """The process's own rollup reaches its followers at once only while its previous
    one of that timeframe has been read back from the stream (else the stream brings it,
    in order: an early one would overtake it); a follower that starts later takes only
    those published after it started; a stream nobody here follows is not tagged."""
    from actors.stream import StreamReader

    reader = StreamReader(_NeverReads(), 100)  # type: ignore[arg-type]
    follower = reader.follow("s", b"0-0", 0)
    ring = reader.rings["s"]

    def row(ts: int) -> tuple[int, float, float, float, float, float]:
        return (ts, 1.0, 2.0, 0.5, 1.5, 1.0)

    async def taken(f: Any) -> list[tuple[str, int]]:
        entries = await asyncio.wait_for(f.take(), 1)
        return [(e.candle.timeframe, e.candle.timestamp) for e in entries]

    async def nothing(f: Any) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(f.take(), 0.05)

    try:
        first = reader.publishing("s", {"5m": [row(0)]}, early=True)
        assert first == f"{reader.tag}-1"
        assert await taken(follower) == [("5m", 0)]
        # the next 5m close while the first is on its way: the stream brings it
        second = reader.publishing("s", {"5m": [row(300)], "15m": [row(0)]}, early=True)
        assert await taken(follower) == [("15m", 0)]  # (no 15m of ours on the way)
        await nothing(follower)
        # read back (the first, whose call published nothing, never is: the second
        # stands for it, written after it); the stream's copies go to the follower
        ring.append([(b"2-0", _entry(second, "5m", 300, 1)),
                     (b"2-1", _entry(second, "15m", 0, 2))])
        assert await taken(follower) == [("5m", 300), ("15m", 0)]
        assert ring.early == []  # nothing handed over early is left to take
        reader.publishing("s", {"5m": [row(600)]}, early=True)
        later = reader.follow("s", b"2-1", 2)
        assert await taken(follower) == [("5m", 600)]
        await nothing(later)  # published before it followed: it comes with the stream
        # not early: a recompute's publication (tagged all the same, in order)
        third = reader.publishing("s", {"5m": [row(900)]}, early=False)
        await nothing(follower)
        assert third == f"{reader.tag}-4"
        assert reader.publishing("t", {"5m": [row(0)]}, early=True) == ""
        assert reader.statistics()["delivered_early"] == 3
    finally:
        await reader.close()
