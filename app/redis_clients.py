"""The asyncio Redis clients Parley's parts open: one Redis on a pool, or a Redis Cluster.

History and the cluster channel layer build their clients here, so both see the same
timeouts and client name whichever way ``REDIS_URL`` points.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, NodesManager, PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.typing import EncodableT, KeyT, ScriptTextT

from app.redis_options import DRIVER, RETRY  # RETRY: single Redis only
from app.redis_url import seed_address

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
# How long a command waits for a pooled connection before it fails as "unavailable": one
# Redis's BlockingConnectionPool, and a cluster node's gate (``_Cluster``).
POOL_TIMEOUT = 5.0

# A cluster client's connections per node (redis-py's own cap), and how many commands it
# runs on one node at once: the rest wait their turn (``_Cluster``). Half the cap, less a
# little: see ``_Cluster`` for what the other half is for.
NODE_CONNECTIONS = 64
NODE_GATE = 30

# What a call to one Redis or a cluster can fail with: each means the store did not answer.
FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


def redis_client(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client for one Redis server, on a pool that waits for a free connection."""
    return aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=POOL_TIMEOUT,
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


class NodeBusy(RedisConnectionError):
    """A cluster node had no connection free for a command within ``POOL_TIMEOUT``."""


class _Cluster(RedisCluster):
    """``RedisCluster`` that waits for a free connection, and fails only with Redis' errors.

    **Waits.** redis-py 8.1's asyncio cluster has no blocking pool: a node whose
    ``max_connections`` are all in use raises MaxConnectionsError at once (``ClusterNode.
    acquire_connection``), which redis-py neither retries nor waits out. Parley sends one
    command per room at once in several places (a presence step, a batch of join reads):
    past 64 rooms on one master in a batch, the batch failed, every time it was tried. So
    every command and every batch on one node takes a turn at that node's gate first
    (``NODE_GATE`` at once; a command that waits ``POOL_TIMEOUT`` for one fails as
    ``NodeBusy``, a ConnectionError, as one Redis's BlockingConnectionPool does). A gate per
    node, not one for the client: a master that hangs (a dead host's connects time out)
    holds its own turns only, and the other masters' rooms go on. The gate is half the pool,
    less a little, because redis-py counts connections it is not using: a slot-map refresh
    marks the connections in use for reconnection, and each stays counted until its
    disconnect (a background task) ends, so for a moment a node can hold a gate's worth of
    those besides a gate's worth in use; a pub/sub connection per node (the channel layer),
    cluster pipelines (their callers send one at a time) and a command redirected by MOVED
    or ASK (it keeps the first node's turn) are outside the gate.

    **Fails only with Redis' errors.** While a slot-map refresh replaces nodes, redis-py
    closes their connections under commands still using them, which then fail with
    AttributeError or (uvloop) RuntimeError. Callers treat Redis errors as "unavailable";
    these are the same thing.
    """

    def __init__(self, *args: Any, node_gate: int = NODE_GATE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_parser = _CommandTable(self.nodes_manager)
        self._node_gate = node_gate
        self._gates: dict[str, asyncio.Semaphore] = {}  # node name -> its turns

    async def take_turn(self, node: ClusterNode) -> asyncio.Semaphore:
        """Wait for a turn on ``node`` (release it on the semaphore returned)."""
        gate = self._gates.get(node.name)
        if gate is None:
            gate = self._gates[node.name] = asyncio.Semaphore(self._node_gate)
        if not gate.locked():
            await gate.acquire()  # free: taken at once, without arming a timer (the common case)
            return gate
        try:
            async with asyncio.timeout(POOL_TIMEOUT):
                await gate.acquire()
        except TimeoutError:
            raise NodeBusy(f"no connection to {node.name} free in {POOL_TIMEOUT:g} s") from None
        return gate

    async def _execute_command(self, target_node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        # Every command of this client reaches a node through here (redis-py runs a
        # multi-node command as one call per node).
        gate = await self.take_turn(target_node)
        try:
            return await super()._execute_command(target_node, *args, **kwargs)
        finally:
            gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # Slot map first. redis-py 8.1 picks a command's node before its retry loop loads the
        # map: with none yet (a new client, or one that dropped its map in a failover) a
        # keyed command goes to an arbitrary node, and every 5th MOVED answer makes redis-py
        # close all the client's connections, commands in flight on them included, which it
        # then sends again. A burst of scripts sent together on a new client (a presence step
        # in many rooms) ran some of them twice: the second run reported no join, and the
        # join was never announced.
        try:
            if self._initialize:
                await self.initialize()
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            raise _torn_down(exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refuses it
        # redis-py's stubs call ClusterPipeline abstract; redis-py instantiates it the same way.
        return _Pipeline(self, transaction)  # type: ignore[abstract]

    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        # (redis-py's stubs give RedisCluster two register_scripts: Script's and AsyncScript's.)
        return _SlotScript(self, script)


class _CommandTable(AsyncCommandsParser):
    """redis-py's command table (``COMMAND``), read once per client, from any node that answers.

    redis-py reads it again on every slot-map refresh, from the map's first master (the first
    in the ``CLUSTER SLOTS`` answer it first learnt the map from), and a refresh that fails to
    read it fails whole: while that master was down, before its replica took over, every
    command of a client that refreshed its map failed, in every room, not just in the dead
    master's. The table is the server version's, not the topology's: one read is enough."""

    def __init__(self, nodes: NodesManager) -> None:
        super().__init__()
        self._nodes = nodes

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if self.commands:
            return
        candidates = [node] if node is not None else []
        candidates += [other for other in self._nodes.nodes_cache.values() if other is not node]
        error: Exception = RedisClusterException("no cluster node to read COMMAND from")
        for candidate in candidates:
            try:
                await super().initialize(candidate)
            except (RedisError, OSError) as exc:  # down, loading, timed out: the next one
                error = exc
            else:
                return
        raise error


class _SlotScript(AsyncScript):
    """A script that a node answers ``NOSCRIPT`` is sent to that node whole (``EVAL``, which
    also caches it there), not loaded on every master first.

    redis-py loads it with ``SCRIPT LOAD`` on all masters, which fails while any one of them
    is down: during a failover, a room on a live master whose script that master had not run
    yet (a first join there, a replica promoted with an empty cache) was refused for the
    dead master's sake."""

    async def __call__(self, keys: Sequence[KeyT] | None = None, args: Iterable[EncodableT] | None = None,
                       client: Any | None = None) -> Any:
        if client is not None:  # a pipeline's: redis-py's way (none of Parley's on a cluster)
            return await super().__call__(keys, args, client)
        named, values = list(keys or ()), list(args or ())
        try:
            return await self.registered_client.evalsha(self.sha, len(named), *named, *values)
        except NoScriptError:
            body = self.script if isinstance(self.script, str) else bytes(self.script).decode()
            return await self.registered_client.eval(body, len(named), *named, *values)


async def by_master(cluster: RedisCluster, keys: Sequence[str]) -> dict[ClusterNode | None, list[int]]:
    """The indices of ``keys`` by the master serving each, from the client's slot map (loaded
    first if it has none); ``None`` holds those it can't place (no slot map, no master)."""
    groups: dict[ClusterNode | None, list[int]] = {}
    try:
        await cluster.initialize()  # a no-op but when the client has no slot map
        for index, key in enumerate(keys):
            groups.setdefault(cluster.get_node_from_key(key), []).append(index)
    except Exception:  # noqa: BLE001  (no slot map: the caller sends each alone, which reports)
        return {None: list(range(len(keys)))}
    return groups


async def on_node(cluster: RedisCluster, node: ClusterNode, commands: Sequence[PipelineCommand]) -> None:
    """``node.execute_pipeline(commands)`` (one connection, the replies in each command's
    ``result``), in its turn at ``node`` when ``cluster`` is one of ``cluster_client``'s."""
    if not isinstance(cluster, _Cluster):
        await node.execute_pipeline(list(commands))
        return
    gate = await cluster.take_turn(node)
    try:
        await node.execute_pipeline(list(commands))
    finally:
        gate.release()


def cluster_client(seeds: tuple[str, ...], max_connections: int = NODE_CONNECTIONS,
                   node_gate: int = NODE_GATE) -> RedisCluster:
    """A client for a Redis Cluster, discovered from any of ``seeds`` (URLs from
    ``app.redis_url``, sharing scheme and credentials).

    redis-py's cluster client follows MOVED and ASK itself and refreshes its slot map when
    a node fails, retrying the command on the slot's new master. Its retries (redis-py 8.1's
    asyncio ``execute_command``) come without a pause, ~0.2 s in all: a read or broadcast
    during a failover fails fast rather than riding it out, and the caller answers as for any
    outage (a join refused 503, a broadcast refilled from history); appends do not use them
    (app/history/replication.py). Commands wait for a free connection of their node, up to
    ``POOL_TIMEOUT`` (``_Cluster``): ``node_gate`` at once per node, below ``max_connections``.
    """
    if not 0 < node_gate < max_connections:
        raise ValueError(f"node_gate must be between 1 and max_connections - 1, not {node_gate}")
    first = urlsplit(seeds[0])
    return _Cluster(
        startup_nodes=[ClusterNode(*seed_address(url)) for url in seeds],
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        ssl=first.scheme == "rediss",
        max_connections=max_connections,
        node_gate=node_gate,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        driver_info=DRIVER,
    )
