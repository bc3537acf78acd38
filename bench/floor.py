"""The floor: the least a WebSocket chat can do, on the same uvicorn stack as Parley.

A bare ASGI app with no Django, no Channels and no Redis: rooms by path
``/ws/chat/<room>/``, every text frame ``{"message": ...}`` broadcast as ``{"message": ...}``
to every member of the room (the sender included), ``/healthz`` and ``/readyz`` always 200.
No ``ready`` frame, no ids, no history. Benchmarks run it beside Parley so that our figures
read as ratios of what the protocol stack itself costs on the same machine, in the same run.

Run: ``python -m bench.floor --port 8001`` (or ``uvicorn bench.floor:app``), from the repository root.
Two opt-in flags let clients written for Parley's handshake run against it unchanged (the
cutover benchmark's floor leg, scripts/cutover_floor.py): ``--ready`` sends ``{"type":"ready"}``
after the accept, as Parley does after its handshake; ``--color blue`` names the colour in
``/healthz`` and ``/readyz``, as Parley's ``/readyz`` does, so that a deploy's check of which
colour Traefik routes to works on it. Without them it answers exactly as it always has.
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

READY = '{"type":"ready"}'

rooms: dict[str, set[Send]] = {}
# Set by main() from --ready and --color; the defaults are the floor as scripts/bench.py measures it.
send_ready = False
probe_body, probe_headers = OK, HEADERS


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The whole floor: probes over HTTP, broadcast rooms over WebSocket."""
    if scope["type"] == "http":
        status = 200 if scope["path"] in {"/healthz", "/readyz"} else 404
        await send({"type": "http.response.start", "status": status, "headers": probe_headers})
        await send({"type": "http.response.body", "body": probe_body if status == 200 else b""})
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
        if send_ready:
            await send({"type": "websocket.send", "text": READY})
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
    parser.add_argument("--ready", action="store_true", help='send {"type":"ready"} after the accept')
    parser.add_argument("--color", help="name this colour in /healthz and /readyz")
    args = parser.parse_args()
    global send_ready, probe_body, probe_headers
    send_ready = args.ready
    if args.color is not None:
        probe_body = json.dumps({"status": "ok", "color": args.color}, separators=(",", ":")).encode()
        probe_headers = [HEADERS[0], (b"content-length", str(len(probe_body)).encode())]
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools",
        ws="websockets-sansio", lifespan="off", log_level="warning", access_log=False,
        ws_ping_interval=None, timeout_graceful_shutdown=args.shutdown_timeout, backlog=4096,
    )


if __name__ == "__main__":
    main()
