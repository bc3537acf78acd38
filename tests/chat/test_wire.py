"""Prepared broadcast frames: the bytes websockets itself would write, and chat end to end."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from websockets.frames import Frame, Opcode

from app.chat.wire import Prepared, joined_frames, text_frame
from tests.support import Client
from tools.procs import AppServer

# Every length encoding (7-bit, 16-bit, 64-bit) at and around its edges, and non-ASCII text.
TEXTS = ["", "x", "x" * 125, "x" * 126, "é" * 100, "x" * 65535, "x" * 65536, "ü€𝄞" * 30000]


@pytest.mark.unit
@pytest.mark.parametrize("text", TEXTS, ids=lambda t: f"{len(t.encode())}B")
def test_text_frame_is_what_websockets_serializes_for_a_server(text: str) -> None:
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert text_frame(text) == expected


@pytest.mark.unit
def test_prepared_builds_once_per_text_object_and_follows_a_new_one() -> None:
    prepared = Prepared()
    first = "".join(["hello ", "room"])  # built at run time: a str object of its own
    frame = prepared(first)
    assert prepared(first) is frame
    second = "".join(["hello ", "room"])
    assert second is not first and prepared(second) == frame
    assert prepared("other") == text_frame("other")


@pytest.mark.unit
def test_joined_frames_are_the_frames_of_consecutive_sends_up_to_the_limit() -> None:
    texts = ["a" * 10, "é" * 40, "b" * 200, "c"]
    sizes = [len(text_frame(t)) for t in texts]
    assert joined_frames(texts, 0) == (b"".join(text_frame(t) for t in texts), 4)
    # Up to the limit, from where the caller left off: what did not fit is the next call's.
    data, end = joined_frames(texts, 0, limit=sizes[0] + sizes[1])
    assert (data, end) == (text_frame(texts[0]) + text_frame(texts[1]), 2)
    assert joined_frames(texts, end, limit=sizes[2] + sizes[3] - 1) == (text_frame(texts[2]), 3)
    assert joined_frames(texts, 3) == (text_frame("c"), 4)
    assert joined_frames(texts, 4) == (b"", 4)


@pytest.mark.unit
def test_joined_frames_take_one_frame_over_the_limit_and_repair_what_cannot_encode() -> None:
    assert joined_frames(["x" * 100, "y"], 0, limit=10) == (text_frame("x" * 100), 1)
    assert joined_frames(["a\ud800b"], 0) == (text_frame("a\ufffdb"), 1)


LONG = "ünïcødé " * 400  # a 16-bit-length frame of multi-byte text


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "permessage-deflate"])
async def test_broadcasts_reach_members_intact_with_and_without_deflate(
    make_app: Callable[..., AppServer], compression: bool
) -> None:
    server = make_app(env={"CHAT_WS_COMPRESSION": str(compression).lower()})
    options = {"compression": "deflate" if compression else None}
    sender = await Client.connect(server.ws_url("lobby"), **options)
    members = [await Client.connect(server.ws_url("lobby"), **options) for _ in range(3)]
    assert all(bool(c.ws.protocol.extensions) is compression for c in [sender, *members])

    for n, text in enumerate(["short", LONG, "after"], start=1):
        assert (await sender.post(text))["id"] == n
    for member in members:
        frames = await member.messages(3)
        assert [f["message"] for f in frames] == ["short", LONG, "after"]
        assert [f["id"] for f in frames] == [1, 2, 3]
    for client in [sender, *members]:
        await client.close()
