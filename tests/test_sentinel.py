"""Redis Sentinel: master discovery, failover under load, no lost write, no stale read."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub import Hub, HubConfig
from tests.conftest import eventually, failover_under_load
from wolfhub.servers import LocalServers, RedisServer, SentinelServer

pytestmark = pytest.mark.anyio
EX, PR = "papertrader", "BANKNIFTY-FUT"


def ask(port: int, *args: str) -> bytes:
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a)}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        return s.recv(4096)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[dict[str, Any]]:
    master = RedisServer(tmp_path / "master")
    master.start()
    replica = RedisServer(tmp_path / "replica",
                          extra=["--replicaof", "127.0.0.1", str(master.port)])
    replica.start()
    watchers = [SentinelServer(tmp_path / f"s{i}", master_port=master.port) for i in range(3)]
    for w in watchers:
        w.start()
    try:
        yield {"master": master, "replica": replica, "sentinels": watchers}
    finally:
        for server in (*watchers, replica, master):
            server.stop()


def master_port(sentinel: SentinelServer) -> int:
    reply = ask(sentinel.port, "SENTINEL", "get-master-addr-by-name", "mymaster")
    return int(reply.split(b"\r\n")[4])


async def test_failover_under_load(sentinels: dict[str, Any], config_data: dict[str, Any],
                                   servers: LocalServers) -> None:
    nodes = [f"127.0.0.1:{w.port}" for w in sentinels["sentinels"]]
    config_data["redis"] = {"sentinel": {"nodes": nodes, "service_name": "mymaster"},
                            "timeout": 0.5}
    new_port = sentinels["replica"].port

    async def promoted() -> bool:
        return master_port(sentinels["sentinels"][0]) == new_port
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await failover_under_load(hub, EX, PR, sentinels["master"].kill, promoted)

        async def landed() -> bool:  # read back in-process at once, the SET follows
            return ask(new_port, "GET", f"indicator:{EX}:{PR}:EMA:20") == b"$5\r\n500.0\r\n"
        await eventually(landed, within=5)
