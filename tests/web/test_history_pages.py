"""The history API read a page at a time up to its 1 MiB cut (app/web/views.py): the same
answers as one read gave, for small and large limits, and never all ``limit`` frames read
for an answer that holds fewer."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from app.history import Replay
from app.history.memory import MemoryHistory
from app.history.pages import PAGE_FRAMES, read_page
from app.protocol import message_template
from app.web.views import MAX_ANSWER_BYTES, answer_frames
from tests.support import API_TOKEN
from tools.procs import AppServer

ROOM_SIZE = 200


def text(message_id: int) -> str:
    """Every third message 24 KB of JSON escapes (the largest frame), every third 4 KB of
    emoji, the rest short multi-byte text: 1.6 MB in all, so larger limits meet the cut."""
    if message_id % 3 == 0:
        return "\x01" * 4000
    if message_id % 3 == 1:
        return f"{message_id} " + "\U0001f600" * 1000
    return f"{message_id} " + "é" * message_id


def post(api_server: AppServer, message: str) -> int:
    request = urllib.request.Request(
        f"{api_server.base}/api/rooms/paged/messages", data=json.dumps({"message": message}).encode(),
        method="POST", headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.loads(response.read())["id"])


def frame_bytes(message: dict[str, Any]) -> int:
    """The stored frame's size in UTF-8, built again from its fields as the server built it."""
    template = message_template("paged", message["message"], message["ts"], message["user"])
    frame = template.with_id(message["id"])
    assert json.loads(frame) == message
    return len(frame.encode())


def expected_ids(sizes: dict[int, int], since: int, limit: int) -> list[int]:
    """What one read of ``limit`` cut at ``MAX_ANSWER_BYTES`` answered (at least one)."""
    ids, total = [], 0
    for message_id in range(since + 1, min(since + limit, ROOM_SIZE) + 1):
        total += sizes[message_id]
        if ids and total > MAX_ANSWER_BYTES:
            break
        ids.append(message_id)
    return ids


def test_answers_are_those_of_one_read_for_small_and_large_limits(api_server: AppServer) -> None:
    assert [post(api_server, text(i)) for i in range(1, ROOM_SIZE + 1)] == list(range(1, ROOM_SIZE + 1))
    sizes: dict[int, int] = {}
    since = 0
    while since < ROOM_SIZE:  # every frame's size, paging as clients do
        page = api_server.get(f"/api/rooms/paged/messages?since={since}&limit=1000")[1]
        sizes.update({m["id"]: frame_bytes(m) for m in page["messages"]})
        since = page["messages"][-1]["id"]

    cases = [(0, 1), (0, 10), (0, PAGE_FRAMES), (0, PAGE_FRAMES + 1), (0, 100), (0, 1000), (5, 1000),
             (150, 30), (150, 1000), (199, 1000), (200, 10), (260, 10)]
    for since, limit in cases:
        status, answer = api_server.get(f"/api/rooms/paged/messages?since={since}&limit={limit}")
        assert status == 200
        # Past the room's newest id: its ids started over for the reader, who gets it from its start.
        expected = expected_ids(sizes, 0 if since > ROOM_SIZE else since, limit)
        assert [m["id"] for m in answer["messages"]] == expected, (since, limit)
        assert [m["message"] for m in answer["messages"]] == [text(i) for i in expected]
        assert (answer["last_id"], answer["gap"], answer["base"]) == (ROOM_SIZE, None, 0)
        assert answer.get("reset", False) is (since > ROOM_SIZE)
    # The cut was met: an answer ended before its limit for it, in the middle of a page.
    assert PAGE_FRAMES < len(expected_ids(sizes, 0, 1000)) < ROOM_SIZE


class CountingHistory(MemoryHistory):
    """Memory history that notes how many frames each read returned."""

    def __init__(self) -> None:
        super().__init__(max_len=1000, ttl=3600, dedupe_ttl=600)
        self.reads: list[int] = []

    async def after(self, room: str, since: int, limit: int) -> Replay:
        replay = await super().after(room, since, limit)
        self.reads.append(len(replay.frames))
        return replay


@pytest.mark.unit
@pytest.mark.parametrize("message, expected", [("\x01" * 4000, 43), ("é" * 100, 1000)])
async def test_an_answer_reads_pages_up_to_its_cut_not_its_whole_limit(message: str, expected: int) -> None:
    history = CountingHistory()
    for i in range(1000):
        await history.append("r", message_template("r", message, 1000 + i, "u"), None)
    first, count = await read_page(lambda n: history.after("r", 0, n), PAGE_FRAMES)
    frames = await answer_frames(history, "r", first, count, 1000)
    assert len(frames) == expected  # 43 of the largest frames make the 1 MiB cut
    assert [json.loads(frame)["id"] for frame in frames] == list(range(1, expected + 1))
    # Read a page at a time: never more than a page per read, and in all the answer, one
    # page read past it (the one the cut fell in) and a first read found too big in bytes.
    assert max(history.reads) <= PAGE_FRAMES
    assert sum(history.reads) <= expected + 2 * PAGE_FRAMES
