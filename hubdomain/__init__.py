"""The hub's domain, the ground floor: records, errors, validation, the Redis key
schema, line protocol, InfluxQL, field types and the config schema.

Pure code that imports nothing else of this project; ``actors`` (the engine) and
``hub`` (the facade) build on it. Not a public API: use :mod:`hub`.
"""
