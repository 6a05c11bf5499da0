"""MaintenanceActor: the hub's periodic jobs, under the same supervisor as the others.

Each :class:`Job` runs on its own clock: once at start (``interval`` 0 with
``at_start``) or every ``interval`` seconds. A job that fails is retried sooner (capped
exponential backoff, never sooner than a second apart) and never stops the others; its
last run, duration, result and error are in ``statistics()`` (``get_stats()["actors"]
["maintenance"]["jobs"]``) and the Prometheus metrics. ``run_now`` runs one at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.backoff import Backoff
from actors.runtime import Actor, Envelope, Request, cancel_and_wait, fail, resolve
from hubdomain.errors import ValidationError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    """A periodic job: ``work`` returns something short to show (a count, a dict)."""

    name: str
    interval: float  # seconds between runs; 0: only at start (when ``at_start``), else off
    work: Callable[[], Awaitable[Any]]
    at_start: bool = False
    runs: int = 0
    failures: int = 0
    failing_since: float | None = None
    last_run: float | None = None  # wall clock of the last start
    last_duration: float | None = None
    last_result: Any = None
    last_error: str | None = None
    running: bool = field(default=False)

    def snapshot(self) -> dict[str, Any]:
        return {"interval": self.interval, "runs": self.runs, "failures": self.failures,
                "last_run": self.last_run, "last_duration": self.last_duration,
                "last_result": self.last_result, "last_error": self.last_error,
                "failing": self.failing_since is not None}


@dataclass(frozen=True, slots=True)
class RunNow(Request[dict[str, Any]]):
    """Run job ``name`` now; answered with its stats afterwards."""

    name: str


class MaintenanceActor(Actor):
    name = "maintenance"

    def __init__(self, jobs: Sequence[Job]) -> None:
        super().__init__(mailbox_size=100)
        self.jobs = {job.name: job for job in jobs}
        self._tasks: list[asyncio.Task[None]] = []
        self._lock: dict[str, asyncio.Lock] = {}
        # the clocks start once this is set (the hub sets it when it is open)
        self.go = asyncio.Event()

    async def run_now(self, name: str) -> dict[str, Any]:
        if name not in self.jobs:
            raise ValidationError("job", f"expected one of {sorted(self.jobs)}, got {name!r}")
        return await self.ask(RunNow(name))

    async def run(self) -> None:
        self._lock = {name: asyncio.Lock() for name in self.jobs}
        self._tasks = [asyncio.create_task(self._clock(job), name=f"maintenance {job.name}")
                       for job in self.jobs.values()
                       if job.interval > 0 or job.at_start]
        try:
            await super().run()
        finally:
            await cancel_and_wait(*self._tasks)
            self._tasks = []

    async def handle(self, batch: Sequence[Envelope]) -> None:
        for envelope in batch:
            request = envelope.message
            if isinstance(request, RunNow):
                job = self.jobs[request.name]
                try:
                    await self._once(job)
                    resolve(envelope.future, job.snapshot())
                except Exception as exc:  # pragma: no cover - _once never raises
                    fail(envelope.future, exc)

    async def _clock(self, job: Job) -> None:
        backoff = Backoff(first=1.0, cap=max(1.0, job.interval or 60.0))
        await self.go.wait()
        if not job.at_start:
            await asyncio.sleep(job.interval)
        while True:
            ok = await self._once(job)
            if ok:
                backoff.reset()
                if job.interval <= 0:
                    return
                await asyncio.sleep(job.interval)
            else:
                await backoff.sleep()

    async def _once(self, job: Job) -> bool:
        """Run ``job``; True when it succeeded. Never raises (but cancellation)."""
        async with self._lock[job.name]:
            began = time.perf_counter()
            job.last_run = time.time()
            job.running = True
            try:
                job.last_result = await job.work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                job.failures += 1
                job.last_error = f"{type(exc).__name__}: {exc}"
                if job.failing_since is None:
                    job.failing_since = job.last_run
                    log.warning("maintenance job %s failed: %s (retrying)", job.name,
                                job.last_error)
                return False
            finally:
                job.running = False
                job.last_duration = time.perf_counter() - began
                job.runs += 1
            if job.failing_since is not None:
                log.info("maintenance job %s works again", job.name)
            job.failing_since = None
            return True

    def statistics(self) -> dict[str, Any]:
        return {**super().statistics(),
                "jobs": {name: job.snapshot() for name, job in self.jobs.items()}}
