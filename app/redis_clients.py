"""The asyncio Redis clients Parley's parts open: one Redis on a pool, or a Redis Cluster.

History and the cluster channel layer build their clients here, so both see the same
timeouts, retry policy and client name whichever way ``REDIS_URL`` points.
"""

from __future__ import annotations

from copy import copy
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from app.redis_options import DRIVER, RETRY
from app.redis_url import seed_address

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0


def redis_client(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client for one Redis server, on a pool that waits for a free connection."""
    return aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5,
            socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
            retry=RETRY, driver_info=DRIVER,
        )
    )


class _Cluster(RedisCluster):
    """``RedisCluster`` whose commands fail only with Redis' own errors.

    While a slot-map refresh replaces nodes, redis-py closes their connections under
    commands still using them, which then fail with AttributeError or (uvloop)
    RuntimeError. Callers treat Redis errors as "unavailable"; these are the same thing.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from exc


def cluster_client(seeds: tuple[str, ...], max_connections: int = 64) -> RedisCluster:
    """A client for a Redis Cluster, discovered from any of ``seeds`` (URLs from
    ``app.redis_url``, sharing scheme and credentials).

    redis-py's cluster client follows MOVED and ASK itself and refreshes its slot map when
    a node fails, retrying the command on the slot's new master.
    """
    first = urlsplit(seeds[0])
    return _Cluster(
        startup_nodes=[ClusterNode(*seed_address(url)) for url in seeds],
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        ssl=first.scheme == "rediss",
        max_connections=max_connections,
        # Few, short retries (each after a slot-map refresh): during a failover a command
        # fails fast as `unavailable` rather than hanging on the dead master.
        retry=copy(RETRY),
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        driver_info=DRIVER,
    )
