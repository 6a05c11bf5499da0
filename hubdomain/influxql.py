"""The only place InfluxQL text is built. Every name is quoted, every value escaped.

Identifiers are double-quoted and string literals single-quoted, with the escapes
InfluxQL's scanner understands (``\\n``, ``\\\\``, ``\\"``, ``\\'``; the same as its
``QuoteIdent``/``QuoteString``). Times are integer nanoseconds. Also parses the seed's
``delete_data`` arguments: the predicate with a scanner that reads text as InfluxQL's
(which InfluxDB 2.x's delete predicates use) and that grammar.
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from hubdomain.errors import ValidationError
from hubdomain.lineproto import seconds_to_ns
from hubdomain.timeframes import offset

CANDLE_FIELDS = ("open", "high", "low", "close", "volume")
_INTERVAL = re.compile(r"^([1-9][0-9]*)(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^-([0-9]+)(s|m|h|d|w)$")


_IDENT_ESCAPES = str.maketrans({"\n": "\\n", "\\": "\\\\", '"': '\\"'})
_STRING_ESCAPES = str.maketrans({"\n": "\\n", "\\": "\\\\", "'": "\\'"})


def ident(name: str) -> str:
    return '"' + name.translate(_IDENT_ESCAPES) + '"'


def literal(value: str) -> str:
    return "'" + value.translate(_STRING_ESCAPES) + "'"


def where(tags: Mapping[str, str], start: int | float | None = None,
          end: int | float | None = None) -> str:
    """``WHERE "k"='v' AND ... AND time >= ns AND time <= ns`` (both bounds inclusive)."""
    terms = [f"{ident(k)}={literal(v)}" for k, v in tags.items()]
    if start is not None:
        terms.append(f"time >= {seconds_to_ns(start)}")
    if end is not None:
        terms.append(f"time <= {seconds_to_ns(end)}")
    return " WHERE " + " AND ".join(terms) if terms else ""


def interval_seconds(interval: str) -> int:
    """'1m', '5m', '1h', '1d', '1w' ... to seconds; ValidationError otherwise."""
    if not isinstance(interval, str):
        raise ValidationError("interval", f"expected a string like '1h', got {interval!r}")
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValidationError("interval", f"expected <n><s|m|h|d|w> like '5m', got {interval!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def source(measurement: str, rp: str | None) -> str:
    """``"rp"."measurement"`` (the query's database), or the measurement in the default RP."""
    return f"{ident(rp)}.{ident(measurement)}" if rp else ident(measurement)


def select_candles(exchange: str, product: str, start: int | None, end: int | None,
                   limit: int, rp: str | None = None) -> str:
    fields = ",".join(ident(f) for f in CANDLE_FIELDS)
    return (
        f"SELECT {fields} FROM {source('candle', rp)}"
        f"{where({'exchange': exchange, 'product': product}, start, end)}"
        f" ORDER BY time DESC LIMIT {int(limit)}"
    )


# OHLCV of a bucket: first open, max high, min low, last close, summed volume. The
# resampling (query_candles(interval=...) and a rollup's recompute from storage) reads
# newest first, the order the rollups sum their volumes in: the same floats, to the bit.
_OHLCV = ('SELECT first("open") AS "open", max("high") AS "high", min("low") AS "low", '
          'last("close") AS "close", sum("volume") AS "volume"')


def select_candles_resampled(exchange: str, product: str, start: int, end: int,
                             limit: int, interval: str, rp: str | None = None,
                             shift: int = 0) -> str:
    """OHLCV per bucket: first open, max high, min low, last close, sum volume (weeks
    from Mondays, as the rollups; ``shift``: a market's buckets from its open)."""
    seconds = interval_seconds(interval)
    return (
        f'{_OHLCV} FROM {source("candle", rp)}'
        f"{where({'exchange': exchange, 'product': product}, start, end)}"
        f" GROUP BY {group_by_time(seconds, shift)} fill(none) ORDER BY time DESC"
        f" LIMIT {int(limit)}"
    )


def group_by_time(span: int, shift: int = 0) -> str:
    """``time(<span>s)``, with the offset that starts buckets of whole weeks on Mondays
    (InfluxDB's own start on Thursdays, as the epoch did), and ``shift`` seconds later
    (:func:`hubdomain.timeframes.offset`)."""
    start = offset(span, shift)
    return f"time({span}s,{start}s)" if start else f"time({span}s)"


# How far back the newest candle is looked for first (see select_candle_edge)
RECENT_SECONDS = 7 * 86400  # (a shard's span in a policy that keeps data forever)
RECENT = f"{RECENT_SECONDS}s"


def select_candle_edge(exchange: str, product: str, newest: bool, recent: bool = False,
                       rp: str | None = None) -> str:
    """The oldest or the newest stored candle (its time), of all, or (``recent``) of
    those from ``RECENT`` ago on, future ones included: influxd opens only the shards of
    that span (a week's), where a question about all time opens every shard the series
    has (~21 ms for two years of minutes here, against ~1 ms)."""
    tags = where({"exchange": exchange, "product": product})
    if recent:
        tags += f" AND time >= now() - {RECENT}"
    return f'SELECT {"last" if newest else "first"}("close") FROM {source("candle", rp)}{tags}'


def select_last_indicator(exchange: str, product: str, name: str, period: str,
                          rp: str | None = None, recent: bool = False) -> str:
    """The newest value (``recent``: of those from ``RECENT`` ago on, as
    :func:`select_candle_edge`)."""
    tags = {"exchange": exchange, "product": product, "name": name, "period": period}
    since = f" AND time >= now() - {RECENT}" if recent else ""
    return f'SELECT last("value") FROM {source("indicator", rp)}{where(tags)}{since}'


def select_trades(exchange: str, product: str, start: int | float | None,
                  end: int | float | None, limit: int, rp: str | None = None,
                  before: int | None = None) -> str:
    """The newest ``limit`` trades in [start, end], and before ``before`` (exclusive:
    trades keep fractions of a second) when given."""
    below = "" if before is None else f" AND time < {seconds_to_ns(before)}"
    return (
        f'SELECT * FROM {source("trade", rp)}'
        f'{where({"exchange": exchange, "product": product}, start, end)}{below}'
        f" ORDER BY time DESC LIMIT {int(limit)}"
    )


def create_database(database: str) -> str:
    return f"CREATE DATABASE {ident(database)}"


# retention policy per measurement (influxdb.retention with enabled: true)
RP_NAMES = {"candle": "wolfhub_candles", "indicator": "wolfhub_indicators",
            "trade": "wolfhub_trades", "metric": "wolfhub_metrics",
            "candle_rollup": "wolfhub_candles"}
RP_1H = "wolfhub_candles_1h"
CQ_1H = "wolfhub_candle_1h"


def retention_statements(database: str, durations: Mapping[str, str]) -> list[str]:
    """CREATE each policy, then ALTER it to the configured duration (CREATE of an existing
    policy with other settings fails; ALTER always converges)."""
    out = []
    for rp, duration in durations.items():
        out.append(f"CREATE RETENTION POLICY {ident(rp)} ON {ident(database)} "
                   f"DURATION {duration} REPLICATION 1")
        out.append(f"ALTER RETENTION POLICY {ident(rp)} ON {ident(database)} "
                   f"DURATION {duration}")
    return out


def downsample_query(database: str) -> str:
    """A continuous query: 1-minute candles to 1-hour OHLCV, per exchange and product."""
    db = ident(database)
    return (
        f"CREATE CONTINUOUS QUERY {ident(CQ_1H)} ON {db} BEGIN "
        'SELECT first("open") AS "open", max("high") AS "high", min("low") AS "low", '
        'last("close") AS "close", sum("volume") AS "volume" '
        f'INTO {db}.{ident(RP_1H)}."candle_1h" FROM {db}.{ident(RP_NAMES["candle"])}."candle" '
        "GROUP BY time(1h), * END"
    )


# ---- the seed's delete_data(start, stop, predicate) ----------------------------------

@dataclass(frozen=True, slots=True)
class DeleteSpec:
    """A parsed delete: measurement (or None for all) and tag equalities, time in ns."""

    measurement: str | None
    tags: dict[str, str]
    start_ns: int
    stop_ns: int

    def statement(self) -> str:
        source = f" FROM {ident(self.measurement)}" if self.measurement else ""
        terms = [f"{ident(k)}={literal(v)}" for k, v in self.tags.items()]
        terms += [f"time >= {self.start_ns}", f"time <= {self.stop_ns}"]
        return f"DELETE{source} WHERE " + " AND ".join(terms)


def parse_time(value: object, argument: str, now: float | None = None) -> int:
    """RFC3339, relative (``-7d``), ``now`` or Unix seconds, to nanoseconds."""
    now = _time.time() if now is None else now
    if isinstance(value, bool):
        raise ValidationError(argument, "expected a time, got a bool")
    if isinstance(value, (int, float)):
        return seconds_to_ns(value)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(argument, f"expected RFC3339, '-7d' or 'now', got {value!r}")
    text = value.strip()
    if text == "now":
        return seconds_to_ns(round(now, 6))
    rel = _RELATIVE.match(text)
    if rel:
        return seconds_to_ns(round(now - int(rel.group(1)) * _UNIT_SECONDS[rel.group(2)], 6))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            argument, f"expected RFC3339, '-7d' or 'now', got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise ValidationError(argument, f"RFC3339 time needs a zone (Z or +hh:mm): {value!r}")
    return seconds_to_ns(round(parsed.timestamp(), 6))


# ---- reading InfluxQL text (delete predicates) --------------------------------------
# As InfluxQL's scanner (influxdata/influxql scanner.go) reads it: bare identifiers of
# letters, digits and '_' (not starting with a digit); "quoted identifiers" and 'strings'
# with the escapes \n \\ \" \' only (any other is a bad escape, a raw newline a bad
# string); integers, decimals, durations (digits then letters: 2d, 0x1231); keywords
# case-insensitive; whitespace and -- or /* */ comments between tokens.

_KEYWORDS = frozenset("""
all alter analyze any as asc begin by cardinality create continuous database databases
default delete desc destinations diagnostics distinct drop duration end every exact
explain field for from future grant grants group groups in inf insert into key keys kill
limit measurement measurements name offset on order password past policy policies
privileges queries query read replication resample retention revoke select series set
show shard shards slimit soffset stats subscription subscriptions tag to user users values
verbose where with write and or true false""".split())
_OPERATORS = [("=~", "EQREGEX"), ("!~", "NEQREGEX"), ("!=", "NEQ"), ("<>", "NEQ"),
              ("<=", "LTE"), (">=", "GTE"), ("::", "DOUBLECOLON"), ("=", "EQ"), ("<", "LT"),
              (">", "GT"), ("(", "LPAREN"), (")", "RPAREN"), (",", "COMMA"), (";", "SEMICOLON"),
              (":", "COLON"), ("+", "ADD"), ("-", "SUB"), ("*", "MUL"), ("/", "DIV"),
              ("%", "MOD"), ("&", "BITWISE_AND"), ("|", "BITWISE_OR"), ("^", "BITWISE_XOR")]


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # IDENT, STRING, INTEGER, NUMBER, DURATIONVAL, WS, EOF, an operator, or the
    lit: str  # keyword upper-cased (AND, TRUE, NAME...), BADSTRING, BADESCAPE, ILLEGAL
    pos: int


def _is_letter(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def _is_ident_char(ch: str) -> bool:
    return _is_letter(ch) or "0" <= ch <= "9" or ch == "_"


def _scan_quoted(text: str, i: int) -> tuple[Token, int]:
    """A string or quoted identifier starting at the quote ``text[i]``."""
    quote, j = text[i], i + 1
    out: list[str] = []
    while True:
        if j >= len(text) or text[j] == "\n":
            return Token("BADSTRING", "".join(out), i), j
        ch = text[j]
        if ch == quote:
            return Token("IDENT" if quote == '"' else "STRING", "".join(out), i), j + 1
        if ch == "\\":
            nxt = text[j + 1] if j + 1 < len(text) else ""
            escaped = {"n": "\n", "\\": "\\", '"': '"', "'": "'"}.get(nxt)
            if escaped is None:
                return Token("BADESCAPE", "\\" + nxt, j), j + 2
            out.append(escaped)
            j += 2
        else:
            out.append(ch)
            j += 1


def _scan_number(text: str, i: int) -> tuple[Token, int]:
    j = i
    while j < len(text) and text[j].isdigit() and text[j].isascii():
        j += 1
    if j < len(text) and text[j] == "." and j + 1 < len(text) and text[j + 1].isdigit():
        j += 1
        while j < len(text) and text[j].isdigit() and text[j].isascii():
            j += 1
        return Token("NUMBER", text[i:j], i), j
    if j < len(text) and (_is_letter(text[j]) or text[j] == "µ"):
        while j < len(text) and (_is_letter(text[j]) or text[j] == "µ"):
            j += 1
        while j < len(text) and (_is_ident_char(text[j]) or text[j] == "µ"):
            j += 1
        return Token("DURATIONVAL", text[i:j], i), j
    if text[i] == ".":
        return Token("NUMBER", text[i:j], i), j
    return Token("INTEGER", text[i:j], i), j


def scan(text: str) -> list[Token]:
    """Every token of ``text``, ending with EOF (comments are left out)."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in " \t\n\r":
            j = i
            while j < len(text) and text[j] in " \t\n\r":
                j += 1
            tokens.append(Token("WS", text[i:j], i))
            i = j
        elif _is_letter(ch) or ch == "_":
            j = i
            while j < len(text) and _is_ident_char(text[j]):
                j += 1
            if j < len(text) and text[j] == '"':  # `foo"bar"` is the identifier bar
                token, j = _scan_quoted(text, j)
                tokens.append(Token(token.kind, token.lit, i if token.kind == "IDENT"
                                    else token.pos))
            else:
                word = text[i:j]
                kind = word.upper() if word.lower() in _KEYWORDS else "IDENT"
                tokens.append(Token(kind, word if kind == "IDENT" else "", i))
            i = j
        elif (ch.isdigit() and ch.isascii()) or (ch == "." and text[i + 1:i + 2].isdigit()):
            token, i = _scan_number(text, i)
            tokens.append(token)
        elif ch in "\"'":
            token, i = _scan_quoted(text, i)
            tokens.append(token)
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                tokens.append(Token("ILLEGAL", "", i))
                i = len(text)
            else:
                i = end + 2
        else:
            for op, kind in _OPERATORS:
                if text.startswith(op, i):
                    tokens.append(Token(kind, "", i))
                    i += len(op)
                    break
            else:
                tokens.append(Token("ILLEGAL", ch, i))
                i += 1
    tokens.append(Token("EOF", "", len(text)))
    return tokens


# ---- the seed's delete predicate, as InfluxDB 2.x's delete API reads it --------------

PREDICATE_HELP = ('an AND of key=value rules, with optional parentheses: key a bare name '
                  '(or "double-quoted"), value a bare name, number, duration, true/false '
                  'or "double-quoted"; _measurement names the measurement; OR, !=, =~, !~ '
                  "and 'single-quoted' values are not supported")


def _bad_predicate(message: str, token: Token) -> ValidationError:
    return ValidationError("predicate", f"{message} at position {token.pos}; expected "
                                        f"{PREDICATE_HELP}")


def parse_predicate(predicate: object) -> tuple[str | None, dict[str, str]]:
    """``_measurement="candle" AND product="X"`` -> ("candle", {"product": "X"}).

    InfluxDB 2.x's predicate grammar, equality rules only: an AND of ``key=value``
    rules, parentheses allowed. Anything else is a ValidationError naming what is
    supported, so no text of the caller's ever reaches InfluxQL unquoted.
    """
    if predicate is None or (isinstance(predicate, str) and not predicate.strip()):
        return None, {}
    if not isinstance(predicate, str):
        raise ValidationError("predicate", f"expected a string, got {type(predicate).__name__}")
    tokens = [t for t in scan(predicate) if t.kind != "WS"]
    rules: list[tuple[str, str]] = []
    depth, pos, expect_rule = 0, 0, True
    while True:
        token = tokens[pos]
        if token.kind in ("BADSTRING", "BADESCAPE"):
            what = "an unterminated string" if token.kind == "BADSTRING" else \
                f"an escape InfluxQL does not define ({token.lit})"
            raise _bad_predicate(what, token)
        if expect_rule:
            if token.kind == "LPAREN":
                depth += 1
                pos += 1
                continue
            key_token, op, value_tokens, pos = _rule(tokens, pos)
            rules.append(_rule_value(key_token, op, value_tokens))
            expect_rule = False
            continue
        if token.kind == "RPAREN":
            depth -= 1
            if depth < 0:
                raise _bad_predicate("extra ) seen", token)
            pos += 1
        elif token.kind == "AND":
            expect_rule = True
            pos += 1
        elif token.kind == "OR":
            raise _bad_predicate("the logical operator OR is not supported", token)
        elif token.kind == "EOF":
            if depth:
                raise _bad_predicate("extra ( seen", token)
            break
        else:
            raise _bad_predicate("expected AND", token)
    measurement: str | None = None
    tags: dict[str, str] = {}
    for key, value in rules:
        if key == "_measurement":
            if measurement is not None and measurement != value:
                raise ValidationError("predicate", "_measurement given twice with different "
                                                   "values (it could never match)")
            measurement = value
        elif key == "_field":
            raise ValidationError("predicate", "_field: InfluxDB 1.x deletes whole series, "
                                               "not single fields")
        elif key in tags and tags[key] != value:
            raise ValidationError("predicate", f"{key} given twice with different values (it "
                                               "could never match)")
        else:
            tags[key] = value
    return measurement, tags


def _rule(tokens: list[Token], pos: int) -> tuple[Token, Token, list[Token], int]:
    def at(i: int) -> Token:
        return tokens[min(i, len(tokens) - 1)]  # EOF from the end on

    key = at(pos)
    if key.kind in ("EOF", "RPAREN", "AND"):
        raise _bad_predicate("a rule is missing", key)
    op = at(pos + 1)
    values: list[Token] = []
    pos += 2
    while at(pos).kind == "SUB":  # -5i, -1221
        values.append(at(pos))
        pos += 1
    values.append(at(pos))
    return key, op, values, min(pos + 1, len(tokens) - 1)


def _rule_value(key: Token, op: Token, values: list[Token]) -> tuple[str, str]:
    if key.kind == "IDENT":
        name = key.lit
    elif key.kind == "NAME":
        name = "name"
    else:
        raise _bad_predicate("bad tag key", key)
    if op.kind in ("NEQ", "EQREGEX", "NEQREGEX"):
        raise _bad_predicate("only '=' is supported", op)
    if op.kind != "EQ":
        raise _bad_predicate("invalid operator", op)
    *signs, last = values
    if last.kind in ("IDENT", "DURATIONVAL", "NUMBER", "INTEGER"):
        value = "-" * len(signs) + last.lit
    elif last.kind in ("TRUE", "FALSE") and not signs:
        value = last.kind.lower()
    elif last.kind == "STRING":
        raise _bad_predicate("a 'single-quoted' value (write it \"double-quoted\")", last)
    elif last.kind in ("BADSTRING", "BADESCAPE"):
        raise _bad_predicate("an unterminated string" if last.kind == "BADSTRING" else
                             f"an escape InfluxQL does not define ({last.lit})", last)
    else:
        raise _bad_predicate("bad tag value", last)
    return name, value


def delete_spec(start: object, stop: object, predicate: object) -> DeleteSpec:
    now = _time.time()
    start_ns = parse_time(start, "start", now)
    stop_ns = parse_time(stop, "stop", now)
    if stop_ns < start_ns:
        raise ValidationError("stop", "stop is before start")
    measurement, tags = parse_predicate(predicate)
    return DeleteSpec(measurement, tags, start_ns, stop_ns)
