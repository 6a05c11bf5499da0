"""Hostile names round-trip exactly and harm nothing; invalid input writes nothing."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hub import Candle, Hub, ValidationError
from tests.conftest import keys_in_redis, redis_command
from wolfhub.servers import LocalServers

pytestmark = pytest.mark.anyio
T0 = 1697529600

NASTY = [
    "it's",
    'say "cheese"',
    "a,b",
    "k=v",
    "with space",
    "back\\slash",
    "star*glob?[x]",
    "colon:inside",
    "ünïcødé ₹ 銀行 🚀",
    "x' OR '1'='1",
    "x\" OR \"1\"=\"1",
    "'; DROP DATABASE \"trading\"; --",
    "candle,exchange=evil value=1 1",
    "\\\\double",
]


@pytest.mark.parametrize("name", NASTY)
async def test_nasty_names_round_trip_everywhere(hub: Hub, name: str) -> None:
    ex, pr = f"ex {name}", f"pr {name}"
    await hub.cache_indicator(ex, pr, name, name, 1.5)
    assert await hub.get_indicator(ex, pr, name, name) == 1.5
    await hub.write_indicator(ex, pr, name, T0, 2.5, period=name)
    c = Candle(T0, 1.0, 2.0, 0.5, 1.5, 3.0)
    await hub.write_candle(ex, pr, c.timestamp, c.open, c.high, c.low, c.close, c.volume)
    await hub.write_trade(ex, pr, T0, name, 10.0, 1.0, name, note=name)
    await hub.write_metric(name, 1.0, strategy=name)
    await hub.cache_position(ex, pr, {name: name})
    await hub.cache_strategy_state(ex, pr, name, {"k": name})
    await hub.flush()
    await hub.flush_all()
    # every answer now comes from InfluxDB / SQLite, through the escaping
    assert await hub.get_indicator(ex, pr, name, name) == 2.5
    assert await hub.query_candles(ex, pr) == [c]
    trades = await hub.query_trades(ex, pr)
    assert [(t.exchange, t.product, t.side, t.order_id, t.fields) for t in trades] == [
        (ex, pr, name, name, {"note": name})]
    assert await hub.get_position(ex, pr) == {name: name}
    assert await hub.get_strategy_state(ex, pr, name) == {"k": name}
    # neighbours are untouched: no name leaked into another series
    assert await hub.query_candles(ex, "pr") == []
    await hub.delete_data("-3000w", "now",
                          '_measurement="candle" AND product="'
                          + pr.replace("\\", "\\\\").replace('"', '\\"') + '"')
    await hub.flush_all()
    assert await hub.query_candles(ex, pr) == []


async def test_injection_attempts_harm_nothing(hub: Hub, servers: LocalServers) -> None:
    c = Candle(T0, 1.0, 2.0, 0.5, 1.5, 3.0)
    await hub.write_candles_batch("e", "SAFE", [c])
    for evil in NASTY:
        await hub.query_candles("e", evil)
        await hub.query_trades(evil, evil)
        await hub.get_indicator(evil, evil, evil, evil)
    await hub.flush_all()
    assert await hub.query_candles("e", "SAFE") == [c]
    assert redis_command(servers, "PING") == b"+PONG\r\n"


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("write_candle", ("e", "p", T0, math.nan, 2, 1, 1, 1), {}, "open_price"),
    ("write_candle", ("e", "p", T0, 1, math.inf, 1, 1, 1), {}, "high"),
    ("write_candle", ("e", "p", T0, 1, 1, 2, 1, 1), {}, "high"),
    ("write_candle", ("e", "p", T0, 1, 2, 1, 1, -5), {}, "volume"),
    ("write_candle", ("", "p", T0, 1, 2, 1, 1, 1), {}, "exchange"),
    ("write_candle", ("e", "p\nq", T0, 1, 2, 1, 1, 1), {}, "product"),
    ("write_candle", ("e", "p", -10**10, 1, 2, 1, 1, 1), {}, "timestamp"),  # before 1677
    ("write_candle", ("e", "p" * 70_000, T0, 1, 2, 1, 1, 1), {}, "product"),  # key > 64 KiB
    ("write_candle", ("e", "p", "yesterday", 1, 2, 1, 1, 1), {}, "timestamp"),
    ("write_candles_batch", ("e", "p", [Candle(T0, 1, 2, 1, 1, 1),
                                        {"timestamp": T0 + 60, "open": 1, "high": 0,
                                         "low": 1, "close": 1, "volume": 1}]), {},
     r"candles\[1\].high"),
    ("write_candles_batch", ("e", "p", [{"timestamp": T0}]), {}, r"candles\[0\]"),
    # rows as plain (timestamp, open, high, low, close, volume) tuples take a fast path
    ("write_candles_batch", ("e", "p", [(T0, 1.0, 2.0, 0.5, 1.0, 1.0),
                                        (T0 + 60, 1.0, math.nan, 0.5, 1.0, 1.0)]), {},
     r"candles\[1\].high"),
    ("write_candles_batch", ("e", "p", [(T0, 1.0, 0.5, 2.0, 1.0, 1.0)]), {},
     r"candles\[0\].high"),
    ("write_candles_batch", ("e", "p", [(T0, 1.0, 2.0, 0.5, 1.0, -1.0)]), {},
     r"candles\[0\].volume"),
    ("write_candles_batch", ("e", "p", [(T0 + 0.5, 1.0, 2.0, 0.5, 1.0, 1.0)]), {},
     r"candles\[0\].timestamp"),
    ("write_candles_batch", ("e", "p", [(T0, 1.0, 2.0, 0.5, 1.0)]), {}, r"candles\[0\]"),
    ("write_candles_batch", ("e", "p", [(10**11, 1.0, 2.0, 0.5, 1.0, 1.0)]), {},
     r"candles\[0\].timestamp"),
    ("cache_indicator", ("e", "p", "EMA", 20, math.nan), {}, "value"),
    ("cache_indicator", ("e", "p", "EMA\x00", 20, 1.0), {}, "indicator"),
    ("cache_indicator", ("e", "p", "EMA", 20, 1.0), {"ttl": 0}, "ttl"),
    ("write_indicator", ("e", "p", "RSI", T0, math.nan), {"period": 14}, "value"),
    ("write_indicator", ("e", "p", "RSI", T0, 1.0), {"period": "14\t"}, "period"),
    ("write_indicator", ("e", "p", "RSI", T0, 1.0), {"name": "x"}, "name"),
    ("write_trade", ("e", "p", T0, "buy", math.nan, 1, "o"), {}, "price"),
    ("write_trade", ("e", "p", T0, "buy", 1, 1, "o"), {"fee": math.inf}, "fee"),
    ("write_trade", ("e", "p", T0, "buy", 1, 1, ""), {}, "order_id"),
    ("write_trade", ("e", "p", T0, "buy", 1, 1, "o"), {"time": 1.0}, "time"),
    ("write_trade", ("e", "p", T0, "buy\\", 1, 1, "o"), {}, "side"),
    ("write_trade", ("e", "p", T0, "buy", 1, 1, "o"), {"a\\ b": 1.0}, r"a\\ b"),
    ("write_trade", ("e", "p", T0, "buy", 1, 1, "o"), {"seq": 2**64}, "seq"),
    ("write_metric", ("m", math.nan), {}, "value"),
    ("cache_position", ("e", "p", {"size": math.nan}), {}, "position"),
    ("cache_position", ("e", "p", [1, 2]), {}, "position"),
    ("cache_strategy_state", ("e", "p", "s", {"obj": object()}), {}, "state"),
    ("query_candles", ("e", "p"), {"limit": 0}, "limit"),
    ("query_candles", ("e", "p"), {"interval": "1h; DROP"}, "interval"),
    ("query_candles", ("e", "p", T0 + 10, T0), {}, "end_time"),
    ("delete_data", ("-1d", "now", 'product="x" OR product="y"'), {}, "predicate"),
    ("delete_data", ("yesterday", "now", None), {}, "start"),
]


@pytest.mark.parametrize("method,args,kwargs,argument", BAD_CALLS,
                         ids=[f"{m}-{a}" for m, _, _, a in BAD_CALLS])
async def test_bad_input_is_refused_and_writes_nothing(
    hub: Hub, servers: LocalServers, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    argument: str,
) -> None:
    with pytest.raises(ValidationError, match=argument):
        await getattr(hub, method)(*args, **kwargs)
    await hub.flush()
    assert keys_in_redis(servers) == 0
    stats = await hub.get_stats()
    assert stats["actors"]["writer"]["points_written"] == 0
    assert {k: stats["sqlite"][k] for k in ("outbox", "outbox_all", "quarantined")} == {
        "outbox": 0, "outbox_all": 0, "quarantined": 0}
    assert hub._sqlite is not None
    assert await hub._sqlite.get("position:e:p") is None
