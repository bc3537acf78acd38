"""The CHANNEL_LAYERS setting for a configuration: in memory, on Redis, or on a Redis Cluster,
chosen by ``REDIS_URL`` (as ``app.history`` chooses its backend)."""

from __future__ import annotations

from app.config import Config

# Why pub/sub by default (docs/ARCHITECTURE.md has the figures): one PUBLISH per broadcast,
# one SUBSCRIBE per room per process, no per-process inbox capacity to overflow. Its
# at-most-once delivery is covered by history: consumers fill any id gap from it.
_BACKENDS = {
    "pubsub": "app.layers.pubsub.PubSubLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}


def channel_layers(config: Config) -> dict[str, dict[str, object]]:
    """The Django CHANNEL_LAYERS value for this configuration."""
    if not config.redis_enabled:
        return {
            "default": {
                "BACKEND": "app.layers.local.LocalChannelLayer",
                "CONFIG": {"capacity": config.layer_capacity},
            }
        }
    if config.redis_cluster:
        # Sharded pub/sub: the only layer that runs on a cluster (app/layers/cluster.py).
        cluster_config: dict[str, object] = {
            "hosts": list(config.redis_urls), "prefix": "parley", "capacity": config.layer_capacity,
        }
        return {"default": {"BACKEND": "app.layers.cluster.ClusterLayer", "CONFIG": cluster_config}}
    from app.redis_options import DRIVER, RETRY

    layer_config: dict[str, object] = {
        "hosts": [{"address": url, "retry": RETRY, "driver_info": DRIVER} for url in config.redis_urls],
        "prefix": "parley",
        "capacity": config.layer_capacity,
    }
    if config.layer == "core":
        layer_config["expiry"] = 60
    return {"default": {"BACKEND": _BACKENDS[config.layer], "CONFIG": layer_config}}
