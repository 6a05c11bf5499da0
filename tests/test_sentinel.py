"""Redis Sentinel: master discovery, failover under load, no lost write, no stale read."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
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


FRESH_PROCESS = """
import asyncio, json, sys
from hub import Hub, HubConfig

async def main():
    async with Hub(HubConfig.from_mapping(json.loads(sys.argv[1]), environ={}),
                   handle_sigterm=False) as hub:
        await hub.cache_indicator("papertrader", "BANKNIFTY-FUT", "RSI", 14, 61.5)
        await hub.write_candle("papertrader", "BANKNIFTY-FUT", 1697529600, 1.0, 2.0,
                               0.5, 1.5, 10.0)
        print(json.dumps([await hub.get_indicator("papertrader", "BANKNIFTY-FUT", "RSI", 14),
                          len(await hub.get_candles("papertrader", "BANKNIFTY-FUT")),
                          (await hub.get_stats())["actors"]["cache"]["available"]]))

asyncio.run(main())
"""


async def test_a_process_started_after_a_failover_finds_the_new_master(
        sentinels: dict[str, Any], config_data: dict[str, Any], servers: LocalServers) -> None:
    """The bot restarted after Sentinel promoted the replica, with the old master back
    (as Redis comes back under a supervisor, still a master until Sentinel turns it into
    a replica): the new process asks Sentinel, writes and reads the new master."""
    lost = sentinels["lost"].port

    async def gone() -> bool:
        return b"s_down" in ask(lost, "SENTINEL", "master", "mymaster")
    await eventually(gone, within=10)
    old, new = sentinels["master"], sentinels["replica"]
    old.kill()

    async def promoted() -> bool:
        return all(master_port(w) == new.port for w in sentinels["sentinels"])
    await eventually(promoted, within=30)
    old.start()  # on its old port, a master again until Sentinel says otherwise
    nodes = [f"127.0.0.1:{w.port}" for w in (sentinels["lost"], *sentinels["sentinels"])]
    config_data["redis"] = {"sentinel": {"nodes": nodes, "service_name": "mymaster"},
                            "timeout": 0.5}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", FRESH_PROCESS, json.dumps(config_data)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [61.5, 1, True]
    key = f"indicator:{EX}:{PR}:RSI:14"
    assert ask(new.port, "GET", key) == b"$4\r\n61.5\r\n"  # on the new master
    assert ask(old.port, "GET", key) in (b"$-1\r\n", b"$4\r\n61.5\r\n")  # (or replicated)
    assert b"role:master" in ask(new.port, "INFO", "replication")
