"""Redis Sentinel master discovery that concurrent connections cannot corrupt.

redis-py's ``Sentinel.discover_master`` moves the sentinel that answered to the front of
its list with a two-element swap computed from values read before an ``await``. The hub
discovers from several connections at once (the pipelines', the invalidation listener's,
the stream reader's, the pool's), typically right after a failover, when the first
sentinel still reports the old master down and every caller moves the second one
forward. Two such swaps interleaved leave one client in the list twice and another not
at all: that sentinel is never asked again, and ``Sentinel.aclose`` (which walks the same
list) never closes its connections. The socket then outlives the hub; under uvloop,
closing the event loop waits for it forever.

Here the answering sentinel moves to the front in one step with no ``await`` in between
(the set of clients never changes), and ``clients`` keeps every client created, for
closing.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class Sentinels(Sentinel):
    """``redis.asyncio.sentinel.Sentinel`` whose discovery is safe to run concurrently."""

    def __init__(self, nodes: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(nodes, **kwargs)  # type: ignore[no-untyped-call]
        self.clients: tuple[Any, ...] = tuple(self.sentinels)

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """The master's address as the first sentinel that knows a healthy one reports
        it; raises MasterNotFoundError (a ConnectionError) when none does."""
        errors: list[str] = []
        for sentinel in list(self.sentinels):  # a snapshot: others may reorder meanwhile
            try:
                masters: Any = await sentinel.sentinel_masters()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                # ask this one first next time: one assignment, nothing lost or doubled
                self.sentinels = [sentinel, *(s for s in self.sentinels if s is not sentinel)]
                ip = self._force_master_ip if self._force_master_ip is not None else state["ip"]
                return ip, int(state["port"])
        detail = f" : {', '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")
