"""The in-memory history holds every room together to CHAT_HISTORY_MAX_BYTES."""

from __future__ import annotations

import json
import tracemalloc
import urllib.request
from collections.abc import Callable

import pytest

from app.history.memory import MemoryHistory
from app.protocol import FrameTemplate, message_template
from tests.support import AppServer

BUDGET = 1 << 20


def _template(room: str, text: str, client_id: str | None = None, n: int = 0) -> FrameTemplate:
    # Each message's ts is an int of its own, as a server's clock gives them (history keeps it).
    return message_template(room, text, 1_700_000_000_000 + n, "user", client_id)


@pytest.mark.parametrize("text", ["x" * 4000, "\u00e9" * 4000, "\U0001f600" * 4000, "hi"])
async def test_the_budget_tracks_what_python_holds(text: str) -> None:
    tracemalloc.start()
    try:
        history = MemoryHistory(max_len=1000, ttl=3600, dedupe_ttl=600, max_bytes=8 * BUDGET)
        before = tracemalloc.get_traced_memory()[0]
        for n in range(4000):
            room = f"r{n // 20}"
            await history.append(room, _template(room, text, f"c-{n}", n), f"c-{n}")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert history.bytes_held <= 8 * BUDGET
    # The budget may overcount (small messages) but never undercounts what the process holds:
    # the README's worst case rests on it.
    assert held <= 1.1 * history.bytes_held + 64 * 1024
    assert history.bytes_held <= 1.5 * held


async def test_least_recently_used_rooms_go_first() -> None:
    history = MemoryHistory(max_len=100, ttl=3600, dedupe_ttl=600, max_bytes=BUDGET)
    await history.append("kept", _template("kept", "first"), None)
    for n in range(400):
        await history.append(f"r{n}", _template(f"r{n}", "y" * 4000), None)
        await history.latest("kept", 1)  # read on every turn: recently used
    assert history.bytes_held <= BUDGET
    assert [i for i, _ in (await history.latest("kept", 10)).frames] == [1]
    dropped = await history.latest("r0", 10)  # dropped: a fresh room, in a new epoch
    assert dropped.frames == [] and dropped.state.last_id == 0
    assert len((await history.latest("r399", 10)).frames) == 1


async def test_reads_of_made_up_rooms_never_push_out_a_room_with_messages() -> None:
    # Every read makes a room (a joiner's epoch must outlive it), and reads need no token:
    # 700 reads of made-up rooms pushed a room with acked messages out of a 1 MiB budget.
    history = MemoryHistory(max_len=100, ttl=3600, dedupe_ttl=600, max_bytes=BUDGET)
    kept = await history.append("victim", _template("victim", "acked"), None)
    for n in range(2000):
        await history.state(f"x{n}")
    assert history.bytes_held <= BUDGET
    replay = await history.latest("victim", 10)
    assert [i for i, _ in replay.frames] == [1] and replay.state.epoch == kept.state.epoch
    # The made-up rooms go first, oldest first, and the newest is still there.
    oldest, newest = await history.states(["x0", "x1999"])
    assert oldest is None and newest is not None


async def test_one_room_larger_than_the_budget_keeps_its_newest_messages() -> None:
    history = MemoryHistory(max_len=1000, ttl=3600, dedupe_ttl=600, max_bytes=BUDGET)
    for n in range(1000):
        await history.append("big", _template("big", "z" * 4000, f"c-{n}"), f"c-{n}")
    assert history.bytes_held <= BUDGET
    replay = await history.after("big", 0, 1000)
    assert replay.frames[-1][0] == 1000 and replay.missing is not None
    assert replay.missing == (1, replay.frames[0][0] - 1)


def test_hopping_rooms_with_large_messages_stays_within_the_budget(
    make_app: Callable[..., AppServer],
) -> None:
    app = make_app(env={"CHAT_API_TOKEN": "t", "CHAT_HISTORY_MAX_BYTES": str(BUDGET)})
    big = "w" * 4000
    for n in range(600):  # ~2.4 MB of text across 600 rooms
        request = urllib.request.Request(
            f"{app.base}/api/rooms/hop{n}/messages", method="POST",
            data=json.dumps({"message": big}).encode(), headers={"Authorization": "Bearer t"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
    # The first rooms made way for the last; the newest room is whole.
    assert app.get("/api/rooms/hop0/messages")[1]["messages"] == []
    assert [m["message"] for m in app.get("/api/rooms/hop599/messages")[1]["messages"]] == [big]
