"""The hub's engine: actors that own Redis, InfluxDB and SQLite I/O.

Built on :mod:`hubdomain` alone; the facade (:mod:`hub`) drives it. Not a public API:
use :mod:`hub`.
"""
