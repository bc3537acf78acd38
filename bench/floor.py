"""The floor: the least a WebSocket chat can do, on the same uvicorn stack as Parley.

A bare ASGI app with no Django, no Channels and no Redis: rooms by path
``/ws/chat/<room>/``, every text frame ``{"message": ...}`` broadcast as ``{"message": ...}``
to every member of the room (the sender included), ``/healthz`` and ``/readyz`` always 200.
No ``ready`` frame, no ids, no history. Benchmarks run it beside Parley so that our figures
read as ratios of what the protocol stack itself costs on the same machine, in the same run.

Run: ``python -m bench.floor --port 8001`` (or ``uvicorn bench.floor:app``), from the repository root.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ROOM_PATH = re.compile(r"^/ws/chat/([A-Za-z0-9_.-]{1,64})/$")
OK = b'{"status":"ok"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(OK)).encode())]

rooms: dict[str, set[Send]] = {}


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The whole floor: probes over HTTP, broadcast rooms over WebSocket."""
    if scope["type"] == "http":
        status = 200 if scope["path"] in {"/healthz", "/readyz"} else 404
        await send({"type": "http.response.start", "status": status, "headers": HEADERS})
        await send({"type": "http.response.body", "body": OK if status == 200 else b""})
    elif scope["type"] == "websocket":
        await _chat(scope, receive, send)


async def _chat(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    match = ROOM_PATH.match(scope["path"])
    await receive()  # websocket.connect
    if match is None:
        await send({"type": "websocket.close", "code": 1008})
        return
    members = rooms.setdefault(match.group(1), set())
    # Joined before the handshake completes, so a client that has connected is a member.
    members.add(send)
    try:
        await send({"type": "websocket.accept"})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            text = event.get("text")
            if text is None:
                continue
            try:
                message = json.loads(text)["message"]
            except (ValueError, KeyError, TypeError):
                continue
            frame = {"type": "websocket.send", "text": json.dumps({"message": message})}
            for member in list(members):
                try:
                    await member(frame)
                except Exception:  # a member that is closing: it leaves on its own
                    pass
    finally:
        members.discard(send)
        if not members:
            rooms.pop(match.group(1), None)


def main() -> None:
    """Serve the floor with the protocol stack Parley uses (uvloop, httptools, sansio)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--shutdown-timeout", type=float, default=5.0)
    args = parser.parse_args()
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools",
        ws="websockets-sansio", lifespan="off", log_level="warning", access_log=False,
        ws_ping_interval=None, timeout_graceful_shutdown=args.shutdown_timeout, backlog=4096,
    )


if __name__ == "__main__":
    main()
