"""Which paths reach the chat consumer, and with what room: pure, no sockets."""

from __future__ import annotations

import pytest

from app.chat.routes import match

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("path", "room"),
    [
        ("/ws/chat/lobby/", "lobby"),
        # Whatever lies between the prefix and the last slash is the room, for the consumer to
        # refuse with 400 bad_room: empty, a decoded %2F, a newline.
        ("/ws/chat//", ""),
        ("/ws/chat/a/b/", "a/b"),
        ("/ws/chat/a\nb/", "a\nb"),
    ],
)
def test_chat_paths_carry_their_room(path: str, room: str) -> None:
    assert match(path) == {"room_name": room}


@pytest.mark.parametrize(
    "path",
    # "$" matched before a final newline: /ws/chat/lobby/%0A opened lobby.
    ["/ws/chat/lobby/\n", "/ws/chat/lobby", "/ws/chat/", "/ws/chatx/lobby/", "/x/ws/chat/lobby/", "/"],
)
def test_other_paths_match_no_route(path: str) -> None:
    assert match(path) is None
