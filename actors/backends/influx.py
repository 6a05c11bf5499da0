"""The one module that talks to InfluxDB (aioinflux over aiohttp); maps its errors once.

aioinflux is archived upstream: it is imported here only, created inside the
running loop (its ``__init__`` reads the current loop), and only its public ``write``,
``ping`` and ``close`` are used. Queries go over an aiohttp session of this module's
own (asking for MessagePack, which aioinflux's ``query`` cannot decode).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import msgpack
import orjson

from hubdomain.config import InfluxConfig
from hubdomain.errors import BackendUnavailable, HubError
from hubdomain.influxql import create_database, retention_statements

with warnings.catch_warnings():
    # aioinflux warns at import when pandas is absent; the hub never uses DataFrames.
    warnings.filterwarnings("ignore", message="Pandas/Numpy is not available")
    import aioinflux
from aioinflux import InfluxDBClient, InfluxDBWriteError

log = logging.getLogger(__name__)


class WriteRejected(HubError):
    """InfluxDB refused the data itself (HTTP 4xx other than 429): retrying cannot help."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"influxdb rejected the write ({status}): {reason}")


class QueryFailed(BackendUnavailable):
    """InfluxDB answered a query with an error (the caller sees a BackendUnavailable)."""

    def __init__(self, message: str) -> None:
        super().__init__("influxdb", message)


