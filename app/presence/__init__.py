"""Who is in a room and who is typing, steady across reconnects and deploys.

The store is chosen as history's is: no ``REDIS_URL`` keeps presence in process memory;
``redis://`` URLs keep it in Redis with expiring heartbeats, shared by every process.
"""

from __future__ import annotations

from typing import Any

from app.config import Config
from app.presence.base import PresenceStore, PresenceUnavailable
from app.presence.rules import heartbeat_interval
from app.presence.service import Presence, Snapshot

__all__ = ["Presence", "PresenceStore", "PresenceUnavailable", "Snapshot", "create_presence"]


def create_presence(config: Config, layer: Any) -> Presence | None:
    """The process's presence for this configuration (None when ``CHAT_PRESENCE`` is off)."""
    if not config.presence:
        return None
    grace = config.presence_grace
    store: PresenceStore
    if config.redis_enabled:
        from app.presence.redis import RedisPresence
        from app.redis_clients import cluster_client, redis_client

        client = (cluster_client(config.redis_urls) if config.redis_cluster
                  else redis_client(config.redis_urls[0], max_connections=16))
        # A hold outlives the next heartbeat by the whole grace: a process that dies leaves
        # its users present for at least the grace, at most a heartbeat more.
        store = RedisPresence(client, grace=grace, hold=grace + heartbeat_interval(grace),
                              cluster=config.redis_cluster)
    else:
        from app.presence.memory import MemoryPresence

        store = MemoryPresence(grace=grace)
    return Presence(store, layer, grace)
