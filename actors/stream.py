"""The candle streams as this process follows them: one reader task XREADs every
product stream somebody here subscribed to (one blocking connection, however many
subscribers), keeps the newest entries of each stream in a ring, and wakes that
stream's followers.

The ring is the bounded buffer between the reader and each subscriber: a follower
reads at its own pace, and one that falls more than ``buffer`` entries behind (or that
was following while the connection to Redis was lost) is told it lost continuity; it
then catches up from storage rather than from the ring (see ``hub._streams``). Nothing
a subscriber does ever makes the reader, or a writer, wait.

Early delivery. The minutes this process writes and the rollups it closes reach the
subscribers here at once, as they are published, rather than a Redis round trip and an
XREAD later (the stream's copy then reaches them too, and is dropped as a candle already
delivered). Only where that cannot overtake a candle of the same timeframe: every
publication of this process is tagged ('o': this reader's tag and the publication's
number on the stream) while it follows the stream, and a candle goes early only once the
ring has read back this process's previous publication of its timeframe (so none of its
own is still on the way), a rollup only behind minutes that went early or were read
back; a follower takes it only once it has taken everything the ring read. A candle
another process published just before, still on its way to this reader, can arrive
after it, as it could after the stream's own later entries: it is then a candle not
newer than the last delivered (dropped, or a revision).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from actors.backends.redis import Command, RedisBackend
from actors.backoff import Backoff
from actors.cache.ops import command_renew
from actors.runtime import cancel_and_wait
from hubdomain.errors import HubClosed, HubError
from hubdomain.records import LiveCandle, Row, make_live_candle

log = logging.getLogger(__name__)

StreamId = tuple[int, int]

MINUTE = "1m"  # the timeframe of the written candles (the rest are their rollups)

# Seconds a reader's presence on a stream holds unless renewed (see StreamReader).
PRESENCE = 30.0
_COUNT = 1000  # entries one XREAD takes of a stream at most


def parse_id(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class Entry:
    """One published candle: its stream id (shared by the candles of one entry) and the
    candle (with its timeframe and whether it replaced one of the same time), built once
    for every follower, which only read it. (A plain class: a frozen dataclass took
    three times as long to build, once per candle read.)"""

    __slots__ = ("candle", "id", "number")

    def __init__(self, at: StreamId, candle: LiveCandle, number: int | None = None) -> None:
        self.id = at
        self.candle = candle
        self.number = number  # the stream entry's 'n' (None: written before numbers)

    def __repr__(self) -> str:
        return f"Entry({self.id!r}, {self.candle!r}, {self.number!r})"


def _number(fields: list[bytes]) -> int | None:
    """An entry's 'n' (its number in the stream), None when it has none."""
    for i in range(len(fields) - 2, -1, -2):  # written last
        if fields[i] == b"n":
            try:
                return int(fields[i + 1])
            except ValueError:
                return None
    return None


def _entries(entry_id: bytes, fields: list[bytes], number: int | None) -> list[Entry] | None:
    """The candles of one stream entry: one ('c'), or several new ones ('cs', a JSON
    array of them, written by one script call), each with the entry's id. None for an
    entry saying candles were withheld ('g': written with the next ones, older than
    their window keeps, and not published; see PUBLISH_MANY)."""
    values = dict(zip(fields[::2], fields[1::2], strict=False))
    if b"g" in values:
        return None
    try:
        at, timeframe = parse_id(entry_id), values[b"t"].decode()
        if b"cs" in values:
            return [Entry(at, make_live_candle(int(ts), float(o), float(h), float(low),
                                               float(c), float(vol), timeframe, False),
                          number)
                    for ts, o, h, low, c, vol in orjson.loads(values[b"cs"])]
        ts, o, h, low, c, vol = orjson.loads(values[b"c"])
        return [Entry(at, make_live_candle(
            int(ts), float(o), float(h), float(low), float(c), float(vol),
            timeframe, values.get(b"r", b"0") not in (b"0", b"")), number)]
    except (KeyError, ValueError, TypeError):
        log.warning("stream entry %r is not a candle; skipped", entry_id)
        return []


