"""The InfluxDB backend against the v1-compatible API of InfluxDB 2.x / 3.x.

No 2.x or 3.x server is installable on this project's machines (Debian ships influxd
1.6.7), so these are unit tests of the one InfluxDB module against a small aiohttp
server that answers the way InfluxDB 2.x documents its ``/write`` and ``/query``
(token auth, errors as ``{"code", "message"}``, JSON only, no CREATE DATABASE). They
check what the hub sends and how it reads those answers; the integration tests run
against the real influxd 1.6.7.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from actors.backends.influx import InfluxClient, QueryFailed
from hub import BackendUnavailable, Hub, HubConfig
from wolfhub.servers import free_port

pytestmark = pytest.mark.anyio
TOKEN = "s3cr3t-t0ken-for-tests"


class Emulator:
    """InfluxDB 2.x's v1 endpoints, as documented: token auth, JSON answers."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.port = free_port()

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Token {TOKEN}"

    async def write(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"code": "unauthorized",
                                      "message": "unauthorized access"}, status=401)
        self.writes.append({"params": dict(request.query), "body": await request.read(),
                            "auth": request.headers.get("Authorization")})
        return web.Response(status=204)

    async def query(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.queries.append({"params": dict(request.query), "form": form,
                             "accept": request.headers.get("Accept")})
        if not self.authorized(request):
            return web.json_response({"code": "unauthorized",
                                      "message": "unauthorized access"}, status=401)
        text = str(form.get("q", ""))
        if text.upper().startswith("CREATE"):
            return web.json_response({"code": "invalid",
                                      "message": "not supported: CREATE DATABASE"},
                                     status=400)
        if text.upper().startswith("SELECT") and "nonsense" in text:
            return web.json_response({"code": "invalid", "message": "error parsing query"},
                                     status=400)
        # a v1 answer with no series (JSON: 2.x does not speak MessagePack)
        return web.Response(body=orjson.dumps({"results": [{"statement_id": 0}]}),
                            content_type="application/json")


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = Emulator()
    app = web.Application()
    app.router.add_post("/write", emu.write)
    app.router.add_post("/query", emu.query)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", emu.port)
    await site.start()
    try:
        yield emu
    finally:
        await runner.cleanup()


@pytest.fixture
def anyio_backend() -> str:  # aiohttp's test server: asyncio is enough here
    return "asyncio"


def config(emu: Emulator, tmp_path: Path, token: str = TOKEN) -> HubConfig:
    return HubConfig.from_mapping({
        "redis": {"enabled": False},
        "influxdb": {"url": f"http://127.0.0.1:{emu.port}", "bucket": "trading",
                     "org": "desk", "token": token,
                     "batch": {"size": 100, "flush_interval": 0.05}},
        "sqlite": {"path": str(tmp_path / "hub.sqlite")},
    }, environ={})


async def test_writes_carry_the_token_and_map_the_bucket(
        emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with Hub(config(emulator, tmp_path), handle_sigterm=False) as hub:
        await hub.write_candle("binance", "BTC-USD", 1_700_000_000, 1, 2, 0.5, 1.5, 10)
        await hub.write_trade("binance", "BTC-USD", 1_700_000_000, "buy", 100.0, 1.0, "o1")
        await hub.flush()
    body = b"".join(w["body"] for w in emulator.writes)
    assert b"candle,exchange=binance,product=BTC-USD " in body
    assert b"trade,exchange=binance,order_id=o1,product=BTC-USD,side=buy price=100.0" in body
    for write in emulator.writes:
        assert write["auth"] == f"Token {TOKEN}"
        assert write["params"]["db"] == "trading"  # bucket = the v1 database name
        assert "u" not in write["params"] and "p" not in write["params"]
        assert write["params"].get("precision") in (None, "ns", "n")
    # CREATE DATABASE is refused by 2.x: logged, then the mapping is assumed to exist
    assert any("assuming it exists" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


async def test_a_refused_token_stops_the_start(emulator: Emulator, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="credentials refused"):
        async with Hub(config(emulator, tmp_path, token="wrong"), handle_sigterm=False):
            pass
    assert not emulator.writes


async def test_errors_in_the_v2_shape_are_errors(emulator: Emulator, tmp_path: Path) -> None:
    client = InfluxClient(config(emulator, tmp_path).influxdb)
    await client.connect()
    try:
        assert await client.query('SELECT * FROM "candle"') == [{"statement_id": 0}]
        with pytest.raises(QueryFailed, match="error parsing query"):
            await client.query("SELECT nonsense")
    finally:
        await client.close()
    assert emulator.queries[-1]["params"].get("db", emulator.queries[-1]["form"].get("db")) == (
        "trading")
