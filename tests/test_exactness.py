"""The codecs held against the test vectors of the projects that define the formats, and
against the real servers.

Sources (vectors ported as data or tables here, each cited where it is used):
- line protocol: InfluxDB 1.x ``models/points_test.go`` (as vendored in
  github.com/influxdata/influxdb1-client) -> tests/data/influxdb1_points_test.json; the
  reference corpus ``lineprotocol/testdata/corpus.json`` of
  github.com/influxdata/line-protocol, run against influxd 1.6.7 by
  scripts/corpus-against-influxd -> tests/data/lp_corpus_influxd.json.gz;
- InfluxQL scanning and quoting: github.com/influxdata/influxql ``scanner_test.go`` and
  ``QuoteString``/``QuoteIdent``;
- delete predicates: InfluxDB 2.x ``predicate/parser_test.go``;
- Redis glob patterns: ``stringmatchlen`` cases of Redis-family ``util`` tests and
  ``tests/unit/keyspace.tcl``, run against redis-server itself.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hub import Candle, Hub, HubConfig, ValidationError
from hub.compat._records import points
from hubdomain import influxql as ql
from hubdomain import keys
from hubdomain import lineproto as lp
from hubdomain import timeframes as tfs
from tests.conftest import redis_command
from wolfhub.servers import LocalServers

DATA = Path(__file__).parent / "data"
EX, PR = "papertrader", "BANKNIFTY-FUT"
T0 = 1697529600


def typed(value: lp.FieldValue) -> dict[str, Any]:
    kind = ("boolean" if isinstance(value, bool) else "integer" if isinstance(value, int)
            else "string" if isinstance(value, str) else "float")
    return {kind: value}


# ---- line protocol: InfluxDB 1.x's own parser tests ----------------------------------

POINTS = json.loads((DATA / "influxdb1_points_test.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("vector", POINTS["parsed"],
                         ids=[f"{v['test']}:{v['line'][:40]}" for v in POINTS["parsed"]])
def test_influxdb1_parser_vectors_read_the_same(vector: dict[str, Any]) -> None:
    (line,) = lp.split_lines(vector["line"])
    point = lp.parse_line(line, "ns")
    assert point.measurement == vector["measurement"]
    assert point.tags == vector["tags"]
    assert {k: typed(v) for k, v in point.fields.items()} == vector["fields"]
    assert (point.ns or 0) == vector["ns"]  # 0: the test's default, the line has no time


@pytest.mark.parametrize("vector", POINTS["refused"],
                         ids=[f"{v['test']}:{v['line'][:40]}" for v in POINTS["refused"]])
def test_influxdb1_parser_refusals_are_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="record"):
        for line in lp.split_lines(vector["line"]):
            lp.parse_line(line, "ns")


# ---- line protocol: the reference corpus, as influxd 1.6.7 answered it ----------------

CORPUS = json.load(gzip.open(DATA / "lp_corpus_influxd.json.gz", "rt", encoding="utf-8"))
PRECISION = {"1ns": "ns", "1µs": "us", "1ms": "ms", "1s": "s"}
NOW = "server's clock"


def _ours(text: str, precision: str) -> tuple[list[lp.ParsedPoint], list[str]]:
    parsed, errors = [], []
    for line in lp.split_lines(text):
        try:
            parsed.append(lp.parse_line(line, PRECISION[precision]))
        except ValidationError as exc:
            errors.append(str(exc))
    return parsed, errors


def _merged(parsed: list[lp.ParsedPoint]) -> set[Any]:
    """As influxd stores them: one point per series and time, later fields winning;
    untimed lines of one request share the server's clock."""
    merged: dict[Any, dict[str, lp.FieldValue]] = {}
    for p in parsed:
        key = (p.measurement, tuple(sorted(p.tags.items())), NOW if p.ns is None else p.ns)
        merged.setdefault(key, {}).update(p.fields)
    return {(m, t, tuple(sorted((k, *_kind_value(v)) for k, v in f.items())), ns)
            for (m, t, ns), f in merged.items()}


def _kind_value(value: lp.FieldValue) -> tuple[str, Any]:
    ((kind, v),) = typed(value).items()
    return kind, (v + 0.0 if kind == "float" else v)  # -0.0: influxd's JSON prints 0


