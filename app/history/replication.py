"""Writes that count as done only once replicas have them too: the write, then ``WAIT``.

Redis replicates asynchronously: a master that acknowledges a write and dies before its
replica got it loses the write in the failover (Centrifugo issue #664). ``WAIT n ms`` blocks
until ``n`` replicas have every write made *on the same connection* before it, so the write
and its ``WAIT`` go out together on one connection: a pipeline on a single Redis, one
connection to the slot's master on a cluster. Too few replicas in time is ``unavailable``:
the sender is not acked and resends (with the same client_id, which dedupe makes safe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.history.base import HistoryUnavailable
from app.redis_clients import on_node

Command = tuple[Any, ...]

# A slot's master moved or is being replaced: refresh the slot map and try again, a few
# times (the commands are idempotent: appends carry a dedupe key).
_REROUTE = (MovedError, TryAgainError, ClusterDownError, SlotNotCoveredError,
            RedisConnectionError, RedisTimeoutError, OSError)
ATTEMPTS = 3
BACKOFF = 0.05


class ReplicationShortfall(HistoryUnavailable):
    """The write reached fewer replicas than required in time: not acknowledged."""


def require_replicas(acked: Any, wanted: int, timeout_ms: int) -> None:
    """Raise ReplicationShortfall unless ``WAIT``'s reply ``acked`` reaches ``wanted``."""
    if int(acked) < wanted:
        raise ReplicationShortfall(f"on {int(acked)} of {wanted} replicas after {timeout_ms} ms")


def wait_command(replicas: int, timeout_ms: int) -> Command:
    return ("WAIT", replicas, timeout_ms)


async def script_then_wait(client: aioredis.Redis, script: AsyncScript, keys: Sequence[str],
                           args: Sequence[Any], replicas: int, timeout_ms: int) -> Any:
    """Run ``script`` and ``WAIT`` on one connection of a single Redis; the script's reply."""
    async with client.pipeline(transaction=False) as pipe:
        await script(keys=list(keys), args=list(args), client=pipe)
        pipe.execute_command(*wait_command(replicas, timeout_ms))
        result, acked = await pipe.execute()
    require_replicas(acked, replicas, timeout_ms)
    return result


async def commands_then_wait(client: aioredis.Redis, commands: Sequence[Command], replicas: int,
                             timeout_ms: int) -> list[Any]:
    """Run ``commands`` and ``WAIT`` on one connection of a single Redis; their replies."""
    async with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute_command(*wait_command(replicas, timeout_ms))
        *results, acked = await pipe.execute()
    require_replicas(acked, replicas, timeout_ms)
    return results


async def on_slot_master(cluster: RedisCluster, key: str, commands: Sequence[Command]) -> list[Any]:
    """Run ``commands`` in order on one connection to the master of ``key``'s slot; their
    replies. Follows MOVED and ASK and refreshes the slot map when the master is gone;
    raises the last error when the slot has no reachable master after a few attempts.

    redis-py's cluster pipeline would send a key-less ``WAIT`` to every master, each on a
    connection of its own: useless for ``WAIT``, whence this.
    """
    await cluster.initialize()
    ask_node: Any = None
    error: Exception = HistoryUnavailable("no attempt made")
    for attempt in range(ATTEMPTS):
        if attempt and ask_node is None:
            await asyncio.sleep(BACKOFF * attempt)
            await _refresh(cluster)
        batch = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
        node = None
        try:
            if ask_node is not None:
                # Mid-migration: the batch goes to the importing node. ASKING lets only the
                # next command in, so each of the batch's gets one of its own.
                node, ask_node = ask_node, None
                await on_node(cluster, node, [c for command in batch
                                              for c in (PipelineCommand(-1, "ASKING"), command)])
            else:
                node = cluster.get_node_from_key(key)
                if node is None:
                    raise SlotNotCoveredError(f"no master for {key!r}")
                await on_node(cluster, node, batch)
        except Exception as exc:  # noqa: BLE001  (bounded; the last one is raised below)
            # Besides connection errors: while a slot map refresh replaces nodes, redis-py
            # tears connections down under their users (AttributeError on a writer that is
            # gone, uvloop's RuntimeError on a closed transport). The batch is idempotent
            # (dedupe key), so any failure to send it is retried on a fresh connection.
            error = exc
            if node is not None:
                node.update_active_connections_for_reconnect()
                await node.disconnect_free_connections()
            continue
        failure = next((c.result for c in batch if isinstance(c.result, Exception)), None)
        if failure is None:
            return [c.result for c in batch]
        if isinstance(failure, AskError) and not isinstance(failure, MovedError):  # Moved is-an Ask
            ask_node = cluster.get_node(host=failure.host, port=failure.port)
        elif not isinstance(failure, _REROUTE):
            raise failure
        error = failure
    if not isinstance(error, (RedisError, OSError)):  # the teardown races (above), as Redis would
        raise RedisConnectionError(f"{type(error).__name__}: {error}") from error
    raise error


async def on_slot_master_then_wait(cluster: RedisCluster, key: str, commands: Sequence[Command],
                                   replicas: int, timeout_ms: int) -> list[Any]:
    """``on_slot_master`` for ``commands`` followed by ``WAIT`` when ``replicas`` > 0; the
    commands' replies, once that many replicas have them (else ReplicationShortfall)."""
    tail = [wait_command(replicas, timeout_ms)] if replicas else []
    replies = await on_slot_master(cluster, key, [*commands, *tail])
    if replicas:
        require_replicas(replies.pop(), replicas, timeout_ms)
    return replies


async def _refresh(cluster: RedisCluster) -> None:
    try:
        await cluster.nodes_manager.initialize()
    except Exception:  # noqa: BLE001  (the next attempt reports what is wrong)
        pass
