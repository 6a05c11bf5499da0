"""The one module that talks to Redis (redis.asyncio + hiredis); maps its errors once."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from hub._config import RedisConfig
from hub.errors import BackendUnavailable, HubError

log = logging.getLogger(__name__)

Command = tuple[Any, ...]


class RedisBackend(Protocol):
    """What the CacheActor needs from Redis; in-memory fakes implement it for unit tests."""

    async def connect(self) -> None: ...
    async def pipeline(self, commands: Sequence[Command]) -> list[Any]: ...
    def scan(self, match: str) -> AsyncIterator[bytes]: ...
    async def info(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class CommandFailed(HubError):
    """Redis answered one command with an error (WRONGTYPE, script error...)."""


class ScriptMissing(CommandFailed):
    """NOSCRIPT: the server does not have the script (restarted, or SCRIPT FLUSH)."""


class RedisUnreachable(BackendUnavailable):
    """Redis did not answer (refused, reset, timed out): transient, worth a reconnect."""


def _unavailable(exc: BaseException) -> BackendUnavailable:
    return RedisUnreachable("redis", f"{type(exc).__name__}: {exc}")


class RedisClient:
    """redis.asyncio client built from the hub's config."""

    def __init__(self, config: RedisConfig) -> None:
        if config.cluster is not None:
            raise HubError("redis.cluster is not supported by this version yet")
        self._config = config
        options: dict[str, Any] = dict(
            db=config.db,
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
        self._sentinel: Any = None
        if config.sentinel is not None:
            # every connection (pipelines, invalidations) asks the sentinels for the
            # current master when it connects, so a failover needs only a reconnect
            nodes = [(n.rsplit(":", 1)[0], int(n.rsplit(":", 1)[1]))
                     for n in config.sentinel.nodes]
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                nodes, socket_timeout=config.timeout, socket_connect_timeout=config.timeout)
            self._client: aioredis.Redis = self._sentinel.master_for(
                config.sentinel.service_name, **options)
        else:
            self._client = aioredis.Redis(host=config.host, port=config.port, **options)
        self._conn: Any = None  # the pipelines' own connection

    async def connect(self) -> None:
        try:
            await self._client.ping()
        except (rexc.AuthenticationError, rexc.AuthorizationError) as exc:
            # a subclass of ConnectionError in redis-py: a config problem, not an outage
            raise BackendUnavailable("redis", f"credentials refused: {exc}") from exc
        except rexc.ResponseError as exc:
            raise BackendUnavailable("redis", f"refused: {exc}") from exc
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc
        except rexc.RedisError as exc:  # e.g. MasterNotFoundError while sentinels elect
            raise _unavailable(exc) from exc
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

        Written on one connection of its own (the CacheActor sends one pipeline at a
        time): redis-py's Pipeline adds a command stack, response callbacks and
        transaction bookkeeping the hub does not use. A connection that turns out dead
        is replaced once (every op the hub sends is idempotent, so a repeat is harmless)."""
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
                await conn.send_packed_command(conn.pack_commands(commands))
                results: list[Any] = []
                for _ in commands:
                    try:
                        results.append(await conn.read_response())
                    except rexc.NoScriptError as exc:
                        results.append(ScriptMissing(str(exc)))
                    except rexc.ResponseError as exc:
                        results.append(CommandFailed(str(exc)))
                return results
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
                self._conn = None
                await conn.disconnect()
                if attempt == 2 or isinstance(exc, rexc.TimeoutError):
                    raise _unavailable(exc) from exc
            except BaseException:
                # cancelled mid-reply: the connection's state is unknown, never reuse it
                self._conn = None
                await conn.disconnect()
                raise
        raise AssertionError("unreachable")

    async def scan(self, match: str) -> AsyncIterator[bytes]:
        try:
            async for key in self._client.scan_iter(match=match, count=1000):
                yield key
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def info(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self._client.info()
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc
        return result

    @property
    def forget_all_on_reconnect(self) -> bool:
        """After a Sentinel failover the new master may lack writes the old one had
        acknowledged: the CacheActor then drops every cached key rather than serve one
        stale."""
        return self._sentinel is not None

    async def invalidations(self, prefixes: Sequence[str]) -> AsyncIterator[list[str] | None]:
        """Keys under ``prefixes`` that any client wrote, as Redis reports them
        (client-side caching, ``CLIENT TRACKING ... BCAST`` on a RESP3 connection of its
        own); None means "everything" (FLUSHALL/FLUSHDB). The first item is an empty
        list, once tracking is on. Raises RedisUnreachable when the connection is lost:
        every invalidation after that may be missed."""
        pool = self._client.connection_pool
        conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 3})

        async def as_reply(message: Any) -> Any:  # hand invalidations to our reader
            return message

        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            conn._parser.set_invalidation_push_handler(as_reply)  # type: ignore[attr-defined]
            args: list[Any] = ["CLIENT", "TRACKING", "ON", "BCAST"]
            for prefix in prefixes:
                args += ["PREFIX", prefix]
            await conn.send_command(*args)
            await conn.read_response()
            yield []
            while True:
                message = await conn.read_response(timeout=math.inf, push_request=True)
                if isinstance(message, list) and len(message) == 2 and (
                        message[0] == b"invalidate"):
                    keys = message[1]
                    yield None if keys is None else [k.decode() for k in keys]
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.disconnect()
            self._conn = None
        await self._client.aclose()
        if self._sentinel is not None:
            for node in self._sentinel.sentinels:
                await node.aclose()
