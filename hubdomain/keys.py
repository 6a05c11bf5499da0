"""The seed's Redis key schema, made injective and glob-safe.

Components are joined by ``:``; a component holding ``:`` or ``\\`` has them
backslash-escaped, so ``("a:b", "c")`` and ``("a", "b:c")`` never share a key.
Names without those characters produce exactly the seed's keys.

With ``tagged=True`` (Redis Cluster) the exchange and product are wrapped in a hash
tag, ``candles:{binance:BTC-USD}``, so every key of one product lives in one slot
(one node, one pipeline, one script call). Braces inside names are then escaped as
``\\(`` and ``\\)``: the only braces in a tagged key are the tag's own, so a name can
neither end the tag early nor leave it empty.
"""

from __future__ import annotations

from functools import lru_cache

_COMPONENT = str.maketrans({"\\": "\\\\", ":": "\\:"})
_TAGGED = str.maketrans({"\\": "\\\\", ":": "\\:", "{": "\\(", "}": "\\)"})
_GLOB = str.maketrans({c: "\\" + c for c in "\\*?[]^-"})

PREFIXES = ("indicator:", "candles:", "position:", "strategy:", "candlestream:",
            "candlefollowers:")


def followers(stream_key: str) -> str:
    """The key naming who follows a product's candle stream (same hash tag: the same
    Redis Cluster slot): a sorted set of hub processes' readers, scored by when their
    presence lapses."""
    return "candlefollowers:" + stream_key.removeprefix("candlestream:")


@lru_cache(maxsize=65_536)  # a bot asks for the same few keys over and over
def _key(kind: str, exchange: str, product: str, rest: tuple[str, ...],
         tagged: bool) -> str:
    if not tagged:
        return kind + ":".join(p.translate(_COMPONENT) for p in (exchange, product, *rest))
    tag = "{" + exchange.translate(_TAGGED) + ":" + product.translate(_TAGGED) + "}"
    return kind + ":".join((tag, *(p.translate(_TAGGED) for p in rest)))


def indicator(exchange: str, product: str, name: str, period: str,
              tagged: bool = False) -> str:
    return _key("indicator:", exchange, product, (name, period), tagged)


def candles(exchange: str, product: str, tagged: bool = False) -> str:
    return _key("candles:", exchange, product, (), tagged)


def position(exchange: str, product: str, tagged: bool = False) -> str:
    return _key("position:", exchange, product, (), tagged)


def strategy(exchange: str, product: str, name: str, tagged: bool = False) -> str:
    return _key("strategy:", exchange, product, (name,), tagged)


def key(kind: str, exchange: str, product: str, *rest: str, tagged: bool = False) -> str:
    """The key of ``kind`` ('candles', 'indicator', ...) for the given parts."""
    return _key(kind + ":", exchange, product, tuple(rest), tagged)


def glob_literal(key_prefix: str) -> str:
    """Escape a literal key prefix for SCAN MATCH (no user text is ever a pattern)."""
    return key_prefix.translate(_GLOB)


def scan_pattern(kind: str, *parts: str, tagged: bool = False) -> str:
    """``kind:part1:part2:*`` with every part matched literally."""
    if not tagged:
        return glob_literal(kind + ":" + "".join(p.translate(_COMPONENT) + ":"
                                                 for p in parts)) + "*"
    if len(parts) < 2:  # the product unknown: match inside the tag
        return glob_literal(kind + ":{" + "".join(p.translate(_TAGGED) + ":"
                                                  for p in parts)) + "*"
    exchange, product, *rest = parts
    return glob_literal(_key(kind + ":", exchange, product, tuple(rest), True) + ":") + "*"


def split(key: str, tagged: bool = False) -> list[str]:
    """Inverse of the join: ``candles:a\\:b:c`` -> ``['candles', 'a:b', 'c']`` (and
    ``candles:{a\\:b:c}`` -> the same, when tagged)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(key)
    for ch in chars:
        if ch == "\\":
            escaped = next(chars, "")
            current.append({"(": "{", ")": "}"}.get(escaped, escaped) if tagged else escaped)
        elif ch == ":":
            parts.append("".join(current))
            current = []
        elif tagged and ch in "{}":
            continue
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts
