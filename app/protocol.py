"""Chat protocol v1: parse what clients send, build what the server sends. Pure, no I/O.

Every frame the server sends is built here, so docs/PROTOCOL.md and this module are the
two places the wire format lives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_CLIENT_ID_CHARS = 64
# Every JSON answer the service makes outside Django (probes, refused handshakes).
JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class FrameError(ValueError):
    """A client frame was refused; ``code`` is machine-readable, ``detail`` is for people."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ChatMessage:
    """A validated message a client asked to post."""

    text: str
    client_id: str | None = None


def parse_client_frame(text: str, max_chars: int) -> ChatMessage:
    """Validate one text frame from a client; raise FrameError saying what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError("invalid_json", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError("not_an_object", "frame must be a JSON object")
    kind = data.get("type", "message")
    if kind != "message":
        raise FrameError("unknown_type", f"unknown frame type {str(kind)[:32]!r}")
    if "message" not in data:
        raise FrameError("missing_message", "frame needs a 'message' field")
    message = data["message"]
    if not isinstance(message, str):
        raise FrameError("message_not_string", "'message' must be a string")
    if not message.strip():
        raise FrameError("empty_message", "'message' must not be empty")
    if len(message) > max_chars:
        raise FrameError("message_too_long", f"'message' is longer than {max_chars} characters")
    client_id = data.get("client_id")
    if client_id is not None and (
        not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID_CHARS
    ):
        raise FrameError(
            "bad_client_id", f"'client_id' must be a string of 1 to {MAX_CLIENT_ID_CHARS} characters"
        )
    return ChatMessage(text=message, client_id=client_id)


@dataclass(frozen=True)
class FrameTemplate:
    """A message frame with a hole for its id, which history assigns atomically."""

    prefix: str
    suffix: str

    def with_id(self, message_id: int) -> str:
        return f"{self.prefix}{message_id}{self.suffix}"


def message_template(
    room: str, message: str, ts: int, user: str, client_id: str | None = None
) -> FrameTemplate:
    """The broadcast frame of a message, serialized once for every recipient."""
    prefix = '{"type":"message","room":' + _dumps(room) + ',"id":'
    suffix = ',"message":' + _dumps(message) + ',"ts":' + str(ts) + ',"user":' + _dumps(user)
    if client_id is not None:
        suffix += ',"client_id":' + _dumps(client_id)
    return FrameTemplate(prefix, suffix + "}")


def ack_frame(message_id: int, client_id: str | None) -> str:
    return _dumps({"type": "ack", "id": message_id, "client_id": client_id})


def error_frame(code: str, detail: str) -> str:
    return _dumps({"type": "error", "code": code, "detail": detail})


def gap_frame(first_missing: int, last_missing: int) -> str:
    return _dumps({"type": "gap", "from": first_missing, "to": last_missing})


def ready_frame(room: str, last_id: int, user: str) -> str:
    """Sent once after replay: the client is live from ``last_id`` on."""
    return _dumps({"type": "ready", "room": room, "last_id": last_id, "user": user})


@dataclass(frozen=True)
class ConnectParams:
    """What a client asked for in its handshake query string."""

    since: int | None = None
    last: int | None = None
    token: str | None = None


def parse_connect_params(query_string: bytes, history_max: int) -> ConnectParams:
    """Parse ``?since=<id>``, ``?last=<n>`` and ``?token=``; raise FrameError when malformed."""
    from urllib.parse import parse_qs

    try:
        query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        raise FrameError("bad_query", "query string could not be parsed") from None

    def integer(name: str, low: int, high: int) -> int | None:
        values = query.get(name)
        if not values:
            return None
        raw = values[-1]
        # isdigit() alone passes Unicode digits ('²') that int() then refuses.
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or not low <= int(raw) <= high:
            raise FrameError(f"bad_{name}", f"'{name}' must be an integer from {low} to {high}")
        return int(raw)

    since = integer("since", 0, 10**18)
    last = integer("last", 0, history_max)
    if since is not None and last is not None:
        raise FrameError("bad_query", "use either 'since' or 'last', not both")
    token = query.get("token", [None])[-1]
    return ConnectParams(since=since, last=last, token=token)
