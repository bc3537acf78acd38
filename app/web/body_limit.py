"""Request bodies are refused with a JSON error before anything stores them, unless the
request may send one: the answer comes before the body is read.

Django's ASGI handler spools a whole body (chunked ones included) to a temporary file before
any view runs, and over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` answers an HTML 400; and it did so
for any path and method, before the view checked who was asking, so 1,000 strangers could
make the process hold 256 KB each. In front of it, ``BodyLimit`` asks a ``Rule`` what this
request may send: a refusal (401, 403, …) is answered at once, unread; a limit of 0 (every
request but a POST to ``/api/rooms/<room>/messages``) refuses any body (413 ``body_not_allowed``); a declared
``Content-Length`` over the limit is refused unread, a streamed body read up to the limit at
most (413 ``body_too_large``), and what was read is handed to Django as one message.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Refusal:
    """An answer given before any of the request's body is read."""

    status: int
    code: str
    detail: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


# What a request may send, from its head alone: the most body bytes, or its refusal.
Rule = Callable[[Scope], "int | Refusal"]


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when absent or not a plain ASCII number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None
    return None


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of the (lower-case) header ``name``, as Django would read it."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class BodyLimit:
    """ASGI middleware: each HTTP request's body within what ``rule`` allows it, or refused."""

    def __init__(self, app: ASGIApp, rule: Rule) -> None:
        self.app = app
        self.rule = rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.rule(scope)
        if isinstance(limit, Refusal):
            await _answer(send, limit)
            return
        length = declared_length(scope)
        if length is not None and length > limit:
            await _answer(send, _too_large(limit))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, _too_large(limit))
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


def _too_large(limit: int) -> Refusal:
    if limit == 0:
        return Refusal(413, "body_not_allowed", "this request takes no body")
    return Refusal(413, "body_too_large", f"body is larger than {limit} bytes")


async def _answer(send: Send, refusal: Refusal) -> None:
    body = json.dumps({"type": "error", "code": refusal.code, "detail": refusal.detail}).encode()
    await send({
        "type": "http.response.start",
        "status": refusal.status,
        # No "connection: close": uvicorn then reads and discards the rest of the body (on
        # the request deadline) instead of resetting a client still sending it, which
        # would lose this answer.
        "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *refusal.headers,
        ],
    })
    await send({"type": "http.response.body", "body": body})
