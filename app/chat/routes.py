"""WebSocket routes: ``/ws/chat/<room_name>/`` to the chat consumer.

Matched here with the same regex and the same ``scope["url_route"]`` that Channels'
``URLRouter`` would produce, without importing ``django.urls`` (and through it
``django.http`` and ``django.db.models``, ~100 ms) on the way to ready.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from app.chat.admission import Receive, Scope, Send, deny
from app.chat.consumer import ChatConsumer
from app.chat.services import ChatServices

# Everything between the prefix and the final slash is the room, whatever it holds (empty,
# slashes from a decoded %2F, a newline): the consumer refuses a bad name with 400 bad_room,
# as the protocol says. fullmatch, because ``$`` also matches before a trailing newline.
CHAT_PATH = re.compile(r"/ws/chat/(?P<room_name>.*)/", re.DOTALL)


def match(path: str) -> dict[str, str] | None:
    """The route's kwargs for a path, or None when no route matches."""
    found = CHAT_PATH.fullmatch(path)
    return found.groupdict() if found else None


def websocket_application(chat: ChatServices) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The WebSocket ASGI app: chat rooms, with ``chat`` passed to every consumer."""

    # A plain function that hands back the consumer's own coroutine, rather than coroutines
    # awaiting it (this one, and Channels' ``as_asgi`` wrapper, which does no more than make
    # the consumer): an open socket holds the chain of coroutines it runs in for its whole
    # life, a few hundred bytes a link.
    def route(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        kwargs = match(scope["path"])
        if kwargs is None:
            return deny(scope, receive, send, 404, "not_found")
        # The scope is this connection's own: set the route in place rather than copy it.
        scope["url_route"] = {"args": (), "kwargs": kwargs}
        return ChatConsumer(services=chat)(scope, receive, send)

    return route
