"""channels-redis's pub/sub layer, tuned for one-socket-per-member chat.

Stock, every consumer's ``new_channel`` SUBSCRIBEs a Redis channel of its own (a round trip
per connection) and every delivery is decoded once per receiving consumer. Here:

- A consumer channel is named ``<prefix><kind><loop id>!<local id>``, as channels-redis's
  core layer names process-specific channels. Each event loop's layer SUBSCRIBEs its own
  ``<prefix><kind><loop id>!`` once (on its first ``new_channel`` of that kind), not once
  per channel. A ``send`` from the same loop goes straight to the channel's mailbox; from
  any other loop or process it is one PUBLISH to that loop's Redis channel, carrying the
  target in ``__asgi_channel__`` (core's convention), and the owning loop routes it.
- A group message is decoded once per loop and the same object goes to every local member
  (receivers must not mutate it), directly where the member can take it.
- Local channels, groups, capacity and expiry follow Channels' contract the same way as the
  in-memory layer (``app.layers.inboxes``). General channels (names without ``!``) and
  groups use PUBLISH/SUBSCRIBE as stock; sharding is stock.

Built on channels-redis 4.3 internals, all in ``app.layers.redis_internals``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

from channels.exceptions import ChannelFull

from app.layers.api import Direct, Message, Missed, Position, Receive, Tap, Watch
from app.layers.inboxes import Inboxes
from app.layers.redis_internals import LayerProxy, Shard, consistent_hash, decode_hosts

logger = logging.getLogger("parley")

TARGET = "__asgi_channel__"


def _head(channel: str) -> str | None:
    """The process-specific part of ``channel`` (up to and including ``!``), if any."""
    bang = channel.find("!")
    return channel[: bang + 1] if bang >= 0 else None


class PubSubLoopLayer:
    """The pub/sub layer for one event loop: its channels, groups and Redis connections."""

    extensions = ["groups", "flush"]

    def __init__(
        self,
        hosts: Any = None,
        prefix: str = "asgi",
        capacity: int = 500,
        expiry: float = 60,
        group_expiry: float = 86400,
        channel_layer: Any = None,
        **kwargs: Any,
    ) -> None:
        self.prefix = prefix
        self.capacity = capacity
        self.channel_layer = channel_layer  # the proxy: (de)serialization
        self.inboxes = Inboxes(lambda channel: capacity, expiry, group_expiry)
        self.loop_id = secrets.token_hex(8)
        self._own: set[str] = set()  # this loop's subscribed channel heads, one per kind
        self._general: set[str] = set()  # general channels received on here
        self._shards = [Shard(host, self._on_message) for host in decode_hosts(hosts)]
        self._tasks: set[asyncio.Task[None]] = set()  # undoing failed joins; cancelled by flush

    def _get_shard(self, name: str) -> Shard:
        return self._shards[consistent_hash(name, len(self._shards))]

    def _group_key(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"

    def _is_local(self, channel: str) -> bool:
        head = _head(channel)
        return head is not None and head in self._own

    async def new_channel(self, prefix: str = "specific.") -> str:
        head = f"{self.prefix}{prefix}{self.loop_id}!"
        if head not in self._own:
            await self._get_shard(head).subscribe(head)  # idempotent; concurrent callers wait
            self._own.add(head)
        return head + secrets.token_hex(8)

    async def send(self, channel: str, message: Message) -> None:
        if self._is_local(channel):
            try:
                self.inboxes.put(channel, message)
            except asyncio.QueueFull:
                raise ChannelFull(channel) from None
            return
        head = _head(channel)
        target = channel
        if head is not None:
            if not isinstance(message, dict) or TARGET in message:
                raise TypeError(f"a message to a specific channel must be a dict without {TARGET!r}")
            message = {**message, TARGET: channel}
            target = head
        await self._get_shard(target).publish(target, self.channel_layer.serialize(message))

    async def receive(self, channel: str) -> Message:
        if not self._is_local(channel) and channel not in self._general:
            # Not made here: Redis brings it from now on (stock pub/sub), for as long as
            # this layer lives, so a receive that times out loses nothing sent later.
            await self._get_shard(channel).subscribe(channel)
            self._general.add(channel)
        await self._tidy()
        return await self.inboxes.receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        if not self._is_local(channel) and channel not in self._general:
            raise RuntimeError(
                "You can only call group_add() on channels that exist in-process.\n"
                "Consumers are encouraged to use the common pattern:\n"
                f"   self.channel_layer.group_add({group!r}, self.channel_name)"
            )
        key = self._group_key(group)
        members = self.inboxes.groups.get(key)
        already = members is not None and channel in members  # an earlier call's membership
        self.inboxes.join(key, channel)
        shard = self._get_shard(key)
        # Already confirmed: nothing to wait for. The shard's one lock also orders every
        # PUBLISH; after a deploy thousands of joins queued on it for a subscription that
        # was long done, held each broadcast back by seconds, and the tail watcher took the
        # late messages for lost ones (a history read per member, per tick).
        if shard.is_subscribed(key):
            return
        try:
            await shard.subscribe(key)
        except BaseException:
            # All or nothing. A caller told the join failed never leaves the group (the
            # chat consumer does not: it was never joined), so a member left here was dead
            # for group_expiry, a day, and kept its room subscribed after every real member
            # had gone (Redis stopping under 40 joins left 40 rooms subscribed).
            if not already:
                self._undo_join(key, channel)
            raise

    def _undo_join(self, key: str, channel: str) -> None:
        """Take back a ``group_add`` whose SUBSCRIBE failed or was cancelled.

        A SUBSCRIBE that raised left nothing: channels-redis and redis-py record a channel
        only once it was sent, and a send that fails closes its connection (and with it
        whatever Redis had subscribed on it). The group can still be subscribed by another
        member's join that succeeded while this one waited, that member having left since
        (its leave did not empty the group: this one was still in it). If the group is now
        empty, that subscription goes too, off the caller's path (its error is not held up,
        nor can a second cancellation cut the undo short). ``Shard.unsubscribe`` asks again
        whether the group is wanted once it holds the connection, so a join that comes
        meanwhile keeps it."""
        if self.inboxes.leave(key, channel) and self._get_shard(key).is_subscribed(key):
            self._background(self._unsubscribe_quietly(key))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unsubscribe_quietly(self, key: str) -> None:
        try:
            await self._unsubscribe_groups([key])
        except Exception as exc:  # sent or not, redis-py no longer holds it: gone on reconnect
            logger.debug("unsubscribing %s after a failed join failed: %s", key, exc)

    async def group_discard(self, group: str, channel: str) -> None:
        key = self._group_key(group)
        if self.inboxes.leave(key, channel):
            await self._unsubscribe_groups([key])

    async def group_send(self, group: str, message: Message) -> None:
        await self._tidy()
        key = self._group_key(group)
        await self._get_shard(key).publish(key, self.channel_layer.serialize(message))

    def fan_out_local(self, group: str, message: Message) -> None:
        """Deliver ``message`` to this loop's members of ``group``; nothing is published."""
        self.inboxes.fan_out(self._group_key(group), message)

    async def flush(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.inboxes.clear()
        self._own.clear()
        self._general.clear()
        for shard in self._shards:
            await shard.flush()

    async def _tidy(self) -> None:
        emptied = self.inboxes.tidy()
        if emptied:
            await self._unsubscribe_groups(emptied)

    async def _unsubscribe_groups(self, keys: list[str]) -> None:
        # A group joined again before the UNSUBSCRIBE goes out keeps its subscription: a join
        # that found it subscribed has already returned. One joined after it went out found
        # it unsubscribed (``Shard.unsubscribe`` forgets it first) and subscribes it itself,
        # queued behind this UNSUBSCRIBE on the same connection. (This used to unsubscribe
        # anyway and subscribe again after: a window in which the first joiner heard nothing,
        # and a subscription made for a joiner whose own join then failed outlived it.)
        for key in keys:
            await self._get_shard(key).unsubscribe(key, self._wanted)

    def _wanted(self, key: str) -> bool:
        return key in self.inboxes.groups

    def _on_message(self, name: str, data: bytes) -> None:
        inboxes = self.inboxes
        if name in inboxes.groups:
            inboxes.fan_out(name, self.channel_layer.deserialize(data))  # decoded once
        elif name in self._own:
            message = self.channel_layer.deserialize(data)
            channel = message.pop(TARGET, None) if isinstance(message, dict) else None
            if isinstance(channel, str) and channel.startswith(name):
                self._put(channel, message)
        elif name in self._general:
            self._put(name, self.channel_layer.deserialize(data))

    def _put(self, channel: str, message: Message) -> None:
        try:
            self.inboxes.put(channel, message)
        except asyncio.QueueFull:
            pass  # the sender is elsewhere and cannot be told: dropped, as group messages are


class PubSubLayer(LayerProxy):
    """``RedisPubSubChannelLayer`` with per-loop consumer channels and decode-once fan-out."""

    def make_loop_layer(self, *args: Any, **kwargs: Any) -> PubSubLoopLayer:
        return PubSubLoopLayer(*args, **kwargs)

    def _loop_layer(self) -> PubSubLoopLayer:
        layer: PubSubLoopLayer = self.loop_layer()
        return layer

    # DirectDelivery (app.layers.api)

    def register_direct(self, channel: str, deliver: Direct) -> None:
        """Let group messages reach ``channel``'s receiver by a synchronous call first."""
        self._loop_layer().inboxes.register_direct(channel, deliver)

    def unregister_direct(self, channel: str) -> None:
        self._loop_layer().inboxes.unregister_direct(channel)

    def forget(self, channel: str) -> None:
        self._loop_layer().inboxes.forget(channel)

    def bound_receive(self) -> Receive:
        """This loop's ``receive`` for its own channels, without the proxy's per-call hop."""
        return self._loop_layer().inboxes.receive

    def backlog(self, channel: str) -> int:
        """Messages waiting for a local channel's receiver."""
        return self._loop_layer().inboxes.backlog(channel)

    # GroupTap (app.layers.api)

    def tap(self, kind: str, hook: Tap, missed: Missed | None = None) -> None:
        """Show ``hook`` each group message of type ``kind`` this loop receives, once."""
        self._loop_layer().inboxes.taps[kind] = Watch(hook, missed)

    def fan_out_local(self, group: str, message: Message) -> None:
        """Deliver ``message`` to this loop's members of ``group`` only."""
        self._loop_layer().fan_out_local(group, message)

    # GroupOrder (app.layers.api)

    def order(self, kind: str, position: Position, hold: float) -> None:
        """Hand group messages of type ``kind`` this loop receives on in ``position`` order."""
        self._loop_layer().inboxes.order(kind, position, hold)