def _stored(vector: dict[str, Any], explicit: set[int]) -> set[Any]:
    out = set()
    for p in vector["stored"]:
        ns = p["time"]
        if ns not in explicit and ns > 1_600_000_000 * 10**9:  # written by the run's clock
            ns = NOW
        fields = tuple(sorted(
            (k, f["type"], float(f["value"]) + 0.0 if f["type"] == "float" else f["value"])
            for k, f in p["fields"].items()))
        out.add((p["measurement"], tuple(sorted(p["tags"].items())), fields, ns))
    return out


def test_the_corpus_reads_as_influxd_reads_it() -> None:
    """Every vector influxd 1.6.7 answered (accepted, refused, or stored part of): the
    same verdict and the same points. What the hub refuses on purpose is counted."""
    classes: dict[str, int] = {}
    differ = []
    hub = Hub(HubConfig())
    for vector in CORPUS["vectors"]:
        raw = base64.b64decode(vector["text_b64"])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # write_api takes text: refused as not UTF-8
            with pytest.raises(ValidationError, match="UTF-8"):
                points(raw, PRECISION[vector["precision"]])
            classes["not UTF-8 (refused)"] = classes.get("not UTF-8 (refused)", 0) + 1
            continue
        if vector["status"] in (0, 500) or vector["unreadable"]:
            classes["server failed"] = classes.get("server failed", 0) + 1
            continue
        parsed, errors = _ours(text, vector["precision"])
        if "field type conflict" in vector["error"]:  # one write, two types for a field
            with pytest.raises(ValidationError, match=r"field|record"):
                hub.intake.points(parsed)
                raise ValidationError("record", "every line of it was refused")
            hub = Hub(HubConfig())
            classes["type conflict (refused)"] = classes.get("type conflict (refused)", 0) + 1
            continue
        explicit = {p.ns for p in parsed if p.ns is not None}
        if (vector["status"] == 204) != (not errors) or _merged(parsed) != _stored(
                vector, explicit):
            differ.append((raw[:80], vector["status"], vector["error"][:80], errors[:1]))
            continue
        classes["same as influxd"] = classes.get("same as influxd", 0) + 1
    assert differ == []
    assert classes["same as influxd"] > 4900, classes


def test_lines_that_crash_influxd_reach_it_only_in_the_hubs_encoding(
        servers: LocalServers) -> None:
    """Two corpus vectors make influxd 1.6.7 panic (models.(*point).StringValue). The
    drop-in never forwards a caller's text: what it would send is written here, and the
    server stays up."""
    crashed = [v for v in CORPUS["vectors"] if v["status"] == 0]
    assert len(crashed) == 2
    hub = Hub(HubConfig())
    url = f"http://127.0.0.1:{servers.influx.port}"
    query(url, "CREATE DATABASE crash_probe")
    for vector in crashed:
        raw = base64.b64decode(vector["text_b64"])
        try:
            encoded = hub.intake.points(points(raw, PRECISION[vector["precision"]])).lines
        except ValidationError:
            continue  # refused at the call: nothing reaches InfluxDB
        write(url, "crash_probe", "\n".join(encoded).encode())
    assert urllib.request.urlopen(url + "/ping", timeout=10).status == 204


# ---- InfluxQL scanning and quoting (influxdata/influxql scanner_test.go) ---------------

