"""wolfinch-hub benchmark harness: ``python -m bench [--quick]``.

Starts its own redis-server and influxd, then measures the hub side by side with
raw redis.asyncio, raw aioinflux, the seed's synchronous per-call way and stdlib
SQLite (the original Wolfinch store). Prints Markdown, writes JSON and a PNG chart.
"""
