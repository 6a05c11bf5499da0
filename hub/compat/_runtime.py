"""The Wolfinch drop-in's engine room: one Hub on a background event-loop thread.

Synchronous callers reach the hub through one ordered channel (a deque the loop
drains): fire-and-forget writes are validated and encoded on the caller's thread
and return without waiting for the loop; calls that need an answer are queued
behind them, so a read always sees the writes its thread made before it. Reads
the near cache can answer never enter the channel (see ``wolfinch.py``).

Sections: ``init_redis_cache`` starts only Redis, ``init_influx_db`` only InfluxDB;
a later init restarts the one hub with both (objects made earlier keep working,
they look the hub up at each call). Wolfinch hands each init only its own section of
config/cache_db.yml; the hub's other sections (``markets``, ``streams``, ``sqlite``...)
are read from the file that section came from (:func:`file_sections`). After
``fork()`` the child starts a hub of its own at its first call, on its own SQLite slot
(see ``actors.state``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import yaml

from hub._hub import Hub
from hub._intake import Accepted
from hubdomain.config import HubConfig
from hubdomain.errors import BackendUnavailable, HubClosed, ValidationError

log = logging.getLogger("hub.compat.wolfinch")
T = TypeVar("T")

CALL_TIMEOUT = 60.0  # seconds a synchronous call waits for the hub (a safety net)
MAX_QUEUED = 100_000  # writes waiting for the loop before callers are made to wait
SECTIONS = ("redis", "influxdb")
# the hub's sections besides the two Wolfinch hands over
_SHARED = ("performance", "sqlite", "metrics", "streams", "maintenance", "markets")
CONFIG_FILE = "config/cache_db.yml"  # where Wolfinch reads them, from its folder


class Runtime:
    """The background loop thread, the one Hub it runs and the channel to it."""

    def __init__(self) -> None:
        self._forsaken: list[Any] = []  # a forked parent's loop and hub: never touched
        self._fresh()
        self.sections: dict[str, dict[str, Any]] = {}
        self.shared: dict[str, Any] = {}
        self.given: dict[str, Any] = {}  # the shared sections of whole mappings given
        self.failure: str | None = None  # why the hub could not start

    def _fresh(self) -> None:
        self.lock = threading.RLock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.hub: Hub | None = None
        self._queue: deque[tuple[str, Any, Any]] = deque()
        self._idle = False
        self._wake: asyncio.Event | None = None
        self._room = threading.Event()
        self._closing = False
        self._pid = os.getpid()

    # ---- configuration ------------------------------------------------------------

    def configure(self, section: str, config: Any) -> None:
        """Take ``section`` (and the shared sections) from ``config`` and (re)start the
        hub if that changed what it runs. Raises ValidationError for a bad config."""
        data = as_mapping(config)
        whole = any(k in data for k in (*SECTIONS, *_SHARED))  # a whole file, not a section
        own = data.get(section, {}) if whole else data
        if not isinstance(own, Mapping):
            raise ValidationError(section, f"expected a mapping, got {type(own).__name__}")
        with self.lock:
            sections = {**self.sections, section: dict(own)}
            given = {**self.given, **{k: data[k] for k in _SHARED if whole and k in data}}
            # a lone section, as Wolfinch passes it: the rest from the file it came from
            # (checked against every section handed over so far)
            merged = given if whole else {**given, **file_sections(sections)}
            config_now = _hub_config(sections, merged)  # validates before anything changes
            if sections == self.sections and merged == self.shared and (
                    self.hub is not None or not _any_enabled(config_now)):
                return
            self.sections, self.shared, self.given = sections, merged, given
            self._restart(config_now)

    def enabled(self, section: str) -> bool:
        """The section is configured, enabled, and served by a running hub (started now
        if this process has none yet, as in a freshly forked child)."""
        with self.lock:
            if not self.sections.get(section, {}).get("enabled", True) \
                    or section not in self.sections:
                return False
            hub = self._running_hub()
            if hub is None:
                return False
            intake = hub.intake
            return (intake.cache is not None) if section == "redis" else (intake.writer is not None)

    def setting(self, section: str, key: str, default: Any) -> Any:
        value = self.sections.get(section, {}).get(key, default)
        return default if value is None else value

    # ---- the hub's lifecycle --------------------------------------------------------

    def _restart(self, config: HubConfig) -> None:
        self._forget_fork()
        old, self.hub = self.hub, None
        if old is not None:
            self._barrier(old.close())
        self.failure = None
        if _any_enabled(config):
            self._start(config)

    def _start(self, config: HubConfig) -> None:
        hub = Hub(config, handle_sigterm=False)
        try:
            self._barrier(hub.start())
        except (BackendUnavailable, OSError) as exc:
            self.failure = str(exc)
            log.error("the hub could not start (%s); the drop-in reports itself disabled", exc)
            return
        self.hub = hub
        if self._pid_registered != os.getpid():
            self._register_exit()

    _pid_registered = -1

    def _register_exit(self) -> None:
        """Flush at exit, also in a multiprocessing child (which ends with os._exit and
        runs only multiprocessing's finalizers, not atexit)."""
        import multiprocessing.util

        multiprocessing.util.Finalize(None, self.close, exitpriority=100)
        self._pid_registered = os.getpid()

    def _running_hub(self) -> Hub | None:
        """The hub; in a forked child, started at the first use. Call with the lock."""
        if self.hub is None and self.failure is None and self.sections and not self._closing:
            config = _hub_config(self.sections, self.shared)
            if _any_enabled(config):
                self._start(config)
        return self.hub

    def _forget_fork(self) -> None:
        if self._pid != os.getpid():
            self.after_fork_in_child()

    def after_fork_in_child(self) -> None:
        """The parent's loop thread does not exist here, and its hub's connections,
        queued writes and SQLite slot are the parent's: leave them untouched (kept
        referenced so nothing closes them) and start afresh at the next call."""
        self._forsaken.append((self.loop, self.hub, self._queue))
        self._fresh()
        self.failure = None

    def close(self) -> None:
        """Deliver what is queued, close the hub (flushing every accepted write or
        spooling it to SQLite) and stop the loop thread. Idempotent."""
        with self.lock:
            self._forget_fork()
            self._closing = True
            try:
                if self.hub is not None:
                    hub, self.hub = self.hub, None
                    try:
                        self._barrier(hub.close())
                    except HubClosed:
                        pass
                if self.loop is not None:
                    loop = self.loop
                    loop.call_soon_threadsafe(self._shutdown)
                    if self.thread is not None:
                        self.thread.join(10)
                    if not loop.is_running():
                        loop.close()
                self.loop = self.thread = self._pump_task = None
                self.sections, self.shared, self.given, self.failure = {}, {}, {}, None
            finally:
                self._closing = False

    # ---- the channel ----------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            loop = _new_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                self._wake = asyncio.Event()
                self._pump_task = loop.create_task(self._pump(), name="wolfinch-drop-in")
                loop.call_soon(ready.set)
                try:
                    loop.run_forever()
                finally:
                    loop.run_until_complete(loop.shutdown_asyncgens())

            self.thread = threading.Thread(target=run, name="wolfhub-loop", daemon=True)
            self.thread.start()
            ready.wait()
            self.loop = loop
        return self.loop

    _pump_task: asyncio.Task[None] | None = None

    def _shutdown(self) -> None:
        """On the loop: end the pump, then the loop."""
        loop = asyncio.get_running_loop()
        if self._pump_task is None:
            loop.stop()
            return
        self._pump_task.cancel()
        self._pump_task.add_done_callback(lambda _: loop.stop())

    def _push(self, item: tuple[str, Any, Any]) -> None:
        loop = self._ensure_loop()
        self._queue.append(item)
        if self._idle:
            self._idle = False
            assert self._wake is not None
            loop.call_soon_threadsafe(self._wake.set)

    def _barrier(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop after everything queued before, holding the channel
        until it ends (for starting and closing the hub). Call with the lock."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._push(("barrier", coro, future))
        return self._wait(future)

    def _wait(self, future: concurrent.futures.Future[T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("the Wolfinch drop-in is synchronous: not callable from the "
                               "hub's own loop; use hub.Hub directly in async code")
        try:
            return future.result(CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BackendUnavailable("hub", f"no answer within {CALL_TIMEOUT:.0f}s") from None

    def call(self, make: Callable[[Hub], Coroutine[Any, Any, T]]) -> T:
        """Run ``make(hub)`` on the loop, after every write this thread queued before,
        and wait for its result. Raises HubClosed when no hub runs."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self.lock:
            hub = self._running_hub()
            if hub is None:
                raise HubClosed(self.failure or "the drop-in is not initialised")
            self._push(("call", make(hub), future))
        return self._wait(future)

    def tell(self, build: Callable[[Hub], Accepted | None]) -> bool:
        """Queue a fire-and-forget write built (and validated) by ``build`` on this
        thread; returns without waiting for the loop. False when no hub runs."""
        if len(self._queue) >= MAX_QUEUED:
            self._wait_for_room()
        with self.lock:
            hub = self._running_hub()
            if hub is None:
                return False
            accepted = build(hub)
            hub.intake.check_open()
            if accepted is None:
                return True
            accepted = hub.intake.begin(accepted)
            if not (hub.config.influxdb.durable and accepted.lines) \
                    or threading.current_thread() is self.thread:
                self._push(("tell", accepted, hub))
                return True
            # influxdb.durable: acknowledged once in the SQLite outbox, in channel order
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._push(("barrier", hub.intake.deliver(accepted, patient=True), future))
        self._wait(future)
        return True

    def _wait_for_room(self) -> None:
        """Backpressure: the hub is behind (InfluxDB and its spool too). Wait up to
        ``influxdb.timeout``, then raise BackendUnavailable: the write is not taken."""
        if threading.current_thread() is self.thread:
            return
        hub = self.hub
        deadline = time.monotonic() + (hub.config.influxdb.timeout if hub else 10.0)
        while len(self._queue) >= MAX_QUEUED // 2 and self.loop is not None:
            if time.monotonic() >= deadline:
                why = hub.intake.blocked_reason() if hub is not None else "the hub is behind"
                raise BackendUnavailable("influxdb", f"the write cannot be kept now: {why}")
            self._room.clear()
            self._room.wait(0.05)

    async def _pump(self) -> None:
        """Drain the channel in order: writes are handed to the actors one after the
        other (waiting for mailbox room), calls start as tasks, barriers are awaited."""
        queue = self._queue
        wake = self._wake
        assert wake is not None
        while True:
            while queue:
                kind, payload, target = queue.popleft()
                if len(queue) < MAX_QUEUED // 2:
                    self._room.set()
                if kind == "tell":
                    try:
                        # acknowledged to its caller already: kept however long it takes
                        await target.intake.deliver(payload, patient=True)
                    except Exception:
                        log.exception("an accepted write could not be queued on the hub")
                elif kind == "call":
                    _start_call(payload, target)
                else:
                    await _run_barrier(payload, target)
            wake.clear()
            self._idle = True
            if queue:
                self._idle = False
                continue
            await wake.wait()


def _start_call(coro: Coroutine[Any, Any, Any], future: concurrent.futures.Future[Any]
                ) -> None:
    task = asyncio.get_running_loop().create_task(coro)

    def done(finished: asyncio.Task[Any]) -> None:
        if future.cancelled():
            return
        if finished.cancelled():
            future.cancel()
        elif (error := finished.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(finished.result())

    task.add_done_callback(done)
    loop = asyncio.get_running_loop()
    future.add_done_callback(
        lambda f: loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None)


async def _run_barrier(coro: Coroutine[Any, Any, Any],
                       future: concurrent.futures.Future[Any]) -> None:
    try:
        result = await coro
    except Exception as exc:
        if not future.cancelled():
            future.set_exception(exc)
        return
    if not future.cancelled():
        future.set_result(result)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop is a dependency where it builds)
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def as_mapping(config: Any) -> dict[str, Any]:
    """A config given as a path, a HubConfig, the parsed YAML, or one of its sections."""
    if isinstance(config, HubConfig):
        return config.model_dump(exclude_none=True)  # secrets stay SecretStr
    if isinstance(config, (str, os.PathLike)):
        return as_mapping(HubConfig.load(config))
    if isinstance(config, Mapping):
        return {k: (dict(val) if isinstance(val, Mapping) else val) for k, val in config.items()}
    raise ValidationError("config", "expected a path, a HubConfig or a mapping")


def file_sections(given: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The hub's other sections, for sections handed over alone (Wolfinch's
    ``init_redis_cache`` and ``init_influx_db`` get only theirs, ``given``): from the
    file ``WOLFHUB_CONFIG`` names, else from config/cache_db.yml in the working folder
    when its sections are the ones given (the file Wolfinch read; a bot whose config
    names another file sets ``WOLFHUB_CONFIG``). Empty when there is none: the hub's
    defaults."""
    named = os.environ.get("WOLFHUB_CONFIG")
    path = named or CONFIG_FILE
    try:
        with open(path, encoding="utf-8") as file:
            data = yaml.safe_load(file)
    except FileNotFoundError:
        if named:
            raise ValidationError("WOLFHUB_CONFIG", f"no such file: {named}") from None
        return {}
    except (OSError, yaml.YAMLError) as exc:
        if named:
            raise ValidationError("WOLFHUB_CONFIG", f"cannot read {named}: {exc}") from None
        log.warning("%s could not be read for the hub's other sections (%s); they keep "
                    "their defaults", path, exc)
        return {}
    if not isinstance(data, Mapping):
        return {}
    differ = [name for name, own in given.items() if data.get(name) != dict(own)]
    if not named and differ:
        log.info("%s holds another %s section than the one given: the hub's other "
                 "sections keep their defaults (WOLFHUB_CONFIG names the file)", path,
                 " and ".join(differ))
        return {}
    found = {k: data[k] for k in _SHARED if k in data}
    if found:
        log.info("the hub's %s sections are read from %s", ", ".join(found), path)
    return found


def _hub_config(sections: Mapping[str, Any], shared: Mapping[str, Any]) -> HubConfig:
    """Only the configured sections' backends run; the other is off."""
    data: dict[str, Any] = {name: sections.get(name, {"enabled": False}) for name in SECTIONS}
    return HubConfig.from_mapping({**data, **shared})


def _any_enabled(config: HubConfig) -> bool:
    return config.redis.enabled or config.influxdb.enabled


runtime = Runtime()
atexit.register(runtime.close)
os.register_at_fork(after_in_child=runtime.after_fork_in_child)

