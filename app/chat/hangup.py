"""Ending a WebSocket whose client has stopped reading, without waiting for it.

An ASGI ``websocket.close`` waits, like every send, until the socket's write buffer has
room: for a client that never reads, forever. And a transport's ``close()`` flushes its
buffer before it lets go, so even after the application returns, uvicorn would hold that
socket, its buffer and its descriptor for good (and a drain would wait for it to the end of
its budget). On uvicorn's websockets-sansio protocol the close frame is instead queued
behind what is already buffered, so a client that does read again still gets every frame
and then the close, in order, and the transport is aborted if it has not flushed within
``linger`` seconds. Elsewhere (daphne, uvicorn's other protocols) this is not possible and
the caller falls back to an ordinary close.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.protocol import State


def hang_up(protocol: Any, code: int, reason: str, linger: float) -> None:
    """Queue a close frame on ``protocol`` (a websockets-sansio protocol, see
    ``app.chat.wire.raw_protocol``) and abort its transport after ``linger`` seconds
    (at once if ``linger`` is not positive) unless it has closed by then."""
    transport = protocol.transport
    conn = protocol.conn
    if not protocol.close_sent and conn.state is State.OPEN and not transport.is_closing():
        conn.send_close(code, reason)
        transport.write(b"".join(conn.data_to_send()))
        # From here uvicorn discards further input and refuses further sends; when the
        # application returns it closes the transport (after flushing, hence the abort).
        protocol.close_sent = True
    if linger > 0:
        _LINGERING[transport] = asyncio.get_running_loop().call_later(linger, _abort, transport)
    else:
        transport.abort()


def abort_lingering() -> int:
    """Abort every transport still lingering after a hang-up; how many. A drain calls this:
    it has no time to give a client that was already too slow to read."""
    transports = list(_LINGERING)
    for transport in transports:
        _LINGERING.pop(transport).cancel()
        transport.abort()
    return len(transports)


# Transports waiting out their linger (at most one per client dropped in the last linger).
_LINGERING: dict[Any, asyncio.TimerHandle] = {}


def _abort(transport: Any) -> None:
    _LINGERING.pop(transport, None)
    transport.abort()  # a transport that has closed meanwhile ignores it (asyncio's, uvloop's)
