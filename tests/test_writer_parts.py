"""The writer's parts one by one, without servers: the accumulator (memory, batches,
flushes), the sender (POSTs, bisection, the retry clock), the spool (the SQLite
outbox on a temporary file), and the backoff they share."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.backends.influx import Unavailable, WriteRejected
from actors.backoff import Backoff
from actors.runtime import Supervisor
from actors.state import StateActor
from actors.writer.accumulator import Accumulator, Chunk, Entry
from actors.writer.sender import Sender
from actors.writer.spool import Spool
from hub.errors import BackendUnavailable

pytestmark = pytest.mark.anyio


# ---- backoff -----------------------------------------------------------------------

def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=1.0)
    delays = [backoff.next() for _ in range(8)]
    for i, delay in enumerate(delays):
        expected = min(1.0, 0.1 * 2 ** i)
        assert expected * 0.5 <= delay < expected
    assert backoff.attempts == 8
    backoff.reset()
    assert backoff.next() < 0.1
    assert backoff.next(cap=0.01) < 0.01  # a cap for one delay
    # jitter: many clients do not retry in step
    spread = [Backoff(first=1.0).next() for _ in range(200)]
    assert statistics.pstdev(spread) > 0.05


# ---- accumulator -------------------------------------------------------------------

def test_accumulator_is_due_on_size_linger_flush_close_and_bound() -> None:
    memory = Accumulator(batch_size=3, linger=1.0, max_pending=5)
    assert not memory.due(0.0, closing=False) and memory.deadline is None
    memory.add("a", None, now=10.0)
    assert not memory.due(10.5, closing=False)
    assert memory.deadline == 11.0 and memory.due(11.0, closing=False)  # lingered
    assert memory.due(10.5, closing=True)  # the close writes what waits
    memory.add("b", None, 10.6)
    memory.add("c", 7, 10.7)
    assert memory.due(10.7, closing=False)  # a full batch
    assert memory.chunk().entries() == [("a", None), ("b", None), ("c", 7)]
    memory.add("d", None, 10.8)
    memory.add("e", None, 10.9)
    assert memory.full and len(memory) == 5
    memory.drop(3, now=12.0)
    assert memory.snapshot().entries() == [("d", None), ("e", None)]
    assert (memory.accepted, memory.done, memory.oldest_at) == (5, 3, 12.0)
    memory.drop(2, now=13.0)
    assert len(memory) == 0 and memory.oldest_at is None


def test_accumulator_keeps_each_lines_outbox_row_in_step() -> None:
    """Durable lines keep their outbox rows (a row's id on its last line, minus it on
    the others) through chunks and drops; memory lines alone keep none."""
    memory = Accumulator(batch_size=4, linger=1.0, max_pending=100)
    memory.extend(["a", "b"], 0.0)
    assert memory.chunk().rows is None and memory.chunk().written_rows() == []
    memory.extend(["c", "d", "e", "f", "g"], 0.0, rows=[7, 8, 9], group=2)
    assert memory.snapshot().entries() == [("a", None), ("b", None), ("c", -7), ("d", 7),
                                           ("e", -8), ("f", 8), ("g", 9)]
    assert memory.chunk().written_rows() == [7]  # row 8's last line is in the next one
    memory.drop(4, 1.0)
    assert memory.chunk().entries() == [("e", -8), ("f", 8), ("g", 9)]
    assert memory.chunk()[1:].written_rows() == [8, 9]
    memory.drop(3, 2.0)
    memory.add("h", None, 3.0)
    assert memory.chunk().rows is None  # no durable line left
    with pytest.raises(ValueError):
        memory.extend(["x", "y"], 4.0, rows=[1])
    with pytest.raises(ValueError):
        memory.extend(["x", "y", "z"], 4.0, rows=[1], group=2)
    assert memory.snapshot().entries() == [("h", None)] and memory.accepted == 8


async def test_accumulator_flushes_wait_for_memory_and_the_spool() -> None:
    loop = asyncio.get_running_loop()
    memory = Accumulator(batch_size=10, linger=1.0, max_pending=100)
    memory.add("a", None, 0.0)
    memory.add("b", None, 0.0)
    first: asyncio.Future[None] = loop.create_future()
    memory.wait_for(spool_mark=4, future=first)  # also waits for outbox rows up to 4
    assert memory.due(0.0, closing=False)  # a flush waits: post now
    memory.add("c", None, 0.0)
    later: asyncio.Future[None] = loop.create_future()
    memory.wait_for(spool_mark=0, future=later)
    memory.drop(2, 0.0)
    memory.wake(spool_posted=3)
    assert not first.done() and not later.done()  # row 4 not written; "c" not written
    memory.wake(spool_posted=4)
    assert first.done() and not later.done()
    # "c" goes to the spool instead: the flush waits for the outbox rows it became
    done_before = memory.done
    memory.drop(1, 0.0)
    memory.moved_to_spool(done_before, spool_mark=9)
    memory.wake(spool_posted=8)
    assert not later.done()
    memory.wake(spool_posted=9)
    assert later.done()
    pending: asyncio.Future[None] = loop.create_future()
    memory.add("d", None, 0.0)
    memory.wait_for(0, pending)
    memory.fail_flushes(BackendUnavailable("influxdb", "down"))
    with pytest.raises(BackendUnavailable):
        await pending
    assert not memory.flushing


# ---- sender ------------------------------------------------------------------------

class Influx:
    """InfluxBackend in memory: rejects lines holding 'BAD', or is unavailable."""

    def __init__(self) -> None:
        self.posts: list[tuple[str | None, list[str]]] = []
        self.unavailable: Unavailable | None = None

    async def connect(self) -> None:
        pass

    async def write(self, body: bytes, rp: str | None = None) -> None:
        lines = body.decode().split("\n")
        if self.unavailable is not None:
            raise self.unavailable
        if any("BAD" in line for line in lines):
            raise WriteRejected(400, f"partial write: {len(lines)} lines")
        self.posts.append((rp, lines))

    async def query(self, text: str, epoch: str = "s") -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        pass


def make_sender(influx: Influx, rp_for: Any = None
                ) -> tuple[Sender, list[list[int]], list[tuple[Entry, str]]]:
    written: list[list[int]] = []
    quarantined: list[tuple[Entry, str]] = []

    async def on_written(ids: list[int]) -> None:
        written.append(ids)

    async def on_rejected(entry: Entry, reason: str) -> None:
        quarantined.append((entry, reason))

    return Sender(influx, rp_for=rp_for, written=on_written,
                  quarantine=on_rejected), written, quarantined


async def test_sender_bisects_rejected_data_down_to_the_bad_points() -> None:
    influx = Influx()
    sender, written, quarantined = make_sender(influx)
    chunk = Chunk.of([("m v=1 1", None), ("m v=2 2", 11), ("m BAD=1 3", 12),
                      ("m v=4 4", None), ("m BAD=2 5", None), ("m v=6 6", 13)])
    assert await sender.post(chunk, lambda: 0.0)
    assert [line for _, lines in influx.posts for line in lines] == [
        "m v=1 1", "m v=2 2", "m v=4 4", "m v=6 6"]  # the good ones, in order
    assert [entry for entry, _ in quarantined] == [("m BAD=1 3", 12), ("m BAD=2 5", None)]
    assert quarantined[0][1] == "partial write: 1 lines"  # the server's own reason
    assert sorted(i for ids in written for i in ids) == [11, 13]  # outbox rows done
    assert sender.quarantined == 2 and sender.points_written == 4
    assert sender.failing_since is None


async def test_a_chunk_failing_half_way_quarantines_its_bad_point_once() -> None:
    """A rejected point found while bisecting, then the rest of the chunk fails as
    unavailable: the chunk is sent again later, and the point is rejected again. It is
    quarantined once, when the whole chunk is through."""
    influx = Influx()
    sender, written, quarantined = make_sender(influx)
    down_for = {"m v=3 3"}  # the POST holding this line fails once, as unavailable
    write = influx.write

    async def flaky(body: bytes, rp: str | None = None) -> None:
        if any(line in down_for for line in body.decode().split("\n")) \
                and "BAD" not in body.decode():
            down_for.clear()
            raise Unavailable("connection reset")
        await write(body, rp)

    influx.write = flaky  # type: ignore[method-assign]
    chunk = Chunk.of([("m v=1 1", None), ("m BAD=1 2", 7), ("m v=3 3", None),
                      ("m v=4 4", 8)])
    assert not await sender.post(chunk, lambda: 0.0)  # the bad half, then the outage
    assert quarantined == [] and sender.quarantined == 0
    assert await sender.post(chunk, lambda: 1.0)  # sent again, whole
    assert [entry for entry, _ in quarantined] == [("m BAD=1 2", 7)]
    assert sender.quarantined == 1
    assert [line for _, lines in influx.posts for line in lines][-3:] == [
        "m v=1 1", "m v=3 3", "m v=4 4"]
    assert sorted(i for ids in written for i in ids) == [8]


async def test_sender_posts_once_per_retention_policy_keeping_series_order() -> None:
    influx = Influx()
    sender, written, _ = make_sender(influx, rp_for=lambda m: {"candle": "rp_c"}.get(m))
    chunk = Chunk.of([("candle,p=A c=1 1", None), ("trade,p=A x=1 12", 5),
                      ("candle,p=A c=2 2", None)])
    assert await sender.post(chunk, lambda: 0.0)
    assert influx.posts == [("rp_c", ["candle,p=A c=1 1", "candle,p=A c=2 2"]),
                            (None, ["trade,p=A x=1 12"])]
    assert written == [[5]]  # the trade's outbox row went with its line


async def test_sender_retry_clock_backs_off_and_heeds_retry_after() -> None:
    influx = Influx()
    sender, _, _ = make_sender(influx)
    influx.unavailable = Unavailable("HTTP 503", retry_after=7.0)
    assert not await sender.post(Chunk(["m v=1 1"]), lambda: 100.0)
    assert sender.failing_since == 100.0 and sender.retry_at == 107.0  # Retry-After wins
    influx.unavailable = Unavailable("connection refused")
    assert not await sender.post(Chunk(["m v=1 1"]), lambda: 101.0)
    assert 101.0 < sender.retry_at < 101.2  # the second backoff step: 0.1-0.2 s
    assert sender.failing_since == 100.0 and sender.retries == 2
    assert "connection refused" in sender.last_error
    influx.unavailable = None
    assert await sender.post(Chunk(["m v=1 1"]), lambda: 102.0)
    assert sender.failing_since is None
    influx.unavailable = Unavailable("refused again")
    await sender.post(Chunk(["m v=1 1"]), lambda: 103.0)
    assert sender.retry_at < 103.1  # a success resets the backoff


# ---- spool -------------------------------------------------------------------------

@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[StateActor]:
    actor = StateActor(str(tmp_path / "spool.sqlite"))
    supervisor = Supervisor()
    await supervisor.start([actor])
    yield actor
    await supervisor.stop()


async def test_spool_takes_lines_and_replays_them_in_order(state: StateActor) -> None:
    spool = Spool(state)
    assert await spool.resume() == 0 and not spool.active
    await spool.insert(["m v=1 1", "m v=2 2"])
    await spool.insert(["m v=3 3"])
    assert spool.max_id == 3 and spool.spooled == 3
    page = await spool.page(2)
    assert [lines for _, lines in page] == [["m v=1 1"], ["m v=2 2"]]
    spool.replayed_up_to(page)
    assert [lines for _, lines in await spool.page(10)] == [["m v=3 3"]]
    spool.knows([5])  # a durable line (a trade) the replay will find in the outbox
    spool.active = True
    spool.drained()
    assert spool.posted == 5 and not spool.active and spool.replayed == 2


async def test_a_spool_that_cannot_take_lines_backs_off(state: StateActor) -> None:
    spool = Spool(state)
    full = BackendUnavailable("sqlite", "OperationalError: database or disk is full")
    spool.blocked(full, now=50.0)
    assert spool.error is not None and "disk is full" in spool.error
    assert not spool.may_try(50.1) and spool.may_try(51.0)  # 0.25-0.5 s first
    spool.blocked(full, now=51.0)
    assert not spool.may_try(51.2) and spool.may_try(52.0)
    spool.took()
    assert spool.error is None
    spool.blocked(full, now=60.0)
    assert spool.may_try(60.5)  # backoff reset by the success


async def test_a_restarted_writer_resumes_the_outbox_it_left(state: StateActor) -> None:
    await state.outbox_add(["t v=1 1", "t v=2 2"], "trade")
    spool = Spool(state)
    assert await spool.resume() == 2
    assert spool.active and spool.max_id == 2
