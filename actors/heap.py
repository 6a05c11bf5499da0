"""Giving freed memory back to the system after a burst of writes.

A burst (a batch load, a warm-up, a backfill) allocates and frees far more than the hub
keeps: lines, script arguments, rollups. glibc keeps what was freed in its heap for
reuse, so the process's RSS stays at the burst's high-water mark long after. Measured
with 300 products' 1,000-candle windows written and read once: 591 B per hot-window
candle of RSS growth before ``malloc_trim(0)``, 487 B after it; the retained Python
objects are about 250 B per candle. ``Trimmer`` asks glibc to return it once a burst is
over (the writer's queue has emptied after many lines and stayed empty a moment), in a
worker thread so the event loop does not wait the few milliseconds the heap walk takes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], Any] | None:
    """glibc's ``malloc_trim``; None elsewhere (musl, macOS: nothing to do)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], Any] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()


class Trimmer:
    """Counts work done; once ``after`` units were done and the caller has been idle for
    ``quiet`` seconds (the burst is over, not a pause between two of its batches),
    trims the heap (at most one trim at a time). A heap walk during a burst would only
    take a core from the servers the burst feeds."""

    def __init__(self, after: int = 100_000, quiet: float = 0.25) -> None:
        self.after = after
        self.quiet = quiet
        self.done = 0
        self.trims = 0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def available(self) -> bool:
        return _TRIM is not None

    def count(self, units: int, idle: bool) -> None:
        """``units`` more done; ``idle``: nothing is waiting now (the burst may be over)."""
        self.done += units
        if self._timer is not None:  # more work: the quiet period starts again
            self._timer.cancel()
            self._timer = None
        if idle and self.done >= self.after and _TRIM is not None:
            self._timer = asyncio.get_running_loop().call_later(self.quiet, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._task is None or self._task.done():
            self.done = 0
            self._task = asyncio.get_running_loop().create_task(self._trim(),
                                                                 name="heap-trim")

    async def _trim(self) -> None:
        assert _TRIM is not None
        try:
            await asyncio.to_thread(_TRIM, 0)
            self.trims += 1
        except Exception:  # never worth failing anything for
            log.debug("malloc_trim failed", exc_info=True)

    async def close(self, pending: bool = True) -> None:
        """Wait for a trim under way; ``pending``: one waiting for its quiet period runs
        now (else it is dropped: the process is ending)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            if pending:
                self._start()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
