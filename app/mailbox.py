"""A consumer channel's inbox: the part of ``asyncio.Queue`` a channel layer uses, at a
fraction of the memory.

Every open WebSocket has one, and nearly all of them are empty nearly all the time (the
fan-out writes straight to idle sockets). An ``asyncio.Queue`` costs about 3 KB even when
empty (four deques with their blocks, an Event); a Mailbox holds a deque only while
something waits in it, and one future only while its receiver waits. A channel has one
receiver, as in Channels, so one waiter slot is enough.

With an ``expiry`` (Channels' layer option, in seconds), a message not received within it
is dropped, as Channels' layers do. Its deadline is taken when it is queued, so a message
handed straight to a receiver (the direct path) never pays for a clock read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import monotonic
from typing import Any

Message = dict[str, Any]


class Mailbox:
    """Messages for one channel, bounded by ``maxsize`` (0: unbounded), one receiver;
    messages older than ``expiry`` seconds (0: never) are dropped unread."""

    __slots__ = ("maxsize", "expiry", "_items", "_deadlines", "_waiter")

    def __init__(self, maxsize: int = 0, expiry: float = 0) -> None:
        self.maxsize = maxsize
        self.expiry = expiry
        self._items: deque[Message] | None = None
        # Parallel to _items (same length) when expiry is on: one monotonic deadline each.
        self._deadlines: deque[float] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return 0 if self._items is None else len(self._items)

    def empty(self) -> bool:
        return self._items is None

    def waiting(self) -> bool:
        """Whether a receiver is waiting on this mailbox right now."""
        return self._waiter is not None

    def put_nowait(self, message: Message) -> None:
        """Add ``message``; raise ``asyncio.QueueFull`` when ``maxsize`` are waiting."""
        items = self._items
        if items is None:
            items = self._items = deque()
            if self.expiry:
                self._deadlines = deque()
        elif 0 < self.maxsize <= len(items):
            raise asyncio.QueueFull
        items.append(message)
        deadlines = self._deadlines
        if deadlines is not None:
            deadlines.append(monotonic() + self.expiry)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def purge(self, now: float) -> int:
        """Drop the messages whose deadline is ``now`` or earlier; return how many."""
        deadlines = self._deadlines
        items = self._items
        if deadlines is None or items is None:
            return 0
        dropped = 0
        while deadlines and deadlines[0] <= now:
            deadlines.popleft()
            items.popleft()
            dropped += 1
        if not items:
            self._items = self._deadlines = None
        return dropped

    async def get(self) -> Message:
        """The oldest unexpired message, waiting for one if there is none. Cancel-safe: a
        message that arrives as the receiver is cancelled stays here."""
        while True:
            if self._deadlines is not None:
                self.purge(monotonic())
            if self._items is not None:
                break
            if self._waiter is not None:
                raise RuntimeError("a Mailbox has one receiver")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = self._items
        message = items.popleft()
        if self._deadlines is not None:
            self._deadlines.popleft()
        if not items:
            self._items = self._deadlines = None  # empty again: give the blocks back
        return message
