"""HubConfig: the seed's YAML, clear errors naming the key, secrets from the environment."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hub import HubConfig, ValidationError

SEED_YAML = """
redis:
  enabled: true
  host: 'localhost'
  port: 6379
  db: 0
  password: null  # Set if needed

influxdb:
  enabled: true
  url: 'http://localhost:8086'
  token: 'YOUR_INFLUXDB_TOKEN_HERE'
  org: 'wolfinch'
  bucket: 'trading'
"""


def test_the_seeds_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "cache_db.yml"
    path.write_text(SEED_YAML)
    cfg = HubConfig.load(path)
    assert cfg.redis.port == 6379 and cfg.influxdb.bucket == "trading"
    assert cfg.redis.ttl.indicators == 300 and cfg.redis.ttl.candles == 600
    assert cfg.influxdb.batch.size == 5000
    assert cfg.performance.redis_hot_data_window == 1000
    assert cfg.sqlite.path == "data/wolfhub.sqlite"


def test_the_shipped_config_loads() -> None:
    cfg = HubConfig.load(Path(__file__).parent.parent / "config" / "cache_db.yml")
    assert cfg.influxdb.retention.trades == "365d"
    assert cfg.influxdb.batch.flush_interval == 1


@pytest.mark.parametrize("data,key", [
    ({"redis": {"prot": 1}}, "redis.prot"),
    ({"redis": {"ttl": {"candle": 3}}}, "redis.ttl.candle"),
    ({"redis": {"port": "six"}}, "redis.port"),
    ({"redis": {"ttl": {"indicators": -1}}}, "redis.ttl.indicators"),
    ({"influxdb": {"batch": {"size": 0}}}, "influxdb.batch.size"),
    ({"influxdb": {"url": "localhost:8086"}}, "influxdb.url"),
    ({"influxdb": {"retention": {"candles": "90 days"}}}, "influxdb.retention.candles"),
    ({"sqlite": {"file": "x"}}, "sqlite.file"),
    ({"redis": {"cluster": {"nodes": ["10.0.0.1"]}}}, "redis.cluster.nodes"),
    ({"redis": {"cluster": {"nodes": []}}}, "redis.cluster.nodes"),
    ({"redis": {"sentinel": {"nodes": ["h:0"]}}}, "redis.sentinel.nodes"),
    ({"redis": {"cluster": {"nodes": ["h:1"]}, "sentinel": {"nodes": ["h:2"]}}}, "redis"),
    ({"redis": {"cluster": {"nodes": ["h:1"]}, "db": 3}}, "redis"),
    ({"extra": {}}, "extra"),
])
def test_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError) as info:
        HubConfig.from_mapping(data, environ={})
    assert info.value.argument == key


def test_bad_yaml_and_non_mapping(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("redis: [unclosed")
    with pytest.raises(ValidationError, match="YAML"):
        HubConfig.load(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ValidationError, match="mapping"):
        HubConfig.load(path)


def test_secrets_from_the_environment_never_show(caplog: pytest.LogCaptureFixture) -> None:
    env = {"WOLFHUB_REDIS_PASSWORD": "r-s3cret", "WOLFHUB_INFLUXDB_TOKEN": "t-s3cret",
           "WOLFHUB_INFLUXDB_PASSWORD": "i-s3cret"}
    cfg = HubConfig.from_mapping({"redis": {"host": "h"}}, environ=env)
    assert cfg.redis.password is not None
    assert cfg.redis.password.get_secret_value() == "r-s3cret"
    assert cfg.influxdb.token is not None
    assert cfg.influxdb.token.get_secret_value() == "t-s3cret"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("config %s %r", cfg, cfg)
    text = caplog.text + repr(cfg) + str(cfg)
    assert "s3cret" not in text
    # a value in the file wins over the environment
    cfg = HubConfig.from_mapping({"redis": {"password": "file"}}, environ=env)
    assert cfg.redis.password is not None
    assert cfg.redis.password.get_secret_value() == "file"
