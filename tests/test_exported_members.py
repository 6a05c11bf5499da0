"""The public API is exactly what CONTRACT.md names, in one place."""

from __future__ import annotations

import inspect
import types

import hub
import hub.errors
from hub import Hub

CONTRACT_METHODS = {
    "cache_indicator": ["exchange", "product", "indicator", "period", "value", "ttl"],
    "get_indicator": ["exchange", "product", "indicator", "period", "default"],
    "write_indicator": ["exchange", "product", "indicator_name", "timestamp", "value", "tags"],
    "write_candle": ["exchange", "product", "timestamp", "open_price", "high", "low", "close",
                     "volume"],
    "write_candles_batch": ["exchange", "product", "candles"],
    "query_candles": ["exchange", "product", "start_time", "end_time", "limit", "interval"],
    "cache_candles": ["exchange", "product", "candles", "max_candles"],
    "get_candles": ["exchange", "product", "count"],
    "write_trade": ["exchange", "product", "timestamp", "side", "price", "size", "order_id",
                    "fields"],
    "query_trades": ["exchange", "product", "start_time", "end_time", "limit"],
    "write_metric": ["metric_name", "value", "tags"],
    "cache_position": ["exchange", "product", "position"],
    "get_position": ["exchange", "product"],
    "cache_strategy_state": ["exchange", "product", "strategy", "state"],
    "get_strategy_state": ["exchange", "product", "strategy"],
    "flush": [],
    "delete_data": ["start", "stop", "predicate"],
    "flush_all": [],
    "get_stats": [],
    "start": [],
    "close": [],
}


def test_all_is_sorted_and_complete() -> None:
    assert hub.__all__ == sorted(hub.__all__)
    for name in hub.__all__:
        assert getattr(hub, name).__module__.startswith("hub")
    public = {n for n in dir(hub) if not n.startswith("_")
              and not isinstance(getattr(hub, n), types.ModuleType)} - {"annotations"}
    assert public == set(hub.__all__)


def test_error_tree() -> None:
    assert issubclass(hub.ValidationError, hub.HubError)
    assert issubclass(hub.ValidationError, ValueError)
    assert issubclass(hub.BackendUnavailable, hub.HubError)
    assert issubclass(hub.HubClosed, hub.HubError)
    assert hub.errors.ValidationError is hub.ValidationError


def test_methods_follow_the_contract() -> None:
    for name, params in CONTRACT_METHODS.items():
        method = getattr(Hub, name)
        assert inspect.iscoroutinefunction(method), name
        signature = inspect.signature(method).parameters.values()
        got = [p.name for p in signature
               if p.name != "self" and p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert got == params, name
        # additions beyond the contract are keyword-only with defaults: contract calls work
        extra = [p for p in signature if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert all(p.default is not inspect.Parameter.empty for p in extra), name
