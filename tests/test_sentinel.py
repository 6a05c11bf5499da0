"""Redis Sentinel: master discovery, failover under load, no lost write, no stale read."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub import Hub, HubConfig
from tests.conftest import eventually, failover_under_load
from wolfhub.servers import LocalServers, RedisServer, SentinelServer, free_port

pytestmark = pytest.mark.anyio
EX, PR = "papertrader", "BANKNIFTY-FUT"


def ask(port: int, *args: str) -> bytes:
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a)}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        reply = s.recv(65536)
        if reply.startswith(b"$") and not reply.startswith(b"$-1"):  # a bulk string: all of it
            head, _, _ = reply.partition(b"\r\n")
            while len(reply) < len(head) + 2 + int(head[1:]) + 2:
                more = s.recv(65536)
                if not more:
                    break
                reply += more
        return reply


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[dict[str, Any]]:
    master = RedisServer(tmp_path / "master")
    master.start()
    replica = RedisServer(tmp_path / "replica",
                          extra=["--replicaof", "127.0.0.1", str(master.port)])
    replica.start()
    watchers = [SentinelServer(tmp_path / f"s{i}", master_port=master.port) for i in range(3)]
    # one more, listed first, whose master is gone: it answers, but with no healthy master
    lost = SentinelServer(tmp_path / "lost", master_port=free_port())
    for w in (*watchers, lost):
        w.start()
    try:
        yield {"master": master, "replica": replica, "sentinels": watchers, "lost": lost}
    finally:
        for server in (lost, *watchers, replica, master):
            server.stop()


def hub_connections(sentinels: dict[str, Any]) -> int:
    """Connections a hub opened to the sentinels that they still see open."""
    return sum(ask(w.port, "CLIENT", "LIST").count(b"name=wolfhub-sentinel ")
               for w in (sentinels["lost"], *sentinels["sentinels"]))


def master_port(sentinel: SentinelServer) -> int:
    reply = ask(sentinel.port, "SENTINEL", "get-master-addr-by-name", "mymaster")
    return int(reply.split(b"\r\n")[4])


async def test_failover_under_load(sentinels: dict[str, Any], config_data: dict[str, Any],
                                   servers: LocalServers) -> None:
    lost = sentinels["lost"].port

    async def gone() -> bool:  # (it reports its master down after 0.8 s)
        return b"s_down" in ask(lost, "SENTINEL", "master", "mymaster")
    await eventually(gone, within=10)
    nodes = [f"127.0.0.1:{w.port}" for w in (sentinels["lost"], *sentinels["sentinels"])]
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
        assert hub_connections(sentinels) > 0  # (the check below sees the hub's connections)

    async def closed() -> bool:  # a connection left open would outlive the hub
        return hub_connections(sentinels) == 0
    await eventually(closed, within=5)
