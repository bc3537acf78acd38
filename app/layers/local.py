"""An in-process channel layer for the embedded mode.

Channels' InMemoryChannelLayer scans every channel on every receive (O(n) per message, so
O(n²) per broadcast), deep-copies each message per recipient, schedules a task per
recipient, and silently drops group members after ``group_expiry`` (a day). This layer
keeps the same API with none of that: a set per group, a bounded mailbox per channel, one
shared message object (receivers must not mutate it), and cleanup when a receiver stops.
Deliveries to a full channel are dropped, as in Channels; consumers refill from history.
Group messages go through ``app.layers.fanout`` (a direct call first, the queue otherwise).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from app.layers.api import Direct, Receive
from app.layers.fanout import fan_out
from app.layers.mailbox import Mailbox


class LocalChannelLayer(BaseChannelLayer):
    """Process-local groups and channels; one process only (use Redis to scale out)."""

    extensions = ["groups", "flush"]

    def __init__(self, capacity: int = 500, **kwargs: Any) -> None:
        super().__init__(capacity=capacity, **kwargs)
        self.channels: dict[str, Mailbox] = {}
        self.groups: dict[str, set[str]] = {}
        self.direct: dict[str, Direct] = {}

    def register_direct(self, channel: str, deliver: Direct) -> None:
        """Let group messages reach ``channel``'s receiver by a synchronous call first."""
        self.direct[channel] = deliver

    def unregister_direct(self, channel: str) -> None:
        self.direct.pop(channel, None)

    def bound_receive(self) -> Receive:
        return self.receive

    def forget(self, channel: str) -> None:
        self.channels.pop(channel, None)
        self.direct.pop(channel, None)

    def _queue(self, channel: str) -> Mailbox:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = Mailbox(self.get_capacity(channel))
        return queue

    async def new_channel(self, prefix: str = "specific.") -> str:
        channel = f"{prefix}local!{secrets.token_hex(8)}"
        self._queue(channel)
        return channel

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        try:
            self._queue(channel).put_nowait(message)
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> dict[str, Any]:
        queue = self._queue(channel)
        try:
            return await queue.get()
        except asyncio.CancelledError:
            # The receiver is gone for good (consumers cancel on exit): drop its channel.
            self.channels.pop(channel, None)
            raise

    def backlog(self, channel: str) -> int:
        """Messages waiting for the channel's receiver."""
        queue = self.channels.get(channel)
        return 0 if queue is None else queue.qsize()

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self.groups.setdefault(group, set()).add(channel)

    async def group_discard(self, group: str, channel: str) -> None:
        members = self.groups.get(group)
        if members is not None:
            members.discard(channel)
            if not members:
                del self.groups[group]

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        fan_out(self.groups.get(group, ()), message, self.channels, self.direct, self.capacity)

    async def flush(self) -> None:
        self.channels.clear()
        self.groups.clear()

    async def close(self) -> None:
        return None
