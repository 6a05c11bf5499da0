"""The one module that talks to Redis (redis.asyncio + hiredis); maps its errors once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Protocol

import redis.asyncio as aioredis
from hiredis import pack_command as _hiredis_pack
from redis import exceptions as rexc
from redis._parsers import _AsyncHiredisParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from actors.backends.sentinel import Sentinels
from actors.backoff import Backoff
from actors.runtime import cancel_and_wait
from hubdomain.config import RedisConfig
from hubdomain.errors import BackendUnavailable, HubError
from hubdomain.keys import PREFIXES, glob_literal

log = logging.getLogger(__name__)

Command = tuple[Any, ...]
# a command of a cluster pipeline: caller's index, command, node it was ASKed to go to
_Unit = tuple[int, Command, "ClusterNode | None"]


# a stream entry as XREAD returns it: id, then field/value pairs
StreamEntry = tuple[bytes, list[bytes]]


def _stream_reply(reply: Any) -> list[tuple[str, list[StreamEntry]]]:
    """XREAD's reply (None when BLOCK timed out) as (key, entries) pairs."""
    if reply is None:
        return []
    if isinstance(reply, CommandFailed):
        raise reply
    out: list[tuple[str, list[StreamEntry]]] = []
    # a map under RESP3, a list of [key, entries] pairs under RESP2
    for key, entries in (reply.items() if isinstance(reply, dict) else reply):
        name = key.decode() if isinstance(key, bytes) else str(key)
        out.append((name, [(entry_id, list(fields or ())) for entry_id, fields in entries]))
    return out


_CLUSTER_POLL = 0.003  # seconds between non-blocking XREADs over several masters


def _xread_now(positions: Mapping[str, bytes], count: int) -> Command:
    keys = list(positions)
    return ("XREAD", "COUNT", count, "STREAMS", *keys, *(positions[k] for k in keys))


def _xread(positions: Mapping[str, bytes], count: int, block_ms: int) -> Command:
    keys = list(positions)
    return ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", *keys,
            *(positions[k] for k in keys))


# where a paged SCAN goes on: (the node it runs on, that node's cursor)
ScanCursor = tuple[str, int]


class RedisBackend(Protocol):
    """Everything the CacheActor uses of Redis; in-memory fakes implement it for unit
    tests. Errors are the hub's (see :func:`mapped`), never redis-py's."""

    # called (synchronously) when the set of masters changes (Redis Cluster): the near
    # cache must stop holding values before a master it does not track can answer
    on_masters_changed: Callable[[], None] | None
    # called with keys read from a node no invalidation comes from (Redis Cluster)
    on_untracked_keys: Callable[[list[str]], None] | None

    @property
    def forget_all_on_reconnect(self) -> bool:
        """After an outage every cached key is dropped (a failover may have lost
        writes the old master acknowledged; so may a server that restarted)."""

    @property
    def restarted(self) -> bool:
        """The server restarted, or another took its place, since the hub's keys on it
        were last vetted: every one must be dropped before it serves."""

    async def forgot_all(self) -> None:
        """Every cached key was dropped after a reconnect (what made it necessary, a
        restart seen, is settled; the server is marked as vetted)."""

    async def flushed(self) -> None:
        """Redis was emptied (FLUSHALL/FLUSHDB) while the hub used it: what it holds of
        the hub's from now on is written on it, so it is marked vetted again (the next
        process to start then drops nothing)."""

    @property
    def multi_key_scripts(self) -> bool:
        """One script may read keys of any slot (not on a Redis Cluster)."""

    @property
    def lone_reads(self) -> bool:
        """``pipeline`` may be called from more than one task: calls take turns on its
        connection (so a read may run on its caller's task while the actor is idle)."""

    @property
    def unavailable_slots(self) -> int:
        """Redis Cluster slots whose master is down (0 elsewhere)."""

    async def connect(self) -> None: ...
    async def pipeline(self, commands: Sequence[Command]) -> list[Any]: ...
    async def scan_page(self, match: str,
                        cursor: ScanCursor | None) -> tuple[ScanCursor | None, list[bytes]]: ...
    async def info(self) -> dict[str, Any]: ...
    def invalidations(self, prefixes: Sequence[str]) -> AsyncGenerator[list[str] | None, None]: ...
    async def read_streams(self, positions: Mapping[str, bytes], count: int,
                           block_ms: int) -> list[tuple[str, list[StreamEntry]]]: ...
    async def close(self) -> None: ...


class CommandFailed(BackendUnavailable):
    """Redis answered one command with an error (OOM, READONLY, WRONGTYPE, a script
    error...); ``reply`` is Redis' own text. The caller sees a BackendUnavailable."""

    def __init__(self, reply: str) -> None:
        super().__init__("redis", reply)
        self.reply = reply


class ScriptMissing(CommandFailed):
    """NOSCRIPT: the server does not have the script (restarted, or SCRIPT FLUSH)."""


class RedisUnreachable(BackendUnavailable):
    """Redis did not answer (refused, reset, timed out): transient, worth a reconnect."""


class RedisRestarted(RedisUnreachable):
    """The server a new connection reached is not the one the connections before it
    reached (its ``run_id`` changed): it restarted, perhaps from a snapshot older than
    what it acknowledged (RDB, a crash), or another server took its place. Nothing is
    sent on it until every cached key is dropped (see ``forget_all_on_reconnect``)."""


