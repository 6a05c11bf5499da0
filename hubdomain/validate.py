"""Input validation shared by every public call: bad input never reaches a backend."""

from __future__ import annotations

import itertools
import math
import numbers
import unicodedata
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from hubdomain.errors import ValidationError

# Unix times (seconds) whose nanosecond values InfluxDB stores (1677-09-21 to 2262-04-11;
# it reserves the two extreme int64 values).
MIN_TIMESTAMP = -9_223_372_036
MAX_TIMESTAMP = 9_223_372_036
_MAX_NS = 9_223_372_036_854_775_806
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SAFE_ASCII = frozenset(chr(c) for c in range(0x20, 0x7F))


def name(value: object, argument: str) -> str:
    """A printable, non-empty name (exchange, product, indicator, tag key or value)."""
    if type(value) is str:
        text = value
    elif isinstance(value, str):
        text = str(value)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        text = str(int(value))  # a period of 20, numpy ints too
    else:
        raise ValidationError(argument, f"expected a string, got {type(value).__name__}")
    if not text:
        raise ValidationError(argument, "must not be empty")
    if not _SAFE_ASCII.issuperset(text):
        for ch in text:
            if ch not in _SAFE_ASCII and (
                ch in "\x7f" or unicodedata.category(ch) in _BAD_CATEGORIES
            ):
                raise ValidationError(
                    argument, f"contains a control or non-printable character {ch!r}"
                )
    return text


def tag(value: object, argument: str) -> str:
    """A name stored as an InfluxDB tag key or value (or a measurement).

    InfluxDB 1.x reads a backslash directly before a separator as an escape, so any
    backslash a name holds is carried by escaping the separators after it; only a
    backslash at the very end cannot be (it would escape the separator that follows
    the name)."""
    text = name(value, argument)
    if text[-1] == "\\":
        raise ValidationError(argument, "must not end with a backslash (line protocol "
                                        "cannot carry it)")
    return text


def measurement(value: object, argument: str) -> str:
    """A measurement name: a tag's rules, no leading '#' (InfluxDB would read the line as
    a comment), and no backslash directly before ',', '"', '=' or a space: influxd 1.6.7
    stores such a measurement but cannot select it by name (checked live)."""
    text = tag(value, argument)
    if text.startswith("#"):
        raise ValidationError(argument, "must not start with '#' (InfluxDB reads that line "
                                        "as a comment)")
    if "\\" in text and any(a == "\\" and b in ',"= ' for a, b in itertools.pairwise(text)):
        raise ValidationError(argument, "a backslash directly before ',', '\"', '=' or a "
                                        "space: InfluxDB 1.x stores that measurement but "
                                        "cannot select it by name")
    return text


def tag_value(value: object, argument: str) -> str:
    """A tag given as a string or a number (a period of 20, a price level of 1.5)."""
    if isinstance(value, str) or (isinstance(value, numbers.Integral)
                                  and not isinstance(value, bool)):
        return tag(value, argument)
    return repr(number(value, argument))


def field_key(value: object, argument: str, reserved: frozenset[str] = frozenset()) -> str:
    """A field key. InfluxDB 1.x scans the fields in backslash pairs, then cuts each key
    at its '=' with a one-character look-back: a key ending in a backslash, or with an
    odd run of backslashes directly before ',', '=' or a space, cannot be read back."""
    key = name(value, argument)
    if key == "time" or key in reserved:
        raise ValidationError(argument, f"{key!r} is a reserved name")
    if "\\" in key:
        if key[-1] == "\\":
            raise ValidationError(argument, "a field key must not end with a backslash")
        run = 0
        for ch in key:
            if ch == "\\":
                run += 1
                continue
            if run % 2 and ch in ", =":
                raise ValidationError(argument, "an odd run of backslashes directly before "
                                                "',', '=' or a space cannot be stored in a "
                                                "field key")
            run = 0
    return key


def _as_float(value: object) -> float | None:
    """A plain float from any real number (int, float, numpy scalars, Decimal, Fraction);
    None for anything else, bools included (a bool where a number belongs is a bug)."""
    if type(value) is float:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, numbers.Real, Decimal)):
        try:
            return float(value)
        except (OverflowError, ValueError):
            return math.inf
    return None


