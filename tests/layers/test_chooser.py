"""Which channel layer a configuration gets."""

import pytest

from app.config import load
from app.layers import channel_layers

pytestmark = pytest.mark.unit


def test_no_redis_means_the_local_layer_with_a_per_socket_capacity() -> None:
    layer = channel_layers(load({"CHAT_LAYER_CAPACITY": "77"}))["default"]
    assert layer == {"BACKEND": "app.layers.local.LocalChannelLayer", "CONFIG": {"capacity": 77}}


def test_redis_means_the_tuned_pubsub_layer() -> None:
    layer = channel_layers(load({"REDIS_URL": "redis://a:1/0"}))["default"]
    assert layer["BACKEND"] == "app.layers.pubsub.PubSubLayer"
    assert [host["address"] for host in layer["CONFIG"]["hosts"]] == ["redis://a:1/0"]
    assert all(host["retry"] is not None for host in layer["CONFIG"]["hosts"])
    assert layer["CONFIG"]["capacity"] == 500


def test_core_layer_is_selectable_for_comparison() -> None:
    layer = channel_layers(load({"REDIS_URL": "redis://a:1/0", "CHAT_LAYER": "core"}))["default"]
    assert layer["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert layer["CONFIG"]["expiry"] == 60
