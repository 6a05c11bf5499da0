"""The seed's Redis key schema, made injective and glob-safe.

Components are joined by ``:``; a component holding ``:`` or ``\\`` has them
backslash-escaped, so ``("a:b", "c")`` and ``("a", "b:c")`` never share a key.
Names without those characters produce exactly the seed's keys.
"""

from __future__ import annotations

_COMPONENT = str.maketrans({"\\": "\\\\", ":": "\\:"})
_GLOB = str.maketrans({c: "\\" + c for c in "\\*?[]^-"})

PREFIXES = ("indicator:", "candles:", "position:", "strategy:")


def _join(*parts: str) -> str:
    return ":".join(p.translate(_COMPONENT) for p in parts)


def indicator(exchange: str, product: str, name: str, period: str) -> str:
    return "indicator:" + _join(exchange, product, name, period)


def candles(exchange: str, product: str) -> str:
    return "candles:" + _join(exchange, product)


def position(exchange: str, product: str) -> str:
    return "position:" + _join(exchange, product)


def strategy(exchange: str, product: str, name: str) -> str:
    return "strategy:" + _join(exchange, product, name)


def glob_literal(key_prefix: str) -> str:
    """Escape a literal key prefix for SCAN MATCH (no user text is ever a pattern)."""
    return key_prefix.translate(_GLOB)


def scan_pattern(kind: str, *parts: str) -> str:
    """``kind:part1:part2:*`` with every part matched literally."""
    prefix = kind + ":" + "".join(p.translate(_COMPONENT) + ":" for p in parts)
    return glob_literal(prefix) + "*"


def split(key: str) -> list[str]:
    """Inverse of the join: ``candles:a\\:b:c`` -> ``['candles', 'a:b', 'c']``."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(key)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts
