"""InfluxDB line protocol: encoding for the hub's measurements and any point, and a
parser for lines written by callers (the Wolfinch drop-in's ``write_api``).

Callers of the encoders pass validated values only (see ``_validate``): names hold
no control characters and no backslash that line protocol would misread, numbers
are finite. The parser follows InfluxDB 1.x's reading of a line (escapes are a
backslash directly before the separator; string fields may span lines).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

import orjson

from hubdomain.errors import ValidationError
from hubdomain.records import Candle, Row

_TAG_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
# InfluxDB 1.x escapes field keys like this (its escape.String), and unescapes '"' too
_FIELD_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", '"': '\\"'})
MAX_KEY_BYTES = 65_535  # InfluxDB 1.x refuses a longer series key (with a field key)
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def escape_tag(text: str) -> str:
    """Escape a tag key or tag value."""
    return text.translate(_TAG_ESCAPES)


def escape_field_key(text: str) -> str:
    return text.translate(_FIELD_KEY_ESCAPES)


def check_key_size(key: str, field_keys: list[str], parts: Mapping[str, str]) -> None:
    """Refuse, naming the argument with the longest text in ``parts``, a series key
    (escaped measurement and tags) that with a field key is beyond InfluxDB's limit."""
    longest = max((len(k) for k in field_keys), default=0)
    if 4 * (len(key) + longest) + 4 <= MAX_KEY_BYTES:  # UTF-8 takes at most 4 bytes a char
        return
    size = len(key.encode()) + 4 + max((len(k.encode()) for k in field_keys), default=0)
    if size > MAX_KEY_BYTES:
        culprit = max(parts, key=lambda arg: len(parts[arg]))
        raise ValidationError(culprit, f"too long: the series key would be {size:,} bytes, "
                                       f"InfluxDB takes at most {MAX_KEY_BYTES:,} (measurement, "
                                       f"tags and a field key together)")


def escape_measurement(text: str) -> str:
    return text.translate(_MEASUREMENT_ESCAPES)


FieldValue = float | int | bool | str


def field(value: FieldValue) -> str:
    """Render one field value: a float as a float, an int as an integer field (``1i``;
    the hub's own measurements pass floats only, so their fields never change type)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    if isinstance(value, int):
        return f"{value}i"
    return repr(float(value))


def seconds_to_ns(timestamp: int | float) -> int:
    """Unix seconds to InfluxDB nanoseconds (floats keep microsecond precision)."""
    if isinstance(timestamp, int):
        return timestamp * 1_000_000_000
    return round(timestamp * 1_000_000) * 1_000


def tag_set(tags: Mapping[str, str]) -> str:
    """``,k=v,k2=v2`` sorted by key (InfluxDB's preferred order), empty tags skipped."""
    return "".join(
        f",{escape_tag(key)}={escape_tag(tags[key])}" for key in sorted(tags) if tags[key] != ""
    )


def point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    timestamp: int | float,
    arguments: Mapping[str, str] | None = None,
) -> str:
    """One of the hub's points (its measurement names need no escaping); seconds.
    ``arguments`` maps tag keys to the argument names a too long key is blamed on."""
    return any_point(measurement, tags, fields, seconds_to_ns(timestamp), arguments)


def any_point(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue],
              ns: int, arguments: Mapping[str, str] | None = None) -> str:
    """A point of any measurement, time in nanoseconds. Raises ValidationError when its
    series key is beyond InfluxDB's limit."""
    keys = [escape_field_key(k) for k in fields]
    key = escape_measurement(measurement) + tag_set(tags)
    names = arguments or {}
    check_key_size(key, keys, {"measurement": measurement,
                               **{names.get(k, k): v for k, v in tags.items()}})
    body = ",".join(f"{k}={field(val)}" for k, val in zip(keys, fields.values(), strict=True))
    return f"{key} {body} {ns}"


@lru_cache(maxsize=4096)
def _candle_prefix(exchange: str, product: str) -> str:
    key = "candle" + tag_set({"exchange": exchange, "product": product})
    check_key_size(key, ["volume"], {"exchange": exchange, "product": product})
    return key + " "


def check_candle_names(exchange: str, product: str) -> None:
    """Raises ValidationError when a candle line of these names would be too long for
    InfluxDB (remembered: a writer names the same few products over and over)."""
    _candle_prefix(exchange, product)


