"""REDIS_URL: one Redis, a list, or a Redis Cluster by seeds; and the settings that follow."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load
from app.layers import channel_layers
from app.redis_url import RedisTarget, parse_redis_url, seed_address


def test_cluster_seeds_become_urls_sharing_scheme_and_credentials() -> None:
    assert parse_redis_url("redis+cluster://10.0.0.1:7000, 10.0.0.2:7001") == RedisTarget(
        urls=("redis://10.0.0.1:7000", "redis://10.0.0.2:7001"), cluster=True
    )
    target = parse_redis_url("rediss+cluster://app:s%40cret@db1:6380,db2:6380/0")
    assert target.urls == ("rediss://app:s%40cret@db1:6380", "rediss://app:s%40cret@db2:6380")
    assert seed_address(target.urls[1]) == ("db2", 6380)
    assert parse_redis_url("redis+cluster://[::1]:7000").urls == ("redis://[::1]:7000",)


def test_a_plain_url_stays_as_given() -> None:
    assert parse_redis_url("redis://a:1/0") == RedisTarget(urls=("redis://a:1/0",))
    assert parse_redis_url(" rediss://u:p@b:2/3 ") == RedisTarget(urls=("rediss://u:p@b:2/3",))


@pytest.mark.parametrize("value, complaint", [
    ("redis+cluster://", "at least one host:port"),
    ("redis+cluster://db1", "host:port"),
    ("redis+cluster://db1:notaport", "host:port"),
    ("redis+cluster://db1:7000/3", "only database 0"),
    ("redis+cluster://db1:7000?ssl=true", "no query options"),
    ("redis://a:1,redis+cluster://b:2", "alone and first"),
    ("redis://a:1/0,redis://b:2/0", "run a Redis Cluster"),
    ("http://a:1", "expected redis://"),
    ("localhost:6379", "expected redis://"),
])
def test_bad_values_are_refused_with_the_reason(value: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_redis_url(value)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load({"REDIS_URL": value})


def test_a_cluster_waits_for_one_replica_by_default_a_single_redis_for_none() -> None:
    cluster = load({"REDIS_URL": "redis+cluster://a:7000"})
    assert (cluster.redis_cluster, cluster.redis_min_replicas) == (True, 1)
    single = load({"REDIS_URL": "redis://a:1/0"})
    assert (single.redis_cluster, single.redis_min_replicas) == (False, 0)
    told = load({"REDIS_URL": "redis+cluster://a:7000", "CHAT_REDIS_MIN_REPLICAS": "2",
                 "CHAT_REDIS_WAIT_TIMEOUT": "0.25"})
    assert (told.redis_min_replicas, told.redis_wait_timeout) == (2, 0.25)


@pytest.mark.parametrize("env, complaint", [
    ({"CHAT_REDIS_MIN_REPLICAS": "-1"}, "CHAT_REDIS_MIN_REPLICAS"),
    ({"CHAT_REDIS_WAIT_TIMEOUT": "0"}, "CHAT_REDIS_WAIT_TIMEOUT"),
    ({"CHAT_REDIS_WAIT_TIMEOUT": "9"}, "CHAT_REDIS_WAIT_TIMEOUT"),
    ({"REDIS_URL": "redis+cluster://a:7000", "CHAT_LAYER": "core"}, "cannot run on a Redis Cluster"),
])
def test_bad_replication_settings_are_refused(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load(env)


def test_a_cluster_url_chooses_the_cluster_layer() -> None:
    layer = channel_layers(load({"REDIS_URL": "redis+cluster://a:7000,b:7001"}))["default"]
    assert layer["BACKEND"] == "app.layers.cluster.ClusterLayer"
    assert layer["CONFIG"]["hosts"] == ["redis://a:7000", "redis://b:7001"]  # type: ignore[index]