# Candles handed over early that a ring keeps at most (until their stream copy is read
# back): a burst's first run of write_candle calls (up to 256) or a batch (up to 1,000)
# goes early whole. A follower that had not taken candles the bound dropped catches up
# from storage rather than step over them.
_EARLY_HELD = 4096

# Revisions a ring keeps the newest of (entries 'r' 1: a candle corrected, or filled in
# late), for followers that fell behind: a catch-up from storage reads the candles after
# the last one a subscriber took, and the revisions of ones it took, published while it
# was behind, come from here.
_REVISIONS_HELD = 1024


class Ring:
    """The newest entries of one product stream, shared by its followers here."""

    def __init__(self, key: str, size: int, after: StreamId, number: int | None = None,
                 own: bytes = b"\0") -> None:
        self.key = key
        self.own = own  # this process's tag in entries, with its '-': b"<tag>-"
        # per timeframe: the number of this process's newest publication read back
        self.own_read: dict[str, int] = {}
        # candles handed over early (see the module's text): (seq, publication, entry)
        self.early: list[tuple[int, int, Entry]] = []
        self.early_next = 0
        self.early_cut = 0  # candles handed over early before this seq were dropped
        # the number of the entry at ``position`` (entries written before numbers were:
        # None, nothing to check)
        self.number = number
        self.size = size
        # entries[i] has sequence number base + i; trimmed to ``size`` now and then
        self.entries: list[Entry] = []
        self.base = 0
        self.position = after  # the last id read (XREAD continues after it)
        self.origin = after  # reading began after this id
        self.closed = False
        self.followers = 0
        self.epoch = 0  # moved when continuity was lost for everybody (reconnect)
        # the sequence of the last entry whose number did not follow the one before (a
        # follower taking only entries after it needs to check none of their numbers),
        # or that came after candles withheld
        self.jump = -1
        self.withheld = 0  # entries read saying candles were withheld
        # the newest revisions read, and the id after which every one published is among
        # them or still to be read: entries at or before ``broken`` may have gone
        # unread (Redis trimmed them first, candles were withheld, or nothing was
        # published while this process's presence had lapsed), ones at or before
        # ``revised_from`` dropped from the list
        self.revised: deque[Entry] = deque()
        self.revised_from = after
        self.broken = after
        self._changed = asyncio.Event()

    @property
    def first_seq(self) -> int:
        return self.base + max(0, len(self.entries) - self.size)

    @property
    def next_seq(self) -> int:
        return self.base + len(self.entries)

    def since(self, seq: int) -> list[Entry]:
        return self.entries[seq - self.base:]

    def append(self, raw: list[tuple[bytes, list[bytes]]]) -> bool:
        """Take entries read after ``position``. False: one is missing before them (its
        number, 'n', is not the next one): Redis trimmed it before it was read."""
        whole = True
        own = False
        for entry_id, fields in raw:
            if fields and fields[0] == b"o" and fields[1].startswith(self.own):
                own = self._read_own(fields) or own
            number = _number(fields)
            entries = _entries(entry_id, fields, number)
            self.position = parse_id(entry_id)
            if number is not None:
                if self.number is not None and number != self.number + 1:
                    whole = False
                    self.jump = self.base + len(self.entries)
                    self.broken = self.position
                self.number = number
            if entries is None:
                # candles withheld: the next candle's number does not follow the last
                # one before, and a follower taking both finds the hole by the numbers
                # (and catches up from storage), whatever its place
                self.withheld += 1
                self.jump = self.base + len(self.entries)
                self.broken = self.position
                continue
            if len(entries) == 1 and entries[0].candle.revision:
                if len(self.revised) >= _REVISIONS_HELD:
                    self.revised_from = self.revised.popleft().id
                self.revised.append(entries[0])
            self.entries += entries
        if len(self.entries) >= 2 * self.size:  # amortized: a slice now and then
            drop = len(self.entries) - self.size
            del self.entries[:drop]
            self.base += drop
        if own and self.early:  # read back: followers take the stream's copy instead
            self.early = [held for held in self.early
                          if held[1] > self.own_read.get(held[2].candle.timeframe, 0)]
        self.wake()
        return whole

    def _read_own(self, fields: list[bytes]) -> bool:
        """Note an entry this process published: its timeframe's publication read."""
        try:
            j = int(fields[1][len(self.own):])
            timeframe = fields[fields.index(b"t", 2) + 1].decode()
        except (ValueError, IndexError):
            return False
        if j > self.own_read.get(timeframe, 0):
            self.own_read[timeframe] = j
        return True

    def offer_early(self, publication: int, entries: list[Entry]) -> None:
        """Candles of this process's publication ``publication``, for the followers
        taking everything read so far (see the module's text)."""
        for entry in entries:
            self.early.append((self.early_next, publication, entry))
            self.early_next += 1
        if len(self.early) > _EARLY_HELD:
            cut = len(self.early) - _EARLY_HELD
            self.early_cut = self.early[cut - 1][0] + 1
            del self.early[:cut]
        self.wake()

    def wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self) -> None:
        await self._changed.wait()

    def follows(self, seq: int, number: int) -> bool:
        """Whether the entry at ``seq`` (or, none held after it yet, the next one read)
        is the one numbered ``number + 1``: nothing Redis trimmed lies between the
        entry numbered ``number`` and it."""
        if seq < self.next_seq:
            held = self.entries[seq - self.base].number
            return held is None or held == number + 1
        return self.number is None or self.number <= number

    def revisions(self, after: StreamId, upto: StreamId) -> list[Entry] | None:
        """The revisions read with ids in (``after``, ``upto``]; None when some may be
        missing (see ``broken`` and ``revised_from``)."""
        if after < self.broken or after < self.revised_from:
            return None
        return [entry for entry in self.revised if after < entry.id <= upto]

    def seq_after(self, after: StreamId) -> int | None:
        """The sequence of the first entry held with an id after ``after``; None when
        entries after it may be gone from the ring already."""
        if after >= self.position:
            return self.next_seq
        first = self.first_seq
        for i in range(len(self.entries) - 1, first - self.base - 1, -1):
            if self.entries[i].id <= after:
                return self.base + i + 1
        # none held at or before it: whole only if none was dropped and reading began
        # at or before it
        return 0 if self.first_seq == 0 and self.origin <= after else None