# The run_id of the server instance whose hub keys were last vetted: set once the keys
# were dropped after a restart (or found none), so a hub process that starts after a
# restart it never saw (a power loss takes the bot and Redis down together) finds it
# too: a snapshot Redis loads holds the marker of the instance that wrote it.
INSTANCE_MARKER = "wolfhub:instance"
# 1: the marker names this server (or the database is empty: it is set); 0: it does not
_VET = """
local marker = redis.call('GET', KEYS[1])
if marker == ARGV[1] then return 1 end
if not marker and redis.call('DBSIZE') == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


async def _run_id(conn: Any) -> str | None:
    """The ``run_id`` of the server ``conn`` reached (INFO server); None when this user
    may not run INFO (the check is then skipped)."""
    await conn.send_command("INFO", "server")
    try:
        reply = await conn.read_response()
    except rexc.ResponseError:
        return None
    return _info_run_id(reply)


class SlotsUnavailable(RedisUnreachable):
    """A Redis Cluster master is down: its slots fail fast until it is back or replaced.
    The backend deletes every hub key on the slots' new owner before serving them again,
    so a write skipped meanwhile needs no bookkeeping by the caller."""


def _refused_credentials(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (rexc.AuthenticationError, rexc.AuthorizationError)):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return any(sign in text for sign in ("username-password", "WRONGPASS", "NOAUTH"))


# what redis-py raises when a server does not answer as it should
_REDIS_ERRORS = (rexc.RedisError, rexc.RedisClusterException, OSError)


def _translate(exc: BaseException) -> BackendUnavailable:
    """redis-py's exception as the hub's: refused credentials are a config problem
    (no reconnect will help), a refused command at connect is the server's answer,
    everything else is an outage worth a reconnect."""
    if _refused_credentials(exc):
        return BackendUnavailable("redis", f"credentials refused: {exc}")
    if isinstance(exc, rexc.ResponseError) and not isinstance(exc, rexc.ClusterError):
        return BackendUnavailable("redis", f"refused: {exc}")
    return RedisUnreachable("redis", f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """The one place redis-py's exceptions become the hub's (``raise ... from``)."""
    try:
        yield
    except _REDIS_ERRORS as exc:
        raise _translate(exc) from exc


def _options(config: RedisConfig) -> dict[str, Any]:
    """Connection options shared by every mode (single server, Sentinel, Cluster)."""
    options: dict[str, Any] = dict(
        username=config.username,
        password=config.password.get_secret_value() if config.password else None,
        ssl=config.ssl,
        ssl_ca_certs=config.ssl_ca_certs,
        ssl_certfile=config.ssl_certfile,
        ssl_keyfile=config.ssl_keyfile,
        socket_connect_timeout=config.timeout,
        socket_timeout=config.timeout,
        # one quick retry for a stale pooled connection; outages are the actor's business
        retry=Retry(NoBackoff(), 1),
        max_connections=64,
        client_name="wolfhub",
    )
    if not config.ssl:  # a plain connection takes no TLS options
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            del options[key]
    return options


def make_client(config: RedisConfig) -> RedisClient | RedisClusterClient:
    """The backend for the configured mode: Redis Cluster, Sentinel or one server."""
    if config.cluster is not None:
        return RedisClusterClient(config)
    return RedisClient(config)


async def _exchange(conn: Any, commands: Sequence[Command], cluster: bool = False,
                    results: list[Any] | None = None) -> list[Any]:
    """Write ``commands`` in one go on ``conn`` and read every reply; a command's error
    comes back in its place as CommandFailed (a cluster's redirections as redis-py's
    MovedError/AskError/TryAgainError/ClusterDownError). Connection errors are raised.
    ``results``: the list the replies go into (the caller sees how far it got when it
    is cancelled; the connection is left connected then, see RedisClient.pipeline)."""
    await conn.send_packed_command(_pack(conn, commands))
    keep = results is not None and _resumable(conn)
    if results is None:
        results = []
    for command in commands:
        try:
            reply = await conn.read_response(disconnect_on_error=not keep)
            if command[0] == "EVAL" and isinstance(reply, list):  # errors in its place
                reply = [CommandFailed(str(x)) if isinstance(x, rexc.ResponseError) else x
                         for x in reply]
            results.append(reply)
        except rexc.NoScriptError as exc:
            results.append(ScriptMissing(str(exc)))
        except rexc.ResponseError as exc:  # MOVED/ASK/TRYAGAIN too, kept as they are
            results.append(exc if cluster and isinstance(exc, _REDIRECTS)
                           else CommandFailed(str(exc)))
    return results


def _resumable(conn: Any) -> bool:
    """Whether a read of ``conn`` cancelled while it waits may simply be read again: the
    hiredis parser feeds what arrives to its reader and keeps a partial reply there
    (redis-py's pure-Python parsers may stop inside one)."""
    return isinstance(getattr(conn, "_parser", None), _AsyncHiredisParser)


def _pack(conn: Any, commands: Sequence[Command]) -> Any:
    """RESP for ``commands``: hiredis' C packer (redis[hiredis] is a dependency; the
    asyncio connection of redis-py packs in Python, a few µs per command)."""
    try:
        return [b"".join(map(_hiredis_pack, commands))]
    except TypeError:  # an argument hiredis does not take: redis-py's rules and errors
        return conn.pack_commands(commands)


_REDIRECTS = (rexc.MovedError, rexc.AskError, rexc.TryAgainError, rexc.ClusterDownError)


async def _tracked(conn: Any, prefixes: Sequence[str]) -> AsyncIterator[list[str] | None]:
    """Turn ``CLIENT TRACKING ON BCAST`` on for ``prefixes`` on a new RESP3 connection
    and yield what it reports: ``[]`` once on, then key lists, None for "everything"."""

    async def as_reply(message: Any) -> Any:  # hand invalidations to our reader
        return message

    await conn.connect()
    # redis.asyncio has no public way to receive invalidation pushes on a connection of
    # one's own (its client-side caching is sync-only): this is the one private member
    # of redis-py the hub uses, checked by the near-cache tests on every version
    conn._parser.set_invalidation_push_handler(as_reply)
    args: list[Any] = ["CLIENT", "TRACKING", "ON", "BCAST"]
    for prefix in prefixes:
        args += ["PREFIX", prefix]
    await conn.send_command(*args)
    await conn.read_response()
    yield []
    while True:
        message = await conn.read_response(timeout=math.inf, push_request=True)
        if isinstance(message, list) and len(message) == 2 and message[0] == b"invalidate":
            keys = message[1]
            yield None if keys is None else [k.decode() for k in keys]


class RedisClient:
    """redis.asyncio client built from the hub's config (one server, or Sentinel)."""

    def __init__(self, config: RedisConfig) -> None:
        if config.cluster is not None:
            raise HubError("redis.cluster: use RedisClusterClient (make_client picks it)")
        self._config = config
        options = _options(config)
        options["db"] = config.db
        if config.sentinel is not None:
            # every connection (pipelines, invalidations) asks the sentinels for the
            # current master when it connects, so a failover needs only a reconnect
            nodes = [(n.rsplit(":", 1)[0], int(n.rsplit(":", 1)[1]))
                     for n in config.sentinel.nodes]
            self._sentinel: Sentinels | None = Sentinels(
                nodes, sentinel_kwargs={"socket_timeout": config.timeout,
                                        "socket_connect_timeout": config.timeout,
                                        # named, so a sentinel's CLIENT LIST shows ours
                                        "client_name": "wolfhub-sentinel"})
            self._client: aioredis.Redis = self._sentinel.master_for(
                config.sentinel.service_name, **options)
        else:
            self._sentinel = None
            self._client = aioredis.Redis(host=config.host, port=config.port, **options)
        self._conn: Any = None  # the pipelines' own connection
        self._turn = asyncio.Lock()  # pipelines take turns on it (see lone_reads)
        # the connection a pipeline reads replies from, and the replies read so far
        self._reading: tuple[Any, list[Any]] | None = None
        self._drains: set[asyncio.Task[None]] = set()  # reading a cancelled caller's rest
        self._streams_conn: Any = None  # blocking XREADs of the candle streams
        self.on_masters_changed: Callable[[], None] | None = None  # (one server: never)
        self.on_untracked_keys: Callable[[list[str]], None] | None = None
        # the run_id of the server the pipelines' connections reach, and whether one of
        # them found another since every cached key was last dropped
        self._run_id: str | None = None
        self._restarted = False
        self._vetted: str | None = None  # the run_id the instance marker was found to name

    async def connect(self) -> None:
        with mapped():  # (MasterNotFoundError while sentinels elect: unreachable)
            await self._client.ping()
        with contextlib.suppress(RedisRestarted):  # noted: the caller drops every key
            await self.pipeline([("PING",)])  # (the pipelines' connection, checked)
        if self._sentinel is not None:
            log.info("Redis connected: master %r via sentinels %s db=%s",
                     self._config.sentinel.service_name if self._config.sentinel else "",
                     ",".join(self._config.sentinel.nodes if self._config.sentinel else []),
                     self._config.db)
        else:
            log.info("Redis connected: %s:%s db=%s", self._config.host, self._config.port,
                     self._config.db)

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send all commands in one round trip; per-command errors come back as CommandFailed.

        Written on one connection of its own, one pipeline at a time (the CacheActor's,
        and a lone read on its caller's task while the actor is idle): redis-py's
        Pipeline adds a command stack, response callbacks and transaction bookkeeping
        the hub does not use. A connection that turns out dead is replaced once (every
        op the hub sends is idempotent, so a repeat is harmless)."""
        await self._turn.acquire()
        handed_over = False
        try:
            return await self._pipeline(commands)
        except asyncio.CancelledError:
            handed_over = self._hand_over(commands)
            raise
        finally:
            if not handed_over:
                self._turn.release()

    def _hand_over(self, commands: Sequence[Command]) -> bool:
        """The caller was cancelled while it read the replies (a lone read's caller
        timed out, say): a task reads the rest, holding the connection's turn, so the
        connection goes on serving in step rather than being replaced. False when the
        connection is not in that state (it is dropped, as before)."""
        conn, read = self._conn, self._reading
        if conn is None or read is None or not self._resumable_now(conn):
            return False
        remaining = len(commands) - len(read[1])
        task = asyncio.get_running_loop().create_task(self._drain(conn, remaining),
                                                      name="redis-drain")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return True

    async def _drain(self, conn: Any, remaining: int) -> None:
        try:
            for _ in range(remaining):
                with contextlib.suppress(rexc.ResponseError):  # (read whole all the same)
                    await conn.read_response()
        except BaseException as exc:  # dead, or the hub closes: the next one reconnects
            if self._conn is conn:
                self._conn = None
            with contextlib.suppress(Exception):
                await conn.disconnect()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._turn.release()

    async def _pipeline(self, commands: Sequence[Command]) -> list[Any]:
        for attempt in (1, 2):
            conn = self._conn
            if conn is None:
                pool = self._client.connection_pool
                conn = self._conn = pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                if not conn.is_connected:
                    # connect() explicitly: a Sentinel-managed connection asks the
                    # sentinels for the master there (the implicit connect would not)
                    await conn.connect()
                    run_id = await _run_id(conn)
                    self._same_server(run_id)
                    await self._vet(conn, run_id)
                results: list[Any] = []
                self._reading = (conn, results)
                return await _exchange(conn, commands, results=results)
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
                self._conn = None
                await conn.disconnect()
                if attempt == 2 or isinstance(exc, rexc.TimeoutError):
                    raise _translate(exc) from exc
            except _REDIS_ERRORS as exc:
                self._conn = None
                await conn.disconnect()
                raise _translate(exc) from exc
            except asyncio.CancelledError:
                # cancelled mid-reply: ``pipeline`` hands the connection to a task that
                # reads the rest, when the parser can go on; else it is never reused
                if not self._resumable_now(conn):
                    self._conn = None
                    await conn.disconnect()
                raise
            except BaseException:
                self._conn = None
                await conn.disconnect()
                raise
        raise AssertionError("unreachable")

    def _same_server(self, run_id: str | None) -> None:
        """Raises RedisRestarted when ``run_id`` is not the server's seen before."""
        if run_id is None:
            return
        before, self._run_id = self._run_id, run_id
        if before is not None and before != run_id:
            self._restarted = True
            log.warning("Redis restarted (or another server answers at its address): "
                        "every cached key is dropped before it serves again")
            raise RedisRestarted("redis", "the server restarted or was replaced; what it "
                                 "holds may be older than what it acknowledged")

    async def _vet(self, conn: Any, run_id: str | None) -> None:
        """Raises RedisRestarted when the server's hub keys were not written on this
        server instance (its marker names another run_id: it loaded them from disk or
        a master, which may have lost the newest of them) and were not yet dropped."""
        if run_id is None or run_id == self._vetted or self._restarted:
            return
        await conn.send_command("EVAL", _VET, 1, INSTANCE_MARKER, run_id)
        try:
            vetted = await conn.read_response() == 1
        except rexc.ResponseError as exc:  # (an ACL without the marker's key: unchecked)
            log.info("Redis refused the hub's instance check (%s); a restart it did not "
                     "see is not noticed", exc)
            vetted = True
        if vetted:
            self._vetted = run_id
            return
        self._restarted = True
        log.warning("Redis holds hub keys written before it last started (restored from "
                    "a snapshot, replicated, or of an older wolfinch-hub): every cached key "
                    "is dropped before it serves")
        raise RedisRestarted("redis", "the server's data was loaded at its start; it may be "
                             "older than what it acknowledged")

    def _resumable_now(self, conn: Any) -> bool:
        """The commands went out whole on ``conn`` (a cancelled send disconnects it) and
        its parser can be read on from where the cancelled read stopped."""
        return self._reading is not None and self._reading[0] is conn is self._conn \
            and conn.is_connected and _resumable(conn)

    async def read_streams(self, positions: Mapping[str, bytes], count: int,
                           block_ms: int) -> list[tuple[str, list[StreamEntry]]]:
        """XREAD the streams after the given ids, waiting up to ``block_ms`` for an
        entry, on a connection of its own (the pipelines never wait behind it)."""
        conn = self._streams_conn
        if conn is None:
            conn = self._streams_conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            if not conn.is_connected:
                await conn.connect()
            (reply,) = await _exchange(conn, [_xread(positions, count, block_ms)])
        except BaseException as exc:
            self._streams_conn = None
            with contextlib.suppress(Exception):
                await conn.disconnect()
            if isinstance(exc, _REDIS_ERRORS):
                raise _translate(exc) from exc
            raise
        return _stream_reply(reply)

    async def scan_page(self, match: str,
                        cursor: ScanCursor | None) -> tuple[ScanCursor | None, list[bytes]]:
        """One SCAN step (cursor-based, never KEYS)."""
        with mapped():
            after, keys = await self._client.scan(
                cursor=0 if cursor is None else cursor[1], match=match, count=1000)
        found = [k if isinstance(k, bytes) else k.encode() for k in keys]
        return (None if int(after) == 0 else ("", int(after))), found

    async def info(self) -> dict[str, Any]:
        with mapped():
            result: dict[str, Any] = await self._client.info()
        return result

    @property
    def unavailable_slots(self) -> int:
        return 0

    @property
    def multi_key_scripts(self) -> bool:
        return True

    @property
    def lone_reads(self) -> bool:
        return True

    @property
    def forget_all_on_reconnect(self) -> bool:
        """After a Sentinel failover the new master may lack writes the old one had
        acknowledged, and a server that restarted may have loaded a snapshot older than
        what it acknowledged (a crash after the last RDB save): the CacheActor then drops
        every cached key rather than serve one stale (or a hot window with a hole)."""
        return self._sentinel is not None or self._restarted

    @property
    def restarted(self) -> bool:
        return self._restarted

    async def forgot_all(self) -> None:
        if self._run_id is not None and self._vetted != self._run_id:
            (done,) = await self.pipeline([("SET", INSTANCE_MARKER, self._run_id)])
            if isinstance(done, CommandFailed) and "NOPERM" not in done.reply:
                raise done
            self._vetted = self._run_id
        self._restarted = False

    async def flushed(self) -> None:
        if self._vetted is not None and not self._restarted:
            # (NX: never over a marker a process set since; a server that is not the one
            # vetted is found by the pipeline's connection check before the SET is sent)
            await self.pipeline([("SET", INSTANCE_MARKER, self._vetted, "NX")])

    async def invalidations(self, prefixes: Sequence[str]
                            ) -> AsyncGenerator[list[str] | None, None]:
        """Keys under ``prefixes`` that any client wrote, as Redis reports them
        (client-side caching, ``CLIENT TRACKING ... BCAST`` on a RESP3 connection of its
        own); None means "everything" (FLUSHALL/FLUSHDB). The first item is an empty
        list, once tracking is on. Raises RedisUnreachable when the connection is lost:
        every invalidation after that may be missed."""
        pool = self._client.connection_pool
        conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 3})
        try:
            with mapped():
                async for keys in _tracked(conn, prefixes):
                    yield keys
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def close(self) -> None:
        """Close every connection: the pipelines' and the reader's, the pool's, and each
        sentinel's. One failing to close (a timeout on a dead master's socket, on a busy
        machine) does not leave the others open; the first failure is raised after."""
        for drain in list(self._drains):
            await cancel_and_wait(drain)
        own = [c for c in (self._conn, self._streams_conn) if c is not None]
        self._conn = self._streams_conn = None
        steps: list[Callable[[], Awaitable[Any]]] = [c.disconnect for c in own]
        steps.append(self._client.aclose)
        if self._sentinel is not None:
            steps += [node.aclose for node in self._sentinel.clients]
        failed: Exception | None = None
        for step in steps:
            try:
                await step()
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed


