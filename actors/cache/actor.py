"""CacheActor: every Redis command of the hub, auto-pipelined.

Whatever is waiting in the mailbox when the actor wakes goes out as ONE pipeline
(one round trip), so many concurrent strategies share round trips. Each request
is a :class:`~actors.cache.ops.RedisOp` (its commands, and how their replies become
an answer), a page of a SCAN, or INFO; the facade reaches it only through
:class:`~actors.cache.service.CacheService`.

Keys the hub cannot trust are never read: a write Redis refused while it answered
(OOM, READONLY), a write in flight at a crash, or a value the hub cannot decode
(another client's, or a wrong type) marks the key *stale*; reads of a stale key
answer a miss, and a cleaner deletes it through the mailbox, in order with writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from actors.backends.redis import (
    Command,
    CommandFailed,
    RedisBackend,
    RedisUnreachable,
    ScanCursor,
    ScriptMissing,
    SlotsUnavailable,
)
from actors.backoff import Backoff
from actors.cache.near import NearCache, lifetime
from actors.cache.ops import (
    GET_VALUES,
    GET_VALUES_AT_LEAST,
    NEAR_PREFIXES,
    Held,
    RedisOp,
    coalesce,
    op_clean,
    op_get_value,
)
from actors.runtime import Actor, Envelope, Request, cancel_and_wait, close_quietly, fail, resolve
from hubdomain.errors import BackendUnavailable
from hubdomain.keys import PREFIXES, glob_literal

log = logging.getLogger(__name__)

_DECODE_ERRORS = (ValueError, TypeError, IndexError, KeyError)
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ScanPage(Request[tuple["ScanCursor | None", list[str]]]):
    """One page of keys matching ``match`` (SCAN, never KEYS) from ``cursor`` (None:
    the start); answered with the next cursor (None: done) and the keys."""

    match: str
    cursor: ScanCursor | None


@dataclass(frozen=True, slots=True)
class Info(Request[dict[str, Any]]):
    """Redis' INFO."""


def _refused(results: list[Any]) -> None:
    """Raises what Redis answered a cleanup command with when it refused it (a read-only
    replica, an ACL): the keys are still there, and must not be served."""
    for result in results:
        if isinstance(result, CommandFailed):
            raise result