class Follower:
    """One subscriber's place in a ring. ``take`` returns the entries after it, or
    None when continuity was lost (it fell more than the ring behind, or the reader
    reconnected): the subscriber then catches up from storage and ``restart``s."""

    def __init__(self, reader: StreamReader, ring: Ring, after: StreamId,
                 number: int | None = None) -> None:
        self._reader = reader
        self.ring = ring
        self.after = after
        self.number = number  # the number of the last entry taken (or the snapshot's)
        self.epoch = ring.epoch
        self.cursor = self._place(after, number)
        # candles handed over early from here on are this follower's (earlier ones were
        # published before it followed: the stream brings them)
        self.early = ring.early_next
        self.closed = False

    def _place(self, after: StreamId, number: int | None) -> int:
        """The ring's sequence of the first entry after ``after`` (the snapshot's last
        entry, numbered ``number``); -1 when entries after it may be gone: dropped from
        the ring, or trimmed by Redis before the ring read them (the ring then holds
        entries on both sides of the hole, and the id alone would step over it)."""
        found = self.ring.seq_after(after)
        if found is None or (number is not None and not self.ring.follows(found, number)):
            return -1
        return found

    def _lost(self) -> bool:
        return self.cursor < 0 or self.epoch != self.ring.epoch or \
            self.cursor < self.ring.first_seq

    async def take(self) -> list[Entry] | None:
        while True:
            if self.closed or self.ring.closed:
                raise HubClosed("the hub closed this stream")
            if self._lost():
                self._reader.overflows += 1
                return None
            if self.cursor < self.ring.next_seq:
                entries = self.ring.since(self.cursor)
                start, self.cursor = self.cursor, self.ring.next_seq
                first, last = entries[0], entries[-1]
                number = self.number
                if first.id > self.after and self.ring.jump < start \
                        and first.number is not None and last.number is not None and (
                            number is None or first.number == number
                            or first.number == number + 1):
                    # (the usual case, checked in O(1): the ring checked the numbers
                    # from ``first`` on as it took them, and ids only grow)
                    self.number = last.number
                    self.after = last.id
                    return entries
                fresh = self._whole([e for e in entries if e.id > self.after])
                if fresh:
                    self.after = fresh[-1].id
                    return fresh
                continue
            if self.early < self.ring.early_next:  # everything read taken: early ones
                if self.early < self.ring.early_cut:  # some it had not taken were dropped
                    self.cursor = -1
                    continue
                early = [entry for seq, _, entry in self.ring.early if seq >= self.early]
                self.early = self.ring.early_next
                if early:
                    return early
                continue
            await self.ring.changed()

    def _whole(self, fresh: list[Entry]) -> list[Entry]:
        """``fresh`` up to a missing entry number (Redis trimmed entries between before
        the ring read them; the reader's notice of it may have come before this
        follower's restart, so the numbers decide): the entries before it, and the
        follower is lost from there (it catches up from storage)."""
        number = self.number
        for k, entry in enumerate(fresh):
            if entry.number is None:
                continue
            if number is not None and entry.number != number and entry.number != number + 1:
                self.cursor = -1
                fresh = fresh[:k]
                break
            number = entry.number
        self.number = number
        return fresh

    def revisions(self, upto: StreamId) -> list[Entry] | None:
        """The revisions published after the last entry this follower took, up to
        ``upto`` (a catch-up's snapshot: the entries after it reach the follower once it
        restarts there); None when some may be missing."""
        return self.ring.revisions(self.after, upto)

    def restart(self, after: StreamId, number: int | None = None) -> None:
        """Follow on from a new snapshot's stream id and entry number (after a catch-up
        from storage)."""
        self.after = after
        self.number = number
        self.epoch = self.ring.epoch
        self.cursor = self._place(after, number)
        self.early = self.ring.early_next

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._reader.release(self.ring)
            self.ring.wake()