def candle_lines(exchange: str, product: str, rows: Iterable[Row]) -> list[str]:
    """Lines of checked candle rows (timestamp, open, high, low, close, volume)."""
    return _ohlcv_lines(_candle_prefix(exchange, product), rows)


def rollup_lines(exchange: str, product: str, timeframe: str, rows: Iterable[Row]) -> list[str]:
    """Lines of rollup candles: measurement ``candle_rollup``, tags exchange, product,
    timeframe (the ``candle`` measurement keeps only what writers wrote)."""
    return _ohlcv_lines(_rollup_prefix(exchange, product, timeframe), rows)


@lru_cache(maxsize=4096)
def _rollup_prefix(exchange: str, product: str, timeframe: str) -> str:
    return ("candle_rollup,exchange=" + escape_tag(exchange) + ",product="
            + escape_tag(product) + ",timeframe=" + escape_tag(timeframe) + " ")


def _ohlcv_lines(prefix: str, rows: Iterable[Row]) -> list[str]:
    """``prefix`` + the five fields + the time in ns, for each checked row (an int time,
    five finite floats). The numbers are formatted by orjson in one call for all rows,
    twice as fast as ``repr`` one at a time: the same shortest decimal that reads back as
    the same float (only the exponent is written as InfluxDB writes it, ``1e-7`` for
    ``repr``'s ``1e-07``; influxd reads both to the same float)."""
    # (built per call: kept per prefix, thousands of long-lived strings made in a burst
    # of writes held the heap's freed pages, 20 B more RSS per hot-window candle measured)
    line = prefix.replace("%", "%%") + "open=%s,high=%s,low=%s,close=%s,volume=%s %s000000000"
    if type(rows) is tuple and len(rows) == 1:  # write_candle's one row
        t, o, h, lo, c, v = orjson.dumps(rows[0]).decode()[1:-1].split(",")
        return [line % (o, h, lo, c, v, t)]
    text = orjson.dumps(rows if isinstance(rows, (list, tuple)) else list(rows)).decode()
    if len(text) <= 2:
        return []
    return [line % (o, h, lo, c, v, t)
            for t, o, h, lo, c, v in (row.split(",") for row in text[2:-2].split("],["))]


def candle(exchange: str, product: str, c: Candle) -> str:
    return (
        f"{_candle_prefix(exchange, product)}open={c.open!r},high={c.high!r},low={c.low!r},"
        f"close={c.close!r},volume={c.volume!r} {c.timestamp}000000000"
    )


def indicator(
    exchange: str, product: str, name: str, timestamp: int | float, value: float,
    tags: Mapping[str, str],
) -> str:
    return point(
        "indicator",
        {**tags, "exchange": exchange, "product": product, "name": name},
        {"value": value},
        timestamp,
        {"name": "indicator_name"},
    )


def trade(
    exchange: str, product: str, timestamp: int | float, side: str, price: float, size: float,
    order_id: str, fields: Mapping[str, float | bool | str],
) -> str:
    return point(
        "trade",
        {"exchange": exchange, "product": product, "side": side, "order_id": order_id},
        {"price": price, "size": size, **fields},
        timestamp,
    )


def metric(name: str, value: float, tags: Mapping[str, str], timestamp: int | float) -> str:
    return point("metric", {**tags, "name": name}, {"value": value}, timestamp,
                 {"name": "metric_name"})


# ---- parsing ----------------------------------------------------------------------
# How InfluxDB 1.x reads a line (its models/points.go, read here and held against a live
# influxd 1.6.7): in the measurement and tags a separator is escaped when the character
# before it is a backslash; the field block is scanned in backslash pairs; each field key
# is cut at the first '=' not directly after a backslash and unescaped left to right.

