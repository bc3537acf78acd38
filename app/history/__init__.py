"""Durable, ordered room history: the record that makes delivery exactly-once for clients.

The backend is chosen by URL, as in encode/broadcaster: no ``REDIS_URL`` keeps history in
process memory; ``redis://`` URLs keep it in Redis Streams, one shard per room;
``redis+cluster://`` seeds keep it on a Redis Cluster, one slot per room.
"""

from __future__ import annotations

from app.config import Config
from app.history.base import Appended, History, HistoryUnavailable, Replay, RoomState

__all__ = ["Appended", "History", "HistoryUnavailable", "Replay", "RoomState", "create_history"]


def create_history(config: Config) -> History:
    """The history backend the configuration names."""
    if config.redis_enabled:
        from app.history.redis import RedisHistory

        return RedisHistory(
            config.redis_urls,
            max_len=config.history_max,
            ttl=config.history_ttl,
            dedupe_ttl=config.dedupe_ttl,
            cluster=config.redis_cluster,
            min_replicas=config.redis_min_replicas,
            wait_timeout=config.redis_wait_timeout,
        )
    from app.history.memory import MemoryHistory

    return MemoryHistory(
        max_len=config.history_max, ttl=config.history_ttl, dedupe_ttl=config.dedupe_ttl,
        max_bytes=config.history_max_bytes,
    )
