"""A Channels WebSocket consumer whose two inputs run as two long-lived loops.

Channels' ``await_many_dispatch`` races the client and the channel layer with
``asyncio.wait`` and a new task per message; with thousands of members in a room that is
a task per delivery. Here each input is one loop for the connection's lifetime, and a lock
(uncontended: no suspension) keeps handlers one at a time, in arrival order, as Channels
guarantees. Handlers, ``StopConsumer`` and the group helpers behave as in Channels.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

Source = Callable[[], Awaitable[dict[str, Any]]]


class SerialConsumer(AsyncWebsocketConsumer):
    """AsyncWebsocketConsumer with a lean dispatch loop and no per-message DB hop."""

    async def __call__(self, scope: dict[str, Any], receive: Source, send: Callable[..., Any]) -> None:
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self._turn = asyncio.Lock()
        layer_receive = self.channel_layer.receive
        channel = self.channel_name
        self._loops = [
            asyncio.ensure_future(self._pump(receive)),
            asyncio.ensure_future(self._pump(lambda: layer_receive(channel))),
        ]
        try:
            done, _ = await asyncio.wait(self._loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and not isinstance(task.exception(), StopConsumer):
                    task.result()  # re-raise a handler's unexpected error
        finally:
            self.stop()
            for task in self._loops:
                with contextlib.suppress(asyncio.CancelledError, StopConsumer):
                    await task
            await self.finish()

    def stop(self) -> None:
        """End both loops (safe from any task); ``finish`` runs once they have ended."""
        for task in self._loops:
            task.cancel()

    async def finish(self) -> None:
        """Hook: release what the connection held, however it ended. Must be idempotent."""

    async def _pump(self, source: Source) -> None:
        while True:
            message = await source()
            async with self._turn:
                await self.dispatch(message)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale DB connections via a thread hop on every message; this
        # service has no database, so that hop would be pure cost per frame and delivery.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
