"""A consumer channel's inbox: the part of ``asyncio.Queue`` a channel layer uses, at a
fraction of the memory.

Every open WebSocket has one, and nearly all of them are empty nearly all the time (the
fan-out writes straight to idle sockets). An ``asyncio.Queue`` costs about 3 KB even when
empty (four deques with their blocks, an Event); a Mailbox holds a deque only while
something waits in it, and one future only while its receiver waits. A channel has one
receiver, as in Channels, so one waiter slot is enough.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

Message = dict[str, Any]


class Mailbox:
    """Messages for one channel, bounded by ``maxsize`` (0: unbounded), one receiver."""

    __slots__ = ("maxsize", "_items", "_waiter")

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: deque[Message] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return 0 if self._items is None else len(self._items)

    def empty(self) -> bool:
        return self._items is None

    def put_nowait(self, message: Message) -> None:
        """Add ``message``; raise ``asyncio.QueueFull`` when ``maxsize`` are waiting."""
        items = self._items
        if items is None:
            items = self._items = deque()
        elif 0 < self.maxsize <= len(items):
            raise asyncio.QueueFull
        items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Message:
        """The oldest message, waiting for one if there is none. Cancel-safe: a message
        that arrives as the receiver is cancelled stays here."""
        while self._items is None:
            if self._waiter is not None:
                raise RuntimeError("a Mailbox has one receiver")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = self._items
        message = items.popleft()
        if not items:
            self._items = None  # empty again: give the deque's block back
        return message