class StreamReader:
    """Reads every followed stream on one connection; see the module's text."""

    def __init__(self, backend: RedisBackend, buffer: int, block_ms: int = 200,
                 presence: float | None = None,
                 send: Callable[[list[Command]], Awaitable[list[Any]]] | None = None
                 ) -> None:
        self._backend = backend
        # commands other than XREAD go through the cache's actor (the backend's pipeline
        # connection is its alone)
        self._send = send
        self._buffer = buffer
        self._block_ms = block_ms
        self.rings: dict[str, Ring] = {}
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.overflows = 0  # followers that lost continuity and caught up from storage
        self.reconnects = 0
        self.delivered = 0  # entries read from Redis
        self.lapses = 0  # presences found lapsed (writes may have published nothing)
        # entries Redis trimmed (streams.length) before this reader read them: it was
        # that far behind the writers
        self.trimmed = 0
        # entries read saying candles were withheld (a write of more than the window
        # keeps): followers taking one catch up from storage
        self.withheld = 0
        # Writers publish a product's candles only while some reader follows its stream:
        # this one's presence (set by each subscription's snapshot) is renewed every
        # sixth of ``presence`` seconds, and one found lapsed loses continuity
        self.id = uuid.uuid4().hex
        # this process's publications while it follows their stream: tagged, numbered
        self.tag = self.id[:16]
        self._own = f"{self.tag}-".encode()
        self._published: dict[str, int] = {}  # per stream: its publications numbered
        # per (stream, timeframe): the number of the newest publication holding it
        self._published_tf: dict[tuple[str, str], int] = {}
        self._expecting: dict[str, int] = {}  # streams a subscription is starting on
        # per stream: the newest publication of minutes handed over early
        self._early_minutes: dict[str, int] = {}
        self.early = 0  # candles handed to followers here as they were published
        seconds = PRESENCE if presence is None else presence
        self.presence_ms = int(seconds * 1000)
        self._renew_every = seconds / 6
        self._renewed = 0.0

    def lapsed(self, key: str) -> None:
        """This reader's presence on ``key`` had lapsed (a snapshot found it so): its
        followers there lose continuity and catch up from storage."""
        ring = self.rings.get(key)
        if ring is not None:
            self.lapses += 1
            ring.broken = max(ring.broken, ring.position)
            self._lost(key)

    def _lost(self, key: str) -> None:
        ring = self.rings.get(key)
        if ring is not None:
            ring.epoch += 1
            ring.wake()

    async def _renew(self) -> None:
        followed = [key for key, ring in self.rings.items() if ring.followers > 0]
        if not followed or self._send is None:
            return
        try:
            results = await self._send(
                [command_renew(key, self.id, self.presence_ms) for key in followed])
        except HubError as exc:  # the next read fails too, and its followers catch up
            log.debug("candle streams: renewing presence failed: %s", exc)
            return
        for key, result in zip(followed, results, strict=True):
            if result != 1:
                self.lapsed(key)

    def expect(self, key: str) -> None:
        """A subscription on ``key`` takes its snapshot now: this process's publications
        there are tagged from here on (those queued before come before the snapshot),
        until :meth:`expected`."""
        self._expecting[key] = self._expecting.get(key, 0) + 1

    def expected(self, key: str) -> None:
        left = self._expecting.get(key, 0) - 1
        if left > 0:
            self._expecting[key] = left
        else:
            self._expecting.pop(key, None)

    def publishing(self, key: str, groups: dict[str, list[Row]], early: bool) -> str:
        """This process is about to publish ``groups`` (timeframe -> rows, ascending) on
        ``key``: its tag for the entries ('' while nobody here follows the stream), and,
        with ``early``, each timeframe's candles handed to the followers here at once
        where none of this process's publications of it is still on its way (see the
        module's text)."""
        numbered = self._publication(key)
        if numbered is None:
            return ""
        ring, publication = numbered
        # (a rollup never goes before the minutes published here before it: they went
        # early too, or were read back; the minute closing it is a publication before it)
        minutes = self._clear(ring, key, MINUTE) or \
            self._early_minutes.get(key) == self._published_tf.get((key, MINUTE))
        for timeframe, rows in groups.items():
            if early and minutes and ring is not None and self._clear(ring, key, timeframe):
                self._offer(ring, publication, timeframe, rows)
            self._published_tf[(key, timeframe)] = publication
        return f"{self.tag}-{publication}"

    def minutes(self, key: str) -> tuple[str, int | None]:
        """A publication of 1-minute candles on ``key`` being built: its tag ('' while
        nobody here follows the stream), and its number when its new minutes may be
        handed to the followers here once it is queued (:meth:`offer_minutes`), else
        None (see :meth:`publishing`)."""
        numbered = self._publication(key)
        if numbered is None:
            return "", None
        ring, publication = numbered
        clear = self._clear(ring, key, MINUTE)
        self._published_tf[(key, MINUTE)] = publication
        return f"{self.tag}-{publication}", publication if clear else None

    def offer_minutes(self, key: str, publication: int, rows: list[Row]) -> None:
        """The new minutes of publication ``publication`` (:meth:`minutes`), queued now:
        to the followers here at once."""
        ring = self.rings.get(key)
        if ring is not None and rows:
            self._offer(ring, publication, MINUTE, rows)
            self._early_minutes[key] = publication

    def _publication(self, key: str) -> tuple[Ring | None, int] | None:
        """The ring of ``key`` and the next publication's number there; None while
        nobody here follows the stream (nothing is tagged then)."""
        ring = self.rings.get(key)
        if ring is None and key not in self._expecting:
            return None
        publication = self._published[key] = self._published.get(key, 0) + 1
        return ring, publication

    def _clear(self, ring: Ring | None, key: str, timeframe: str) -> bool:
        """Followers here, and none of this process's publications of ``timeframe`` on
        ``key`` still on its way (each read back)."""
        return ring is not None and ring.followers > 0 and \
            ring.own_read.get(timeframe, 0) >= self._published_tf.get((key, timeframe), 0)

    def _offer(self, ring: Ring, publication: int, timeframe: str, rows: list[Row]) -> None:
        at = ring.position
        ring.offer_early(publication, [Entry(at, make_live_candle(*row, timeframe, False))
                                       for row in rows])
        self.early += len(rows)

    def follow(self, key: str, after: bytes, number: int | None = None) -> Follower:
        """A follower from a snapshot's stream id ``after`` (``number``: that entry's)."""
        at = parse_id(after)
        ring = self.rings.get(key)
        if ring is None:
            ring = self.rings[key] = Ring(key, self._buffer, at, number, self._own)
        ring.followers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="hub-streams")
        self._wanted.set()
        return Follower(self, ring, at, number)

    def release(self, ring: Ring) -> None:
        ring.followers -= 1
        if ring.followers <= 0 and self.rings.get(ring.key) is ring:
            del self.rings[ring.key]

    async def _run(self) -> None:
        backoff = Backoff(first=0.05, cap=2.0)
        failing = False
        while True:
            positions = {key: f"{r.position[0]}-{r.position[1]}".encode()
                         for key, r in self.rings.items() if r.followers > 0}
            if not positions:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            try:
                replies = await self._backend.read_streams(positions, _COUNT, self._block_ms)
            except HubError as exc:
                if not failing:
                    log.warning("candle streams: reading failed (%s); subscribers catch up "
                                "from storage once Redis answers", exc)
                    failing = True
                self.reconnects += 1
                for ring in self.rings.values():
                    ring.epoch += 1
                    ring.wake()
                await backoff.sleep()
                continue
            if failing:
                log.info("candle streams: reading again")
                failing = False
            backoff.reset()
            now = asyncio.get_running_loop().time()
            if now - self._renewed >= 3 * self._renew_every:
                # (the loop was held up: the presence may have lapsed, and entries after
                # a gap must not reach followers before the gap is known)
                self._renewed = now
                await self._renew()
            for key, entries in replies:
                found = self.rings.get(key)
                if found is not None and entries:
                    self.delivered += len(entries)
                    withheld = found.withheld
                    if not found.append(entries):  # Redis trimmed entries not read yet
                        self.trimmed += 1
                        self._lost(key)
                    self.withheld += found.withheld - withheld
            if now - self._renewed >= self._renew_every:  # after: not on the way of news
                self._renewed = now
                await self._renew()
            elif replies:
                # the subscribers woken by these entries run before the next XREAD is
                # packed and sent (a live candle reaches them ~0.1 ms sooner)
                await asyncio.sleep(0)

    async def close(self) -> None:
        for ring in list(self.rings.values()):
            ring.closed = True
            ring.wake()
        await cancel_and_wait(self._task)
        self._task = None

    def statistics(self) -> dict[str, int]:
        return {"followed": len(self.rings),
                "subscribers": sum(r.followers for r in self.rings.values()),
                "entries_read": self.delivered, "overflows": self.overflows,
                "reconnects": self.reconnects, "presence_lapses": self.lapses,
                "delivered_early": self.early,
                "trimmed_unread": self.trimmed, "withheld_notices": self.withheld}