# commands without a key: sent to any master
_KEYLESS = frozenset({"PING", "TIME", "ECHO", "INFO", "DBSIZE", "SCRIPT", "COMMAND"})


def _key_of(command: Command) -> Any:
    """The key a command is routed by, None when it has none."""
    name = str(command[0]).upper()
    if name in _KEYLESS or len(command) < 2:
        return None
    if name in ("EVAL", "EVALSHA"):
        return command[3] if int(command[2]) > 0 else None
    return command[1]


def _slot(key: Any) -> int:
    return key_slot(key if isinstance(key, bytes) else str(key).encode())


@functools.lru_cache(maxsize=64)
def _marker_in(slot: int) -> str:
    """A Redis Cluster master's instance marker: ``wolfhub:instance:{n}`` with the
    smallest ``n`` whose hash tag falls in ``slot`` (one of the master's own)."""
    for n in itertools.count():
        key = f"{INSTANCE_MARKER}:{{{n}}}"
        if _slot(key) == slot:
            return key
    raise AssertionError("unreachable")


def _info_run_id(reply: Any) -> str | None:
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[7:].strip()
    return None


class RedisClusterClient:
    """Redis Cluster (``redis.cluster.nodes``): redis.asyncio's cluster client finds the
    nodes and keeps the slot map; the hub's pipelines are split per master and written
    on one dedicated connection per master, all masters at once. MOVED refreshes the
    slot map and resends; ASK resends to the importing node after ASKING; TRYAGAIN
    (a slot in migration) resends after a pause. Every hub key of one product carries
    the same hash tag, so a product's commands share a slot and a node. Invalidations
    for the near cache come from every master (one tracking connection each)."""

    redirect_rounds = 5

    def __init__(self, config: RedisConfig) -> None:
        assert config.cluster is not None
        self._config = config
        options = _options(config)
        self._seeds = [ClusterNode(host, int(port))
                       for host, _, port in (n.rpartition(":") for n in config.cluster.nodes)]
        self._client = RedisCluster(startup_nodes=self._seeds, **options)
        self._links: dict[str, Any] = {}  # node name -> the pipelines' own connection
        # called (synchronously) when the set of masters changes: the near cache must
        # stop holding values before a master it does not track can answer a read
        self.on_masters_changed: Callable[[], None] | None = None
        # called with keys read from a node that is not (yet) a master of the slot map,
        # so no invalidation for them would arrive: the near cache must not hold them
        self.on_untracked_keys: Callable[[list[str]], None] | None = None
        self._subscriptions: set[asyncio.Queue[Any]] = set()
        # slots of a master that stopped answering: they fail fast (the other masters'
        # keys are served as usual) until the recovery task has found their owner again
        # and deleted every hub key there
        self._fenced: set[int] = set()
        self._recovery: asyncio.Task[None] | None = None
        self._refreshing = asyncio.Lock()
        self._initialized = False  # the client has read the slot map once
        self._closed = False  # close() has begun: no new connection may open
        # ASK targets the slot map did not know, by name (reused; closed by close())
        self._strays: dict[str, ClusterNode] = {}
        # every node object ``_on`` took a connection from, or ``_masters`` handed out
        # (for redis-py's ``target_nodes``): a refresh may drop one from redis-py's maps
        # (disconnecting what it held then) while a task of ours still holds it, and a
        # connection it opens afterwards is in no map; close() sweeps these too
        self._used: dict[int, ClusterNode] = {}
        # tracking connections' tasks: close() ends any a cancelled listener left behind
        self._trackers: set[asyncio.Task[None]] = set()

    @property
    def multi_key_scripts(self) -> bool:
        return False  # keys of several slots in one script: CROSSSLOT

    @property
    def lone_reads(self) -> bool:
        return False  # (one connection per master, each the actor's)

    @property
    def forget_all_on_reconnect(self) -> bool:
        """A promoted replica may lack writes its master acknowledged (replication is
        asynchronous): after an outage every cached key is dropped, as with Sentinel."""
        return True

    @property
    def restarted(self) -> bool:
        # (a master is vetted as the client connects, and one that stops answering is
        # fenced, and its keys dropped, before it serves again)
        return False

    async def forgot_all(self) -> None:
        """Every master's hub keys were dropped: each is marked as vetted."""
        try:
            for master in self._masters():
                await self._mark(master)
        except _REDIS_ERRORS as exc:
            raise _translate(exc) from exc

    async def flushed(self) -> None:
        pass  # (no marker: see ``restarted``)

    @property
    def unavailable_slots(self) -> int:
        """Slots failing fast because their master is down (0 when all are served)."""
        return len(self._fenced)

    def _masters(self) -> list[ClusterNode]:
        masters = list(self._client.get_primaries())
        for node in masters:  # (a caller may use one after a refresh dropped it)
            self._used[id(node)] = node
        return masters

    async def _refresh(self) -> None:
        """Ask the cluster for its current slot map (after a failover or a MOVED). Safe
        beside running pipelines: the map is swapped whole, the links stay. A new set
        of masters (failover, a master added or removed) ends every invalidation stream:
        they resubscribe on the masters there are now."""
        self._check_open()
        async with self._refreshing:  # the pipeline, the listener and the recovery share it
            if not self._initialized:
                await self._client.initialize()
                self._initialized = True
                return
            before = {m.name for m in self._masters()}
            await self._client.nodes_manager.initialize()
        if {m.name for m in self._masters()} != before:
            log.info("Redis cluster masters changed: %s", sorted(m.name for m in self._masters()))
            self._topology_changed("cluster masters changed")

    def _topology_changed(self, why: str) -> None:
        """The near cache holds nothing until the listener tracks every master again."""
        if self.on_masters_changed is not None:
            self.on_masters_changed()
        for queue in self._subscriptions:
            queue.put_nowait(RedisUnreachable("redis", why))

    async def connect(self) -> None:
        where = ",".join(self._config.cluster.nodes if self._config.cluster else [])
        self._closed = False
        try:
            await self._drop_links()  # called when no pipeline runs: start afresh
            # a reconnect of the whole cache forgets every key itself: no fence is needed
            self._fenced.clear()
            await self._refresh()
            masters = self._masters()
            # every master must answer, and agree the cluster is whole
            replies = await asyncio.gather(*(self._client.execute_command(
                "CLUSTER", "INFO", target_nodes=m) for m in masters))
        except _REDIS_ERRORS as exc:  # (redis-py wraps refused credentials when no seed
            raise _translate(exc) from exc  # lets it in: still told apart)
        for reply in replies:
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            if "cluster_state:ok" not in text:
                raise RedisUnreachable("redis", "cluster_state is not ok (failover under way?)")
        try:
            for master in masters:
                await self._vet(master)
        except _REDIS_ERRORS as exc:
            raise _translate(exc) from exc
        log.info("Redis cluster connected: %d masters via %s", len(masters), where)

    async def _instance(self, node: ClusterNode) -> tuple[str, str] | None:
        """``node``'s instance marker (in its first slot) and its run_id; None when it
        serves no slot, or this user may not run INFO."""
        cache = self._client.nodes_manager.slots_cache
        slots = [slot for slot, owners in cache.items() if owners and owners[0].name == node.name]
        if not slots:
            return None
        (info,) = await self._on(node, [("INFO", "server")])
        run_id = _info_run_id(info)
        return None if run_id is None else (_marker_in(min(slots)), run_id)

    async def _vet(self, node: ClusterNode) -> None:
        """Drop every hub key ``node`` holds when they were not written on this instance
        of it (its marker names another run_id: it restarted from a snapshot, or is a
        promoted replica), as RedisClient does for one server; then mark it."""
        try:
            instance = await self._instance(node)
            if instance is None:
                return
            (vetted,) = await self._on(node, [("EVAL", _VET, 1, *instance)])
        except CommandFailed as exc:  # (an ACL without INFO or the marker's key)
            log.info("Redis refused the hub's instance check on %s (%s)", node.name, exc)
            return
        if vetted == 1:
            return
        log.warning("Redis cluster master %s holds hub keys written before it last started "
                    "(restored from a snapshot, or a promoted replica): its hub keys are "
                    "dropped before it serves", node.name)
        await self._forget_on(node)
        await self._mark(node)

    async def _mark(self, node: ClusterNode) -> None:
        """Set ``node``'s instance marker to its run_id (its hub keys were dropped)."""
        try:
            instance = await self._instance(node)
            if instance is not None:
                await self._on(node, [("SET", *instance)])
        except CommandFailed as exc:
            log.info("Redis refused the hub's instance marker on %s (%s)", node.name, exc)

    def _stray(self, host: str, port: int) -> ClusterNode:
        node = self._strays.get(f"{host}:{port}")
        if node is None:
            kwargs: dict[str, Any] = dict(self._client.get_connection_kwargs())
            node = self._strays[f"{host}:{port}"] = ClusterNode(host, port, **kwargs)
        return node

    def _check_open(self) -> None:
        if self._closed:
            raise RedisUnreachable("redis", "the cluster client is closed")

    async def _link(self, node: ClusterNode) -> Any:
        self._check_open()
        conn = self._links.get(node.name)
        if conn is None:
            conn = self._links[node.name] = node.connection_class(**node.connection_kwargs)
        if not conn.is_connected:
            await conn.connect()
        return conn

    async def _drop_links(self) -> None:
        links, self._links = self._links, {}
        for conn in links.values():
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _send_to(self, node: ClusterNode, commands: list[Command],
                       asking: list[bool]) -> list[Any]:
        """One pipeline on ``node``'s own connection (ASKING before redirected ones)."""
        wire: list[Command] = []
        for command, ask in zip(commands, asking, strict=True):
            if ask:
                wire.append(("ASKING",))
            wire.append(command)
        conn = await self._link(node)
        try:
            replies = await _exchange(conn, wire, cluster=True)
        except BaseException:
            self._links.pop(node.name, None)
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise
        out: list[Any] = []
        it = iter(replies)
        for ask in asking:
            if ask:
                next(it)  # ASKING's OK
            out.append(next(it))
        return out

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Like RedisClient.pipeline, split per master; multi-key UNLINK/DEL is split per
        key (keys of several slots) and answers the sum, as one command would."""
        units: list[tuple[int, Command]] = []  # (index of the caller's command, command)
        results: list[Any] = [None] * len(commands)
        summed: set[int] = set()
        for i, command in enumerate(commands):
            name = str(command[0]).upper()
            if name in ("UNLINK", "DEL") and len(command) > 2:
                results[i] = 0
                summed.add(i)
                units.extend((i, (command[0], key)) for key in command[1:])
            elif name == "PING":  # the pipeline's return already is the barrier
                results[i] = True
            else:
                units.append((i, command))
        todo: list[_Unit] = [(index, command, None) for index, command in units]
        try:
            for _ in range(self.redirect_rounds):
                if not todo:
                    return results
                todo = await self._round(todo, results, summed)
        except _REDIS_ERRORS as exc:
            await self._drop_links()
            raise _translate(exc) from exc
        raise RedisUnreachable("redis", f"still redirected after {self.redirect_rounds} rounds")

    async def _round(self, todo: list[_Unit], results: list[Any],
                     summed: set[int]) -> list[_Unit]:
        groups: dict[str, tuple[ClusterNode, list[tuple[int, Command, bool]]]] = {}
        masters = self._masters()
        for index, command, asked in todo:
            if asked is not None:
                node = asked
            else:
                key = _key_of(command)
                slot = None if key is None else _slot(key)
                if slot in self._fenced:
                    results[index] = SlotsUnavailable(
                        "redis", "the master of this key is down; waiting for its replacement")
                    continue
                node = (masters[0] if slot is None else
                        self._client.nodes_manager.get_node_from_slot(slot))
            groups.setdefault(node.name, (node, []))[1].append(
                (index, command, asked is not None))
        # every master's answer is awaited before one's failure is handled: none is left
        # reading on a connection about to be dropped
        outcomes = await asyncio.gather(*(
            self._send_to(node, [c for _, c, _ in items], [a for _, _, a in items])
            for node, items in groups.values()), return_exceptions=True)
        failed = [(node, items, outcome)
                  for (node, items), outcome in zip(groups.values(), outcomes, strict=True)
                  if isinstance(outcome, BaseException)]
        for _, _, outcome in failed:
            if not isinstance(outcome, (rexc.ConnectionError, rexc.TimeoutError, OSError)):
                raise outcome
        if failed:
            down = {node.name for node, _, _ in failed}
            if down >= {m.name for m in masters}:  # nothing answers: the whole cache is down
                raise failed[0][2]
            for node, items, outcome in failed:
                self._fence(node, outcome)
                for index, _, _ in items:
                    results[index] = SlotsUnavailable("redis", f"{node.name}: {outcome}")
        answers: list[list[Any]] = []
        ok_groups: list[tuple[ClusterNode, list[tuple[int, Command, bool]]]] = []
        for group, answer in zip(groups.values(), outcomes, strict=True):
            if not isinstance(answer, BaseException):
                ok_groups.append(group)
                answers.append(answer)
        again: list[_Unit] = []
        moved = False
        tracked = {m.name for m in masters}
        untracked: list[str] = []  # keys answered by a node no invalidation comes from
        for (_, items), replies in zip(ok_groups, answers, strict=True):
            for (index, command, _), reply in zip(items, replies, strict=True):
                if isinstance(reply, rexc.AskError) and not isinstance(reply, rexc.MovedError):
                    target = self._client.nodes_manager.get_node(reply.host, reply.port)
                    if target is None:
                        # a node the slot map does not know yet: connect as to the others
                        target = self._stray(reply.host, reply.port)
                    if target.name not in tracked:
                        key = _key_of(command)
                        untracked.append(key.decode() if isinstance(key, bytes) else str(key))
                    again.append((index, command, target))
                elif isinstance(reply, rexc.MovedError):
                    moved = True
                    again.append((index, command, None))
                elif isinstance(reply, rexc.TryAgainError):
                    again.append((index, command, None))
                elif isinstance(reply, rexc.ClusterDownError):
                    raise RedisUnreachable("redis", f"cluster down: {reply}")
                elif index in summed and isinstance(reply, int):
                    results[index] += reply
                else:
                    results[index] = reply
        if untracked and self.on_untracked_keys is not None:
            # before the answer is handed out: a read in flight for them is not held
            self.on_untracked_keys(untracked)
        if moved:
            await self._refresh()
        elif again:
            await asyncio.sleep(0.05)
        return again

    def _fence(self, node: ClusterNode, why: BaseException) -> None:
        """``node`` stopped answering: fail its slots fast, and recover in the background."""
        cache = self._client.nodes_manager.slots_cache
        slots = {slot for slot, owners in cache.items() if owners and owners[0].name == node.name}
        if not slots - self._fenced:
            return
        log.warning("Redis cluster master %s unavailable (%s): its %d slots fall back until "
                    "it is back or replaced", node.name, why, len(slots))
        self._fenced |= slots
        self._topology_changed(f"cluster master {node.name} unavailable")
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name="redis-cluster-recovery")

    async def _recover(self) -> None:
        """Until no slot is fenced: find the fenced slots' owners (the old master back, or
        its promoted replica), check they answer and the cluster is whole, delete every
        hub key there (a promoted replica may lack acknowledged writes; writes were
        skipped meanwhile), then serve those slots again."""
        backoff = Backoff()
        while self._fenced:
            await backoff.sleep()
            fenced = set(self._fenced)
            try:
                await self._refresh()
                owners = {node.name: node for node in (
                    self._client.nodes_manager.get_node_from_slot(slot) for slot in fenced)}
                for node in owners.values():
                    (state,) = await self._on(node, [("CLUSTER", "INFO")])
                    if b"cluster_state:ok" not in state:
                        raise RedisUnreachable("redis", f"{node.name}: cluster_state not ok")
                    await self._forget_on(node)
                    await self._mark(node)
            except (HubError, rexc.RedisError, rexc.RedisClusterException, OSError) as exc:
                # (HubError: a command refused, e.g. CLUSTERDOWN while the election runs)
                log.debug("redis cluster slots still unavailable: %s", exc)
                continue
            except Exception:  # never leave the slots fenced for good
                log.warning("redis cluster recovery failed; trying again", exc_info=True)
                continue
            self._fenced -= fenced
            log.info("Redis cluster: %d slots served again by %s", len(fenced),
                     ", ".join(sorted(owners)))

    async def _on(self, node: ClusterNode, commands: list[Command]) -> list[Any]:
        """Commands on a pooled connection of ``node`` (not the pipelines' own)."""
        self._check_open()
        self._used[id(node)] = node
        conn = node.acquire_connection()
        try:
            replies = await _exchange(conn, commands)
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)
        for reply in replies:
            if isinstance(reply, CommandFailed):
                raise reply
        return replies

    async def _forget_on(self, node: ClusterNode) -> None:
        """UNLINK every hub key held by ``node`` (SCAN, never KEYS)."""
        for prefix in PREFIXES:
            batch: list[bytes] = []
            async for key in self._scan_node(node, glob_literal(prefix) + "*"):
                batch.append(key)
                if len(batch) >= 1000:
                    await self._on(node, [("UNLINK", k) for k in batch])
                    batch = []
            if batch:
                await self._on(node, [("UNLINK", k) for k in batch])

    async def scan_page(self, match: str,
                        cursor: ScanCursor | None) -> tuple[ScanCursor | None, list[bytes]]:
        """One SCAN step; the masters in turn, by name (cursor-based, never KEYS). A
        master gone between pages ends its part of the walk."""
        with mapped():
            masters = sorted(self._masters(), key=lambda m: m.name)
            if not masters:
                return None, []
            names = [m.name for m in masters]
            if cursor is None:
                index, at = 0, 0
            elif cursor[0] in names:
                index, at = names.index(cursor[0]), cursor[1]
            else:
                index = next((i for i, n in enumerate(names) if n > cursor[0]), len(names))
                if index == len(names):
                    return None, []
                at = 0
            ((after, keys),) = await self._on(
                masters[index], [("SCAN", at, "MATCH", match, "COUNT", 1000)])
        if int(after) != 0:
            return (names[index], int(after)), list(keys)
        if index + 1 < len(names):
            return (names[index + 1], 0), list(keys)
        return None, list(keys)

    async def read_streams(self, positions: Mapping[str, bytes], count: int,
                           block_ms: int) -> list[tuple[str, list[StreamEntry]]]:
        """XREAD on each master holding some of the streams. On one master it blocks
        up to ``block_ms``; on several, one blocking read would hold back what another
        master has, so they are asked without blocking, every few milliseconds, until
        one has something (or ``block_ms`` passed)."""
        with mapped():
            by_node: dict[str, tuple[ClusterNode, dict[str, bytes]]] = {}
            for key, at in positions.items():
                node = self._client.nodes_manager.get_node_from_slot(_slot(key))
                if node is None:
                    raise SlotsUnavailable("redis", f"no master serves the slot of {key!r}")
                by_node.setdefault(node.name, (node, {}))[1][key] = at
            if len(by_node) == 1:
                ((node, part),) = by_node.values()
                (reply,) = await self._on(node, [_xread(part, count, block_ms)])
                return _stream_reply(reply)
            waited = 0.0
            while True:
                replies = await asyncio.gather(*(
                    self._on(node, [_xread_now(part, count)])
                    for node, part in by_node.values()))
                found = [item for (reply,) in replies for item in _stream_reply(reply)]
                if found or waited * 1000 >= block_ms:
                    return found
                await asyncio.sleep(_CLUSTER_POLL)
                waited += _CLUSTER_POLL

    async def _scan_node(self, node: ClusterNode, match: str) -> AsyncIterator[bytes]:
        cursor: Any = 0
        while True:
            ((cursor, keys),) = await self._on(
                node, [("SCAN", cursor, "MATCH", match, "COUNT", 1000)])
            for key in keys:
                yield key
            if int(cursor) == 0:
                return

    async def info(self) -> dict[str, Any]:
        """INFO of every master: counters summed, ``used_memory_human`` of the sum, the
        rest (version...) from the first master."""
        with mapped():
            masters = self._masters()
            infos = await asyncio.gather(*(self._client.execute_command(
                "INFO", target_nodes=m) for m in masters))
        merged: dict[str, Any] = dict(infos[0]) if infos else {}
        for key in ("keyspace_hits", "keyspace_misses", "connected_clients",
                    "total_commands_processed", "used_memory"):
            merged[key] = sum(int(i.get(key, 0)) for i in infos)
        merged["used_memory_human"] = _human(merged["used_memory"])
        merged["cluster_masters"] = len(masters)
        return merged

    async def invalidations(self, prefixes: Sequence[str]
                            ) -> AsyncGenerator[list[str] | None, None]:
        """RedisClient.invalidations, from every master at once: one RESP3 tracking
        connection per master, merged. Losing any of them, or the set of masters
        changing, ends the stream with RedisUnreachable (the near cache then empties)."""
        with mapped():  # the masters as they are now (this runs after every lost connection)
            await self._refresh()
        masters = self._masters()
        queue: asyncio.Queue[list[str] | BaseException | None] = asyncio.Queue()
        ready = 0
        self._subscriptions.add(queue)

        async def follow(node: ClusterNode) -> None:
            conn = node.connection_class(**{**node.connection_kwargs, "protocol": 3})
            try:
                async for keys in _tracked(conn, prefixes):
                    await queue.put(keys)
            except Exception as exc:  # handed to the reader
                await queue.put(exc)
            finally:
                with contextlib.suppress(Exception):
                    await conn.disconnect()

        tasks = [asyncio.create_task(follow(m), name=f"tracking {m.name}") for m in masters]
        for task in tasks:
            self._trackers.add(task)
            task.add_done_callback(self._trackers.discard)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise _translate(item) if isinstance(item, _REDIS_ERRORS) else item
                if item == [] and ready < len(masters):
                    ready += 1
                    if ready == len(masters):
                        yield []  # tracking is on everywhere from here
                    continue
                yield item
        finally:
            self._subscriptions.discard(queue)
            await cancel_and_wait(*tasks)

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._recovery, *self._trackers)
        self._recovery = None
        await self._drop_links()
        try:
            await self._client.aclose()
        except Exception:  # a connection to a dead node failing to close: swept below
            log.debug("closing the cluster client failed", exc_info=True)
        # No connection may outlive the hub (one did, now and then, and the loop closing
        # under it failed a test). redis-py disconnects nodes it drops from its map, and
        # connections it marked for reconnect at a refresh, in tasks of its own: wait for
        # them; then disconnect whatever any node still holds (a connection opened while
        # a cancellation was swallowed, a node of an old map, an ASK target).
        manager = self._client.nodes_manager
        nodes = {id(n): n for n in (*manager.nodes_cache.values(),
                                    *manager.startup_nodes.values(), *self._seeds,
                                    *self._strays.values(), *self._used.values())}
        for _ in range(3):  # a finished task may have released into another
            tasks = [*getattr(manager, "_background_tasks", ()),
                     *(t for n in nodes.values() for t in getattr(n, "_background_tasks", ()))]
            if not tasks:
                break
            await asyncio.gather(*tasks, return_exceptions=True)
        for node in nodes.values():
            for conn in list(getattr(node, "_connections", ())):
                with contextlib.suppress(Exception):
                    await conn.disconnect()
        self._strays.clear()
        self._used.clear()
        self._initialized = False


def _human(size: int) -> str:
    """Bytes the way Redis prints ``used_memory_human``."""
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.2f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    raise AssertionError("unreachable")
