"""Properties of the whole service under arbitrary input, against one real ``python -m app``.

Hypothesis throws arbitrary Unicode and JSON at every field a client controls: the fields of
a WebSocket frame (``message``, ``client_id``, ``type``, extra fields, nesting), the join's
query parameters (``since``, ``last``, ``token``, ``epoch``) and the body of the HTTP API's
POST. After every example, whatever it was:

- the process is still running;
- a bystander (a second client in the room, connected for the whole test) is still connected
  and still receives what is posted next;
- everything that was acknowledged can be replayed: a ``?since=0`` join returns every acked
  id with its text, and so does ``GET /api/rooms/<room>/messages``.

One server serves the module (each test has its own room); examples are bounded in number.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from app.protocol import is_typing_frame
from tests.support import AppServer

API_TOKEN = "property-test-api-token"
EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TIMEOUT = 10


@pytest.fixture(scope="module")
def server() -> Iterator[AppServer]:
    app = AppServer(env={"CHAT_API_TOKEN": API_TOKEN, "CHAT_RATE_PER_SECOND": "100000",
                         "CHAT_RATE_BURST": "100000"}).start()
    yield app
    app.cleanup()


# -- what a client controls ---------------------------------------------------------------

# Any text Python can hold, lone surrogates included: in JSON they travel as "\udXXX"
# escapes, which is valid JSON in valid UTF-8.
any_text = st.text(alphabet=st.characters(exclude_categories=[]), max_size=60)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
# Mostly strings where the service expects strings, so that many examples are accepted.
field = any_text | json_values
frame_objects = st.builds(
    lambda base, extra: {**extra, **base},
    st.fixed_dictionaries({}, optional={"message": field, "client_id": field, "type": field,
                                        "user": field, "id": field}),
    st.dictionaries(any_text, json_values, max_size=3),
)


def encode(value: Any, ascii_only: bool) -> str:
    """JSON text of ``value``: raw Unicode where it can travel as UTF-8, else escaped."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(value)
    return text


client_frames = st.one_of(
    st.builds(encode, frame_objects, st.booleans()),
    # Not JSON, or not an object: any text that can be sent as a text frame.
    st.text(max_size=200),
    st.integers(1, 5000).map(lambda depth: '{"message":' + "[" * depth + "]" * depth + "}"),
)

query_values = st.one_of(
    st.text(max_size=30).map(quote),
    st.binary(max_size=20).map(quote_from_bytes),  # invalid UTF-8 included
    st.sampled_from(["", "%", "%zz", "%ff", "%ed%a0%80", "%C2%B2", "%C2%B9", "-1", "1e3", "+5",
                     "0x10", "%201", "%2B1", "99999999999999999999999", "1000", "0", "1"]),
)
queries = st.dictionaries(st.sampled_from(["since", "last", "token", "epoch"]), query_values,
                          max_size=4)

api_bodies = st.one_of(
    st.builds(lambda value, ascii_only: encode(value, ascii_only).encode(), frame_objects,
              st.booleans()),
    st.binary(max_size=300),
)


# -- the properties -----------------------------------------------------------------------


def expected_text(raw: str | bytes) -> str | None:
    """The message text the service stores for ``raw``, if it is a message at all."""
    try:
        data = json.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError):
        return None
    message = data.get("message") if isinstance(data, dict) else None
    return message if isinstance(message, str) else None


# Frames the server sends on its own (broadcasts, presence, typing), between the answers.
NOTICES = {"message", "presence", "join", "leave", "presence_diff", "typing", "gap", "reset"}


