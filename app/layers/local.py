"""An in-process channel layer for the embedded mode.

Channels' InMemoryChannelLayer scans every channel on every receive (O(n) per message, so
O(n²) per broadcast), deep-copies each message per recipient and schedules a task per
recipient. This layer keeps its contract (groups, capacity and ``ChannelFull``, ``expiry``,
``group_expiry``, flush; ``app.layers.inboxes`` has the rules) with none of that: a bounded
mailbox per channel only while one is needed, one shared message object (receivers must
not mutate it), and expiry swept at most once per period. Deliveries to a full channel from
``group_send`` are dropped, as in Channels; consumers refill from history. Group messages
go through ``app.layers.fanout`` (a direct call first, the mailbox otherwise).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from app.layers.api import Direct, Message, Missed, Position, Receive, Tap, Watch
from app.layers.inboxes import Inboxes
from app.mailbox import Mailbox


class LocalChannelLayer(BaseChannelLayer):
    """Process-local groups and channels; one process only (use Redis to scale out)."""

    extensions = ["groups", "flush"]

    def __init__(
        self,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 500,
        channel_capacity: dict[Any, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity, **kwargs)
        # Channels' base keeps the raw dict, which its get_capacity cannot read; compile it.
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.group_expiry = group_expiry
        self.inboxes = Inboxes(self.get_capacity, expiry, group_expiry)

    @property
    def channels(self) -> dict[str, Mailbox]:
        """Channel -> mailbox, for the channels that have one right now."""
        return self.inboxes.channels

    @property
    def groups(self) -> dict[str, dict[str, float]]:
        """Group -> {member channel: when it joined}."""
        return self.inboxes.groups

    @property
    def direct(self) -> dict[str, Direct]:
        return self.inboxes.direct

    # DirectDelivery (app.layers.api)

    def register_direct(self, channel: str, deliver: Direct) -> None:
        """Let group messages reach ``channel``'s receiver by a synchronous call first."""
        self.inboxes.register_direct(channel, deliver)

    def unregister_direct(self, channel: str) -> None:
        self.inboxes.unregister_direct(channel)

    def bound_receive(self) -> Receive:
        """``receive`` without the name check: for channels from ``new_channel``."""
        return self.inboxes.receive

    def backlog(self, channel: str) -> int:
        """Messages waiting for the channel's receiver."""
        return self.inboxes.backlog(channel)

    def forget(self, channel: str) -> None:
        self.inboxes.forget(channel)

    # GroupTap (app.layers.api): every group message here is a local one

    def tap(self, kind: str, hook: Tap, missed: Missed | None = None) -> None:
        """Show ``hook`` each group message of type ``kind``, once, before its members."""
        self.inboxes.taps[kind] = Watch(hook, missed)

    def fan_out_local(self, group: str, message: Message) -> None:
        """``group_send`` without its checks: this layer has no other process to reach."""
        self.inboxes.fan_out(group, message)

    # GroupOrder (app.layers.api): a group_send here reaches the members before it returns,
    # so messages come in the order they were sent, and one is held only if sent out of it.

    def order(self, kind: str, position: Position, hold: float) -> None:
        """Hand group messages of type ``kind`` on in ``position`` order."""
        self.inboxes.order(kind, position, hold)

    # Channels' layer API

    async def new_channel(self, prefix: str = "specific.") -> str:
        return f"{prefix}local!{secrets.token_hex(8)}"

    async def send(self, channel: str, message: Message) -> None:
        _require_message(message)
        self.require_valid_channel_name(channel)
        try:
            self.inboxes.put(channel, message)
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> Message:
        self.require_valid_channel_name(channel)
        self.inboxes.tidy()
        return await self.inboxes.receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self.inboxes.join(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self.inboxes.leave(group, channel)

    async def group_send(self, group: str, message: Message) -> None:
        _require_message(message)
        self.require_valid_group_name(group)
        self.inboxes.tidy()
        self.inboxes.fan_out(group, message)

    async def flush(self) -> None:
        self.inboxes.clear()

    async def close(self) -> None:
        return None


def _require_message(message: object) -> None:
    if not isinstance(message, dict):
        raise TypeError(f"a channel layer message must be a dict, not {type(message).__name__}")
