"""Pure domain modules: escaping, key schema, validation, predicate parsing."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from actors.cache.ops import decode_candle, encode_candle, encode_rows
from hub import Candle, ValidationError
from hubdomain import influxql as ql
from hubdomain import keys
from hubdomain import lineproto as lp
from hubdomain import validate as v


def test_line_protocol_escapes_tag_specials() -> None:
    line = lp.point("candle", {"product": "a b,c=d", "exchange": "x"}, {"value": 1.5}, 2)
    assert line == r"candle,exchange=x,product=a\ b\,c\=d value=1.5 2000000000"


def test_line_protocol_string_fields_escape_quotes_and_backslashes() -> None:
    assert lp.field('say "hi" \\ bye') == r'"say \"hi\" \\ bye"'
    assert lp.field(True) == "true" and lp.field(3.0) == "3.0"
    # an int is an integer field: only lines a caller wrote with `3i` carry one (the
    # hub's own values are validated to floats, so its fields never change type)
    assert lp.field(3) == "3i"


def test_candle_line_matches_generic_encoder() -> None:
    c = Candle(1697529600, 1.0, 2.0, 0.5, 1.5, 10.0)
    generic = lp.point("candle", {"exchange": "e x", "product": "p=1"},
                       {"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0},
                       1697529600)
    assert lp.candle("e x", "p=1", c) == generic


def test_float_timestamps_keep_microseconds() -> None:
    assert lp.seconds_to_ns(1697529600.123456) == 1697529600123456000
    assert lp.seconds_to_ns(5) == 5_000_000_000


def test_influxql_quoting_neutralises_injection() -> None:
    evil = "x' OR 1=1; DROP DATABASE \"trading\" --\\"
    where = ql.where({"product": evil})
    assert where == " WHERE \"product\"='x\\' OR 1=1; DROP DATABASE \"trading\" --\\\\'"
    assert ql.ident('a"b\\') == '"a\\"b\\\\"'


def test_select_candles_orders_newest_first_then_limits() -> None:
    q = ql.select_candles("e", "p", 10, 20, 5)
    assert q.endswith("ORDER BY time DESC LIMIT 5")
    assert "time >= 10000000000 AND time <= 20000000000" in q


@pytest.mark.parametrize("interval,seconds", [("1m", 60), ("5m", 300), ("1h", 3600),
                                              ("1d", 86400), ("1w", 604800)])
def test_intervals(interval: str, seconds: int) -> None:
    assert ql.interval_seconds(interval) == seconds


@pytest.mark.parametrize("bad", ["", "0m", "1y", "1h; DROP", "m", 5])
def test_bad_interval(bad: object) -> None:
    with pytest.raises(ValidationError, match="interval"):
        ql.interval_seconds(bad)  # type: ignore[arg-type]


def test_seed_predicate() -> None:
    assert ql.parse_predicate("product=x") == (None, {"product": "x"})  # 2.x: bare values
    m, tags = ql.parse_predicate('_measurement="candle" AND product="BANKNIFTY-FUT"')
    assert m == "candle" and tags == {"product": "BANKNIFTY-FUT"}
    m, tags = ql.parse_predicate(r'product="a \"quoted\" name" and exchange="x"')
    assert m is None and tags == {"product": 'a "quoted" name', "exchange": "x"}


@pytest.mark.parametrize("bad", ['product="x" OR exchange="y"',
                                 'product="x"; DROP DATABASE trading', 'product!="x"',
                                 'product="x" AND', "product='x'", 'product="x\\q"'])
def test_predicate_refuses_anything_but_and_of_equalities(bad: str) -> None:
    with pytest.raises(ValidationError, match="predicate"):
        ql.parse_predicate(bad)


def test_delete_times() -> None:
    now = 1_700_000_000.0
    assert ql.parse_time("now", "stop", now) == 1_700_000_000 * 10**9
    assert ql.parse_time("-7d", "start", now) == (1_700_000_000 - 7 * 86400) * 10**9
    assert ql.parse_time("2024-01-01T00:00:00Z", "start") == 1704067200 * 10**9
    with pytest.raises(ValidationError, match="start"):
        ql.parse_time("2024-01-01", "start")
    with pytest.raises(ValidationError, match="stop"):
        ql.delete_spec("now", "-1d", None)
    spec = ql.delete_spec("-1d", "now", '_measurement="candle" AND product="p\'x"')
    assert spec.statement().startswith("DELETE FROM \"candle\" WHERE \"product\"='p\\'x' AND")


def test_keys_are_the_seeds_and_injective() -> None:
    assert keys.indicator("papertrader", "BANKNIFTY-FUT", "EMA", "20") == (
        "indicator:papertrader:BANKNIFTY-FUT:EMA:20")
    assert keys.candles("a:b", "c") != keys.candles("a", "b:c")
    assert keys.split(keys.candles("a:b\\", "c")) == ["candles", "a:b\\", "c"]
    assert keys.scan_pattern("candles", "a*[x]") == "candles:a\\*\\[x\\]:*"


@pytest.mark.parametrize("bad", ["", "a\nb", "tab\there", "nul\x00", "\u200bzero-width",
                                 "bell\x07", None, 1.5, True])
def test_bad_names(bad: object) -> None:
    with pytest.raises(ValidationError, match="exchange"):
        v.name(bad, "exchange")


@pytest.mark.parametrize("name", ["a\\b", "a\\,b", "a\\ b", "a\\=b", "\\,,=east",
                                  "x\\\\\\=y"])
def test_tags_carry_any_backslash_but_a_trailing_one(name: str) -> None:
    # InfluxDB 1.x's TestParsePointUnescape stores `\,,=east`; a live influxd 1.6.7 reads
    # all of these back byte for byte (tests/test_exactness.py)
    assert v.tag(name, "product") == name
    with pytest.raises(ValidationError, match=r"product.*end with a backslash"):
        v.tag(name + "\\", "product")


@pytest.mark.parametrize(("key", "ok"), [
    ('a\\"b', True), ('a"b', True), ("f\\\\ x", True), ("a\\\\=b", True), ("a\\b", True),
    ("a\\", False), ("a\\\\", False), ("a\\ b", False), ("a\\,b", False), ("a\\=b", False),
    ("a\\\\\\ b", False),
])
def test_field_keys_refuse_only_what_influxdb_cannot_read_back(key: str, ok: bool) -> None:
    if ok:
        assert v.field_key(key, "fee") == key
    else:
        with pytest.raises(ValidationError, match="fee"):
            v.field_key(key, "fee")


def test_field_keys_escape_quotes_as_influxdb_does() -> None:
    # a key `a\"b` was written as `a\"b`, which influxd reads as `a"b`: another field
    assert lp.escape_field_key('a\\"b') == 'a\\\\"b'
    assert lp.point("trade", {}, {'a\\"b': 1.0, 'a"b': 2.0}, 0) == (
        'trade a\\\\"b=1.0,a\\"b=2.0 0')


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1", None, True])
def test_bad_numbers(bad: object) -> None:
    with pytest.raises(ValidationError, match="price"):
        v.number(bad, "price")


def test_candle_checks() -> None:
    with pytest.raises(ValidationError, match="high"):
        Candle.checked(1, 1, 1, 2, 1, 1)
    with pytest.raises(ValidationError, match="volume"):
        Candle.checked(1, 1, 2, 1, 1, -1)
    with pytest.raises(ValidationError, match="timestamp"):
        Candle.checked(1.5, 1, 2, 1, 1, 1)
    with pytest.raises(ValidationError, match=r"candles\[3\].open"):
        Candle.coerce({"timestamp": 1, "open": math.nan, "high": 1, "low": 1, "close": 1,
                       "volume": 1}, "candles[3]")
    assert Candle.coerce({"timestamp": 60, "open_price": 1, "high": 2, "low": 1, "close": 1,
                          "volume": 0}, "c").as_dict()["open"] == 1.0


def test_json_values() -> None:
    v.json_value({"a": [1, 2.5, None, "x", {"b": True}]}, "value")
    for bad in ({"a": math.nan}, {1: "x"}, object(), [math.inf]):
        with pytest.raises(ValidationError, match="value"):
            v.json_value(bad, "value")


NAMES = st.text(min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(NAMES, NAMES, NAMES, NAMES)
def test_cluster_keys_of_one_product_share_a_slot(exchange: str, product: str, name: str,
                                                  period: str) -> None:
    """Hash-tagged keys: whatever the names (braces, colons, backslashes), the four kinds
    of one product land in one slot, distinct names give distinct keys, and split()
    gives the names back."""
    made = [keys.indicator(exchange, product, name, period, tagged=True),
            keys.candles(exchange, product, tagged=True),
            keys.position(exchange, product, tagged=True),
            keys.strategy(exchange, product, name, tagged=True)]
    assert len({key_slot(k.encode()) for k in made}) == 1
    # the tag is exactly the escaped exchange:product, never cut short or empty
    tag = made[1][len("candles:{"):-1]
    assert "{" not in tag and "}" not in tag and tag
    assert keys.split(made[0], tagged=True) == ["indicator", exchange, product, name, period]
    assert keys.split(made[3], tagged=True) == ["strategy", exchange, product, name]
    assert keys.candles(exchange, product + "x", tagged=True) != made[1]
    assert keys.candles(exchange + ":" + product, "", tagged=True) != made[1]


def test_cluster_keys_look_like_the_seeds_with_a_tag() -> None:
    assert keys.indicator("binance", "BTC-USD", "RSI", "14", tagged=True) == (
        "indicator:{binance:BTC-USD}:RSI:14")
    assert keys.scan_pattern("indicator", "binance", tagged=True) == "indicator:{binance:*"
    assert keys.scan_pattern("indicator", "bin", "BTC", tagged=True) == "indicator:{bin:BTC}:*"
    assert keys.split("candles:{a\\(b\\):c}", tagged=True) == ["candles", "a{b}", "c"]
    # untagged keys keep the seed's exact shape, braces and all
    assert keys.candles("a{b}", "c") == "candles:a{b}:c"


FINITE = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(-2**52, 2**52), FINITE, FINITE, FINITE, FINITE,
                          FINITE), max_size=40))
def test_window_members_of_a_run_are_each_candles_own_encoding(rows: list[Any]) -> None:
    """A run's window members come from one orjson call split between rows: each is the
    very bytes of that candle encoded alone, and decodes to the same floats (members of
    the same candle must compare equal: a rollup the window holds is not published
    again)."""
    members = encode_rows(rows)
    assert members == [encode_candle(row) for row in rows]
    for member, row in zip(members, rows, strict=True):
        back = decode_candle(member)
        assert (back.timestamp, back.open, back.high, back.low, back.close, back.volume) == row