def recv_json(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(ws.recv(timeout=TIMEOUT))
    assert isinstance(frame, dict)
    return frame


class Room:
    """A room with a bystander in it, and what has been acked there."""

    def __init__(self, server: AppServer, name: str) -> None:
        self.server = server
        self.name = name
        self.acked: dict[int, str] = {}
        self.held = ExitStack()
        self.bystander = self.join(self.held)
        self.poster = self.join(self.held)

    def join(self, stack: ExitStack) -> ClientConnection:
        """A client in the room that has had its ``ready``, closed with ``stack``."""
        ws = stack.enter_context(connect(self.server.ws_url(self.name), open_timeout=TIMEOUT))
        while recv_json(ws)["type"] != "ready":
            pass
        return ws

    def ack(self, message_id: int, text: str | None) -> None:
        assert text is not None, "acked something that is not a message"
        self.acked.setdefault(message_id, text)  # a duplicate's id keeps its first text

    def check(self) -> None:
        """The properties every example must leave true."""
        assert self.server.process is not None and self.server.process.poll() is None, (
            f"the server died:\n{self.server.output()[-3000:]}")
        marker = f"marker-{uuid.uuid4().hex}"
        self.poster.send(json.dumps({"message": marker}))
        while (reply := recv_json(self.poster))["type"] != "ack":
            assert reply["type"] in NOTICES, reply
        self.ack(reply["id"], marker)
        try:
            while recv_json(self.bystander).get("id") != reply["id"]:
                pass
        except ConnectionClosed as exc:
            raise AssertionError(f"the bystander was disconnected: {exc}") from exc
        self.check_replay()

    def check_replay(self) -> None:
        replayed: dict[int, str] = {}
        with connect(self.server.ws_url(self.name, since="0"), open_timeout=TIMEOUT) as joiner:
            while (frame := recv_json(joiner))["type"] != "ready":
                if frame["type"] == "message":
                    replayed[frame["id"]] = frame["message"]
        assert {i: replayed.get(i) for i in self.acked} == self.acked
        status, body = self.server.get(f"/api/rooms/{self.name}/messages?since=0&limit=1000")
        assert status == 200, body
        assert {m["id"]: m["message"] for m in body["messages"] if m["id"] in self.acked} == self.acked

    def close(self) -> None:
        self.held.close()


@pytest.fixture
def room(server: AppServer, request: pytest.FixtureRequest) -> Iterator[Room]:
    """A fresh room for one test, its bystander connected across all its examples."""
    room = Room(server, f"prop-{request.node.name[5:30].strip('_')}-{uuid.uuid4().hex[:6]}")
    yield room
    room.close()


@EXAMPLES
@given(frames=st.lists(client_frames, min_size=1, max_size=4))
@example(frames=['{"message": "\\ud800"}', '{"message": "after"}'])  # issue 16, item 1
def test_any_client_frames(room: Room, frames: list[str]) -> None:
    with ExitStack() as stack:
        attacker = room.join(stack)
        send_and_collect(room, attacker, frames)
    room.check()


def send_and_collect(room: Room, attacker: ClientConnection, frames: list[str]) -> None:
    """Send ``frames``; record what is acked."""
    try:
        for frame in frames:
            attacker.send(frame)
        # Frames are answered in order, one ack or error each (typing: none) (or a close for what is refused
        # at the protocol level, such as an oversized frame).
        for frame in frames:
            if is_typing_frame(frame):
                continue  # relayed to the others, never answered
            reply = recv_json(attacker)
            while reply["type"] in NOTICES:
                reply = recv_json(attacker)
            assert reply["type"] in {"ack", "error"}, reply
            if reply["type"] == "ack":
                room.ack(reply["id"], expected_text(frame))
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code in {1007, 1008, 1009}, exc


@EXAMPLES
@given(query=queries)
@example(query={"since": "%C2%B2"})  # issue 16, item 8: Unicode digits
@example(query={"last": "%C2%B9"})
def test_any_join_query(room: Room, query: dict[str, str]) -> None:
    suffix = "&".join(f"{key}={value}" for key, value in query.items())
    url = f"ws://127.0.0.1:{room.server.port}/ws/chat/{room.name}/?{suffix}"
    try:
        with connect(url, open_timeout=TIMEOUT) as joiner:
            while recv_json(joiner)["type"] != "ready":
                pass
    except InvalidStatus as exc:
        status = exc.response.status_code
        assert 400 <= status < 500, (status, exc.response.body)
        assert json.loads(exc.response.body)["type"] == "error"
    room.check()


@EXAMPLES
@given(body=api_bodies)
@example(body=b'{"message": "\\ud800"}')  # issue 16, item 1
def test_any_api_body(room: Room, body: bytes) -> None:
    request = urllib.request.Request(
        f"{room.server.base}/api/rooms/{room.name}/messages", data=body, method="POST",
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    assert status < 500, (status, answer)
    if status in (200, 201):
        room.ack(answer["id"], expected_text(body))
    else:
        assert 400 <= status < 500 and json.loads(answer)["type"] == "error", (status, answer)
    room.check()
