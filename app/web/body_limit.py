"""Request bodies over a limit are refused with a JSON 413 before anything stores them.

Django's ASGI handler spools a whole body (chunked ones included) to a temporary file before
any view runs, and over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` answers an HTML 400. In front of it,
``BodyLimit`` refuses a declared ``Content-Length`` over the limit without reading, reads a
streamed body up to the limit at most, and hands Django what it read as one message.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when absent or not a plain ASCII number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None
    return None


class BodyLimit:
    """ASGI middleware: HTTP bodies over ``limit`` bytes get 413 ``body_too_large``."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length is not None and length > self.limit:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect comes

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        detail = f"body is larger than {self.limit} bytes"
        body = json.dumps({"type": "error", "code": "body_too_large", "detail": detail}).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            # No "connection: close": uvicorn then reads and discards the rest of the body (on
            # the request deadline) instead of resetting a client still sending it, which
            # would lose this answer.
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
