"""Input validation shared by every public call: bad input never reaches a backend."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from typing import Any

from hub.errors import ValidationError

# Largest Unix time (seconds) whose nanosecond value still fits InfluxDB's int64.
MAX_TIMESTAMP = 9_223_372_035
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SAFE_ASCII = frozenset(chr(c) for c in range(0x20, 0x7F))


def name(value: object, argument: str) -> str:
    """A printable, non-empty name (exchange, product, indicator, tag key or value)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValidationError(argument, f"expected a string, got {type(value).__name__}")
    text = str(value)
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
    """A name stored as an InfluxDB tag: line protocol cannot carry every backslash."""
    text = name(value, argument)
    if "\\" in text:
        if text.endswith("\\"):
            raise ValidationError(argument, "must not end with a backslash")
        for i, ch in enumerate(text[:-1]):
            if ch == "\\" and text[i + 1] in ", =":
                raise ValidationError(
                    argument, "a backslash directly before ',', '=' or a space cannot be stored"
                )
    return text


def field_key(value: object, argument: str, reserved: frozenset[str] = frozenset()) -> str:
    key = tag(value, argument)
    if key == "time" or key in reserved:
        raise ValidationError(argument, f"{key!r} is a reserved name")
    return key


def number(value: object, argument: str) -> float:
    """A finite int or float (bool is refused: it is almost always a bug)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(argument, f"expected a number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise ValidationError(argument, f"must be finite, got {value!r}")
    return result


def non_negative(value: object, argument: str) -> float:
    result = number(value, argument)
    if result < 0:
        raise ValidationError(argument, f"must not be negative, got {value!r}")
    return result


def timestamp(value: object, argument: str) -> int | float:
    """Unix seconds, int or float, within InfluxDB's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(argument, f"expected Unix seconds, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(argument, f"must be finite, got {value!r}")
    if not 0 <= value <= MAX_TIMESTAMP:
        raise ValidationError(argument, f"out of range (0..{MAX_TIMESTAMP}), got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
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
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(argument, f"expected a positive int, got {value!r}")
    return value


def json_value(value: object, argument: str, depth: int = 0) -> None:
    """Refuse what JSON cannot carry exactly (NaN/inf, non-str keys, arbitrary objects)."""
    if depth > 64:
        raise ValidationError(argument, "nested too deeply")
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**64:
            raise ValidationError(argument, "integer too large for JSON")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(argument, f"must be finite, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            json_value(item, argument, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(argument, f"mapping keys must be strings, got {key!r}")
            json_value(item, argument, depth + 1)
        return
    raise ValidationError(argument, f"{type(value).__name__} is not JSON-serialisable")


def mapping(value: object, argument: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(argument, f"expected a mapping, got {type(value).__name__}")
    json_value(value, argument)
    return dict(value)


def field_value(value: object, argument: str) -> float | bool | str:
    """An extra InfluxDB field: numbers are stored as floats so types never conflict."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        name_free = value  # strings may be empty, but never carry control characters
        for ch in name_free:
            if ch not in _SAFE_ASCII and unicodedata.category(ch) in _BAD_CATEGORIES:
                raise ValidationError(argument, f"contains a control character {ch!r}")
        return value
    return number(value, argument)
