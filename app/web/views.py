"""Django views: the chat page, the room history API and the room presence API."""

from __future__ import annotations

import functools
import hmac
import json
import re
import time
from functools import lru_cache
from pathlib import Path

from django.http import HttpRequest, HttpResponse, JsonResponse

from app.chat.services import ChatServices
from app.config import CONFIG
from app.history import History, HistoryUnavailable, Replay
from app.history.lineage import diverged, tag_at
from app.history.pages import PAGE_FRAMES, fill_pages, read_page
from app.presence import PresenceUnavailable
from app.protocol import (
    API_SENDER,
    MAX_EPOCH_CHARS,
    MAX_TS,
    FrameError,
    bounded_integer,
    dedupe_key,
    max_api_body_bytes,
    message_template,
    parse_api_body,
    single_values,
)
from app.rooms import ROOM_RULE, is_valid_room
from app.web.body_limit import Refusal, Scope, header

STATIC = Path(__file__).parent / "static"
# connect-src 'self': the page talks to its own server only. In CSP Level 3 browsers
# (Chromium, which the page tests drive) 'self' also matches ws: and wss: to the page's own
# host and port; what ``ws: wss:`` allowed besides was a socket to any host at all.
# SECURITY.md quotes this policy verbatim (tests/web/test_views.py holds them together).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# What the one route that takes a body (the POST API) may send: what one message can need.
MAX_BODY_BYTES = max_api_body_bytes(CONFIG.max_message_chars, CONFIG.max_frame_bytes)
# The POST API, as the URLconf routes it (Django matches the decoded path, as here).
_POST_PATH = re.compile(r"/api/rooms/[^/]+/messages")
# The history API's messages per answer, in UTF-8 bytes (always at least one message): a
# full room of the largest messages is ~24 MB, which one request could make the process
# build and buffer for a client that may never read it. Clients page with ``since`` up to
# ``last_id``, as they must past ``limit`` anyway. It is read a page at a time
# (app/history/pages.py) up to that cut: reading all ``limit`` first held the whole room per
# request (20 requests at once peaked at +235 MB in a hostile probe).
MAX_ANSWER_BYTES = 1024 * 1024
# The page's own files, by name: a whitelist, so no request path ever reaches the filesystem.
ASSET_TYPES = {
    "client.js": "text/javascript; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}


_chat: ChatServices | None = None


def configure(chat: ChatServices) -> None:
    """Give the views the process's chat services (the composition root calls this)."""
    global _chat
    _chat = chat


def _services() -> ChatServices:
    if _chat is None:
        raise RuntimeError("chat services are not wired yet")
    return _chat


@lru_cache(maxsize=8)
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def index(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(_asset("index.html"), content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = PAGE_CSP
    response["Cache-Control"] = "no-cache"
    return response


def asset(request: HttpRequest, name: str) -> HttpResponse:
    """The chat page's script and stylesheet; 404 for any other name."""
    content_type = ASSET_TYPES.get(name)
    if content_type is None:
        return _error(404, "not_found", "no such asset")
    response = HttpResponse(_asset(name), content_type=content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 handler: the JSON error every other refusal here uses."""
    return _error(404, "not_found", "no such resource")


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"type": "error", "code": code, "detail": detail}, status=status)


async def room_messages(request: HttpRequest, room: str) -> HttpResponse:
    if not is_valid_room(room):
        return _error(400, "bad_room", ROOM_RULE)
    if request.method in READS:
        return await _history(request, room)
    if request.method == "POST":
        return await _publish(request, room)
    response = _error(405, "method_not_allowed", "use GET or POST")
    response["Allow"] = "GET, HEAD, POST"
    return response


# HEAD answers as GET does, without the body (RFC 9110, 9.3.2; the server drops it).
READS = ("GET", "HEAD")
# The history read's parameters; any other name is ignored.
HISTORY_PARAMS = ("since", "limit", "ts", "epoch")
DEFAULT_LIMIT = 100


async def _history(request: HttpRequest, room: str) -> HttpResponse:
    """GET: messages after ``since`` (default 0), at most ``limit`` and ``MAX_ANSWER_BYTES``,
    oldest first.

    With ``epoch`` other than the room's, or ``since`` past the room's newest id, or ``ts``
    other than the tag history holds for ``since`` (app/history/lineage.py), ``since``
    belongs to ids that started over: the answer is then the room's epoch from its start,
    marked ``"reset": true``.
    """
    refused = _may_read(request, room)
    if refused is not None:
        return refused
    try:
        query = single_values(dict(request.GET.lists()), HISTORY_PARAMS)
        since = 0 if "since" not in query else bounded_integer("since", query["since"], 0, 10**18)
        limit = (min(DEFAULT_LIMIT, CONFIG.history_max) if "limit" not in query  # a history shorter than it
                 else bounded_integer("limit", query["limit"], 1, CONFIG.history_max))
        ts = None if "ts" not in query else bounded_integer("ts", query["ts"], 0, MAX_TS)
        epoch = query.get("epoch")
        if epoch is not None and not 0 < len(epoch) <= MAX_EPOCH_CHARS:
            raise FrameError("bad_epoch", f"'epoch' must be 1 to {MAX_EPOCH_CHARS} characters")
    except FrameError as exc:
        return _error(400, exc.code, exc.detail)
    history = _services().history
    count = min(limit, PAGE_FRAMES)
    try:
        replay, count = await read_page(functools.partial(history.after, room, since), count)
        # As a WebSocket resume: another epoch, or ids the room never reached in its own.
        # Or another message under ``since`` than the reader says (the store went back in
        # time): this answer starts the epoch over; a read never restarts the room.
        state = replay.state
        reset = ((epoch is not None and epoch != state.epoch) or since > state.top
                 or diverged(ts, tag_at(replay, since)))
        if reset:
            replay, count = await read_page(functools.partial(history.after, room, state.base), count)
    except HistoryUnavailable:
        return _error(503, "unavailable", "history storage is unavailable")
    state = replay.state
    gap = "null" if replay.missing is None else json.dumps(
        {"from": replay.missing[0], "to": replay.missing[1]}
    )
    frames = await answer_frames(history, room, replay, count, limit)
    # Stored frames are JSON already: splice them in rather than parse and re-encode.
    body = (
        '{"room":' + json.dumps(room) + ',"epoch":' + json.dumps(state.epoch)
        + ',"base":' + str(state.base) + ',"last_id":' + str(state.last_id)
        + (',"reset":true' if reset else "") + ',"gap":' + gap
        + ',"messages":[' + ",".join(frames) + "]}"
    )
    return HttpResponse(body, content_type="application/json")


async def answer_frames(history: History, room: str, first: Replay, count: int, limit: int) -> list[str]:
    """The frames of a history answer: from ``first`` (the first page, read with ``count``
    frames asked) on, at most ``limit`` and ``MAX_ANSWER_BYTES`` of them, read a page at a time
    up to the room's newest id as the first page found it, so a request holds the answer and
    one page, never all ``limit`` frames.

    The pages after the first are ``History.fill`` reads (ids up to that newest id were shown,
    so none is unshown; identical requests at once share them). The answer ends early, as a
    short one, where a later page is not the continuation of the first (another epoch, ids the
    log no longer holds, another message under the last id sent: the store changed between
    reads) or history stops answering: the reader's next page (``since`` its last id, with
    ``epoch`` and ``ts``) is answered with what changed."""
    state = first.state
    frames: list[str] = []
    size = 0
    page = first
    last = 0
    while True:
        for message_id, frame in page.frames:
            size += len(frame.encode())
            if message_id > state.last_id or len(frames) == limit or (frames and size > MAX_ANSWER_BYTES):
                return frames
            frames.append(frame)
            last = message_id
        if not page.frames or len(page.frames) < count or last >= state.last_id or len(frames) == limit:
            return frames
        tag = tag_at(page, last)
        del page  # not held while the next page is read
        read = fill_pages(history, room, state.epoch, last, state.last_id + 1)
        try:
            page, count = await read_page(read, min(count, limit - len(frames)))
        except HistoryUnavailable:
            return frames
        if page.state.epoch != state.epoch or page.missing is not None or diverged(tag, tag_at(page, last)):
            return frames


def _may_read(request: HttpRequest, room: str) -> HttpResponse | None:
    """None if the request may read ``room`` (its history, its presence), else the refusal.

    Open with ``CHAT_AUTH=none``. With ``jwt``: ``Authorization: Bearer`` with
    ``CHAT_API_TOKEN`` (backends) or a chat token that grants the room.
    """
    if CONFIG.auth != "jwt" or (CONFIG.api_token and _authorized(request)):
        return None
    from app.chat.auth import AuthError, authorize, bearer_token  # jwt mode only

    try:
        authorize(bearer_token(request.headers.get("Authorization")), room, CONFIG.jwt_secret,
                  audience=CONFIG.jwt_audience)
    except AuthError as exc:
        if exc.reason == "room_not_allowed":
            return _error(403, exc.reason, "the token does not grant this room")
        response = _error(401, exc.reason, "send Authorization: Bearer <a token granting this room>")
        response["WWW-Authenticate"] = "Bearer"
        return response
    return None


def _authorized(request: HttpRequest) -> bool:
    """The request carries ``CHAT_API_TOKEN``."""
    return _is_api_token(request.headers.get("Authorization"))


def _is_api_token(authorization: str | None) -> bool:
    """``authorization`` is ``CHAT_API_TOKEN``, read as every Authorization header here is
    (the scheme in any case, spaces around the token ignored)."""
    from app.chat.auth import bearer_token  # pure header parsing; no jwt machinery

    if not CONFIG.api_token:
        return False
    supplied = bearer_token(authorization) or ""
    return hmac.compare_digest(supplied.encode("utf-8", "replace"), CONFIG.api_token.encode())


def _publish_refusal(authorization: str | None) -> Refusal | None:
    """Why a post with this Authorization header is refused, or None if it may post."""
    if not CONFIG.api_token:
        return Refusal(403, "api_disabled", "set CHAT_API_TOKEN to enable publishing over HTTP")
    if not _is_api_token(authorization):
        return Refusal(401, "unauthorized", "send Authorization: Bearer <CHAT_API_TOKEN>",
                       ((b"www-authenticate", b"Bearer"),))
    return None


def body_rule(scope: Scope) -> int | Refusal:
    """How much body an HTTP request may send (app.web.body_limit): only an authorized post
    takes one, so nobody else can make the process hold a byte of body; a post without the
    token is refused before its body is read, as the view would refuse it after."""
    if scope.get("method") != "POST" or not _POST_PATH.fullmatch(scope.get("path", "")):
        return 0
    refused = _publish_refusal(header(scope, b"authorization"))
    return MAX_BODY_BYTES if refused is None else refused


async def _publish(request: HttpRequest, room: str) -> HttpResponse:
    """POST: a backend posts a message as a client would; answers with the assigned id."""
    refused = _publish_refusal(request.headers.get("Authorization"))
    if refused is not None:
        response = _error(refused.status, refused.code, refused.detail)
        for name, value in refused.headers:
            response[name.decode()] = value.decode()
        return response
    if len(request.body) > MAX_BODY_BYTES:
        return _error(413, "body_too_large", f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = parse_api_body(request.body, CONFIG.max_message_chars)
    except FrameError as exc:
        return _error(400, exc.code, exc.detail)
    chat = body.chat
    template = message_template(room, chat.text, int(time.time() * 1000), body.user, chat.client_id)
    try:
        # The API is one sender (the backends holding CHAT_API_TOKEN): its own dedupe space.
        appended = await _services().post(room, template, dedupe_key(API_SENDER, chat.client_id))
    except HistoryUnavailable:
        return _error(503, "unavailable", "message not stored: storage unavailable, retry")
    return JsonResponse(
        {"id": appended.id, "duplicate": appended.duplicate, "client_id": chat.client_id,
         "epoch": appended.state.epoch},
        status=200 if appended.duplicate else 201,
    )


async def room_presence(request: HttpRequest, room: str) -> HttpResponse:
    """GET: the room's exact member count and up to 100 of its members."""
    if not is_valid_room(room):
        return _error(400, "bad_room", ROOM_RULE)
    if request.method not in READS:
        response = _error(405, "method_not_allowed", "use GET")
        response["Allow"] = "GET, HEAD"
        return response
    refused = _may_read(request, room)
    if refused is not None:
        return refused
    presence = _services().presence
    if presence is None:
        return _error(404, "presence_disabled", "presence is off (CHAT_PRESENCE=false)")
    try:
        body = await presence.snapshot(room)
    except PresenceUnavailable:
        return _error(503, "unavailable", "presence storage is unavailable")
    return HttpResponse(body, content_type="application/json")