class CacheActor(Actor):
    """Owns the Redis connection pool; one pipeline per drained mailbox batch.

    When Redis stops answering, the actor fails calls at once instead of letting
    each wait for a timeout (callers fall back to InfluxDB / SQLite), reconnects
    in the background with capped backoff, and before it serves again deletes
    every key whose write it had to skip, so nothing stale is read afterwards.
    """

    name = "cache"
    batch_limit = 1024
    max_dirty = 100_000

    def __init__(self, backend: RedisBackend, near: NearCache | None = None) -> None:
        super().__init__(mailbox_size=20_000)
        self.backend = backend
        self.near = near  # values read without a mailbox, kept coherent by the listener
        self._listener: asyncio.Task[None] | None = None
        self.round_trips = 0
        self.commands = 0
        self.skipped = 0  # writes Redis could not take
        self.reconnects = 0
        self.forgot_all = 0  # times every hub key was dropped (a restart, a failover)
        self.flushes = 0  # times Redis was emptied by somebody (FLUSHALL/FLUSHDB)
        self.undecodable = 0  # values under the hub's keys it could not read
        self._warned: set[str] = set()  # keys whose undecodable value was logged
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        self._dirty_overflow = False
        self._cleaner: asyncio.Task[None] | None = None
        self._refills: set[asyncio.Task[None]] = set()  # reads of keys this hub wrote
        self._lone = False  # a read runs on its caller's task (read_now)
        self._answered_many = False  # the last trip answered several value reads

    # ---- what callers use (CacheService) ------------------------------------------

    async def perform(self, op: RedisOp[Any]) -> Any:
        """Run ``op`` and answer what its decode makes of the replies."""
        return await self.ask(op)

    async def read_now(self, op: RedisOp[R]) -> tuple[bool, R | None]:
        """A lone read on the caller's task, without the mailbox hop (a cold read's
        round trip, ~15% of it measured here): only while the actor is idle, its
        mailbox empty and nothing in flight, so every write queued before the read has
        run (the read sees it), and the backend's connection takes turns with the
        actor's next pipeline. ``(False, None)``: not answered here (the actor is busy,
        Redis is down, the reply is an error or unreadable); send it to the actor,
        which handles all of that. Raises BackendUnavailable as ``perform`` does when
        Redis does not answer (and the actor reconnects in the background)."""
        if self._inflight or self._lone or not self.mailbox.empty \
                or self._down_since is not None or self.down is not None \
                or not self.backend.lone_reads:
            return False, None
        self._lone = True  # reads meanwhile queue up, to share the actor's next trip
        try:
            results = await self.backend.pipeline(op.commands)
        except BackendUnavailable:
            self._mark_down()
            raise
        finally:
            self._lone = False
        if any(isinstance(r, Exception) for r in results):
            return False, None
        self.round_trips += 1
        self.commands += len(op.commands)
        if op.reads is not None and op.reads in self._dirty:
            return True, op.miss  # a refused write left Redis stale (see _execute)
        assert op.decode is not None
        try:
            return True, op.decode(results)
        except _DECODE_ERRORS:
            return False, None  # the actor deletes what the hub cannot read

    async def enqueue(self, op: RedisOp[Any]) -> None:
        """Queue ``op`` without waiting for it (a write Redis cannot take is skipped,
        and its keys are deleted once Redis lets the hub)."""
        await self.tell(op)

    async def scan_page(self, match: str,
                        cursor: ScanCursor | None) -> tuple[ScanCursor | None, list[str]]:
        return await self.ask(ScanPage(match, cursor))

    async def info(self) -> dict[str, Any]:
        return await self.ask(Info())

    @property
    def available(self) -> bool:
        return self._down_since is None

    # ---- lifecycle ------------------------------------------------------------------

    def fail_inflight(self, exc: BaseException) -> None:
        """A crash while ops ran: Redis may hold half of them. Their keys count as
        skipped writes, deleted before the cache serves again."""
        for envelope in self._inflight:
            if isinstance(envelope.message, RedisOp) and envelope.message.writes:
                self._dirty.update(envelope.message.writes)
        super().fail_inflight(exc)

    async def setup(self) -> None:
        try:
            await self.backend.connect()
            # restarted after a crash, or Redis holds keys it loaded at its start
            if self._dirty or self._dirty_overflow or self.backend.restarted:
                await self._forget_skipped()
        except (RedisUnreachable, CommandFailed) as exc:  # (CommandFailed: an UNLINK)
            log.warning("Redis not reachable (%s); serving from InfluxDB/SQLite until it is",
                        exc)
            self._mark_down()
        if self.near is not None:
            self.backend.on_masters_changed = self._masters_changed
            self.backend.on_untracked_keys = self.near.invalidate
            if self._listener is None:
                self._listener = asyncio.create_task(self._listen(self.near),
                                                     name="redis-invalidations")

    async def teardown(self) -> None:
        await cancel_and_wait(self._listener, self._cleaner, self._probe, *self._refills)
        self._listener = self._cleaner = self._probe = None
        self._refills.clear()
        await close_quietly(self.backend, "redis")

    def _masters_changed(self) -> None:
        """A Redis Cluster master this hub does not track yet may answer reads: hold
        nothing (and refuse reads in flight) until the listener tracks every master."""
        if self.near is not None:
            self.near.enabled = False
            self.near.clear()

    async def _listen(self, near: NearCache) -> None:
        """Apply Redis' invalidations to the near cache; reconnect when the link drops.
        While it is down the near cache is empty and disabled: nothing is missed."""
        backoff = Backoff()
        while True:
            try:
                # aclosing: a cancelled listener closes the tracking connection now, not
                # whenever the loop gets to finalizing the generator (or never, if the loop
                # is closed first: a leaked socket)
                async with contextlib.aclosing(
                        self.backend.invalidations(NEAR_PREFIXES)) as stream:
                    async for keys in stream:
                        if keys is None:  # FLUSHALL/FLUSHDB
                            near.clear()
                            self.flushes += 1
                            self._background(self._mark_flushed())
                        elif keys:
                            again = near.invalidated(keys)
                            if again:
                                self._read_again(near, again)
                        else:  # tracking is on from here
                            near.clear()
                            near.enabled = True
                            backoff.reset()
            except BackendUnavailable as exc:
                log.debug("invalidation link down: %s", exc)
            except Exception as exc:  # never let the listener die
                log.warning("invalidation link failed: %r", exc)
            near.enabled = False
            near.clear()
            await backoff.sleep()

    def _read_again(self, near: NearCache, keys: list[str]) -> None:
        """Keys this hub wrote were invalidated (by its own write, or another's): read
        them again behind the writes queued now, so the next read is a hit."""
        self._background(self._refill(near, keys, near.ticket()))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the mailbox (cancelled at teardown)."""
        task = asyncio.create_task(work, name="redis-cache background")
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _mark_flushed(self) -> None:
        try:
            await self.backend.flushed()
        except BackendUnavailable as exc:  # (the next start drops the keys: slower only)
            log.debug("instance marker not set again after a flush: %s", exc)

    async def _refill(self, near: NearCache, keys: list[str], ticket: int) -> None:
        found = await asyncio.gather(*(self.perform(op_get_value(key)) for key in keys),
                                     return_exceptions=True)
        for key, held in zip(keys, found, strict=True):
            if isinstance(held, Held):
                near.put(key, held.raw, lifetime(held.pttl), ticket, held.value)

    # ---- the mailbox ----------------------------------------------------------------

    async def handle(self, batch: Sequence[Envelope]) -> None:
        ops: list[Envelope] = []
        try:
            for envelope in batch:
                if isinstance(envelope.message, RedisOp):
                    ops.append(envelope)
                    continue
                # a SCAN page or INFO: after the ops queued before it
                await self._pipeline(ops)
                ops = []
                await self._answer(envelope)
            await self._pipeline(ops)
            if self._answered_many:
                # their callers' next reads are coming: let them run once, so those
                # reads share the next trip rather than a read queued meanwhile going
                # alone and them after it (100 strategies' concurrent cold reads took two
                # trips a round, ~10% longer, measured)
                self._answered_many = False
                await asyncio.sleep(0)
        finally:
            if self.near is not None:  # run or given up: the near cache may hold them again
                ended = [key for e in batch if isinstance(e.message, RedisOp) and e.message.near
                         for key in e.message.writes]
                if ended:
                    self.near.end_write(ended)

    async def _answer(self, envelope: Envelope) -> None:
        if self._down_since is not None:
            fail(envelope.future, BackendUnavailable(
                "redis", "unreachable; reconnecting in the background"))
            return
        request = envelope.message
        try:
            if isinstance(request, ScanPage):
                cursor, raw = await self.backend.scan_page(request.match, request.cursor)
                resolve(envelope.future, (cursor, [k.decode() for k in raw]))
            else:
                resolve(envelope.future, await self.backend.info())
        except BackendUnavailable as exc:  # (an outage shows in the pipelines)
            fail(envelope.future, exc)

    async def _pipeline(self, ops: list[Envelope]) -> None:
        if not ops:
            return
        if self._down_since is not None:
            error = BackendUnavailable("redis", "unreachable; reconnecting in the background")
            for envelope in ops:
                self._fail(envelope, error)
            return
        for envelope in ops:
            if envelope.message.clean:  # the keys stale now, deleted before what follows
                stale = tuple(itertools.islice(self._dirty, 1000))
                envelope.message.items = stale
                envelope.message.commands = (("UNLINK", *stale),) if stale else (("PING",),)
        await self._execute(coalesce(ops), fallback=False)

    async def _execute(self, batch: Sequence[Envelope], fallback: bool) -> None:
        commands: list[Command] = []
        # value reads, when there are many, go as one script call where the last of them
        # stands (a read moved later sees the writes before it, and perhaps some after:
        # never older than what it was queued behind)
        reads = [e for e in batch if e.message.value_read]
        self._answered_many = len(reads) > 1
        if fallback or not self.backend.multi_key_scripts or len(reads) < GET_VALUES_AT_LEAST:
            reads = []
        batched = {id(e) for e in reads}
        for envelope in batch:
            op: RedisOp[Any] = envelope.message
            if id(envelope) in batched:
                if envelope is reads[-1]:
                    commands.append(("EVAL", GET_VALUES, len(reads),
                                     *(e.message.reads for e in reads)))
                continue
            commands.extend(op.fallback if fallback and op.fallback else op.commands)
        try:
            results = await self.backend.pipeline(commands)
        except BackendUnavailable as exc:
            for envelope in batch:
                self._fail(envelope, exc)
            self._mark_down()
            return
        self.round_trips += 1
        self.commands += len(commands)
        replies: list[list[Any]] = []  # each envelope's replies, in batch order
        pos = 0
        for envelope in batch:
            if id(envelope) not in batched:
                replies.append(results[pos:pos + len(envelope.message.commands)])
                pos += len(envelope.message.commands)
                continue
            replies.append([])
            if envelope is reads[-1]:
                _spread(results[pos], reads, batch, replies)
                pos += 1
        retry: list[Envelope] = []
        retried: set[str] = set()  # keys of ops sent again: later ops on them go again too
        for envelope, mine in zip(batch, replies, strict=True):
            op = envelope.message
            # a command's error, or (Redis Cluster) its master being down
            failed = next((r for r in mine if isinstance(r, (CommandFailed, BackendUnavailable))),
                          None)
            if isinstance(failed, ScriptMissing) and not fallback and op.fallback:
                retry.append(envelope)  # a restarted or flushed Redis lost the script: send it
                retried.update(op.writes)
                continue
            if retried and (op.reads in retried or retried.intersection(op.writes)):
                # it ran before the script it follows: answered (or written) again after
                # it, so a read never misses a write queued before it
                retry.append(envelope)
                retried.update(op.writes)
                continue
            if (isinstance(failed, CommandFailed) and op.reads is not None
                    and failed.reply.startswith("WRONGTYPE")):
                self._unreadable(envelope, failed)  # another client's value, of another type
                continue
            if failed is not None:
                self._fail(envelope, failed)
                continue
            if op.reads is not None and op.reads in self._dirty:
                # a write to it was refused (and not since replaced, nor the key deleted,
                # by an op before this one): Redis holds a stale value; answer a miss
                resolve(envelope.future, op.miss)
                continue
            if self._dirty:
                if op.clean:
                    self._dirty.difference_update(op.items)
                    if self.near is not None:
                        self.near.invalidate(op.items)
                elif op.replaces:
                    self._dirty.difference_update(op.writes)
            if op.own and op.near and self.near is not None:
                _, key, value, _, ttl = op.commands[0]
                self.near.own_written(key, value, ttl, op.ticket)
                self.near.end_write(op.writes)
                op.near = False
            if op.decode is None:
                resolve(envelope.future, None)
                continue
            try:
                answer = op.decode(mine)
            except _DECODE_ERRORS as exc:
                self._unreadable(envelope, exc)
                continue
            resolve(envelope.future, answer)
        if retry:
            await self._execute(retry, fallback=True)

    def _unreadable(self, envelope: Envelope, why: BaseException) -> None:
        """A value under the hub's key that the hub cannot read (not its encoding, or
        another type): a miss, and the key is deleted, so the caller's read-through
        answers and fills it anew."""
        op: RedisOp[Any] = envelope.message
        key = op.reads
        assert key is not None
        self.undecodable += 1
        if key not in self._warned and len(self._warned) < 1000:
            self._warned.add(key)
            log.warning("Redis key %r holds a value the hub cannot read (%s); it is read as "
                        "a miss and deleted", key, why)
        self._stale([key])
        resolve(envelope.future, op.miss)

    def _fail(self, envelope: Envelope, exc: Exception) -> None:
        op: RedisOp[Any] = envelope.message
        if op.own and op.near and self.near is not None:
            self.near.own_failed(op.writes[0])
        # (a cluster backend forgets a down master's keys itself before serving them again)
        if op.writes and not isinstance(exc, SlotsUnavailable):
            self._stale(op.writes, clean_now=isinstance(exc, CommandFailed))
        if envelope.future is None:
            self.skipped += 1
            log.debug("redis write skipped: %s", exc)
        else:
            fail(envelope.future, exc)

    def _stale(self, keys: Sequence[str], clean_now: bool = True) -> None:
        """``keys`` may hold what must not be read: reads miss until they are deleted.
        ``clean_now``: Redis answers, so the cleaner deletes them as soon as it lets the
        hub (otherwise the reconnect does)."""
        if len(self._dirty) + len(keys) > self.max_dirty:
            self._dirty_overflow = True
        else:
            self._dirty.update(keys)
        if clean_now and self._cleaner is None:
            self._cleaner = asyncio.create_task(self._clean(), name="redis-stale-keys")

    # ---- outages --------------------------------------------------------------------

    def _mark_down(self) -> None:
        if self._down_since is not None:
            return
        self._down_since = asyncio.get_running_loop().time()
        if self.near is not None:
            self.near.clear()
        log.warning("Redis unavailable; reads fall back, cache writes are skipped")
        self._probe = asyncio.create_task(self._reconnect(), name="redis-reconnect")

    async def _reconnect(self) -> None:
        backoff = Backoff()
        while True:
            await backoff.sleep()
            try:
                await self.backend.connect()
                await self._forget_skipped()
            except BackendUnavailable as exc:
                log.debug("redis still unavailable: %s", exc)
                continue
            assert self._down_since is not None
            log.info("Redis is back after %.1fs",
                     asyncio.get_running_loop().time() - self._down_since)
            self._down_since = None
            self.reconnects += 1
            self._probe = None
            return

    async def _clean(self) -> None:
        """Delete the stale keys while Redis answers (UNLINK is allowed under OOM; a
        READONLY replica refuses it until it is a master again). The UNLINK goes through
        the mailbox, in order with the writes."""
        backoff = Backoff()
        try:
            while (self._dirty and not self._dirty_overflow and self._down_since is None
                   and self.down is None):
                try:
                    await self.ask(op_clean(), past_bound=True)
                except (CommandFailed, BackendUnavailable) as exc:
                    if self._down_since is not None or self.down is not None:
                        return  # the reconnect, or the restart, deletes them
                    log.debug("stale keys not deleted yet: %s", exc)
                    await backoff.sleep()
        finally:
            self._cleaner = None

    async def _forget_skipped(self) -> None:
        """Delete what may be stale: keys whose writes were skipped while Redis was away
        (every hub key when a failover may have happened, or the server restarted)."""
        if self._dirty_overflow or self.backend.forget_all_on_reconnect:
            for prefix in PREFIXES:
                cursor: ScanCursor | None = None
                while True:
                    cursor, found = await self.backend.scan_page(
                        glob_literal(prefix) + "*", cursor)
                    if found:
                        _refused(await self.backend.pipeline([("UNLINK", *found)]))
                    if cursor is None:
                        break
            await self.backend.forgot_all()
            self.forgot_all += 1
        else:
            keys = list(self._dirty)
            for i in range(0, len(keys), 1000):
                _refused(await self.backend.pipeline([("UNLINK", *keys[i:i + 1000])]))
        self._dirty.clear()
        self._dirty_overflow = False

    def statistics(self) -> dict[str, Any]:
        return {**super().statistics(), "round_trips": self.round_trips,
                "commands": self.commands, "skipped": self.skipped,
                "available": self.available, "reconnects": self.reconnects,
                "forgot_all": self.forgot_all,
                "flushes_seen": self.flushes,
                "stale_keys_pending": len(self._dirty), "undecodable": self.undecodable,
                "unavailable_slots": self.backend.unavailable_slots,
                "near_cache": self.near.statistics() if self.near is not None else None}


def _spread(answer: Any, reads: list[Envelope], batch: Sequence[Envelope],
            replies: list[list[Any]]) -> None:
    """Hand each batched read its [value, pttl] from one GET_VALUES answer (or the
    answer's error, when the whole call failed)."""
    where = {id(e): i for i, e in enumerate(batch)}
    for n, envelope in enumerate(reads):
        if isinstance(answer, BaseException):
            replies[where[id(envelope)]] = [answer, answer]
        else:
            replies[where[id(envelope)]] = [answer[2 * n], answer[2 * n + 1]]
