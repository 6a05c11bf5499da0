"""wolfinch-hub: an asyncio data hub for the Wolfinch trading bot.

Redis hot cache, batched InfluxDB time series and durable SQLite state behind
one awaitable API::

    from hub import Hub, HubConfig

    async with Hub(HubConfig.load("config/cache_db.yml")) as hub:
        await hub.write_candle("papertrader", "BANKNIFTY-FUT", 1697529600,
                               44500.0, 44550.0, 44480.0, 44520.0, 1500.0)
"""

from __future__ import annotations

from hub._hub import Hub
from hub.errors import BackendUnavailable, HubClosed, HubError, ValidationError
from hubdomain.config import HubConfig
from hubdomain.records import Candle, LiveCandle, Trade

__all__ = [
    "BackendUnavailable",
    "Candle",
    "Hub",
    "HubClosed",
    "HubConfig",
    "HubError",
    "LiveCandle",
    "Trade",
    "ValidationError",
]
__version__ = "0.1.0"
