"""A Channels WebSocket consumer whose two inputs are two plain loops.

Channels' ``await_many_dispatch`` races the client and the channel layer with
``asyncio.wait`` and a new task per message; with thousands of members in a room that is
a task per delivery. Here the client loop runs in the connection's own task and the
channel-layer loop in one more task, both for the connection's lifetime, and a lock
(uncontended: no suspension) keeps handlers one at a time, in arrival order, as Channels
guarantees. Handlers, ``StopConsumer`` and the group helpers behave as in Channels.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from app.chat import wire
from app.layers.api import DirectDelivery

Source = Callable[[], Awaitable[dict[str, Any]]]

logger = logging.getLogger("parley")

# Message type -> handler name, computed once per type rather than once per message.
_HANDLER_NAMES: dict[str, str] = {}


class SerialConsumer(AsyncWebsocketConsumer):
    """AsyncWebsocketConsumer with a lean dispatch loop and no per-message DB hop."""

    _main: asyncio.Task[Any] | None = None
    _stopping: bool = False
    direct: DirectDelivery | None = None
    # Channels gives each instance its own empty list when this is None; groups here are
    # joined explicitly, and an empty tuple costs nothing per connection.
    groups: tuple[str, ...] = ()

    async def __call__(self, scope: dict[str, Any], receive: Source, send: Callable[..., Any]) -> None:
        self.scope = scope
        self.base_send = send
        self._raw = wire.raw_protocol(send)
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self._turn = asyncio.Lock()
        self._main = main = asyncio.current_task()
        direct = self.direct = _direct_delivery(self.channel_layer)
        layer_receive = direct.bound_receive() if direct is not None else self.channel_layer.receive
        inbox = asyncio.ensure_future(self._pump(functools.partial(layer_receive, self.channel_name)))
        inbox.add_done_callback(self._inbox_ended)
        if direct is not None:
            direct.register_direct(self.channel_name, self.deliver_now)
        try:
            await self._pump(receive)
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            if main is not None:
                main.uncancel()  # our own stop(), not the server's: finish normally
        finally:
            inbox.cancel()
            if direct is not None:
                direct.forget(self.channel_name)
        await self.finish()

    def deliver_now(self, message: dict[str, Any]) -> bool:
        """Hook for the layer's fan-out: take ``message`` synchronously, or return False
        to have it queued for the channel-layer loop as usual."""
        return False

    def send_now(self, text: str) -> bool:
        """Send a text frame without suspending, if the server can take it now.

        True when the frame was written (or the socket is already gone, so there is nobody
        to deliver to); False when the send would have to wait, or when the server does not
        expose its write-readiness (only uvicorn's WebSocket protocols do): queue it then.
        On uvicorn's websockets-sansio protocol the frame's bytes are built once per text
        (app.chat.wire) and written to the transport; elsewhere uvicorn's own send runs.
        """
        raw = self._raw
        if raw is not None and wire.can_write(raw):
            raw.transport.write(wire.PREPARED(text))
            return True
        protocol = getattr(self.base_send, "__self__", None)
        writable = getattr(protocol, "writable", None)
        if not isinstance(writable, asyncio.Event) or not writable.is_set():
            return False
        step = self.base_send({"type": "websocket.send", "text": text})
        try:
            step.send(None)  # writable: uvicorn's send runs to the end without suspending
        except StopIteration:
            return True
        except (OSError, RuntimeError):
            return True  # disconnected or closing: its disconnect event is on its way
        step.close()  # it wanted to wait after all: nothing was written; queue instead
        return False

    def _inbox_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, StopConsumer):
            logger.error("channel-layer handler failed; closing the connection", exc_info=error)
        self.stop()

    async def _pump(self, source: Source) -> None:
        while True:
            message = await source()
            async with self._turn:
                await self.dispatch(message)

    def stop(self) -> None:
        """End the connection's loops (safe from any task); ``finish`` runs after."""
        self._stopping = True
        if self._main is not None and not self._main.done() and self._main is not asyncio.current_task():
            self._main.cancel()

    async def finish(self) -> None:
        """Hook: release what the connection held, however it ended. Must be idempotent."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale DB connections via a thread hop on every message; this
        # service has no database, so that hop would be pure cost per frame and delivery.
        kind = message["type"]
        name = _HANDLER_NAMES.get(kind)
        if name is None:
            name = _HANDLER_NAMES[kind] = get_handler_name(message)
        handler = getattr(self, name, None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


_DIRECT: dict[int, bool] = {}


def _direct_delivery(layer: Any) -> DirectDelivery | None:
    """``layer`` as a DirectDelivery if it is one (checked once per layer object)."""
    known = _DIRECT.get(id(layer))
    if known is None:
        known = _DIRECT[id(layer)] = isinstance(layer, DirectDelivery)
    return layer if known else None
