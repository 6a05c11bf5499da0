"""NearCache: an in-process copy of hot Redis values, read without crossing a mailbox.

Kept coherent with every other Redis client through client-side caching: Redis
sends an invalidation for each key under the tracked prefixes that anyone writes
(``CLIENT TRACKING ... BCAST PREFIX``, see the CacheActor's listener). The
documented race, an invalidation arriving while a read of the same key is in
flight, is closed with tickets: a read takes a ticket before it is sent, and its
answer is stored only if no invalidation of that key came after the ticket.
Entries never outlive the key's TTL in Redis (a key without one is held until a
write evicts it: every change to a key, its expiry, eviction or a flush, comes as an
invalidation, the TTL is only a second guard); the cache is bounded (oldest
insertion evicted first) and emptied whenever invalidations might have been
missed (a disconnect of the listener).

Writes made by this process close the race from the other side: ``begin_write``
(when the hub accepts a write) keeps every answer for the key out of the cache
until ``end_write`` (when the CacheActor has run the write, or given up on it), so
a reader in this process never sees an older value than one it wrote, even while
the write is still queued.

A value this process writes (a plain SET) is held from the moment the write is
accepted, so reading it back is a hit instead of a round trip (the read is ordered
right after the write, as any near-cache hit is ordered before invalidations still
on their way); it is dropped if the write fails. Redis cannot say who wrote a key,
and in BCAST mode it folds several writes of a key into one invalidation, so an
invalidation is never taken as this process's own: it evicts, always. For a key this
process wrote, the CacheActor then reads the key again at once (a ticketed read
behind the write, like any other), so the next read is a hit again.

Thread safety: the Wolfinch drop-in reads (``get``) and begins writes from the
caller's thread while the hub's loop thread fills the cache; every mutation takes
a lock, ``get`` needs none (single dict operations are atomic in CPython).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson

_IMMUTABLE = (int, float, str, bool, type(None))
_DECODE: Any = object()


def lifetime(pttl: int) -> float:
    """Seconds a value read from Redis may be held, from its key's ``PTTL``: what the
    key has left, forever for a key without a TTL (-1), nothing for one that is gone."""
    if pttl > 0:
        return pttl / 1000
    return math.inf if pttl == -1 else 0.0


class NearCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, Any, bytes]] = OrderedDict()
        self._seq = 0  # bumped by every invalidation
        self._floor = 0  # tickets older than this are refused
        self._invalidated: dict[str, int] = {}  # key -> seq of its last invalidation
        self._pending: dict[str, int] = {}  # key -> this process's writes in flight
        self._own: dict[str, int] = {}  # key -> invalidations its own SETs will cause
        self._lock = threading.Lock()
        self.enabled = False  # True only while invalidations are being received
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, value) when held and not expired (a hit). Mutable values are decoded
        afresh, so a caller changing what it got cannot change the cache. A read it
        cannot answer is counted by :meth:`missed` where it goes to Redis: a read may
        look here more than once on its way (on its caller's thread, then on the loop),
        and is one miss."""
        entry = self._data.get(key)
        if entry is None:
            return False, None
        expires, value, raw = entry
        if time.monotonic() >= expires:
            self._data.pop(key, None)
            return False, None
        self.hits += 1
        return True, (value if not raw or isinstance(value, _IMMUTABLE) else orjson.loads(raw))

    def holds(self, key: str) -> bool:
        """Whether ``key`` is held and not expired (counted as nothing)."""
        entry = self._data.get(key)
        return entry is not None and time.monotonic() < entry[0]

    def missed(self) -> None:
        """A read this cache could not answer went to Redis."""
        self.misses += 1

    def ticket(self) -> int:
        return self._seq

    def put(self, key: str, raw: bytes, ttl: float, ticket: int,
            value: Any = _DECODE) -> None:
        """Store a value read from Redis under ``ticket`` with ``ttl`` seconds left.
        ``value``, when given, is the value already decoded from ``raw`` (handed out as
        it is when immutable or when ``raw`` is empty, else decoded afresh each time)."""
        if value is _DECODE:
            value = orjson.loads(raw)
        with self._lock:
            if (not self.enabled or ttl <= 0 or ticket < self._floor or key in self._pending
                    or self._invalidated.get(key, -1) >= ticket + 1):
                return
            self._data[key] = (time.monotonic() + ttl, value, raw)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def invalidate(self, keys: Iterable[str]) -> None:
        """Evict ``keys`` (this process knows they changed)."""
        with self._lock:
            for key in keys:
                self._invalidate(key)

    def invalidated(self, keys: Iterable[str]) -> list[str]:
        """Redis says ``keys`` were written: evict them. Returns those this process wrote
        since their last invalidation (worth reading again at once)."""
        again = []
        with self._lock:
            own = self._own
            for key in keys:
                if own.pop(key, 0):
                    again.append(key)
                self._invalidate(key)
        return again

    def expecting(self, key: str) -> bool:
        """True while an own write of ``key`` still has its invalidation to come."""
        return key in self._own

    def own_written(self, key: str, raw: bytes, ttl: float, ticket: int) -> None:
        """This process's SET of ``key`` (begun at ``ticket``) ran: hold its value, unless
        another write of the key may be newer (an invalidation beyond the expected ones
        came since, another write of this process is still in flight, or the
        invalidation link was lost meanwhile)."""
        value = orjson.loads(raw)
        with self._lock:
            if (not self.enabled or ttl <= 0 or ticket < self._floor
                    or self._pending.get(key, 0) > 1
                    or self._invalidated.get(key, -1) > ticket):
                return
            self._hold(key, raw, ttl, value)

    def own_failed(self, key: str) -> None:
        """This process's SET of ``key`` failed or may not have run: drop the value held
        for it, and expect no invalidation from it (if it did run, its invalidation
        evicts)."""
        with self._lock:
            self._data.pop(key, None)
            expected = self._own.get(key, 0)
            if expected > 1:
                self._own[key] = expected - 1
            else:
                self._own.pop(key, None)

    def _invalidate(self, key: str) -> None:
        self._seq += 1
        self._invalidated[key] = self._seq
        self._data.pop(key, None)
        self.invalidations += 1
        if len(self._invalidated) > 4 * self.max_entries:
            self._invalidated.clear()
            self._floor = self._seq + 1

    def begin_write(self, keys: Iterable[str], own: tuple[bytes, float] | None = None
                    ) -> int:
        """This process accepted a write of ``keys``: until :meth:`end_write`, hold no
        answer read from Redis for them. ``own``: the write is a plain SET of one key to
        ``(raw, ttl)``: that value is held at once (this process reads what it wrote,
        without a round trip), its invalidation is expected, and :meth:`own_written` or
        :meth:`own_failed` settles it. Returns the write's ticket."""
        value = _DECODE if own is None else orjson.loads(own[0])
        with self._lock:
            for key in keys:
                self._pending[key] = self._pending.get(key, 0) + 1
                self._invalidate(key)
                if own is not None:
                    self._own[key] = self._own.get(key, 0) + 1
                    if self.enabled and own[1] > 0:
                        self._hold(key, own[0], own[1], value)
            return self._seq

    def _hold(self, key: str, raw: bytes, ttl: float, value: Any) -> None:
        self._data[key] = (time.monotonic() + ttl, value, raw)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def end_write(self, keys: Iterable[str]) -> None:
        """The write of ``keys`` ran (or was given up): answers may be held again. Only
        reads sent after :meth:`begin_write` can be (an older ticket was invalidated
        there), and those ran behind the write in the CacheActor's FIFO mailbox."""
        with self._lock:
            for key in keys:
                left = self._pending.get(key, 0) - 1
                if left > 0:
                    self._pending[key] = left
                else:
                    self._pending.pop(key, None)

    def clear(self) -> None:
        """Forget everything, and refuse answers to reads already in flight (writes in
        flight stay pending)."""
        with self._lock:
            self._data.clear()
            self._invalidated.clear()
            self._own.clear()
            self._seq += 1
            self._floor = self._seq

    def statistics(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "entries": len(self._data), "hits": self.hits,
                "misses": self.misses, "invalidations": self.invalidations,
                "writes_pending": len(self._pending)}
