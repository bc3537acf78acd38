"""channels-redis's pub/sub layer, tuned for one-socket-per-member chat.

Stock, every consumer's ``new_channel`` SUBSCRIBEs a Redis channel of its own (a round trip
per connection) and every delivery is decoded once per receiving consumer. Chat only ever
reaches consumers through groups, so here a consumer's channel is a local queue, a group
message is decoded once per process, and the same object goes to every local member
(receivers must not mutate it), up to ``capacity`` queued per member (beyond it deliveries
are dropped and refilled from history). Groups, PUBLISH/SUBSCRIBE and sharding are unchanged.
Built on channels-redis 4.3 internals (pinned in requirements.txt); tests cover it against
a real redis-server across processes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.utils import _wrap_close, decode_hosts

from app.layers.api import Direct, Receive
from app.layers.fanout import fan_out
from app.layers.mailbox import Mailbox

logger = logging.getLogger("parley")


class _Shard(RedisSingleShardConnection):
    def __init__(self, host: dict[str, Any], channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._subscribed = asyncio.Event()

    async def subscribe(self, channel: str) -> None:
        await super().subscribe(channel)
        self._subscribed.set()

    async def _do_receiving(self) -> None:
        # Upstream polls every 0.1 s while nothing is subscribed, so the first group (the
        # readiness probe's) waited up to that long; here a subscription wakes the loop.
        # After a lost connection it retries from 50 ms rather than a flat second: what is
        # published meanwhile is lost to pub/sub, and consumers refill it from history.
        delay = 0.05
        while True:
            try:
                if self._pubsub is not None and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    self._receive_message(message)
                    delay = 0.05
                else:
                    self._subscribed.clear()
                    await self._subscribed.wait()
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                logger.warning("pub/sub connection lost (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _receive_message(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        name, data = message["channel"], message["data"]
        if isinstance(name, bytes):
            name = name.decode()
        layer = self.channel_layer
        members = layer.groups.get(name)
        targets = members if members is not None else ((name,) if name in layer.channels else ())
        if not targets:
            return
        decoded = layer.channel_layer.deserialize(data)  # once, for every local member
        fan_out(targets, decoded, layer.channels, layer.direct, layer.capacity)


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, hosts: Any = None, capacity: int = 500, **kwargs: Any) -> None:
        super().__init__(hosts=hosts, **kwargs)
        self.capacity = capacity
        self.direct: dict[str, Direct] = {}
        self._shards = [_Shard(host, self) for host in decode_hosts(hosts)]

    async def new_channel(self, prefix: str = "specific.") -> str:
        # Local only: nothing outside this process addresses a consumer directly.
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        self.channels[channel] = Mailbox()
        return channel

    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = Mailbox()
        await self._get_shard(channel).subscribe(channel)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        queue = self.channels.get(channel)
        if queue is not None and channel not in self._get_shard(channel)._subscribed_to:
            queue.put_nowait(message)
        else:
            await super().send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        if channel not in self.channels:
            await self._subscribe_to_channel(channel)
        queue = self.channels[channel]
        try:
            return await queue.get()
        except (TimeoutError, asyncio.CancelledError, GeneratorExit):
            # The consumer is exiting: forget its queue (and its Redis channel, if any).
            if self.channels.pop(channel, None) is not None:
                shard = self._get_shard(channel)
                if channel in shard._subscribed_to:
                    await shard.unsubscribe(channel)
            raise


class PubSubLayer(RedisPubSubChannelLayer):
    """``RedisPubSubChannelLayer`` with local consumer channels and decode-once fan-out."""

    def register_direct(self, channel: str, deliver: Direct) -> None:
        """Let group messages reach ``channel``'s receiver by a synchronous call first."""
        self._get_layer().direct[channel] = deliver

    def unregister_direct(self, channel: str) -> None:
        self._get_layer().direct.pop(channel, None)

    def forget(self, channel: str) -> None:
        layer = self._get_layer()
        layer.direct.pop(channel, None)
        layer.channels.pop(channel, None)

    def bound_receive(self) -> Receive:
        """This loop's ``receive``, without the per-call proxy hop of ``self.receive``."""
        return self._get_layer().receive

    def backlog(self, channel: str) -> int:
        """Messages waiting for a local channel's receiver."""
        queue = self._get_layer().channels.get(channel)
        return 0 if queue is None else queue.qsize()

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer
