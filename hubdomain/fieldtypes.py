"""The type of every field InfluxDB holds, as far as this hub knows, and the rule that
turns a caller's number into a field value without changing it.

InfluxDB fixes a field's type (float, integer, string, boolean) at its first write and
refuses another type afterwards (a "field type conflict", per shard). The hub learns
the types at start (``SHOW FIELD KEYS``) and from every write it accepts, so a
conflict is refused at the call instead of ending in the quarantine.

Numbers (the rule README states):
- a field already known as an integer gets integers (a whole float is converted; a
  fraction is refused);
- otherwise a number is written as a float, exactly as before, unless it is an
  integer beyond +-2**53 (a float cannot hold it exactly): that one is written as an
  integer when the field is new, and refused when the field is a float field;
- Decimal and numpy numbers convert like the Python number they are equal to.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Iterable, Mapping
from decimal import Decimal

from hubdomain import validate as v
from hubdomain.errors import ValidationError
from hubdomain.lineproto import FieldValue

EXACT_FLOAT_INT = 2**53


def kind(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    return "float"


class FieldTypes:
    """Measurement -> field -> InfluxDB type ('float', 'integer', 'string', 'boolean')."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def get(self, measurement: str, field: str) -> str | None:
        return self._types.get((measurement, field))

    def learn(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """(measurement, field, type) as InfluxDB reports them."""
        with self._lock:
            for measurement, field, type_ in rows:
                self._types[(measurement, field)] = type_

    def number(self, measurement: str, field: str, value: object, argument: str
               ) -> float | int:
        """A caller's number as the value to write, by the rule above."""
        known = self.get(measurement, field)
        whole: int | None = None
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            whole = int(value)
        elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral():
            whole = int(value)
        if known == "integer":
            if whole is None:
                number = v.number(value, argument)
                if not number.is_integer():
                    raise ValidationError(argument, f"{field!r} is an integer field in InfluxDB, "
                                                    f"got {value!r}")
                whole = int(number)
            if not -(2**63) <= whole < 2**63:
                raise ValidationError(argument, f"{whole} is beyond a 64-bit integer")
            return whole
        if whole is not None and abs(whole) > EXACT_FLOAT_INT:
            if known == "float":
                raise ValidationError(argument, f"{field!r} is a float field in InfluxDB, and "
                                                f"{whole} is not exact as a float")
            if not -(2**63) <= whole < 2**63:
                raise ValidationError(argument, f"{whole} is beyond a 64-bit integer")
            return whole
        result = v.number(value, argument)
        if not math.isfinite(result):  # pragma: no cover (v.number refuses it)
            raise ValidationError(argument, f"must be finite, got {value!r}")
        return result

    def value(self, measurement: str, field: str, value: object, argument: str
              ) -> FieldValue:
        """A caller's field value: a bool or a string as it is, a number by the rule."""
        if isinstance(value, (bool, str)) or type(value).__name__ == "bool_":
            return v.field_value(value, argument)
        return self.number(measurement, field, value, argument)

    def claim(self, points: Iterable[tuple[str, Mapping[str, FieldValue]]],
              argument: str | None = None) -> None:
        """Check that every point's fields agree with the known types and with each other
        (a field given two types in one write), then remember them; all or nothing.
        Raises ValidationError naming ``argument`` (default: the field itself)."""
        with self._lock:
            seen: dict[tuple[str, str], str] = {}
            for measurement, fields in points:
                for field, value in fields.items():
                    key = (measurement, field)
                    known = seen.get(key) or self._types.get(key)
                    if known is not None and known != kind(value):
                        raise ValidationError(
                            argument or field,
                            f"field {field!r} of {measurement!r} is a {known} field in "
                            f"InfluxDB, got a {kind(value)} ({value!r})")
                    seen[key] = kind(value)
            self._types.update(seen)
