"""A broadcast's WebSocket frame, built once and written as bytes to every member.

Through ASGI, each ``websocket.send`` re-encodes the text and re-serializes the frame for
every recipient. A room message is the same frame for all of them, so the bytes are built
once (one UTF-8 encode, one header) and written straight to each transport: what
gorilla/websocket calls a prepared message. That is only the same thing on the wire when the
server's WebSocket protocol would have written exactly these bytes: uvicorn's
websockets-sansio implementation, connection open, no extension negotiated (so no
permessage-deflate), nothing of its own waiting to be written. Anything else takes the ASGI
path.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Any

from app.protocol import repair_text

_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"
_OPEN: Any = None  # websockets.protocol.State.OPEN, looked up with the first protocol


def text_frame(text: str) -> bytes:
    """An unmasked, unfragmented server text frame (RFC 6455 §5.2) carrying ``text``."""
    payload = text.encode()
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", 0x81, length) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


class Prepared:
    """``text_frame`` of the text last asked for, reused while the same str object comes
    back: a fan-out hands every member the one decoded message, so its frame is built once.
    """

    __slots__ = ("_text", "_frame")

    def __init__(self) -> None:
        self._text: str | None = None
        self._frame = b""

    def __call__(self, text: str) -> bytes:
        if text is not self._text:
            self._frame = text_frame(text)
            self._text = text
        return self._frame


PREPARED = Prepared()

# The most bytes ``joined_frames`` puts in one write: a write of about the transport's high
# water mark (64 KiB) may pause it, and a paused transport takes the next frames by ASGI,
# which waits for the client to read; so a long replay is never all buffered at once.
JOIN_LIMIT = 65536


def joined_frames(texts: list[str], start: int, limit: int = JOIN_LIMIT) -> tuple[bytes, int]:
    """The frames of ``texts[start:]`` back to back, as consecutive sends would write them,
    up to ``limit`` bytes (at least one frame); and the index of the first text left out."""
    parts: list[bytes] = []
    size = 0
    end = start
    while end < len(texts) and (not parts or size < limit):
        part = text_frame(repair_text(texts[end]))  # as ChatConsumer._send_text repairs them
        if parts and size + len(part) > limit:
            break
        parts.append(part)
        size += len(part)
        end += 1
    return b"".join(parts), end


def raw_protocol(send: Callable[..., Any]) -> Any | None:
    """The uvicorn websockets-sansio protocol behind an ASGI ``send``, else None."""
    global _OPEN
    protocol = getattr(send, "__self__", None)
    impl = sys.modules.get(_SANSIO)
    if impl is None or not isinstance(protocol, impl.WebSocketsSansIOProtocol):
        return None
    if _OPEN is None:
        from websockets.protocol import State

        _OPEN = State.OPEN
    return protocol


def can_write(protocol: Any) -> bool:
    """Would ``protocol`` put exactly ``text_frame(text)`` on the wire for a text send now?"""
    conn = protocol.conn
    return (
        protocol.writable.is_set()
        and protocol.handshake_complete
        and not protocol.close_sent
        and conn.state is _OPEN
        and not conn.extensions
        and not conn.writes
        and not protocol.transport.is_closing()
    )
