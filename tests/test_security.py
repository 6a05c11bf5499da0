"""Redis password, ACL user and TLS; InfluxDB auth; secrets from the environment, never logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub import BackendUnavailable, Hub, HubConfig
from wolfhub.servers import InfluxServer, RedisServer, make_certificates

pytestmark = pytest.mark.anyio
REDIS_PW = "r3dis-pw-Zq9"
ALICE_PW = "al1ce-pw-Xk2"
BOB_PW = "b0b-pw-Lr4"  # a user who may not run INFO
INFLUX_PW = "infl-pw-Wm7'\""
SECRETS = (REDIS_PW, ALICE_PW, BOB_PW, INFLUX_PW)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("secure")
    certs = make_certificates(root / "certs")
    servers = {
        "redis": RedisServer(root / "redis", password=REDIS_PW,
                             acl_users=[f"alice on >{ALICE_PW} ~* &* +@all",
                                        f"bob on >{BOB_PW} ~* &* +@all -info"]),
        "tls": RedisServer(root / "tls", tls=certs),
        "influx": InfluxServer(root / "influx", admin=("admin", INFLUX_PW)),
    }
    for server in servers.values():
        server.start()
    try:
        yield {**servers, "certs": certs}
    finally:
        for server in servers.values():
            server.stop()


def config(secure: dict[str, Any], tmp_path: Path, redis: dict[str, Any],
           env: dict[str, str] | None = None, influx_user: str = "admin") -> HubConfig:
    return HubConfig.from_mapping({
        "redis": {"timeout": 2.0, **redis},
        "influxdb": {"url": secure["influx"].url, "username": influx_user,
                     "bucket": f"sec_{tmp_path.name[-20:].replace('-', '_')}",
                     "batch": {"flush_interval": 0.05}},
        "sqlite": {"path": str(tmp_path / "s.sqlite")},
    }, environ=env if env is not None else {"WOLFHUB_INFLUXDB_PASSWORD": INFLUX_PW})


async def exercise(cfg: HubConfig) -> None:
    async with Hub(cfg) as hub:
        await hub.cache_indicator("e", "p", "EMA", 20, 1.5)
        assert await hub.get_indicator("e", "p", "EMA", 20) == 1.5
        await hub.write_candle("e", "p", 1697529600, 1.0, 2.0, 0.5, 1.5, 3.0)
        await hub.write_trade("e", "p", 1697529600, "buy", 1.0, 1.0, "o1")
        await hub.flush()
        await hub.flush_all()
        assert len(await hub.query_candles("e", "p")) == 1
        assert len(await hub.query_trades("e", "p")) == 1
        stats = await hub.get_stats()
        assert stats["keyspace_hits"] is not None  # Redis answered INFO too


async def test_redis_password_from_the_environment_and_influx_auth(
        secure: dict[str, Any], tmp_path: Path) -> None:
    env = {"WOLFHUB_REDIS_PASSWORD": REDIS_PW, "WOLFHUB_INFLUXDB_PASSWORD": INFLUX_PW}
    await exercise(config(secure, tmp_path, {"port": secure["redis"].port,
                                             "host": "127.0.0.1"}, env))


async def test_redis_acl_user_by_url(secure: dict[str, Any], tmp_path: Path) -> None:
    url = f"redis://alice:{ALICE_PW}@127.0.0.1:{secure['redis'].port}/0"
    cfg = config(secure, tmp_path, {"url": url})
    assert ALICE_PW not in repr(cfg)
    await exercise(cfg)


async def test_a_redis_user_without_info_still_uses_the_cache(
        secure: dict[str, Any], tmp_path: Path) -> None:
    """The hub reads the server's run_id (INFO) on each new connection, to notice a
    restart; a user INFO is refused to is served all the same, without that check."""
    url = f"redis://bob:{BOB_PW}@127.0.0.1:{secure['redis'].port}/0"
    async with Hub(config(secure, tmp_path, {"url": url})) as hub:
        await hub.cache_indicator("e", "p", "EMA", 20, 2.5)
        assert await hub.get_indicator("e", "p", "EMA", 20) == 2.5
        await hub.write_candle("e", "p", 1697529600, 1.0, 2.0, 0.5, 1.5, 3.0)
        await hub.flush()
        assert [c.close for c in await hub.get_candles("e", "p", 10)] == [1.5]
        stats = await hub.get_stats()
        assert stats["actors"]["cache"]["available"] and stats["keyspace_hits"] is None


@pytest.mark.parametrize("style", ["url", "flag"])
async def test_redis_over_tls(secure: dict[str, Any], tmp_path: Path, style: str) -> None:
    ca = str(secure["certs"]["ca"])
    port = secure["tls"].port
    redis = ({"url": f"rediss://127.0.0.1:{port}/0", "ssl_ca_certs": ca} if style == "url"
             else {"host": "127.0.0.1", "port": port, "ssl": True, "ssl_ca_certs": ca})
    await exercise(config(secure, tmp_path, redis))


async def test_wrong_credentials_fail_start_clearly(secure: dict[str, Any],
                                                    tmp_path: Path) -> None:
    bad_redis = config(secure, tmp_path, {"host": "127.0.0.1", "port": secure["redis"].port,
                                          "password": "nope"})
    with pytest.raises(BackendUnavailable, match="redis: credentials refused"):
        await Hub(bad_redis).start()
    bad_influx = config(secure, tmp_path,
                        {"url": f"redis://alice:{ALICE_PW}@127.0.0.1:{secure['redis'].port}"},
                        env={"WOLFHUB_INFLUXDB_PASSWORD": "wrong"})
    with pytest.raises(BackendUnavailable, match="influxdb: credentials refused"):
        await Hub(bad_influx).start()


async def test_logs_never_contain_a_secret(secure: dict[str, Any], tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env = {"WOLFHUB_REDIS_PASSWORD": REDIS_PW, "WOLFHUB_INFLUXDB_PASSWORD": INFLUX_PW}
    cfg = config(secure, tmp_path, {"host": "127.0.0.1", "port": secure["redis"].port}, env)
    logging.getLogger("test").debug("config: %s / %r", cfg, cfg)
    await exercise(cfg)
    errors = []
    for broken in (
        config(secure, tmp_path, {"host": "127.0.0.1", "port": secure["redis"].port,
                                  "password": REDIS_PW + "x"}, env),
        config(secure, tmp_path, {"url": f"redis://alice:{ALICE_PW}@127.0.0.1:"
                                         f"{secure['redis'].port}"},
               env={"WOLFHUB_INFLUXDB_PASSWORD": INFLUX_PW + "x"}),
    ):
        with pytest.raises(BackendUnavailable) as info:
            await Hub(broken).start()
        errors.append(repr(info.value) + str(info.value.__cause__))
    text = caplog.text + "".join(errors)
    assert "Redis connected" in caplog.text  # the seed's connect line is there...
    for secret in SECRETS:
        assert secret not in text  # ...and no secret is