def number(value: object, argument: str) -> float:
    """A finite real number as a float: int, float, numpy scalars, Decimal (bool is
    refused: it is almost always a bug)."""
    result = _as_float(value)
    if result is None:
        raise ValidationError(argument, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(result):
        raise ValidationError(argument, f"must be finite, got {value!r}")
    return result


def non_negative(value: object, argument: str) -> float:
    result = number(value, argument)
    if result < 0:
        raise ValidationError(argument, f"must not be negative, got {value!r}")
    return result


def timestamp(value: object, argument: str) -> int | float:
    """Unix seconds, int or float (numpy scalars too), within InfluxDB's range; an
    integral float comes back as an int."""
    if type(value) is not int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = int(value)
        else:
            number = _as_float(value)
            if number is None:
                raise ValidationError(argument,
                                      f"expected Unix seconds, got {type(value).__name__}")
            if not math.isfinite(number):
                raise ValidationError(argument, f"must be finite, got {value!r}")
            value = int(number) if number.is_integer() else number
    ns = value * 1_000_000_000 if isinstance(value, int) else round(value * 1e6) * 1000
    if not -_MAX_NS <= ns <= _MAX_NS:
        raise ValidationError(argument, f"out of InfluxDB's range (1677-09-21 to 2262-04-11, "
                                        f"{MIN_TIMESTAMP}..{MAX_TIMESTAMP}), got {value!r}")
    return value


def whole_timestamp(value: object, argument: str) -> int:
    """Unix seconds with no fraction (candles are stored at second resolution)."""
    result = timestamp(value, argument)
    if isinstance(result, float):
        raise ValidationError(argument, f"candle timestamps are whole seconds, got {value!r}")
    return result


def optional_timestamp(value: object, argument: str) -> int | float | None:
    return None if value is None else timestamp(value, argument)


def positive_int(value: object, argument: str) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) > 0:
        return int(value)
    raise ValidationError(argument, f"expected a positive int, got {value!r}")


def json_value(value: object, argument: str, depth: int = 0) -> Any:
    """The value as plain JSON types (numpy scalars and arrays, Decimal and tuples
    converted); refuses what JSON cannot carry exactly (NaN/inf, non-str keys,
    arbitrary objects)."""
    if depth > 64:
        raise ValidationError(argument, "nested too deeply")
    kind = type(value)
    if value is None or kind is str or kind is bool:
        return value
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValidationError(argument, f"must be finite, got {value!r}")
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, numbers.Integral):
        if abs(int(value)) >= 2**64:
            raise ValidationError(argument, "integer too large for JSON")
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (float, numbers.Real, Decimal)):
        return number(value, argument)
    if isinstance(value, (list, tuple)):
        return [json_value(item, argument, depth + 1) for item in value]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(argument, f"mapping keys must be strings, got {key!r}")
            out[str(key)] = json_value(item, argument, depth + 1)
        return out
    if type(value).__name__ == "bool_" and hasattr(value, "item"):  # numpy.bool_
        return bool(value.item())
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # a numpy array
        return json_value(value.tolist(), argument, depth + 1)
    raise ValidationError(argument, f"{type(value).__name__} is not JSON-serialisable")


def mapping(value: object, argument: str) -> dict[str, Any]:
    """A JSON object (its values converted as by :func:`json_value`)."""
    if not isinstance(value, Mapping):
        raise ValidationError(argument, f"expected a mapping, got {type(value).__name__}")
    result: dict[str, Any] = json_value(value, argument)
    return result


def field_value(value: object, argument: str) -> float | bool | str:
    """An extra InfluxDB field: numbers are stored as floats so types never conflict."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_" and hasattr(value, "item"):  # numpy.bool_
        return bool(value.item())
    if isinstance(value, str):  # any text: InfluxDB stores every character of a string
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(argument, "a lone surrogate is not text (not UTF-8)"
                                  ) from None
        return str(value)
    return number(value, argument)
