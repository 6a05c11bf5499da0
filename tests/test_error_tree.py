"""Every error a public call raises is one of the documented four (``hub.errors``):
ValidationError, BackendUnavailable, HubClosed (all HubError); checked for each public
coroutine with both servers down, and after close."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import hub.errors
from hub import Candle, Hub, HubClosed, HubConfig
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
EX, PR, T0 = "tree", "ETH-USD", 1697529600
DOCUMENTED = (hub.errors.ValidationError, hub.errors.BackendUnavailable, hub.errors.HubClosed)

CALLS: dict[str, Callable[[Hub], Awaitable[Any]]] = {
    "cache_indicator": lambda h: h.cache_indicator(EX, PR, "EMA", 20, 1.0),
    "get_indicator": lambda h: h.get_indicator(EX, PR, "EMA", 20),
    "write_indicator": lambda h: h.write_indicator(EX, PR, "EMA", T0, 1.0, period=20),
    "write_candle": lambda h: h.write_candle(EX, PR, T0, 1, 2, 0.5, 1.5, 3),
    "write_candles_batch": lambda h: h.write_candles_batch(EX, PR, [Candle(T0, 1, 2, 0.5, 1.5, 3)]),
    "query_candles": lambda h: h.query_candles(EX, PR, limit=5),
    "query_candles_csv": lambda h: h.query_candles_csv(EX, PR, limit=5),
    "cache_candles": lambda h: h.cache_candles(EX, PR, [Candle(T0, 1, 2, 0.5, 1.5, 3)]),
    "get_candles": lambda h: h.get_candles(EX, PR, 5),
    "write_trade": lambda h: h.write_trade(EX, PR, T0, "buy", 1.0, 1.0, "o1"),
    "query_trades": lambda h: h.query_trades(EX, PR),
    "write_metric": lambda h: h.write_metric("latency", 1.0),
    "write_point": lambda h: h.write_point("signal", {"s": "x"}, {"v": 1.0}),
    "cache_position": lambda h: h.cache_position(EX, PR, {"size": 1}),
    "get_position": lambda h: h.get_position(EX, PR),
    "cache_strategy_state": lambda h: h.cache_strategy_state(EX, PR, "s", {"a": 1}),
    "get_strategy_state": lambda h: h.get_strategy_state(EX, PR, "s"),
    "flush": lambda h: h.flush(),
    "delete_data": lambda h: h.delete_data("-1d", "now", f'product="{PR}"'),
    "flush_all": lambda h: h.flush_all(),
    "clear_cache": lambda h: h.clear_cache("indicator:*"),
    "quarantined": lambda h: h.quarantined(),
    "get_stats": lambda h: h.get_stats(),
    "gaps": lambda h: h.gaps("px", "P"),
    "run_maintenance": lambda h: h.run_maintenance("prune"),
    "warm_windows": lambda h: h.warm_windows("px", "P"),
}


def test_every_public_coroutine_is_exercised() -> None:
    public = {name for name, member in inspect.getmembers(Hub)
              if not name.startswith("_") and inspect.iscoroutinefunction(member)}
    assert public - {"start", "close"} == set(CALLS)


async def test_with_both_servers_down_only_documented_errors(
        config_data: dict[str, Any], servers: LocalServers) -> None:
    config_data["redis"]["timeout"] = 0.5
    config_data["influxdb"].update(timeout=0.5, spool_after=0.2)
    servers.redis.kill()
    servers.influx.kill()
    raised: dict[str, Exception] = {}
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as opened:
        for name, call in CALLS.items():
            try:
                await call(opened)
            except Exception as exc:
                assert isinstance(exc, DOCUMENTED), f"{name} raised {exc!r}"
                raised[name] = exc
    # writes are accepted (kept for later; trades and states are durable in SQLite)
    accepted = {name for name in CALLS if name.startswith(("write_", "cache_"))}
    assert not accepted & set(raised), raised
    # what nothing could answer said so, as BackendUnavailable
    assert {"flush", "query_trades", "get_indicator"} <= set(raised)
    assert all(isinstance(exc, hub.errors.BackendUnavailable) for exc in raised.values())


async def test_after_close_every_call_raises_hub_closed(hub: Hub) -> None:
    await hub.close()
    for call in CALLS.values():
        with pytest.raises(HubClosed):
            await call(hub)
