"""Actor runtime: bounded mailboxes, request/reply calls, supervision under one TaskGroup.

An actor owns its backend connection; callers only ever touch its mailbox. A
caller cancelled while waiting leaves the connection intact: the actor finishes
the work and drops the reply (``_resolve`` ignores a done future).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from actors.backoff import Backoff
from hubdomain.errors import BackendUnavailable, HubClosed, HubError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class MailboxFull(HubError):
    """``send_nowait`` on a full mailbox."""


class Mailbox(Generic[T]):
    """A bounded FIFO. ``send()`` waits for room, ``send_nowait()`` raises MailboxFull."""

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._waiting_senders = 0
        self._unyielded = 0  # sends in a row that did not let the loop run
        self.closing = asyncio.Event()  # set by close(), for a receiver that waits elsewhere

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    @property
    def empty(self) -> bool:
        return not self._items

    def send_nowait(self, item: T) -> None:
        if self._closed:
            raise HubClosed(f"{self.name} mailbox is closed")
        if len(self._items) >= self.maxsize:
            raise MailboxFull(f"{self.name} mailbox is full ({self.maxsize})")
        self._items.append(item)
        self._readable.set()

    def offer(self, item: T) -> bool:
        """Queue ``item`` if there is room now (True); False when full. Never waits: the
        caller awaits :meth:`send` instead, and lets the loop run now and then."""
        if len(self._items) >= self.maxsize:
            return False
        self.send_nowait(item)
        return True

    def send_past_bound(self, item: T) -> None:
        """Queue even when full: for small messages that must not wait behind the bound
        (a flush request; a line that is durable on disk already)."""
        if self._closed:
            raise HubClosed(f"{self.name} mailbox is closed")
        self._items.append(item)
        self._readable.set()

    async def send(self, item: T) -> None:
        if len(self._items) < self.maxsize and not self._closed:  # fast path: no wait
            self._items.append(item)
            self._readable.set()
            self._unyielded += 1
            if self._unyielded >= 256:
                # a producer that never waits on anything would starve the receiver:
                # let the loop run now and then
                self._unyielded = 0
                await asyncio.sleep(0)
            return
        while len(self._items) >= self.maxsize and not self._closed:
            self._waiting_senders += 1
            self._writable.clear()
            try:
                await self._writable.wait()
            finally:
                self._waiting_senders -= 1
        self.send_nowait(item)

    async def receive_batch(self, limit: int) -> list[T]:
        """Wait for at least one item, then take up to ``limit``; [] once closed and empty."""
        while not self._items:
            if self._closed:
                return []
            self._readable.clear()
            await self._readable.wait()
        take = min(limit, len(self._items))
        batch = [self._items.popleft() for _ in range(take)]
        self._writable.set()
        return batch

    def close(self) -> None:
        """Refuse new items; the receiver still drains what is queued."""
        self._closed = True
        self._readable.set()
        self._writable.set()
        self.closing.set()

    def statistics(self) -> dict[str, int]:
        return {
            "depth": len(self._items),
            "maxsize": self.maxsize,
            "waiting_senders": self._waiting_senders,
        }


class Request(Generic[R]):
    """A message answered with an ``R``: :meth:`Actor.ask` returns what its actor
    resolves it with, so each actor's typed methods are checked end to end."""

    __slots__ = ()


@dataclass(slots=True)
class Envelope:
    """A message in a mailbox, and where its answer goes (None: nobody waits for one)."""

    message: Any
    future: asyncio.Future[Any] | None


