"""Several hub processes on one Redis (or one Redis Cluster) and one InfluxDB: coherent
reads, idempotent writes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub import Hub, HubConfig
from tests.conftest import redis_command
from wolfhub.servers import LocalServers, RedisClusterServers

pytestmark = pytest.mark.anyio
CHILD = Path(__file__).with_name("_child.py")
PEERS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("peers-cluster"), replicas=0)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.mark.parametrize("redis_mode", ["one server", "cluster"])
async def test_three_hub_processes(config_data: dict[str, Any], servers: LocalServers,
                                   tmp_path: Path, redis_mode: str,
                                   request: pytest.FixtureRequest) -> None:
    foreign_key = "indicator:px:SHARED:EMA:0"

    def foreign_write(value: str) -> None:
        redis_command(servers, "SET", foreign_key, value)

    if redis_mode == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("cluster")
        for node in cluster.nodes:
            cluster.ask(node, "FLUSHALL")
        config_data = {**config_data, "redis": {"cluster": {"nodes": cluster.seeds[:1]}}}
        foreign_key = "indicator:{px:SHARED}:EMA:0"

        def foreign_write(value: str) -> None:
            cluster.ask(cluster.master_of(foreign_key), "SET", foreign_key, value)
    peers = []
    try:
        for i in range(PEERS):
            own = {**config_data, "sqlite": {"path": str(tmp_path / f"peer{i}.sqlite")}}
            peers.append(subprocess.Popen(  # noqa: ASYNC220 - driven with blocking reads
                [sys.executable, str(CHILD), "peer", json.dumps(own), str(i), str(PEERS)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in peers:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

        def ask_all(expected: list[float]) -> list[list[float]]:
            for p in peers:
                assert p.stdin is not None
                p.stdin.write("read " + json.dumps(expected) + "\n")
                p.stdin.flush()
            return [json.loads(p.stdout.readline()) for p in peers]  # type: ignore[union-attr]

        # each process sees the values the others wrote
        everyone = [float(i) for i in range(PEERS)]
        assert ask_all(everyone) == [everyone] * PEERS
        # another process (a plain client) overwrites one: every hub's near cache follows
        foreign_write("99.0")
        changed = [99.0, *everyone[1:]]
        assert ask_all(changed) == [changed] * PEERS
    finally:
        for p in peers:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(30)
            if p.stdout is not None:
                p.stdout.close()
    # the same 100 candles, written by three processes, are stored once
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        await hub.flush_all()
        got = await hub.query_candles("px", "SHARED", limit=1000)
        assert len(got) == 100 and [c.volume for c in got] == [float(i) for i in range(100)]
