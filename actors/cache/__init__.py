"""The cache: Redis behind one actor (auto-pipelined), an in-process near cache kept
coherent by Redis' invalidations, and the service the facade calls.

- :mod:`actors.cache.ops`: what is asked of Redis, as data (and the hot-window rule)
- :mod:`actors.cache.near`: the near cache
- :mod:`actors.cache.actor`: the CacheActor (pipelines, stale keys, outages)
- :mod:`actors.cache.service`: CacheService, the one entry for the facade
"""

from actors.cache.actor import CacheActor
from actors.cache.near import NearCache
from actors.cache.service import MISS, CacheService

__all__ = ["MISS", "CacheActor", "CacheService", "NearCache"]