def resolve(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def fail(future: asyncio.Future[Any] | None, exc: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(exc)


class Actor:
    """Base actor: ``setup`` (connect), ``handle`` each drained batch, ``teardown``.

    Callers use the typed methods each actor defines over :meth:`ask` (a request and
    its reply) and :meth:`tell` (fire and forget)."""

    name = "actor"
    batch_limit = 512

    def __init__(self, mailbox_size: int = 10_000) -> None:
        self.mailbox: Mailbox[Envelope] = Mailbox(self.name, mailbox_size)
        self._inflight: Sequence[Envelope] = ()
        self.restarts = 0
        self.observe: Callable[[float], None] | None = None  # call latency, when measured
        # why the actor is not running (crashed, waiting to restart); calls fail at once
        self.down: str | None = None
        self._deadlines = Deadlines()

    async def setup(self) -> None:
        """Connect; raising here at first start makes ``Hub.start()`` fail."""

    async def teardown(self) -> None:
        """Release connections; must not raise."""

    async def handle(self, batch: Sequence[Envelope]) -> None:
        raise NotImplementedError

    async def ask(self, request: Request[R], *, past_bound: bool = False) -> R:
        """Send ``request`` and wait for its answer. Raises BackendUnavailable at once
        while the actor is down (crashed and waiting to restart). ``past_bound``: queue
        it even when the mailbox is full (see Mailbox.send_past_bound)."""
        if self.down is not None:
            raise BackendUnavailable(self.name, self.down)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if past_bound:
            self.mailbox.send_past_bound(Envelope(request, future))
            return await future
        if self.observe is None:
            await self.mailbox.send(Envelope(request, future))
            return await future
        began = time.perf_counter()
        try:
            await self.mailbox.send(Envelope(request, future))
            return await future
        finally:
            self.observe(time.perf_counter() - began)

    async def ask_within(self, request: Request[R], seconds: float) -> R:
        """``ask``, failing with TimeoutError after ``seconds`` (the request may still
        run; its answer is dropped). Not a timeout scope, nor a timer per call: this is
        the cold read's path (see :class:`Deadlines`)."""
        if self.down is not None:
            raise BackendUnavailable(self.name, self.down)
        if self.observe is not None or self.mailbox.full:
            async with asyncio.timeout(seconds):  # waits for room, or measured
                return await self.ask(request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self.mailbox.send_nowait(Envelope(request, future))
        self._deadlines.add(loop, future, seconds)
        return await future

    async def tell(self, message: object) -> None:
        """Send ``message`` without waiting for an answer (waits only for mailbox room)."""
        await self.mailbox.send(Envelope(message, None))

    def offer(self, message: object) -> bool:
        """Send ``message`` if the mailbox has room now; False when it is full."""
        return self.mailbox.offer(Envelope(message, None))

    def tell_past_bound(self, message: object) -> None:
        """Send ``message`` now, even when the mailbox is full (never waits)."""
        self.mailbox.send_past_bound(Envelope(message, None))

    async def run(self) -> None:
        """Drain the mailbox until it is closed and empty."""
        while batch := await self.mailbox.receive_batch(self.batch_limit):
            self._inflight = batch
            await self.handle(batch)
            self._inflight = ()

    def fail_inflight(self, exc: BaseException) -> None:
        for envelope in self._inflight:
            fail(envelope.future, exc)
        self._inflight = ()

    def statistics(self) -> dict[str, Any]:
        return {**self.mailbox.statistics(), "restarts": self.restarts, "down": self.down}


class _Closable(Protocol):
    async def close(self) -> None: ...


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, grace: float = 1.0) -> None:
    """Cancel tasks and wait until they are done. A cancellation that lands while a
    client library is connecting can be swallowed (seen with redis-py on uvloop): a task
    still running ``grace`` seconds later is cancelled again. (Not sooner: a task may
    take a moment to clean up, and a second cancel must not cut that short.)"""
    pending = {t for t in tasks if t is not None}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()


async def close_quietly(resource: _Closable, what: str) -> None:
    """Close a backend in teardown: a dead connection must not mask the real error."""
    try:
        await resource.close()
    except Exception:
        log.debug("closing %s failed", what, exc_info=True)


class Supervisor:
    """Runs actors in one TaskGroup; restarts a crashed actor with backoff, for as long
    as the hub runs.

    More than ``max_restarts`` crashes within ``window`` seconds and the actor counts
    as unhealthy (``healthy`` turns False, the restart backoff grows to ``max_backoff``
    seconds) until it has run ``window`` seconds without crashing. Its mailbox never
    closes: work sent to it waits there (bounded), calls fail at once while it is down.
    """

    def __init__(self, max_restarts: float = 5, window: float = 60.0,
                 max_backoff: float = 60.0) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.max_backoff = max_backoff
        self.actors: list[Actor] = []
        self._crashes: dict[Actor, deque[float]] = {}
        self._tasks: dict[Actor, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """False while an actor is down or has crashed too often lately."""
        now = time.monotonic()
        for actor, crashes in self._crashes.items():
            recent = sum(1 for t in crashes if t > now - self.window)
            if actor.down is not None or recent > self.max_restarts:
                return False
        return True

    async def start(self, actors: Sequence[Actor]) -> None:
        """Start actors in order, each ready (``setup`` done) before the next starts."""
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(list(actors), started), name="hub-supervisor")
        try:
            await asyncio.shield(started)
        except BaseException:
            self._stop.set()
            self._close_all()
            await asyncio.gather(self._runner, return_exceptions=True)
            for actor in reversed(self.actors):  # the ones that did start
                await actor.teardown()
            raise

    async def _run(self, actors: list[Actor], started: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for actor in actors:
                    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self._tasks[actor] = tg.create_task(
                        self._supervise(actor, ready), name=f"actor-{actor.name}"
                    )
                    await ready
                    self.actors.append(actor)
                resolve(started, None)
                await self._stop.wait()
        except BaseException as exc:
            if isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            fail(started, exc)
            if not isinstance(exc, (Exception, asyncio.CancelledError)):
                raise

    async def _supervise(self, actor: Actor, ready: asyncio.Future[None]) -> None:
        crashes = self._crashes.setdefault(actor, deque(maxlen=100))
        try:
            await actor.setup()
        except Exception as exc:
            await actor.teardown()  # release what a half-done setup opened
            fail(ready, exc)
            actor.mailbox.close()
            return
        resolve(ready, None)
        while True:
            try:
                await actor.run()
                return
            except asyncio.CancelledError:
                actor.fail_inflight(HubClosed("hub is closing"))
                raise
            except Exception as exc:
                log.exception("actor %s crashed", actor.name)
                actor.down = f"actor crashed ({exc!r}); restarting"
                actor.fail_inflight(BackendUnavailable(actor.name, actor.down))
                now = time.monotonic()
                crashes.append(now)
                recent = sum(1 for t in crashes if t > now - self.window)
                if recent > self.max_restarts:
                    log.error("actor %s crashed %d times in %.0fs; it keeps being restarted "
                              "(the hub reports itself unhealthy meanwhile)",
                              actor.name, recent, self.window)
                await actor.teardown()
                await self._restart(actor, recent)

    async def _restart(self, actor: Actor, recent: int) -> None:
        """Back off (longer the more it crashed lately), then set up again until setup
        works; the actor is down meanwhile, so its callers fail at once."""
        backoff = Backoff(first=0.05,
                          cap=5.0 if recent <= self.max_restarts else self.max_backoff)
        backoff.attempts = recent
        while True:
            await backoff.sleep()
            try:
                await actor.setup()
            except Exception as exc:
                log.warning("actor %s could not restart yet: %r", actor.name, exc)
                actor.down = f"restarting after a crash: {exc!r}"
                await actor.teardown()
                continue
            actor.restarts += 1
            actor.down = None
            return

    def _close_all(self) -> None:
        for actor in self._tasks:
            actor.mailbox.close()

    async def stop(self) -> None:
        """Close mailboxes in reverse start order, each actor draining before the next."""
        for actor in reversed(list(self._tasks)):
            actor.mailbox.close()
            task = self._tasks[actor]
            await asyncio.gather(task, return_exceptions=True)
            await actor.teardown()
        self._stop.set()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)

    async def abort(self) -> None:
        """Cancel every actor now (when an orderly stop took too long)."""
        for task in self._tasks.values():
            task.cancel()
        if self._runner is not None:
            self._runner.cancel()
        await asyncio.gather(*self._tasks.values(), *filter(None, [self._runner]),
                             return_exceptions=True)
        for actor in reversed(list(self._tasks)):
            await actor.teardown()

    def statistics(self) -> dict[str, Any]:
        return {actor.name: actor.statistics() for actor in self._tasks}


class Deadlines:
    """Futures failed with TimeoutError once their seconds are up, by one timer for all
    of them: a timer per call (armed, then cancelled once answered, as nearly every call
    is) cost ~1.3 us, about a tenth of a concurrent cold read's own work here.

    The futures given the same ``seconds`` expire in the order they were added, so each
    such group is a FIFO; answered ones leave it from the front as new ones come (calls
    are answered roughly in order), so it holds about the calls of the last ``seconds``
    at most. The timer is set for the earliest deadline of the fronts."""

    # (a timer may fire up to a millisecond early: what is due by then expires with it)
    _SLACK = 0.001

    def __init__(self) -> None:
        self._groups: dict[float, deque[tuple[float, asyncio.Future[Any]]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
            seconds: float) -> None:
        if loop is not self._loop:  # (a hub started again on another loop)
            self.clear()
            self._loop = loop
        group = self._groups.get(seconds)
        if group is None:
            group = self._groups[seconds] = deque()
        while group and group[0][1].done():
            group.popleft()
        at = loop.time() + seconds
        group.append((at, future))
        if self._timer is None or at < self._at:
            self._arm(loop, at)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = loop.call_at(at, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        due = loop.time() + self._SLACK
        soonest: float | None = None
        for seconds, group in list(self._groups.items()):
            while group and (group[0][1].done() or group[0][0] <= due):
                _, future = group.popleft()
                if not future.done():
                    future.set_exception(TimeoutError())
            if not group:
                del self._groups[seconds]
            elif soonest is None or group[0][0] < soonest:
                soonest = group[0][0]
        if soonest is not None:
            self._arm(loop, soonest)

    def pending(self) -> int:
        """Futures held (answered ones not yet dropped included)."""
        return sum(len(group) for group in self._groups.values())

    def clear(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._groups.clear()
