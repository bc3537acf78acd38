"""The channels one event loop serves: their mailboxes, groups, direct hooks and expiry.

Both of Parley's layers keep their local state here, so both keep Channels' layer contract
the same way:

- A channel exists by its name, not by its mailbox. A mailbox is made when something is
  sent to the channel or its receiver waits, and let go when it is empty again with nobody
  waiting (as Channels' in-memory layer does), so a channel added to a group before its
  first ``receive``, or after one that timed out or was cancelled, still gets its messages.
- ``expiry``: a message not received within it is dropped. ``group_expiry``: a membership
  lapses that long after its ``group_add``. A channel nobody reads, whose messages expired,
  leaves its groups (Channels' in-memory rule for abandoned channels). So a channel whose
  receiver vanished without ``group_discard`` does not leak.
- A channel registered for direct delivery (``register_direct``) has a live receiver until
  ``forget``: it keeps its mailbox and its memberships never lapse, because Parley's chat
  consumer stays in its room for as long as its socket is open, however long that is.

Expiry is enforced by a sweep over the local channels and memberships, at most once per
``min(expiry, group_expiry)`` and only from ``receive`` and ``group_send`` (as Channels'
in-memory layer cleans up), plus a check of the head of a mailbox whenever it is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from time import monotonic

from app.layers.api import Direct, Message, Position, Watch
from app.layers.fanout import fan_out
from app.layers.sequencer import Orders
from app.mailbox import Mailbox


class Inboxes:
    """Local channels and groups of one event loop, with Channels' expiry rules."""

    def __init__(
        self, capacity: Callable[[str], int], expiry: float = 60, group_expiry: float = 86400
    ) -> None:
        self.channels: dict[str, Mailbox] = {}
        # group -> {channel: monotonic time of its group_add}
        self.groups: dict[str, dict[str, float]] = {}
        self.direct: dict[str, Direct] = {}
        self.taps: dict[str, Watch] = {}  # message type -> hook (GroupTap); kept by ``clear``
        self.orders = Orders(self._fan_out_now)  # message types handed on in order (GroupOrder)
        self.capacity = capacity
        self.expiry = expiry
        self.group_expiry = group_expiry
        periods = [period for period in (expiry, group_expiry) if period > 0]
        self._interval = min(periods) if periods else math.inf
        self._next_sweep = monotonic() + self._interval

    def open(self, channel: str) -> Mailbox:
        """``channel``'s mailbox, made now if it has none."""
        box = self.channels.get(channel)
        if box is None:
            box = self.channels[channel] = Mailbox(self.capacity(channel), self.expiry)
        return box

    def put(self, channel: str, message: Message) -> None:
        """Queue ``message`` for ``channel``; ``asyncio.QueueFull`` when it is at capacity."""
        self.open(channel).put_nowait(message)

    async def receive(self, channel: str) -> Message:
        """The next message for ``channel``. A timed-out or cancelled wait loses nothing:
        messages sent later still reach the channel's next ``receive``."""
        box = self.open(channel)
        try:
            return await box.get()
        finally:
            self._release(channel, box)

    def _release(self, channel: str, box: Mailbox) -> None:
        # An empty mailbox with no receiver is only storage; the channel stays valid.
        if box.empty() and not box.waiting() and channel not in self.direct:
            if self.channels.get(channel) is box:
                del self.channels[channel]

    def backlog(self, channel: str) -> int:
        """Messages waiting for ``channel``'s receiver."""
        box = self.channels.get(channel)
        return 0 if box is None else box.qsize()

    def join(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (again: its membership starts anew)."""
        members = self.groups.get(group)
        if members is None:
            members = self.groups[group] = {}
        members[channel] = monotonic()

    def leave(self, group: str, channel: str) -> bool:
        """Take ``channel`` out of ``group``; True when that left the group empty."""
        members = self.groups.get(group)
        if members is None or members.pop(channel, None) is None:
            return False
        if members:
            return False
        self._drop_group(group)
        return True

    def _drop_group(self, group: str) -> None:
        del self.groups[group]
        self.orders.forget(group)

    def order(self, kind: str, position: Position, hold: float) -> None:
        """Hand group messages of type ``kind`` on in ``position`` order (GroupOrder)."""
        self.orders.order(kind, position, hold)

    def fan_out(self, group: str, message: Message) -> None:
        """Deliver ``message`` to every local member of ``group`` (directly where it can),
        after the tap for its type, if any, has seen it; in order after the group's messages
        before it, for a type with an order (``order``)."""
        # A group with nobody here gets nothing, and keeps no line: its line would end only
        # with a last member's leave, so one kept for a group only sent to (a backend posting
        # to rooms nobody joined, on the local layer) was never let go.
        if group in self.groups:
            self.orders.offer(group, message)

    def _fan_out_now(self, group: str, message: Message) -> None:
        members = self.groups.get(group)
        if members:
            fan_out(members, message, self.channels, self.direct, self.open, self.taps)

    def register_direct(self, channel: str, deliver: Direct) -> None:
        self.direct[channel] = deliver

    def unregister_direct(self, channel: str) -> None:
        self.direct.pop(channel, None)

    def forget(self, channel: str) -> None:
        """``channel``'s receiver is gone for good: drop its mailbox and direct hook."""
        self.channels.pop(channel, None)
        self.direct.pop(channel, None)

    def clear(self) -> None:
        self.channels.clear()
        self.groups.clear()
        self.direct.clear()
        self.orders.clear()

    def tidy(self) -> list[str]:
        """Run the expiry sweep if one is due; return the groups it left empty."""
        now = monotonic()
        if now < self._next_sweep:
            return []
        self._next_sweep = now + self._interval
        return self.sweep(now)

    def sweep(self, now: float) -> list[str]:
        """Drop expired messages, lapsed memberships and abandoned channels; return the
        groups left empty."""
        abandoned: set[str] = set()
        idle: list[str] = []
        for channel, box in self.channels.items():
            live = box.waiting() or channel in self.direct
            if box.purge(now) and not live:
                abandoned.add(channel)
            if box.empty() and not live:
                idle.append(channel)
        for channel in idle:
            del self.channels[channel]
        cutoff = now - self.group_expiry if self.group_expiry > 0 else -math.inf
        direct = self.direct
        emptied: list[str] = []
        for group, members in self.groups.items():
            lapsed = [
                channel for channel, joined in members.items()
                if channel in abandoned or (joined <= cutoff and channel not in direct)
            ]
            for channel in lapsed:
                del members[channel]
            if not members:
                emptied.append(group)
        for group in emptied:
            self._drop_group(group)
        return emptied