# InfluxDB stores nanoseconds in an int64; these two values are reserved by it
MIN_NS = -9_223_372_036_854_775_806
MAX_NS = 9_223_372_036_854_775_806
PRECISIONS = {"ns": 1, "n": 1, "us": 1_000, "u": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class ParsedPoint:
    """One point read from line protocol; ``ns`` is None when the line has no time."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ns: int | None


def split_lines(body: str) -> Iterator[str]:
    """The lines of a body as InfluxDB reads them: a newline inside a quoted string
    field does not end the line; blank and ``#`` comment lines are skipped."""
    i, start, n = 0, 0, len(body)
    quoted = in_fields = False
    equals = commas = 0
    while i <= n:
        if i == n or (body[i] == "\n" and not quoted):
            line = body[start:i].lstrip(" \t\x00")
            if line and not line.startswith("#"):
                yield line
            i += 1
            start, quoted, in_fields, equals, commas = i, False, False, 0, 0
            continue
        ch = body[i]
        if ch == "\\" and i + 2 < n:
            i += 2
            continue
        if ch == " ":
            in_fields = True
        if in_fields and not quoted and ch == "=":
            equals += 1
        elif in_fields and not quoted and ch == ",":
            commas += 1
        elif in_fields and ch == '"' and equals > commas:
            quoted = not quoted
        i += 1


def _bad(line: str, message: str) -> ValidationError:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return ValidationError("record", f"{message} in line {shown!r}")


def _escaped(text: str, i: int) -> bool:
    return i > 0 and text[i - 1] == "\\"


def _replace_escapes(text: str, chars: str) -> str:
    """Measurement and tag unescaping: each escape pair replaced in one pass."""
    for ch in chars:
        text = text.replace("\\" + ch, ch)
    return text


def _unescape_before(text: str, escapable: str) -> str:
    """Left to right, a backslash before one of ``escapable`` is dropped; any other
    backslash is kept."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in escapable:
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _unescape_field_key(text: str) -> str:
    """A backslash before ',', '"', '=' or a space is dropped; any other backslash is kept
    (so a backslash before a backslash escapes nothing)."""
    return _unescape_before(text, ',"= ')


def _unescape_string(text: str) -> str:
    """A string field's text: ``\\"`` and ``\\\\`` are escapes, any other backslash is
    itself (read left to right, as InfluxDB does)."""
    return _unescape_before(text, '"\\')


def _scan_key(line: str) -> tuple[int, str, dict[str, str]]:
    """The measurement and tags, up to the first unescaped space."""
    if not line or line[0] == ",":
        raise _bad(line, "missing measurement")
    i = 1
    while True:
        if i >= len(line):
            raise _bad(line, "missing fields")
        if not _escaped(line, i) and line[i] in ", ":
            break
        i += 1
    # the name influxd stores (and lists): its unescaping runs twice on a measurement
    measurement = _unescape_field_key(_unescape_field_key(line[:i]))
    tags: dict[str, str] = {}
    while line[i] == ",":
        start = i + 1
        if start >= len(line) or line[start] in " ,=":
            raise _bad(line, "missing tag key")
        i = start + 1
        while True:
            if i >= len(line) or (line[i] in " ," and not _escaped(line, i)):
                raise _bad(line, "missing tag value")
            if line[i] == "=" and not _escaped(line, i):
                break
            i += 1
        key = _replace_escapes(line[start:i], ",= ")
        value_start = i + 1
        if value_start >= len(line) or line[value_start] in ", ":
            raise _bad(line, "missing tag value")
        i = value_start + 1
        while True:
            if i >= len(line):
                raise _bad(line, "missing fields")
            if not _escaped(line, i):
                if line[i] == "=":
                    raise _bad(line, "invalid tag format (an unescaped '=' in a tag value)")
                if line[i] in ", ":
                    break
            i += 1
        if key in tags:
            raise _bad(line, f"duplicate tag {key!r}")
        if key == "time":
            raise _bad(line, "invalid tag key 'time'")
        tags[key] = _replace_escapes(line[value_start:i], ",= ")
    return i, measurement, tags


def _scan_number(line: str, i: int) -> int:
    """End of a number starting at ``i`` (InfluxDB's checks: one '.', an exponent,
    an 'i' or 'u' suffix last, no NaN)."""
    start = i
    is_int = is_uint = decimal = scientific = False
    if i < len(line) and line[i] == "-":
        i += 1
        if i == len(line):
            raise _bad(line, "invalid number")
    while i < len(line) and line[i] not in ", ":
        ch = line[i]
        if ch in "iu" and i > start and not (is_int or is_uint):
            is_int, is_uint = ch == "i", ch == "u"
            i += 1
            continue
        if ch == ".":
            if decimal:
                raise _bad(line, "invalid number")
            decimal = True
        if i > start and ch in "eE":
            scientific = True
            i += 1
            continue
        if ch in "+-" and line[i - 1] in "eE":
            i += 1
            continue
        if ch not in _DIGITS and ch != ".":
            raise _bad(line, "invalid number")
        i += 1
    text = line[start:i]
    if (is_int or is_uint) and (decimal or scientific or text[-1] not in "iu"):
        raise _bad(line, "invalid number")
    if not any(c in _DIGITS for c in text):
        raise _bad(line, "invalid number")
    if is_uint:
        raise _bad(line, "an unsigned field (u): InfluxDB 1.x stores no unsigned integers")
    try:
        number = int(text[:-1]) if is_int else float(text)
    except ValueError:
        raise _bad(line, "invalid number") from None
    if is_int and not -(2**63) <= number < 2**63:
        raise _bad(line, f"integer {text} out of range")
    if not is_int and number in (float("inf"), float("-inf")):
        raise _bad(line, "invalid float (out of range)")
    return i


def _scan_fields(line: str, i: int) -> tuple[int, str]:
    """The field block: backslash pairs skipped, quotes tracked, up to an unquoted space."""
    while i < len(line) and line[i] in " \t\x00":
        i += 1
    start, quoted, equals, commas = i, False, 0, 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            i += 2
            continue
        if ch == '"' and equals > commas:
            quoted = not quoted
            i += 1
            continue
        if ch == "=" and not quoted:
            equals += 1
            if line[i - 1] in " ," and not _escaped(line, i - 1):
                raise _bad(line, "missing field key")
            if i + 1 >= len(line) or line[i + 1] in ", ":
                raise _bad(line, "missing field value")
            nxt = line[i + 1]
            if nxt in _DIGITS or nxt in ".-Nn":
                i = _scan_number(line, i + 1)
                continue
            if nxt != '"':
                end = i + 1
                while end < len(line) and line[end] not in ", ":
                    end += 1
                if line[i + 1:end] not in _TRUE and line[i + 1:end] not in _FALSE:
                    raise _bad(line, f"invalid boolean {line[i + 1:end]!r}")
                i = end
                continue
        if ch == "," and not quoted:
            commas += 1
        if ch == " " and not quoted:
            break
        i += 1
    if quoted:
        raise _bad(line, "unbalanced quotes")
    if equals == 0 or commas != equals - 1:
        raise _bad(line, "invalid field format")
    return i, line[start:i]


def _split_fields(block: str, line: str) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    i = 0
    while i < len(block):
        eq = i
        while eq < len(block) and not (block[eq] == "=" and not _escaped(block, eq)):
            eq += 1
        if eq > len(block) - 2:
            raise _bad(line, f"invalid value: field-key={block[i:eq]!r}")
        key = _unescape_field_key(block[i:eq])
        j, quoted = eq + 1, False
        while j < len(block):
            if block[j] == "\\" and j + 1 < len(block) and block[j + 1] in '"\\':
                j += 2
                continue
            if block[j] == '"':
                quoted = not quoted
            elif block[j] == "," and not quoted:
                break
            j += 1
        raw = block[eq + 1:j]
        if raw.startswith('"'):
            value: FieldValue = _unescape_string(raw[1:-1])
        elif raw[-1] == "i":  # checked by _scan_number
            value = int(raw[:-1])
        elif raw[0] in "0123456789-.":
            value = float(raw)
        else:
            value = raw in _TRUE
        if key == "time":
            raise _bad(line, "invalid field name 'time'")
        if key:  # influxd leaves out a field whose key is empty; a repeated key: the last
            fields.pop(key, None)
            fields[key] = value
        i = j + 1
    return fields


def parse_line(line: str, precision: str = "ns") -> ParsedPoint:
    """Parse one line as InfluxDB 1.x does; raises ValidationError saying what is wrong."""
    if precision not in PRECISIONS:
        raise ValidationError("write_precision", f"expected one of {sorted(PRECISIONS)}, "
                              f"got {precision!r}")
    i, measurement, tags = _scan_key(line)
    i, block = _scan_fields(line, i)
    fields = _split_fields(block, line)
    while i < len(line) and line[i] in " \t\x00":
        i += 1
    end = i
    while end < len(line) and line[end] not in " \n":
        end += 1
    stamp, rest = line[i:end], line[end:]
    if rest.strip(" "):
        raise _bad(line, "invalid point (text after the timestamp)")
    if not stamp:
        return ParsedPoint(measurement, tags, fields, None)
    digits = stamp[1:] if stamp[0] == "-" else stamp
    if not digits or not all(c in _DIGITS for c in digits):
        raise _bad(line, f"bad timestamp {stamp!r}")
    ns = int(stamp) * PRECISIONS[precision]
    if not MIN_NS <= ns <= MAX_NS:
        raise _bad(line, "timestamp out of InfluxDB's range")
    return ParsedPoint(measurement, tags, fields, ns)