class Unavailable(BackendUnavailable):
    """InfluxDB cannot take the request now; ``retry_after`` is the server's hint (seconds)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__("influxdb", message)
        self.retry_after = retry_after


def _describe(exc: BaseException) -> str:
    """A transport error in words (a timeout's own text is empty)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time (influxdb.timeout)"
    return f"{type(exc).__name__}: {exc}"


def _retry_after(headers: Any) -> float | None:
    try:
        value = float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
    return value if 0 <= value <= 3600 else None


class InfluxBackend(Protocol):
    async def connect(self) -> None: ...
    async def write(self, body: bytes, rp: str | None = None) -> None: ...
    async def query(self, text: str, epoch: str = "s") -> list[dict[str, Any]]: ...
    async def query_csv(self, text: str, epoch: str = "s") -> bytes: ...
    async def close(self) -> None: ...


_TRANSIENT = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _translate(exc: BaseException) -> HubError:
    """aioinflux's and aiohttp's exceptions as the hub's: data InfluxDB refuses (400,
    413) is WriteRejected (retrying cannot help); anything else is Unavailable, with the
    server's Retry-After when it sent one."""
    if isinstance(exc, InfluxDBWriteError):
        reason = exc.headers.get("X-Influxdb-Error", "") or str(exc.reason)
        if exc.status in (400, 413) and not _missing_database(exc.status, reason):
            return WriteRejected(exc.status, reason)
        return Unavailable(f"HTTP {exc.status}: {reason}", _retry_after(exc.headers))
    return Unavailable(_describe(exc))


def _missing_database(status: int, reason: str) -> bool:
    return status == 404 or "not found" in reason


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """The one place aioinflux's and aiohttp's exceptions become the hub's."""
    try:
        yield
    except (InfluxDBWriteError, *_TRANSIENT) as exc:
        raise _translate(exc) from exc


class InfluxClient:
    """InfluxDB 1.x HTTP API (also the v1-compatible API of 2.x/3.x with a token)."""

    def __init__(self, config: InfluxConfig) -> None:
        self._config = config
        self._client: Any = None
        self._session: aiohttp.ClientSession | None = None  # for queries
        self._query_url = ""
        self._database_ready = False

    async def connect(self) -> None:
        """Build the HTTP client and create the database. InfluxDB being down is not an
        error here (writes wait in the spool); refused credentials are."""
        self._make_client()
        cfg = self._config
        try:
            await self._ensure_database()
        except Unavailable as exc:
            log.warning("InfluxDB not reachable at %s yet (%s); writes are kept until it is",
                        cfg.url, exc)
            return
        log.info("InfluxDB connected: %s org=%s bucket=%s", cfg.url, cfg.org, cfg.bucket)

    def _make_client(self) -> None:
        """aioinflux's client; built inside the running loop (its __init__ reads it)."""
        cfg = self._config
        url = urlsplit(cfg.url)
        headers: dict[str, str] = {}
        # the header is built here: aioinflux's username/password path uses aiohttp's
        # deprecated BasicAuth
        if cfg.token is not None:
            headers["Authorization"] = f"Token {cfg.token.get_secret_value()}"
        elif cfg.username is not None:
            secret = cfg.password.get_secret_value() if cfg.password else ""
            basic = base64.b64encode(f"{cfg.username}:{secret}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        port = url.port or (443 if url.scheme == "https" else 8086)
        path = (url.path.rstrip("/") + "/") if url.path else "/"
        self._client = InfluxDBClient(
            host=url.hostname, port=port, path=path, ssl=url.scheme == "https",
            db=cfg.bucket, timeout=cfg.timeout, **({"headers": headers} if headers else {}))
        self._session = aiohttp.ClientSession(
            headers={**headers, "Accept": "application/x-msgpack"},
            timeout=aiohttp.ClientTimeout(total=cfg.timeout))
        self._query_url = f"{url.scheme}://{url.hostname}:{port}{path}query"

    async def _ensure_database(self) -> None:
        try:
            await self.query(create_database(self._config.bucket))
            if self._config.retention.enabled:
                await self.query(";".join(retention_statements(self._config.bucket,
                                                               self._config.policies())))
        except QueryFailed as exc:
            text = str(exc).lower()
            if "authoriz" in text or "authenticat" in text:
                raise BackendUnavailable("influxdb", f"credentials refused: {exc}") from exc
            # e.g. a user without admin rights: the database must exist already
            log.warning("cannot create database %r (%s); assuming it exists",
                        self._config.bucket, exc)
        self._database_ready = True

    async def write(self, body: bytes, rp: str | None = None) -> None:
        """POST line protocol (into retention policy ``rp``). Raises Unavailable (retry
        later) or WriteRejected (the data)."""
        if not self._database_ready:
            await self._ensure_database()
        with mapped():
            try:
                await self._client.write(body, rp=rp)
            except InfluxDBWriteError as exc:
                self._write_refused(exc)
                raise

    def _write_refused(self, exc: InfluxDBWriteError) -> None:
        """What a refused write says about the server, logged (the error is mapped by
        :func:`mapped`)."""
        reason = exc.headers.get("X-Influxdb-Error", "") or str(exc.reason)
        if _missing_database(exc.status, reason):
            # database or retention policy dropped under us: create them, then retry
            if self._database_ready:
                log.error(
                    "InfluxDB has no database %r (HTTP %s: %s); on InfluxDB 2.x map it "
                    "to a bucket: `influx v1 dbrp create --db %s --rp autogen "
                    "--bucket-id <id> --default`; writes wait until it exists",
                    self._config.bucket, exc.status, reason, self._config.bucket)
            self._database_ready = False
        elif exc.status in (401, 403):
            log.error("InfluxDB refused the credentials (HTTP %s): %s", exc.status, reason)

    async def query(self, text: str, epoch: str = "s") -> list[dict[str, Any]]:
        """Run statements; returns one result dict per statement (``series`` may be absent).

        Asks for MessagePack, which influxd 1.x encodes markedly faster than JSON for
        large answers (and carries floats exactly); a server that answers JSON anyway is
        parsed with orjson. (aioinflux's ``query`` decodes JSON with the stdlib json
        module, several times slower.)"""
        if self._session is None:
            self._make_client()
        assert self._session is not None
        data = {"q": text, "db": self._config.bucket, "epoch": epoch}
        with mapped():
            async with self._session.post(self._query_url, data=data) as resp:
                body = await resp.read()
                status = resp.status
                packed = resp.content_type == "application/x-msgpack"
        if status >= 500 or status == 429:
            raise Unavailable(f"HTTP {status}: {body[:200]!r}")
        try:
            reply = msgpack.unpackb(body) if packed else orjson.loads(body)
        except (orjson.JSONDecodeError, ValueError) as exc:  # e.g. an HTML page from a proxy
            raise Unavailable(f"HTTP {status}, unreadable answer: {body[:200]!r}") from exc
        if not isinstance(reply, dict):
            raise QueryFailed(f"HTTP {status}, unexpected answer: {body[:200]!r}")
        if "error" in reply:
            raise QueryFailed(str(reply["error"]))
        if status >= 400 or "results" not in reply:
            # InfluxDB 2.x/3.x answer errors as {"code": ..., "message": ...}
            raise QueryFailed(f"HTTP {status}: {reply.get('message') or reply}")
        results: list[dict[str, Any]] = reply["results"]
        for result in results:
            if "error" in result:
                raise QueryFailed(str(result["error"]))
        return results

    async def query_csv(self, text: str, epoch: str = "s") -> bytes:
        """One statement's answer as InfluxDB's CSV (``name,tags,time,<columns>``; empty
        when nothing matched), for columnar readers: no Python object per row."""
        if self._session is None:
            self._make_client()
        assert self._session is not None
        data = {"q": text, "db": self._config.bucket, "epoch": epoch}
        with mapped():
            async with self._session.post(self._query_url, data=data,
                                          headers={"Accept": "application/csv"}) as resp:
                body = await resp.read()
                status = resp.status
        if status >= 500 or status == 429:
            raise Unavailable(f"HTTP {status}: {body[:200]!r}")
        if status >= 400 or body.startswith(b"error\n"):
            message = body.split(b"\n", 1)[-1].strip().strip(b'"')
            raise QueryFailed(f"HTTP {status}: {message[:300].decode(errors='replace')}")
        return body

    async def ping(self) -> dict[str, str]:
        """The /ping answer's headers (X-Influxdb-Version, Date). Raises Unavailable."""
        if self._client is None:
            self._make_client()
        with mapped():
            headers: dict[str, str] = await self._client.ping()
        return headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._client is not None:
            await self._client.close()
            self._client = None


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten one statement's series into dicts (column name -> value)."""
    out: list[dict[str, Any]] = []
    for series in result.get("series", ()):
        columns = series["columns"]
        tags = series.get("tags") or {}
        out.extend({**tags, **dict(zip(columns, values, strict=True))}
                   for values in series.get("values", ()))
    return out


__all__ = ["InfluxBackend", "InfluxClient", "QueryFailed", "Unavailable", "WriteRejected",
           "aioinflux", "rows"]
