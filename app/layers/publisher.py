"""SPUBLISHes of one event-loop turn, sent as one cluster pipeline.

When every room gets a message at once, each ``group_send`` on its own takes a connection
from its master's pool for one command, and a burst of a hundred opens dozens of new
connections (each with its HELLO and CLIENT SETINFO) in the middle of the broadcast: measured
at 18,000 sockets over 600 rooms, connection set-up was a sixth of the layer's CPU. Publishes
made in one turn go out together instead: redis-py's cluster pipeline sends each master its
share on one connection and follows MOVED/ASK itself. Each caller still gets its own reply or
error. Order between two publishes of one room is kept: each turn's batch is sent only after
the one before it was answered (what arrives meanwhile waits and goes out with the next).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import RedisCluster

Outgoing = tuple[str, bytes, "asyncio.Future[None]"]


class ShardPublisher:
    """``publish(channel, data)``, batched per event-loop turn (see the module docstring)."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._queued: list[Outgoing] = []
        self._sending: asyncio.Task[None] | None = None

    async def publish(self, channel: str, data: bytes) -> None:
        """SPUBLISH ``data`` to ``channel``; raises what Redis answered for this one."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self._queued and self._sending is None:
            loop.call_soon(self._flush)
        self._queued.append((channel, data, done))
        await asyncio.shield(done)  # a caller giving up does not take others' replies with it

    def _flush(self) -> None:
        if self._sending is not None or not self._queued:
            return
        batch, self._queued = self._queued, []
        self._sending = asyncio.ensure_future(self._send(batch))
        self._sending.add_done_callback(self._sent)

    def _sent(self, _: asyncio.Task[None]) -> None:
        self._sending = None
        self._flush()

    async def _send(self, batch: list[Outgoing]) -> None:
        replies: list[Any]
        try:
            if len(batch) == 1:
                replies = [await self._cluster.spublish(batch[0][0], batch[0][1])]
            else:
                pipe = self._cluster.pipeline()
                for channel, data, _ in batch:
                    pipe.spublish(channel, data)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001  (every caller of the batch gets it)
            replies = [exc] * len(batch)
        for (_, _, done), reply in zip(batch, replies, strict=True):
            if done.done():
                continue
            if isinstance(reply, BaseException):
                done.set_exception(reply)
                done.exception()  # retrieved here too: the caller may be gone
            else:
                done.set_result(None)

    async def close(self) -> None:
        """Wait for what is being sent; what is still queued fails."""
        if self._sending is not None:
            await asyncio.gather(self._sending, return_exceptions=True)
        for _, _, done in self._queued:
            if not done.done():
                done.set_exception(ConnectionError("layer closed"))
                done.exception()
        self._queued = []
