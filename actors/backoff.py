"""Capped exponential backoff with jitter, the one way the engine waits to try again
(reconnects, write retries, the spool, actor restarts, stale-key cleaning).

A retry library (tenacity, stamina) wraps a call and retries it; most of these waits
are not around one call: a reconnect loop that also resets the near cache, a sender
that keeps accepting lines while it waits, a supervisor that restarts a task. What
they share is the arithmetic, kept here.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays ``first``, ``first * factor``, ... capped at ``cap``, each scaled by a
    random factor in [0.5, 1) so many clients do not retry in step."""

    def __init__(self, first: float = 0.05, cap: float = 2.0, factor: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self.factor = factor
        self.attempts = 0  # failures since the last reset

    def next(self, cap: float | None = None) -> float:
        """The delay before the next attempt (one more failure counted); ``cap``, when
        given, replaces the usual cap for this delay."""
        limit = self.cap if cap is None else cap
        raw = self.first * self.factor ** min(self.attempts, 64)
        self.attempts += 1
        return min(limit, raw) * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """It worked: the next failure starts from ``first`` again."""
        self.attempts = 0

    async def sleep(self, cap: float | None = None) -> None:
        await asyncio.sleep(self.next(cap))
