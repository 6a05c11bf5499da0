"""QueryActor: InfluxQL reads, each in its own task (bounded), with singleflight.

Requests with the same ``key`` while one is in flight share its answer: a
thousand strategies missing the same indicator cost one query. Read-through
fills go back to the cache through the callback a query carries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.backends.influx import InfluxBackend, QueryFailed
from actors.runtime import Actor, Envelope, Request, close_quietly, fail, resolve
from hubdomain.errors import BackendUnavailable, HubClosed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CsvQuery(Request[bytes]):
    """Run one statement; the answer is InfluxDB's CSV bytes."""

    text: str
    epoch: str = "s"


@dataclass(frozen=True, slots=True)
class Query(Request[list[dict[str, Any]]]):
    """Run ``text``; when ``key`` is set, concurrent equal keys share one run.

    ``fill`` gets the answer (read-through: it queues a cache fill) and is awaited
    before the callers are answered, so a caller's next read hits.
    """

    text: str
    epoch: str = "s"
    key: str | None = None
    fill: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None


class QueryActor(Actor):
    name = "query"

    def __init__(self, backend: InfluxBackend, concurrency: int = 8) -> None:
        super().__init__(mailbox_size=10_000)
        self.backend = backend
        self._slots = asyncio.Semaphore(concurrency)
        self._flights: dict[str, list[asyncio.Future[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.queries = 0
        self.shared = 0

    async def setup(self) -> None:
        await self.backend.connect()

    async def teardown(self) -> None:
        await close_quietly(self.backend, "influxdb")

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_csv(self, query: CsvQuery) -> bytes:
        """One statement's answer as CSV bytes (see InfluxBackend.query_csv)."""
        return await self.ask(query)

    async def run_query(self, query: Query) -> list[dict[str, Any]]:
        """The statements' results, one dict per statement (``series`` may be absent).
        Raises BackendUnavailable, QueryFailed."""
        return await self.ask(query)

    async def handle(self, batch: Sequence[Envelope]) -> None:
        for call in batch:
            query = call.message
            if call.future is None:
                continue
            if isinstance(query, CsvQuery):
                task = asyncio.create_task(self._serve_csv(query, call.future))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            if query.key is not None:
                waiting = self._flights.get(query.key)
                if waiting is not None:
                    waiting.append(call.future)
                    self.shared += 1
                    continue
                self._flights[query.key] = [call.future]
            task = asyncio.create_task(self._serve(query, call.future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve_csv(self, query: CsvQuery, future: asyncio.Future[Any]) -> None:
        try:
            async with self._slots:
                self.queries += 1
                body = await self.backend.query_csv(query.text, epoch=query.epoch)
        except (BackendUnavailable, QueryFailed) as exc:
            fail(future, exc)
        except asyncio.CancelledError:
            fail(future, HubClosed("hub is closing"))
            raise
        except Exception as exc:  # a bug must reach the caller, never hang it
            log.exception("query failed")
            fail(future, BackendUnavailable("influxdb", f"query failed: {exc!r}"))
        else:
            resolve(future, body)

    async def _serve(self, query: Query, future: asyncio.Future[Any]) -> None:
        error: BaseException | None = None
        results: list[dict[str, Any]] = []
        try:
            async with self._slots:
                self.queries += 1
                results = await self.backend.query(query.text, epoch=query.epoch)
            if query.fill is not None:
                await query.fill(results)
        except (BackendUnavailable, QueryFailed) as exc:
            error = exc
        except asyncio.CancelledError:
            error = HubClosed("hub is closing")
            raise
        except Exception as exc:  # a bug must reach the caller, never hang it
            log.exception("query failed")
            error = BackendUnavailable("influxdb", f"query failed: {exc!r}")
        finally:
            # callers that joined while the query ran are answered too
            futures = self._flights.pop(query.key, [future]) if query.key else [future]
            for f in futures:
                if error is None:
                    resolve(f, results)
                else:
                    fail(f, error)

    def statistics(self) -> dict[str, Any]:
        return {**super().statistics(), "queries": self.queries, "shared": self.shared,
                "in_flight": len(self._tasks)}