SCANNER = [  # text, token kind, literal
    ("foo", "IDENT", "foo"), ("_foo", "IDENT", "_foo"), ("Zx12_3U_-", "IDENT", "Zx12_3U_"),
    ('"foo"', "IDENT", "foo"), ('"foo\\\\bar"', "IDENT", "foo\\bar"),
    ('"foo\\bar"', "BADESCAPE", "\\b"), ('"foo\\"bar\\""', "IDENT", 'foo"bar"'),
    ('"test', "BADSTRING", "test"), ("true", "TRUE", ""), ("false", "FALSE", ""),
    ("'testing 123!'", "STRING", "testing 123!"), ("'foo\\nbar'", "STRING", "foo\nbar"),
    ("'foo\\\\bar'", "STRING", "foo\\bar"), ("'test", "BADSTRING", "test"),
    ("'test\nfoo", "BADSTRING", "test"), ("'test\\g'", "BADESCAPE", "\\g"),
    ("100", "INTEGER", "100"), ("100.23", "NUMBER", "100.23"), (".23", "NUMBER", ".23"),
    ("10.3s", "NUMBER", "10.3"), ("10u", "DURATIONVAL", "10u"), ("10µ", "DURATIONVAL", "10µ"),
    ("10ms", "DURATIONVAL", "10ms"), ("1s", "DURATIONVAL", "1s"),
    ("10d", "DURATIONVAL", "10d"), ("10x", "DURATIONVAL", "10x"),
    ("AND", "AND", ""), ("and", "AND", ""), ("OR", "OR", ""), ("=", "EQ", ""),
    ("<>", "NEQ", ""), ("=~", "EQREGEX", ""), ("!~", "NEQREGEX", ""), ("(", "LPAREN", ""),
    (")", "RPAREN", ""), ("-", "SUB", ""), ("seLECT", "SELECT", ""), ("#", "ILLEGAL", "#"),
]


@pytest.mark.parametrize(("text", "kind", "lit"), SCANNER)
def test_influxql_scanner_vectors(text: str, kind: str, lit: str) -> None:
    token = ql.scan(text)[0]
    assert (token.kind, token.lit) == (kind, lit)


NAMES = ["plain", "it's", 'say "cheese"', "a,b=c d", "back\\slash", "trailing\\\\",
         "line\nbreak", "\\n literally", "ünïcødé ₹ 🚀", "x' OR '1'='1", "--comment",
         "/*c*/", "x\\'y", "tab\there"]


@pytest.mark.parametrize("name", NAMES)
def test_quoting_reads_back_through_the_scanner(name: str) -> None:
    """What ident()/literal() write, InfluxQL's scanner reads back as the same text
    (as its own QuoteIdent/QuoteString do: a newline becomes \\n)."""
    assert [(t.kind, t.lit) for t in ql.scan(ql.ident(name))] == [("IDENT", name), ("EOF", "")]
    assert [(t.kind, t.lit) for t in ql.scan(ql.literal(name))] == [("STRING", name),
                                                                    ("EOF", "")]


# ---- delete predicates (InfluxDB 2.x predicate/parser_test.go) -------------------------

PREDICATES = [
    ("abc=opq", {"abc": "opq"}),
    ('abc=opq and gender="male"', {"abc": "opq", "gender": "male"}),
    ('               abc="opq" AND gender="male" AND temp=1123',
     {"abc": "opq", "gender": "male", "temp": "1123"}),
    (' (t1="v1" and t2="v2") and (t3=v3 and (t4=v4 and t5=v5 and t6=v6))',
     {"t1": "v1", "t2": "v2", "t3": "v3", "t4": "v4", "t5": "v5", "t6": "v6"}),
    ('           abc   =         "opq"', {"abc": "opq"}),
    ("abc=0x1231", {"abc": "0x1231"}), ("abc=2d", {"abc": "2d"}), ("abc=-5i", {"abc": "-5i"}),
    ("abc= -1221", {"abc": "-1221"}), ("abc=123", {"abc": "123"}),
    ("abc=true", {"abc": "true"}), ("abc=false", {"abc": "false"}),
    ('name="EMA" AND period=20', {"name": "EMA", "period": "20"}),  # NAME is a keyword
]
PREDICATES_REFUSED = [
    (' abc="opq" Or gender="male" OR temp=1123', "OR is not supported"),
    (' (t1="v1" and t2="v2") and (', "a rule is missing"),
    (' (t1="v1" and t2="v2"))', "extra ) seen"),
    ("(t1=v1", "extra ( seen"),
    ("abc!~/^payments\\./", "only '=' is supported"),
    ("abc=~/^payments\\./", "only '=' is supported"),
    ("abc>1000", "invalid operator"),
    (' abc != "opq"', "only '=' is supported"),  # 2.x takes it; the hub deletes by '=' only
    ("abc='opq'", "single-quoted"),
    ('product="foo\\xbar"', "escape InfluxQL does not define"),
]


