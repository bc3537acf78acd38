"""Chat protocol v1: parse what clients send, build what the server sends. Pure, no I/O.

Every frame the server sends is built here, so docs/PROTOCOL.md and this module are the
two places the wire format lives.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

MAX_CLIENT_ID_CHARS = 64
MAX_USER_CHARS = 64
MAX_EPOCH_CHARS = 64
# The most JSON one character can take: an astral one, as two ``\uXXXX`` escapes.
MAX_JSON_BYTES_PER_CHAR = 12
# Room in an API body for its keys, punctuation and some whitespace.
API_BODY_SLACK = 1024
# A message's ``ts`` (unix ms) as a query parameter: far past any clock, within 2^53.
MAX_TS = 2**53 - 1
# ``?anon=``: an anonymous client's own secret, in URL-safe characters; 22 of them are the
# 128 bits of randomness the page draws (base64url), 128 leave room for other clients' ways.
ANON_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,128}")

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# In a Python str every surrogate code point is unpaired (json.loads joins valid pairs), and
# an unpaired one has no UTF-8 encoding: a frame holding one cannot be sent at all.
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def is_encodable(text: str) -> bool:
    """Whether ``text`` can be sent as UTF-8 (it holds no unpaired surrogate)."""
    return text.isascii() or _SURROGATE.search(text) is None


def repair_text(text: str) -> str:
    """``text`` with every unpaired surrogate replaced by U+FFFD, as browsers decode them."""
    return text if is_encodable(text) else _SURROGATE.sub(REPLACEMENT, text)


def _dumps(value: object) -> str:
    # Input is refused before it gets here (parse_client_frame); this is the last guard, so
    # no frame the server builds can ever fail to encode, whatever reached it.
    return repair_text(_encode(value))


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
    except json.JSONDecodeError:
        raise FrameError("invalid_json", "frame is not valid JSON") from None
    except (ValueError, RecursionError):
        # Valid JSON past what the server parses: an integer of over 4,300 digits (Python's
        # limit) or nesting about a thousand deep. Said as such, not as "not JSON".
        raise FrameError("invalid_json", "frame nests too deep or holds too long a number") from None
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
    if not is_encodable(message):
        raise FrameError("invalid_unicode", "'message' holds an unpaired surrogate (not UTF-8)")
    client_id = data.get("client_id")
    if client_id is not None and (
        not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID_CHARS
        or not is_encodable(client_id)
    ):
        raise FrameError(
            "bad_client_id",
            f"'client_id' must be a UTF-8 string of 1 to {MAX_CLIENT_ID_CHARS} characters",
        )
    return ChatMessage(text=message, client_id=client_id)


@dataclass(frozen=True)
class ApiPost:
    """A validated ``POST /api/rooms/<room>/messages`` body: a client frame plus ``user``."""

    chat: ChatMessage
    user: str


def max_api_body_bytes(max_chars: int, max_frame_bytes: int) -> int:
    """The largest API body a valid post can need: ``message``, ``client_id`` and ``user`` at
    their longest with every character escaped (``json.dumps``' default), and never less
    than a WebSocket frame may carry, so whatever a client can send a backend can post."""
    fields = (max_chars + MAX_CLIENT_ID_CHARS + MAX_USER_CHARS) * MAX_JSON_BYTES_PER_CHAR
    return max(max_frame_bytes, fields + API_BODY_SLACK)


def parse_api_body(body: bytes, max_chars: int, default_user: str = "api") -> ApiPost:
    """Validate an API body; ``user`` is optional, and when present must be a valid name."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("invalid_utf8", "body is not UTF-8") from None
    chat = parse_client_frame(text, max_chars)
    user = json.loads(text).get("user", default_user)  # parsed fine just above
    if not isinstance(user, str) or not 0 < len(user) <= MAX_USER_CHARS or not is_encodable(user):
        raise FrameError("bad_user", f"'user' must be a UTF-8 string of 1 to {MAX_USER_CHARS} characters")
    return ApiPost(chat=chat, user=user)


# The HTTP API's sender for deduplication: a namespace of its own, which no token's ``sub``
# (a string) can name. It was the owner "api", so a user whose sub was "api" shared the
# API's keys: one side's message was dropped and acked under the other's id.
class ApiSender:
    """The HTTP API as a sender (``API_SENDER``): not a user, whatever users are called."""


API_SENDER = ApiSender()


def dedupe_key(owner: str | ApiSender | None, client_id: str | None) -> str | None:
    """The key a send is deduplicated by: its ``client_id`` within its sender's namespace.

    ``owner`` is who is sending when the server knows it (a token's ``sub``, ``API_SENDER``
    for the HTTP API), so nobody can pre-empt another user's ``client_id``; anonymous senders
    have no identity, so their ``client_id`` alone is the key and must be unguessable
    (random). The owner is length-prefixed so no (owner, client_id) pair can spell another
    one's key, and each kind of sender has its own prefix.
    """
    if client_id is None:
        return None
    if owner is None:
        return f"a:{client_id}"
    if isinstance(owner, ApiSender):
        return f"p:{client_id}"
    return f"u:{len(owner)}:{owner}:{client_id}"


@dataclass(frozen=True)
class FrameTemplate:
    """A message frame with a hole for its id, which history assigns atomically.

    ``ts``: the frame's ``ts`` (unix ms), the message's tag in history (app/history/lineage.py);
    None for a frame without one (nothing is then checked against it)."""

    prefix: str
    suffix: str
    ts: int | None = None

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
    return FrameTemplate(prefix, suffix + "}", ts)


def is_message_frame(text: str, message_id: int) -> bool:
    """Is ``text`` a message frame under ``message_id``, as ``message_template`` writes one?

    For what history reads back: a record cut short, not JSON, or under another id (another
    tool's write, or damage) would be pasted as it is into a replay or an API answer that no
    client could then parse, or shown under the wrong id."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(frame, dict) or frame.get("type") != "message":
        return False
    found = frame.get("id")
    return type(found) is int and found == message_id


def ack_frame(message_id: int, client_id: str | None) -> str:
    return _dumps({"type": "ack", "id": message_id, "client_id": client_id})


def error_frame(code: str, detail: str) -> str:
    return _dumps({"type": "error", "code": code, "detail": detail})


def gap_frame(first_missing: int, last_missing: int) -> str:
    return _dumps({"type": "gap", "from": first_missing, "to": last_missing})


def ready_frame(room: str, last_id: int, user: str, epoch: str, max_message_chars: int) -> str:
    """Sent once after replay: the client is live from ``last_id`` on, in ``epoch``; it may
    send messages of up to ``max_message_chars`` characters (so it can check before sending)."""
    return _dumps({"type": "ready", "room": room, "last_id": last_id, "user": user, "epoch": epoch,
                   "max_message_chars": max_message_chars})


def reset_frame(room: str, epoch: str, last_id: int) -> str:
    """The room's ids started over: forget the ids seen so far; what follows continues
    after ``last_id`` in ``epoch``, as for a client that has just joined."""
    return _dumps({"type": "reset", "room": room, "epoch": epoch, "last_id": last_id})


def bounded_integer(name: str, raw: str, low: int, high: int) -> int:
    """A query parameter's ASCII digits as an integer in ``[low, high]``; FrameError
    ``bad_<name>`` otherwise. Leading zeros are allowed, as the integer they spell."""
    # isdigit() alone passes Unicode digits ('²') that int() then refuses; the length is
    # checked before int() so a long string costs nothing (and never meets int's limit).
    digits = raw.lstrip("0") or "0"
    digit_string = raw.isascii() and raw.isdigit() and len(digits) <= len(str(high))
    if not digit_string or not low <= int(digits) <= high:
        raise FrameError(f"bad_{name}", f"'{name}' must be an integer from {low} to {high}")
    return int(digits)


# The handshake's parameters; any other name is ignored (a client may add its own).
CONNECT_PARAMS = ("since", "last", "epoch", "ts", "token", "anon")


def single_values(query: Mapping[str, list[str]], names: Iterable[str]) -> dict[str, str]:
    """The value of each of ``names`` that ``query`` (name -> values) has; FrameError
    ``bad_query`` for one given more than once. Which of two would count is a guess that a
    proxy or a gateway in front may have made the other way (parameter pollution), so
    neither counts."""
    values: dict[str, str] = {}
    for name in names:
        given = query.get(name)
        if not given:
            continue
        if len(given) > 1:
            raise FrameError("bad_query", f"'{name}' given more than once")
        values[name] = given[0]
    return values


@dataclass(frozen=True)
class ConnectParams:
    """What a client asked for in its handshake query string."""

    since: int | None = None
    last: int | None = None
    token: str | None = None
    epoch: str | None = None
    ts: int | None = None  # with ``since``: the ``ts`` of the message at ``since``, as shown
    anon: str | None = None  # an anonymous client's secret: its name across reconnects


def anonymous_name(secret: str) -> str:
    """The name of an anonymous client that sent ``?anon=<secret>``: the same on every
    connection, so its reconnects and a deploy's keep it one member of the room's presence.

    A public function of a private value: the name is shown to everyone, the secret leaves
    the client only for its own server, so nobody takes another's name by reading it. The
    name is 64 bits of the hash: at 32 (a random name's length) a secret hashing to a chosen
    name was minutes of one core away (2^32 hashes); 2^64 is out of reach. Still a label,
    not a proof of who sent what (SECURITY.md): JWT mode is for that.
    """
    return "anon-" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def parse_connect_params(query_string: bytes, history_max: int, anonymous: bool = True) -> ConnectParams:
    """Parse ``?since=<id>``, ``?epoch=``, ``?ts=``, ``?last=<n>``, ``?token=`` and ``?anon=``;
    raise FrameError when malformed. ``anonymous`` False (JWT mode): ``anon`` is ignored,
    not even checked, as PROTOCOL.md says."""
    try:
        parsed = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        raise FrameError("bad_query", "query string could not be parsed") from None
    query = single_values(parsed, CONNECT_PARAMS)

    def integer(name: str, low: int, high: int) -> int | None:
        value = query.get(name)
        return None if value is None else bounded_integer(name, value, low, high)

    since = integer("since", 0, 10**18)
    last = integer("last", 0, history_max)
    if since is not None and last is not None:
        raise FrameError("bad_query", "use either 'since' or 'last', not both")
    token = query.get("token")
    epoch = query.get("epoch")
    if epoch is not None and not 0 < len(epoch) <= MAX_EPOCH_CHARS:
        raise FrameError("bad_epoch", f"'epoch' must be 1 to {MAX_EPOCH_CHARS} characters")
    # Only meaningful with ``since``; alone it is accepted and unused, as ``epoch`` is.
    ts = integer("ts", 0, MAX_TS)
    anon = query.get("anon") if anonymous else None
    if anon is not None and not ANON_PATTERN.fullmatch(anon):
        raise FrameError("bad_anon", "'anon' must be 22 to 128 of A-Z a-z 0-9 _ -")
    return ConnectParams(since=since, last=last, token=token, epoch=epoch, ts=ts, anon=anon)


# -- presence and typing (never stored, no id) -----------------------------------------

_TYPING_MARK = '"typing"'


def is_typing_frame(text: str) -> bool:
    """True for a client's ``{"type":"typing"}``. Any other frame is left to
    ``parse_client_frame``; the substring check keeps ordinary messages to one JSON parse.
    Only a ``\\u`` escape can spell a letter of "typing" other than as itself."""
    if _TYPING_MARK not in text and "\\u" not in text:
        return False
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("type") == "typing"


@functools.lru_cache(maxsize=8192)
def _user_entry(name: str) -> str:
    # Presence lists the same names again and again (every joiner's snapshot names up to
    # 100 of the room, every batch): each is encoded once, not once per frame.
    return '{"user":' + _dumps(name) + "}"


def _users(names: list[str]) -> str:
    return "[" + ",".join(map(_user_entry, names)) + "]"


def members_json(names: list[str]) -> str:
    """The ``members`` list of a presence frame, to build once and reuse."""
    return _users(names)


def presence_frame(room: str, count: int, members: list[str] | str, version: int) -> str:
    """Sent once after ``ready``: the room's exact count and up to 100 of its members
    (``members`` as names, or as ``members_json`` already built)."""
    listed = members if isinstance(members, str) else _users(members)
    return ('{"type":"presence","room":' + _dumps(room) + ',"count":' + str(count)
            + ',"members":' + listed + ',"version":' + str(version) + "}")


def _change_frame(kind: str, room: str, user: str, count: int, version: int, changed: int | None) -> str:
    """``changed``: the version of the step that made this change (``version`` if None)."""
    return _dumps({"type": kind, "room": room, "user": user, "count": count, "version": version,
                   "changed": version if changed is None else changed})


def join_frame(room: str, user: str, count: int, version: int, changed: int | None = None) -> str:
    return _change_frame("join", room, user, count, version, changed)


def leave_frame(room: str, user: str, count: int, version: int, changed: int | None = None) -> str:
    return _change_frame("leave", room, user, count, version, changed)


def presence_diff_frame(room: str, count: int, joined: list[str], left: list[str], version: int,
                        changed: Mapping[str, int] | None = None) -> str:
    """Several joins and leaves of a big room at once (each list names at most 100 users);
    each entry with the version of the step that made it (``changed``, else ``version``)."""
    steps = changed or {}

    def entries(names: list[str]) -> str:
        # Each name's cached entry, its closing brace replaced by the step's version.
        return "[" + ",".join(_user_entry(name)[:-1] + ',"changed":' + str(steps.get(name, version)) + "}"
                              for name in names) + "]"

    return ('{"type":"presence_diff","room":' + _dumps(room) + ',"count":' + str(count)
            + ',"joined":' + entries(joined) + ',"left":' + entries(left)
            + ',"version":' + str(version) + "}")


def presence_body(room: str, count: int, members: list[str]) -> str:
    """``GET /api/rooms/<room>/presence``."""
    return '{"room":' + _dumps(room) + ',"count":' + str(count) + ',"members":' + _users(members) + "}"


def typing_frame(room: str, user: str) -> str:
    return _dumps({"type": "typing", "room": room, "user": user})
