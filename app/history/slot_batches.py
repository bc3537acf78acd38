"""Appends of one event-loop turn on a cluster: one pipeline per master, one ``WAIT`` each.

When every room gets a message at once, each append alone takes a connection of its master
for one script and its ``WAIT``; a burst of a hundred opened dozens of new connections in the
middle of the broadcast (measured at 18,000 sockets over 600 rooms). Appends made in one turn
go out together instead: each master gets its share on one connection, followed by a single
``WAIT``, which covers every write made before it on that connection.

Only the common case is batched. A command answered with an error (its slot moved or is
migrating), or a batch whose connection failed, is sent again on its own through
``replication.on_slot_master``, which follows MOVED/ASK and refreshes the slot map: appends
carry a dedupe key, so sending one again never stores it twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster

from app.history import replication
from app.redis_clients import by_master, on_node

Pending = tuple[str, replication.Command, "asyncio.Future[Any]"]


class SlotBatches:
    """``run(key, command)``: the command's reply once ``replicas`` replicas have it."""

    def __init__(self, cluster: RedisCluster, replicas: int, timeout_ms: int) -> None:
        self._cluster = cluster
        self._replicas = replicas
        self._timeout_ms = timeout_ms
        self._queued: list[Pending] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, key: str, command: replication.Command) -> Any:
        """Run ``command`` (on ``key``'s slot) in this turn's batch; its reply."""
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush)
        reply: asyncio.Future[Any] = loop.create_future()
        self._queued.append((key, command, reply))
        return await asyncio.shield(reply)  # a caller giving up leaves the others' batch alone

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Pending]) -> None:
        by_node = await by_master(self._cluster, [key for key, _, _ in batch])
        await asyncio.gather(*(self._on_node(node, [batch[i] for i in indices])
                               for node, indices in by_node.items()))

    async def _on_node(self, node: ClusterNode | None, pendings: list[Pending]) -> None:
        retry = pendings
        if node is not None and len(pendings) > 1:
            retry = []
            commands = [PipelineCommand(i, *command) for i, (_, command, _) in enumerate(pendings)]
            if self._replicas:
                commands.append(PipelineCommand(len(commands), *replication.wait_command(
                    self._replicas, self._timeout_ms)))
            try:
                await on_node(self._cluster, node, commands)
            except Exception:  # noqa: BLE001  (the connection failed: each goes the slow way)
                retry = pendings
            else:
                shortfall = None
                if self._replicas:
                    try:
                        replication.require_replicas(commands.pop().result, self._replicas, self._timeout_ms)
                    except Exception as exc:  # noqa: BLE001  (ReplicationShortfall, or WAIT's error)
                        shortfall = exc
                for (key, command, reply), sent in zip(pendings, commands, strict=True):
                    if isinstance(sent.result, Exception):
                        retry.append((key, command, reply))
                    elif shortfall is not None:
                        _settle(reply, error=shortfall)
                    else:
                        _settle(reply, sent.result)
        await asyncio.gather(*(self._alone(*pending) for pending in retry))

    async def _alone(self, key: str, command: replication.Command, reply: asyncio.Future[Any]) -> None:
        try:
            [answer] = await replication.on_slot_master_then_wait(
                self._cluster, key, [command], self._replicas, self._timeout_ms)
        except Exception as exc:  # noqa: BLE001  (the caller gets it)
            _settle(reply, error=exc)
        else:
            _settle(reply, answer)


def _settle(reply: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if reply.done():
        return
    if error is not None:
        reply.set_exception(error)
        reply.exception()  # retrieved here too: the caller may be gone
    else:
        reply.set_result(result)
