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
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from app.chat import hangup, wire
from app.chat.ratelimit import ARRIVED
from app.layers.api import DirectDelivery, Write

Source = Callable[[], Awaitable[dict[str, Any]]]

logger = logging.getLogger("parley")

# The consumers with a send in flight (``send_event``): what the slow-client watchdog looks
# at once a second, instead of every socket of the process (at 16,667 sockets, reading each
# one's stamp cost 2 % of a core).
IN_SEND: set[SerialConsumer] = set()

# Message type -> handler name, computed once per type rather than once per message.
_HANDLER_NAMES: dict[str, str] = {}


class SerialConsumer(AsyncWebsocketConsumer):
    """AsyncWebsocketConsumer with a lean dispatch loop and no per-message DB hop."""

    _main: asyncio.Task[Any] | None = None
    _stopping: bool = False
    # Set once the close frame is on its way: from then on input is dropped unhandled and
    # nothing more is sent, until the server's disconnect event ends the connection.
    closing: bool = False
    # When the send in progress began (0.0: none), for the slow-client watchdog. Every
    # frame after the handshake (replay, live, errors, the close) goes through ``send_event``.
    sending_since: float = 0.0
    # When the frame being handled arrived (``time.monotonic()``), for the rate limit: the
    # server's stamp where it gives one (app.chat.ratelimit), else when it was taken.
    arrived: float = 0.0
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
            # Our own stop(); or the server's, past its shutdown budget, of a connection
            # already told to go (a send still waiting for Redis, say: its client resends
            # it). Either way the connection is simply over: finish normally, as uvicorn
            # would otherwise log the cancel as an application error with its traceback.
            if not (self._stopping or self.closing):
                raise
            if main is not None:
                main.uncancel()
        finally:
            # However the connection ended (disconnect, stop, an error, the server's
            # cancel), everything it holds is released here, once.
            self._stopping = True
            inbox.cancel()
            if direct is not None:
                direct.forget(self.channel_name)
            await self.finish()

    def deliver_now(self, message: dict[str, Any]) -> bool | Write:
        """Hook for the layer's fan-out: take ``message`` synchronously (True, or the write
        to make: ``send_shared``), or return False to have it queued for the channel-layer
        loop as usual."""
        return False

    def send_shared(self, text: str) -> bool | Write:
        """``send_now`` for a fan-out's frame: on uvicorn's websockets-sansio protocol, when
        the socket can take it, the write to make, its bytes built once per text
        (app.chat.wire), which the fan-out makes back to back with its other members'
        (app/layers/fanout.py); elsewhere uvicorn's own send, as ``send_now``."""
        raw = self._raw
        if raw is not None and wire.can_write(raw):
            return raw.transport, wire.PREPARED(text)
        return self._send_by_asgi(text)

    def send_now(self, text: str) -> bool:
        """Send a text frame without suspending, if the server can take it now.

        True when the frame was written (or the socket is already gone, so there is nobody
        to deliver to); False when the send would have to wait, or when the server does not
        expose its write-readiness (only uvicorn's WebSocket protocols do): queue it then.
        On uvicorn's websockets-sansio protocol the frame's bytes, built for this socket,
        are written straight to the transport; elsewhere uvicorn's own send runs.
        """
        raw = self._raw
        if raw is not None and wire.can_write(raw):
            raw.transport.write(wire.text_frame(text))
            return True
        return self._send_by_asgi(text)

    def _send_by_asgi(self, text: str) -> bool:
        """``send_now`` through uvicorn's ASGI send, stepped once: when it would suspend,
        nothing was written (False)."""
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

    def send_all_now(self, texts: list[str]) -> int:
        """Write the text frames ``texts``, in order, in as few transport writes as the
        server takes now (app.chat.wire.joined_frames); how many were written. The rest
        (none, unless the transport paused or this is not uvicorn's websockets-sansio
        protocol) are the caller's to send by ``send_event``, in order."""
        raw = None if self.closing else self._raw
        written = 0
        while written < len(texts) and raw is not None and wire.can_write(raw):
            data, written = wire.joined_frames(texts, written)
            raw.transport.write(data)
        return written

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
                if self.closing and message["type"] != "websocket.disconnect":
                    continue  # queued before our close frame: nobody is listening for it
                await self.dispatch(message)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        self.arrived = message.get(ARRIVED) or time.monotonic()
        await super().websocket_receive(message)

    def stop(self) -> None:
        """End the connection's loops (safe from any task, idempotent); ``finish`` runs after."""
        if self._stopping:
            return
        self._stopping = True
        if self._main is not None and not self._main.done() and self._main is not asyncio.current_task():
            self._main.cancel()

    async def send_event(self, message: dict[str, Any]) -> None:
        """Send an ASGI message after the handshake, stamped for the watchdog.

        A send waits while the socket's write buffer is full (the client is not reading);
        the watchdog drops a client stuck here too long, and a timestamp costs less than a
        timeout per send. Nothing is sent once closing; a socket that is gone or already
        closed by the server (keepalive timeout, shutdown) is taken as closing.
        """
        if self.closing:
            return
        if message["type"] == "websocket.close":
            self.closing = True
        self.sending_since = time.monotonic()
        IN_SEND.add(self)
        try:
            await self.base_send(message)
        except (OSError, RuntimeError):
            # OSError: disconnected, its event is queued. RuntimeError: uvicorn refuses
            # sends after a close it sent itself; its disconnect event follows too.
            self.closing = True
        finally:
            self.sending_since = 0.0
            IN_SEND.discard(self)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Send the close frame, once; later calls do nothing."""
        message: dict[str, Any] = {"type": "websocket.close"}
        if code is not None and code is not True:
            message["code"] = code
        if reason:
            message["reason"] = reason
        await self.send_event(message)

    def writable(self) -> bool | None:
        """Can the socket take a frame now? None when the server does not say (not uvicorn)."""
        protocol = getattr(self.base_send, "__self__", None)
        ready = getattr(protocol, "writable", None)
        return ready.is_set() if isinstance(ready, asyncio.Event) else None

    def hang_up(self, code: int, reason: str, linger: float) -> bool:
        """Close without waiting for the client to read (see app.chat.hangup); False
        where the server's protocol does not allow it, and the caller closes as usual."""
        if self._raw is None:
            return False
        self.closing = True
        hangup.hang_up(self._raw, code, reason, linger)
        return True

    async def finish(self) -> None:
        """Hook: release what the connection held. Runs exactly once, however it ended."""

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