@pytest.mark.parametrize(("text", "tags"), PREDICATES)
def test_predicate_vectors(text: str, tags: dict[str, str]) -> None:
    assert ql.parse_predicate(text) == (None, tags)


@pytest.mark.parametrize(("text", "problem"), PREDICATES_REFUSED)
def test_predicate_refusals_say_what_is_supported(text: str, problem: str) -> None:
    with pytest.raises(ValidationError, match="predicate") as refused:
        ql.parse_predicate(text)
    assert problem in str(refused.value) and "AND of key=value rules" in str(refused.value)


# ---- Redis glob patterns, on redis-server itself ---------------------------------------

GLOBS = [  # pattern, key, matches (stringmatchlen unit tests; keyspace.tcl's KEYS tests)
    ("h?llo", "hello", True), ("h*o", "hallo", True), ("*world*", "hello world again", True),
    ("a*b*c", "abbbbbc", True), ("[abc]", "b", True), ("[abc]", "d", False),
    ("[a-z]", "m", True), ("[a-z]", "A", False), ("[^abc]", "a", False),
    ("[^abc]", "d", True), ("foo*", "foo_a", True), ("foo*", "key_x", False),
    ("\\*", "*", True), ("\\*", "x", False), ("a\\?b", "a?b", True), ("a\\?b", "axb", False),
    ("[\\]]", "]", True), ("\\[x\\]", "[x]", True), ("\\[x\\]", "x", False),
]


