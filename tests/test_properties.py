"""Property tests (hypothesis) against the real servers: every accepted record reads back
exactly; every refused one raises ValidationError and writes nothing."""

from __future__ import annotations

import itertools
import math
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub import Candle, Hub, HubConfig, ValidationError
from wolfhub.servers import LocalServers

T0 = 1697529600
_BAD = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_counter = itertools.count()
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def storable(name: str) -> bool:
    """The contract's rule, written independently of hubdomain.validate: no control or
    invisible characters (the contract's choice for names), and no trailing backslash
    (line protocol cannot carry it; any other backslash is carried)."""
    if not name or any(unicodedata.category(ch) in _BAD for ch in name):
        return False
    return not name.endswith("\\")


@pytest.fixture(scope="module")
def live(servers: LocalServers, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[anyio.from_thread.BlockingPortal, Hub]]:
    """One hub on a loop thread, shared by every example of the module."""
    overrides = servers.config_overrides()
    cfg = HubConfig.from_mapping({
        "redis": overrides["redis"],
        "influxdb": {**overrides["influxdb"], "bucket": f"prop_{uuid.uuid4().hex[:10]}",
                     "batch": {"flush_interval": 0.02}},
        "sqlite": {"path": str(tmp_path_factory.mktemp("prop") / "p.sqlite")},
    }, environ={})
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        hub = Hub(cfg, handle_sigterm=False)
        portal.call(hub.start)
        try:
            yield portal, hub
        finally:
            portal.call(hub.close)


def run(live: tuple[anyio.from_thread.BlockingPortal, Hub], fn: Any, *args: Any,
        **kwargs: Any) -> Any:
    portal, hub = live
    return portal.call(lambda: fn(hub, *args, **kwargs))


names = st.text(min_size=0, max_size=24)
prices = st.floats(allow_nan=True, allow_infinity=True, width=64)


@PROPERTY
@given(name=names)
def test_any_name_round_trips_or_is_refused(live: Any, name: str) -> None:
    ex = f"x{next(_counter)}"
    candle = Candle(T0, 1.0, 2.0, 0.5, 1.5, 3.0)

    async def scenario(hub: Hub) -> dict[str, Any]:
        await hub.write_candle(ex, name, *candle.as_dict().values())
        await hub.cache_indicator(ex, name, name, name, 4.25)
        await hub.write_trade(ex, name, T0, name, 10.0, 1.0, name, note=name)
        return {
            "hot": await hub.get_candles(ex, name, count=1),
            "cold": await hub.query_candles(ex, name, limit=2),  # the window holds 1: InfluxDB
            "indicator": await hub.get_indicator(ex, name, name, name),
            "trades": await hub.query_trades(ex, name),
        }

    if not storable(name):
        with pytest.raises(ValidationError):
            run(live, scenario)
        assert run(live, lambda hub: hub.query_candles(ex, "p", limit=2)) == []
        return
    got = run(live, scenario)
    assert got["hot"] == [candle] and got["cold"] == [candle]
    assert got["indicator"] == 4.25
    assert [(t.product, t.side, t.order_id, dict(t.fields)) for t in got["trades"]] == [
        (name, name, name, {"note": name})]


@PROPERTY
@given(o=prices, h=prices, low=prices, c=prices, vol=prices,
       ts=st.integers(min_value=-2**34, max_value=2**34))
def test_any_candle_round_trips_or_is_refused(live: Any, o: float, h: float, low: float,
                                              c: float, vol: float, ts: int) -> None:
    ex = f"c{next(_counter)}"
    valid = (all(math.isfinite(x) for x in (o, h, low, c, vol)) and h >= low and vol >= 0
             and -9_223_372_036 <= ts <= 9_223_372_036)  # InfluxDB's range, 1970 or not

    async def scenario(hub: Hub) -> list[Candle]:
        await hub.write_candle(ex, "P", ts, o, h, low, c, vol)
        return await hub.query_candles(ex, "P", limit=2)

    if not valid:
        with pytest.raises(ValidationError):
            run(live, scenario)
        assert run(live, lambda hub: hub.query_candles(ex, "P", limit=2)) == []
        return
    assert run(live, scenario) == [Candle(ts, o, h, low, c, vol)]


@PROPERTY
@given(micros=st.integers(min_value=0, max_value=4_102_444_800 * 10**6),
       price=prices, size=prices,
       # InfluxDB fixes a field's type per measurement: each name keeps one type here
       extra=st.fixed_dictionaries({}, optional={
           "fee": prices, "profit": prices, "note": st.text(max_size=10),  # any char
           "flag": st.booleans()}))
def test_any_trade_round_trips_or_is_refused(live: Any, micros: int, price: float,
                                             size: float, extra: dict[str, Any]) -> None:
    ex = f"t{next(_counter)}"
    ts = micros / 10**6
    fields = {k: (float(v) if isinstance(v, float) else v) for k, v in extra.items()}
    valid = (math.isfinite(price) and math.isfinite(size) and all(
        math.isfinite(v) for v in fields.values() if isinstance(v, float))
        # any text is a string field value, control characters included; a lone
        # surrogate is not text
        and all(not any("\ud800" <= ch <= "\udfff" for ch in v)
                for v in fields.values() if isinstance(v, str)))

    async def scenario(hub: Hub) -> Any:
        await hub.write_trade(ex, "P", ts, "sell", price, size, "o1", **fields)
        return await hub.query_trades(ex, "P")

    if not valid:
        with pytest.raises(ValidationError):
            run(live, scenario)
        assert run(live, lambda hub: hub.query_trades(ex, "P")) == []
        return
    (trade,) = run(live, scenario)
    assert trade.timestamp == ts
    assert (trade.price, trade.size) == (price, size)
    assert dict(trade.fields) == {k: v for k, v in fields.items()}
