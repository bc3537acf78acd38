"""Who may open a chat WebSocket, and how a refused handshake is answered.

Used by the process's router (draining, not ready, origin, connection cap) and by the chat
consumer (bad room, bad query, bad token, storage down): one refusal path, one metric.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from app import metrics
from app.throttled_log import Throttled

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Every JSON answer the service makes outside Django (probes, refused handshakes). Here, not
# in app.protocol: the router needs it before listening, and the frame rules can wait.
JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]

logger = logging.getLogger("parley")
_refusals = Throttled(logger, interval=10.0)


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Allow same-host origins, origins listed in ``allowed`` ('*' for any), and no Origin.

    Browsers always send Origin on WebSocket handshakes, so a missing header means a
    non-browser client, which carries no ambient browser credentials to hijack.
    """
    if origin is None or "*" in allowed:
        return True
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return False
    return host is not None and parts.netloc.lower() == host.lower()


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header, decoded as latin-1 (ASGI headers are bytes)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def deny(scope: Scope, receive: Receive, send: Send, status: int, code: str) -> None:
    """Receive the handshake's ``websocket.connect``, then refuse it."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await refuse(scope, send, status, code)


def refusal_body(code: str) -> bytes:
    """The JSON body of a refused handshake: ``{"type": "error", "code": ...}``."""
    return json.dumps({"type": "error", "code": code}).encode()


async def refuse(scope: Scope, send: Send, status: int, code: str) -> None:
    """Refuse a handshake with an HTTP status and a JSON reason where the server can say so."""
    # Counted before answering, so a client that reads the metrics next sees it.
    metrics.HANDSHAKES_REFUSED.labels(code).inc()
    _refusals.info(code, "handshake refused: %d %s (%s)", status, code, scope.get("path", ""))
    if "websocket.http.response" in scope.get("extensions", {}):
        body = refusal_body(code)
        await send({"type": "websocket.http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008 if status == 403 else 1013})