def scan_match(servers: LocalServers, pattern: str) -> set[bytes]:
    found: set[bytes] = set()
    cursor = "0"
    while True:
        reply = redis_raw(servers, "SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
        cursor, found_now = reply
        found |= set(found_now)
        if cursor == "0":
            return found


@pytest.mark.parametrize(("pattern", "key", "matches"), GLOBS)
def test_redis_glob_vectors(servers: LocalServers, config_data: dict[str, Any],
                            pattern: str, key: str, matches: bool) -> None:
    redis_command(servers, "SET", key, "1")
    assert (key.encode() in scan_match(servers, pattern)) is matches


HOSTILE = ["star*", "qu?ery", "br[ack]et", "ca^ret", "da-sh", "back\\slash", "all*?[]^-\\",
           "{tag}", "colon:inside"]


def test_scan_patterns_match_names_literally(servers: LocalServers,
                                             config_data: dict[str, Any]) -> None:
    """For every hostile name, the hub's SCAN pattern for it finds its key and none of the
    others, whatever glob characters the names hold."""
    made = {name: keys.candles("ex", name) for name in [*HOSTILE, "starX", "qu!ery", "bra",
                                                        "back", "a"]}
    for key in made.values():
        redis_command(servers, "SET", key, "1")
    for name in HOSTILE:
        found = scan_match(servers, keys.glob_literal(made[name]))
        assert found == {made[name].encode()}, name
        prefix = scan_match(servers, keys.scan_pattern("candles", "ex"))
        assert made[name].encode() in prefix


# ---- live round trips, one per class of input -------------------------------------------

def query(url: str, q: str, db: str = "") -> dict[str, Any]:
    body = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"}).encode()
    with urllib.request.urlopen(url + "/query", body, timeout=10) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def write(url: str, db: str, body: bytes) -> int:
    request = urllib.request.Request(f"{url}/write?db={db}", body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(answer.status)


def redis_raw(servers: LocalServers, *args: str) -> Any:
    """One command, the RESP2 reply parsed (arrays, bulk strings, integers)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", servers.redis.port), timeout=5) as s, \
            s.makefile("rb") as reader:
        s.sendall(payload)

        def read() -> Any:
            line = reader.readline().rstrip(b"\r\n")
            if line[:1] == b"*":
                return [read() for _ in range(int(line[1:]))]
            if line[:1] == b"$":
                data = reader.read(int(line[1:]) + 2)[:-2]
                return data
            return line[1:].decode()
        reply = read()
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], bytes):
        return [reply[0].decode(), reply[1]]
    return reply


def rows(url: str, db: str, q: str) -> list[dict[str, Any]]:
    out = []
    for series in query(url, q, db)["results"][0].get("series", []):
        out += [{"_measurement": series["name"], **(series.get("tags") or {}),
                 **dict(zip(series["columns"], values, strict=True))}
                for values in series["values"]]
    return out


EDGE_NAMES = ["a\\,b", "a\\\\,b", "a\\ b", "a\\=b", "\\,,=east", "x\\\\\\=y", 'q"uote',
              "équité ₹", "#hash", "a=b,c d"]
EDGE_FIELD_KEYS = ['a\\"b', 'a"b', "f\\\\ x", "a\\\\=b", "a\\b", "sp ace", "co,mma", "eq=ual"]


@pytest.mark.anyio
async def test_names_with_any_backslash_round_trip_live(hub: Hub, config: HubConfig,
                                                        servers: LocalServers) -> None:
    """Tag keys and values, a measurement and field keys holding backslashes before
    separators (InfluxDB 1.x's TestParsePointUnescape stores `\\,,=east`): written by the
    hub, read back byte for byte."""
    url, db = f"http://127.0.0.1:{servers.influx.port}", config.influxdb.bucket
    for i, name in enumerate(EDGE_NAMES):
        await hub.write_point(f"edge{i} {name.replace(chr(92), '/')}", {name: name, "n": str(i)},
                              {**{k: float(j) for j, k in enumerate(EDGE_FIELD_KEYS)},
                               "v": float(i)}, T0 + i)
        await hub.write_candle(EX, name, T0, 1, 2, 0.5, 1.5, 3)
    await hub.flush()
    await hub.flush_all()
    for i, name in enumerate(EDGE_NAMES):
        measurement = f"edge{i} {name.replace(chr(92), '/')}"
        (row,) = rows(url, db, f"SELECT * FROM {ql.ident(measurement)} GROUP BY *")
        assert row[name] == name and row["v"] == float(i)
        assert {k: row[k] for k in EDGE_FIELD_KEYS} == {
            k: float(j) for j, k in enumerate(EDGE_FIELD_KEYS)}
        assert await hub.query_candles(EX, name) == [Candle(T0, 1, 2, 0.5, 1.5, 3)]
    keys_back = {r["fieldKey"] for r in rows(url, db, 'SHOW FIELD KEYS FROM "trade"')}
    assert keys_back == set()  # nothing leaked into another measurement
    # a measurement keeps any backslash but one directly before ',', '"', '=' or a space:
    # influxd 1.6.7 stores those and then cannot select them by name
    await hub.write_point("m a\\b=c", {}, {"v": 1.0}, T0)
    await hub.flush()
    assert rows(url, db, 'SELECT v FROM "m a\\\\b=c"')[0]["v"] == 1.0
    for bad in ("m\\,x", "m\\ x", "m\\=x", 'm\\"x', "#m", "m\\"):
        with pytest.raises(ValidationError, match="measurement"):
            await hub.write_point(bad, {}, {"v": 1.0}, T0)


@pytest.mark.anyio
async def test_field_keys_with_quotes_are_two_fields(hub: Hub, config: HubConfig,
                                                     servers: LocalServers) -> None:
    """Regression: a field key `a\\"b` was written as `a\\"b`, which influxd reads as
    `a"b`, so the two keys below collided (fails on the earlier encoding)."""
    url, db = f"http://127.0.0.1:{servers.influx.port}", config.influxdb.bucket
    await hub.write_trade(EX, PR, T0, "buy", 1.0, 1.0, "o1", **{'a\\"b': 1.0, 'a"b': 2.0})
    await hub.flush()
    (trade,) = await hub.query_trades(EX, PR)
    assert dict(trade.fields) == {'a\\"b': 1.0, 'a"b': 2.0}
    field_keys = {r["fieldKey"] for r in rows(url, db, 'SHOW FIELD KEYS FROM "trade"')}
    assert {'a\\"b', 'a"b'} <= field_keys


@pytest.mark.anyio
async def test_string_fields_keep_every_character(hub: Hub) -> None:
    text = "".join(chr(c) for c in range(32)) + "\x7f\u200b\u2028 é \\ \" ' end\\"
    await hub.write_trade(EX, PR, T0, "buy", 1.0, 1.0, "o1", note=text)
    await hub.flush()
    (trade,) = await hub.query_trades(EX, PR)
    assert trade.fields["note"] == text


@pytest.mark.anyio
async def test_numbers_are_stored_exactly(hub: Hub, config: HubConfig,
                                          servers: LocalServers) -> None:
    """Integers beyond 2**53 become integer fields (a float would change them); smaller
    ones stay floats, as before; Decimal converts to the nearest float; a field known
    as a float refuses an integer it cannot hold."""
    url, db = f"http://127.0.0.1:{servers.influx.port}", config.influxdb.bucket
    big = 2**53 + 1
    await hub.write_trade(EX, PR, T0, "buy", Decimal("44520.35"), 1, "o1", seq=big,
                          lots=3, biggest=2**63 - 1, smallest=-(2**63))
    await hub.write_trade(EX, PR, T0 + 1, "buy", 1.0, 1.0, "o2", seq=7)  # integer field now
    with pytest.raises(ValidationError, match=r"lots.*float field"):
        await hub.write_trade(EX, PR, T0 + 2, "buy", 1.0, 1.0, "o3", lots=2**60)
    await hub.flush()
    trades = await hub.query_trades(EX, PR)
    assert [dict(t.fields) for t in trades] == [
        {"seq": big, "lots": 3.0, "biggest": 2**63 - 1, "smallest": -(2**63)}, {"seq": 7}]
    assert trades[0].price == 44520.35
    kinds = {r["fieldKey"]: r["fieldType"] for r in rows(url, db, 'SHOW FIELD KEYS FROM "trade"')}
    assert (kinds["seq"], kinds["lots"], kinds["price"]) == ("integer", "float", "float")


@pytest.mark.anyio
async def test_candle_numbers_reach_influxd_exactly(hub: Hub, config: HubConfig,
                                                    servers: LocalServers) -> None:
    """Candle lines are formatted for all rows at once (orjson: InfluxDB's own way of
    writing an exponent, 1e-7 where repr writes 1e-07): written one call at a time and in
    a batch, under names holding '%' (the line's template must not read them), extreme
    and arbitrary floats are stored as the very same floats, asked of influxd directly;
    so are the rollups computed from them."""
    import random
    import struct

    url, db = f"http://127.0.0.1:{servers.influx.port}", config.influxdb.bucket
    rnd = random.Random(11)

    def arbitrary() -> float:  # a non-negative double, bit pattern at random (below
        while True:             # 1e300: five of them summed stay finite)
            x = abs(struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0])
            if x < 1e300:
                return x

    extremes = [5e-324, 1e-7, 2.5e-8, 1e-5, 0.1, 1e16, 1e22, 1.7976931348623157e308,
                123456789.12345679, 9007199254740993.0, 0.0, 2.2250738585072014e-308]
    written = []
    for i in range(40):
        a, b = (extremes[i] if i < len(extremes) else arbitrary()), arbitrary()
        low, high = min(a, b), max(a, b)
        written.append(Candle(T0 + 60 * i, low, high, low, high, arbitrary()))
    product = "100%s%d%%"
    for c in written[:20]:
        await hub.write_candle("ex%", product, c.timestamp, c.open, c.high, c.low, c.close,
                               c.volume)
    assert await hub.write_candles_batch("ex%", product, written[20:]) == 20
    assert hub.streams is not None
    await hub.streams.settle()
    await hub.flush()
    stored = rows(url, db, "SELECT open, high, low, close, volume FROM candle "
                           "WHERE exchange = 'ex%' AND product = '100%s%d%%' ORDER BY time")
    assert [Candle(T0 + 60 * i, r["open"], r["high"], r["low"], r["close"], r["volume"])
            for i, r in enumerate(stored)] == written
    fives = rows(url, db, "SELECT open, volume FROM candle_rollup WHERE exchange = 'ex%' "
                          "AND product = '100%s%d%%' AND timeframe = '5m' ORDER BY time")
    assert [(r["open"], r["volume"]) for r in fives] == [
        (written[k].open, tfs.volume([c.volume for c in written[k:k + 5]]))
        for k in range(0, 40, 5)]


@pytest.mark.anyio
async def test_times_before_1970_round_trip(hub: Hub) -> None:
    old = [Candle(-86_400 * 365 * 50 + 60 * i, 1, 2, 0.5, 1.5, 3) for i in range(3)]
    await hub.write_candles_batch(EX, "OLD", old)
    await hub.flush()
    await hub.flush_all()  # from InfluxDB, with negative time bounds in the query
    assert await hub.query_candles(EX, "OLD", start_time=old[0].timestamp,
                                   end_time=old[-1].timestamp) == old
    with pytest.raises(ValidationError, match="timestamp"):
        await hub.write_candle(EX, "OLD", -9_223_372_037, 1, 2, 0.5, 1.5, 3)  # before 1677


@pytest.mark.anyio
async def test_series_keys_at_influxdbs_limit(hub: Hub) -> None:
    """A series key of 65,535 bytes (with its longest field key) is stored; one byte
    more is refused at the call, naming the argument, instead of in the quarantine."""
    overhead = len("candle,exchange=e,product=") + 4 + len("volume")
    await hub.write_candle("e", "p" * (65_535 - overhead), T0, 1, 2, 0.5, 1.5, 3)
    with pytest.raises(ValidationError, match=r"product.*65,535"):
        await hub.write_candle("e", "p" * (65_536 - overhead), T0, 1, 2, 0.5, 1.5, 3)
    await hub.flush()
    assert await hub.quarantined() == []


@pytest.mark.anyio
async def test_delete_never_acts_on_a_value_the_caller_did_not_write(hub: Hub) -> None:
    """Regression: `product="foo\\nbar"` was read as `foonbar` and `"foo\\xbar"` as
    `fooxbar`, deleting those products' candles (fails on the earlier parser)."""
    c = Candle(T0, 1, 2, 0.5, 1.5, 3)
    for product in ("foonbar", "fooxbar", "foo\\bar"):
        await hub.write_candle(EX, product, *c.as_dict().values())
    with pytest.raises(ValidationError, match="predicate"):  # a newline: not a name
        await hub.delete_data("-3000w", "now", '_measurement="candle" AND product="foo\\nbar"')
    with pytest.raises(ValidationError, match="predicate"):  # \x: no such escape
        await hub.delete_data("-3000w", "now", '_measurement="candle" AND product="foo\\xbar"')
    await hub.delete_data("-3000w", "now", '_measurement="candle" AND product="foo\\\\bar"')
    await hub.flush_all()
    assert await hub.query_candles(EX, "foonbar") == [c]
    assert await hub.query_candles(EX, "fooxbar") == [c]
    assert await hub.query_candles(EX, "foo\\bar") == []


@pytest.mark.anyio
async def test_bare_predicate_values_delete_like_quoted_ones(hub: Hub) -> None:
    """`(_measurement=candle) AND (product=p1)`: bare values and parentheses, as the
    2.x grammar allows; and with exchange and product both given, the hot window is
    trimmed too (regression: the SCAN pattern ended in ':*' and missed the key)."""
    c = Candle(T0, 1, 2, 0.5, 1.5, 3)
    await hub.write_candle(EX, "p1", *c.as_dict().values())
    await hub.write_candle(EX, "p2", *c.as_dict().values())
    await hub.delete_data("-3000w", "now", "(_measurement=candle) AND (product=p1)")
    await hub.flush_all()
    assert await hub.query_candles(EX, "p1") == []
    assert await hub.query_candles(EX, "p2") == [c]


@pytest.mark.anyio
async def test_delete_by_every_part_trims_the_hot_window_and_the_indicator(hub: Hub) -> None:
    c = Candle(T0, 1, 2, 0.5, 1.5, 3)
    await hub.write_candle(EX, PR, *c.as_dict().values())
    await hub.write_indicator(EX, PR, "EMA", T0, 44500.0, period=20)
    await hub.flush()
    assert await hub.get_candles(EX, PR) == [c]
    await hub.delete_data("-3000w", "now",
                          f'_measurement="candle" AND exchange="{EX}" AND product="{PR}"')
    await hub.delete_data("-3000w", "now", f'_measurement="indicator" AND exchange="{EX}" '
                                           f'AND product="{PR}" AND name="EMA" AND period="20"')
    assert await hub.get_candles(EX, PR) == []  # was still served from the hot window
    assert await hub.query_candles(EX, PR, start_time=T0) == []
    assert await hub.get_indicator(EX, PR, "EMA", 20) is None
