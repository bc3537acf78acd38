"""The asyncio Redis clients Parley's parts open: one Redis on a pool, or a Redis Cluster.

History and the cluster channel layer build their clients here, so both see the same
timeouts and client name whichever way ``REDIS_URL`` points.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from app.redis_options import DRIVER, RETRY  # RETRY: single Redis only
from app.redis_url import seed_address

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0

# What a call to one Redis or a cluster can fail with: each means the store did not answer.
FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


def redis_client(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client for one Redis server, on a pool that waits for a free connection."""
    return aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5,
            socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
            retry=RETRY, driver_info=DRIVER,
        )
    )


def _torn_down(exc: Exception) -> RedisConnectionError:
    return RedisConnectionError(f"connection torn down mid-command: {type(exc).__name__}: {exc}")


class _Pipeline(ClusterPipeline):
    """``ClusterPipeline`` that fails only with Redis' own errors (see ``_Cluster``)."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except (AttributeError, RuntimeError) as exc:
            raise _torn_down(exc) from exc


class _Cluster(RedisCluster):
    """``RedisCluster`` whose commands and pipelines fail only with Redis' own errors.

    While a slot-map refresh replaces nodes, redis-py closes their connections under
    commands still using them, which then fail with AttributeError or (uvloop)
    RuntimeError. Callers treat Redis errors as "unavailable"; these are the same thing.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            raise _torn_down(exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refuses it
        # redis-py's stubs call ClusterPipeline abstract; redis-py instantiates it the same way.
        return _Pipeline(self, transaction)  # type: ignore[abstract]


def cluster_client(seeds: tuple[str, ...], max_connections: int = 64) -> RedisCluster:
    """A client for a Redis Cluster, discovered from any of ``seeds`` (URLs from
    ``app.redis_url``, sharing scheme and credentials).

    redis-py's cluster client follows MOVED and ASK itself and refreshes its slot map when
    a node fails, retrying the command on the slot's new master. Its retries (redis-py 8.1's
    asyncio ``execute_command``) come without a pause, ~0.2 s in all: a read or broadcast
    during a failover fails fast rather than riding it out, and the caller answers as for any
    outage (a join refused 503, a broadcast refilled from history); appends do not use them
    (app/history/replication.py).
    """
    first = urlsplit(seeds[0])
    return _Cluster(
        startup_nodes=[ClusterNode(*seed_address(url)) for url in seeds],
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        ssl=first.scheme == "rediss",
        max_connections=max_connections,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        driver_info=DRIVER,
    )
