"""Prometheus exposition: off by default, one config key turns it on."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest

from hub import BackendUnavailable, Hub, HubConfig
from wolfhub.servers import free_port

pytestmark = pytest.mark.anyio


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def test_metrics_are_served_and_follow_the_hub(config_data: dict[str, Any]) -> None:
    port = free_port()
    config_data["metrics"] = {"port": port}
    async with Hub(HubConfig.from_mapping(config_data, environ={})) as hub:
        for i in range(50):
            await hub.write_candle("px", "P", 1697529600 + 60 * i, 1.0, 2.0, 0.5, 1.5, 1.0)
        await hub.get_indicator("px", "P", "EMA", 20)
        await hub.flush()
        text = await anyio_to_thread(scrape, port)
        # the 50 candles and the 14 rollups they closed (10 of 5m, 3 of 15m, 1 of 30m)
        assert value(text, "wolfhub_writer_points_written_total") == 64
        assert value(text, 'wolfhub_job_runs_total{job="prune"}') >= 1
        assert value(text, 'wolfhub_mailbox_depth{actor="writer"}') == 0
        assert value(text, "wolfhub_healthy") == 1
        assert value(text, 'wolfhub_call_seconds_count{actor="cache"}') >= 1
        assert "wolfhub_near_cache_hits_total" in text
        assert value(text, "wolfhub_cache_available") == 1
        assert value(text, "wolfhub_cache_unavailable_slots") == 0
        assert value(text, 'wolfhub_actor_down{actor="writer"}') == 0
        assert value(text, "wolfhub_writer_spool_blocked") == 0
        assert value(text, "wolfhub_cache_stale_keys") == 0
    with pytest.raises(OSError):  # closed with the hub
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_off_by_default_and_a_taken_port_fails_start(config: HubConfig,
                                                           config_data: dict[str, Any]) -> None:
    assert config.metrics.port is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config_data["metrics"] = {"port": taken.getsockname()[1]}
        with pytest.raises(BackendUnavailable, match="metrics"):
            await Hub(HubConfig.from_mapping(config_data, environ={})).start()


async def anyio_to_thread(fn: Any, *args: Any) -> Any:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, *args)
