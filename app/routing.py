"""WebSocket routes: ``/ws/chat/<room_name>/`` to the chat consumer.

Matched here with the same regex and the same ``scope["url_route"]`` that Channels'
``URLRouter`` would produce, without importing ``django.urls`` (and through it
``django.http`` and ``django.db.models``, ~100 ms) on the way to ready.
"""

from __future__ import annotations

import re
from typing import Any

from app.consumers import ChatConsumer
from app.router import Receive, Send, deny_websocket

CHAT_PATH = re.compile(r"^/ws/chat/(?P<room_name>[^/]+)/$")

chat_consumer = ChatConsumer.as_asgi()


def match(path: str) -> dict[str, str] | None:
    """The route's kwargs for a path, or None when no route matches."""
    found = CHAT_PATH.match(path)
    return found.groupdict() if found else None


async def websocket_application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    kwargs = match(scope["path"])
    if kwargs is None:
        return await deny_websocket(scope, receive, send, 404, "not_found")
    # The scope is this connection's own: set the route in place rather than copy it.
    scope["url_route"] = {"args": (), "kwargs": kwargs}
    await chat_consumer(scope, receive, send)
