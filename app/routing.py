"""WebSocket routes, in the Channels tutorial's shape."""

from __future__ import annotations

from typing import Any

from channels.routing import URLRouter
from django.urls import re_path

from app.consumers import ChatConsumer
from app.router import Receive, Send, deny_websocket


async def not_found(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await deny_websocket(scope, receive, send, 404, "not_found")


websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room_name>[^/]+)/$", ChatConsumer.as_asgi()),
    re_path(r"", not_found),
]

websocket_application = URLRouter(websocket_urlpatterns)
