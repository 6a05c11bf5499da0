"""InfluxDB line protocol: encoding for the hub's measurements and any point, and a
parser for lines written by callers (the Wolfinch drop-in's ``write_api``).

Callers of the encoders pass validated values only (see ``_validate``): names hold
no control characters and no backslash that line protocol would misread, numbers
are finite. The parser follows InfluxDB 1.x's reading of a line (escapes are a
backslash directly before the separator; string fields may span lines).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

from hub._records import Candle
from hub.errors import ValidationError

_TAG_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def escape_tag(text: str) -> str:
    """Escape a tag key, tag value or field key."""
    return text.translate(_TAG_ESCAPES)


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
) -> str:
    """One of the hub's points (its measurement names need no escaping); seconds."""
    body = ",".join(f"{escape_tag(k)}={field(val)}" for k, val in fields.items())
    return f"{measurement}{tag_set(tags)} {body} {seconds_to_ns(timestamp)}"


def any_point(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue],
              ns: int) -> str:
    """A point of any measurement, time in nanoseconds."""
    body = ",".join(f"{escape_tag(k)}={field(val)}" for k, val in fields.items())
    return f"{escape_measurement(measurement)}{tag_set(tags)} {body} {ns}"


@lru_cache(maxsize=4096)
def _candle_prefix(exchange: str, product: str) -> str:
    return "candle" + tag_set({"exchange": exchange, "product": product}) + " "


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
    return point("metric", {**tags, "name": name}, {"value": value}, timestamp)


# ---- parsing ----------------------------------------------------------------------

# InfluxDB stores nanoseconds in an int64; these two values are reserved by it
MIN_NS = -9_223_372_036_854_775_806
MAX_NS = 9_223_372_036_854_775_806
PRECISIONS = {"ns": 1, "n": 1, "us": 1_000, "u": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INT = re.compile(r"-?[0-9]+")
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})


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
            line = body[start:i].rstrip("\r").lstrip(" \t")
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
        elif in_fields and not quoted and ch == "=":
            equals += 1
        elif in_fields and not quoted and ch == ",":
            commas += 1
        elif in_fields and ch == '"' and equals > commas:
            quoted = not quoted
        i += 1


def _find(text: str, stops: str, start: int) -> int:
    """Index of the first of ``stops`` not directly after a backslash, or len(text)."""
    for i in range(start, len(text)):
        if text[i] in stops and (i == 0 or text[i - 1] != "\\"):
            return i
    return len(text)


def _unescape(text: str, chars: str) -> str:
    for ch in chars:
        text = text.replace("\\" + ch, ch)
    return text


def _unescape_string(text: str) -> str:
    """A string field's text: ``\\"`` and ``\\\\`` are escapes, any other backslash is
    itself (read left to right, as InfluxDB does)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _bad(line: str, message: str) -> ValidationError:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return ValidationError("record", f"{message} in line {shown!r}")


def parse_line(line: str, precision: str = "ns") -> ParsedPoint:
    """Parse one line; raises ValidationError saying what is wrong with it."""
    if precision not in PRECISIONS:
        raise ValidationError("write_precision", f"expected one of {sorted(PRECISIONS)}, "
                              f"got {precision!r}")
    key_end = _find(line, " ", 0)
    if key_end == len(line):
        raise _bad(line, "no fields")
    key = line[:key_end]
    cut = _find(key, ",", 0)
    measurement = _unescape(key[:cut], ", ")
    if not measurement:
        raise _bad(line, "missing measurement")
    tags: dict[str, str] = {}
    pos = cut
    while pos < len(key):
        end = _find(key, ",", pos + 1)
        pair = key[pos + 1:end]
        eq = _find(pair, "=", 0)
        if eq in (0, len(pair)) or eq == len(pair) - 1:
            raise _bad(line, f"tag {pair!r} is not key=value")
        tag_key, tag_value = _unescape(pair[:eq], ",= "), _unescape(pair[eq + 1:], ",= ")
        if _find(pair, "=", eq + 1) != len(pair):
            raise _bad(line, f"unescaped '=' in tag {pair!r}")
        if tag_key in tags:
            raise _bad(line, f"duplicate tag {tag_key!r}")
        tags[tag_key] = tag_value
        pos = end
    i = key_end
    while i < len(line) and line[i] == " ":
        i += 1
    fields: dict[str, FieldValue] = {}
    while True:
        eq = _find(line, "=", i)
        if eq == len(line) or eq == i:
            raise _bad(line, "a field is not key=value")
        name = _unescape(line[i:eq], ",= ")
        if " " in line[i:eq].replace("\\ ", ""):
            raise _bad(line, "a field is not key=value")
        i = eq + 1
        if i < len(line) and line[i] == '"':
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            if j >= len(line):
                raise _bad(line, f"unterminated string in field {name!r}")
            value: FieldValue = _unescape_string(line[i + 1:j])
            i = j + 1
        else:
            j = i
            while j < len(line) and line[j] not in ", ":
                j += 1
            value = _field_value(line[i:j], name, line)
            i = j
        if name in fields:
            raise _bad(line, f"duplicate field {name!r}")
        fields[name] = value
        if i < len(line) and line[i] == ",":
            i += 1
            continue
        break
    rest = line[i:].strip(" ")
    if not rest:
        return ParsedPoint(measurement, tags, fields, None)
    if not _INT.fullmatch(rest):
        raise _bad(line, f"bad timestamp {rest!r}")
    ns = int(rest) * PRECISIONS[precision]
    if not MIN_NS <= ns <= MAX_NS:
        raise _bad(line, "timestamp out of InfluxDB's range")
    return ParsedPoint(measurement, tags, fields, ns)


def _field_value(text: str, name: str, line: str) -> FieldValue:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text.endswith("i") and _INT.fullmatch(text[:-1]):
        number = int(text[:-1])
        if not -(2**63) <= number < 2**63:
            raise _bad(line, f"integer field {name!r} out of range")
        return number
    if text.endswith("u") and _INT.fullmatch(text[:-1]):
        raise _bad(line, f"unsigned field {name!r}: InfluxDB 1.x stores no unsigned integers")
    if _FLOAT.fullmatch(text):
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise _bad(line, f"field {name!r} is out of a float's range")
        return value
    raise _bad(line, f"bad value {text!r} for field {name!r}")
