"""The hub's engine: actors that own Redis, InfluxDB and SQLite I/O.

Not a public API: use :mod:`hub`. The domain modules (records, errors, codecs)
live in ``hub``; importing it first lets either package be imported first.
"""

from __future__ import annotations

import hub as _hub  # noqa: F401  (initialises the domain modules before the actors)
