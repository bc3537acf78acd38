"""Replays longer than a page (app/history/pages.py), against a real server and Redis: each
arrives whole, in id order, once, then ``ready``; messages sent while one is in progress
follow it exactly once; an epoch drawn, or history failing, between two pages is met as a
live member meets it."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests import wsraw
from tests.support import PRESENCE_FRAMES, AppServer, Client, RedisServer

# With a 5-character prefix, the longest message by default: 16 KB of UTF-8, 16 KB in memory.
BIG = "\U0001f600" * 3995
ENV = {"CHAT_RATE_PER_SECOND": "100000", "CHAT_RATE_BURST": "100000", "CHAT_PING_INTERVAL": "0"}
ROOM_SIZE = 1000
# 500 of the largest messages: 8 MB of replay, more than the kernel buffers for a client that
# reads nothing (a 4 MB send buffer at most here, and a 4 KB receive buffer): such a replay is
# still in progress while the client has read only its first frames.
STALLED_SIZE = 500


def text(message_id: int) -> str:
    """Multi-byte text of many sizes: every 7th message and the last 64 the largest, so pages
    are cut by frames in places and by bytes in others."""
    if message_id % 7 == 0 or message_id > ROOM_SIZE - 64:
        return f"{message_id:04d} {BIG}"
    return f"{message_id} " + "é" * (message_id % 300)


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, make_app: Callable[..., AppServer]) -> AppServer:
    if request.param == "memory":
        return make_app(env=ENV)
    return make_app(env={**ENV, "REDIS_URL": request.getfixturevalue("redis_server").url})


async def fill(server: AppServer, room: str, texts: list[str]) -> str:
    """Post ``texts`` in order (ids 1, 2, ...); the room's epoch."""
    sender = await Client.connect(server.ws_url(room))
    assert sender.ready is not None
    for index, message in enumerate(texts):
        ack = await sender.post(message, client_id=f"fill-{index}")
        assert ack["type"] == "ack", ack
        sender.skipped.clear()  # its own broadcasts: not kept
    await sender.close()
    return str(sender.ready["epoch"])


def read_json(sock: socket.socket) -> dict[str, Any]:
    """The next frame a raw client is sent, parsed (who-is-here frames skipped)."""
    while True:
        opcode, payload = wsraw.read_frame(sock)
        assert opcode != 0x8, f"closed: {payload!r}"
        if opcode == 0x1 and (frame := json.loads(payload))["type"] not in PRESENCE_FRAMES:
            return frame


def until(sock: socket.socket, kind: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The frames before the next one of type ``kind``, and that one."""
    before = []
    while (frame := read_json(sock))["type"] != kind:
        before.append(frame)
    return before, frame


def ids(frames: list[dict[str, Any]]) -> list[int]:
    assert all(frame["type"] == "message" for frame in frames), [f for f in frames if f["type"] != "message"]
    return [frame["id"] for frame in frames]


@pytest.mark.parametrize("query, first", [
    ({"since": 0}, 1),  # the whole room: pages cut by frames and by bytes
    ({"since": 137}, 138),  # a resume from the middle of history
    ({"last": 700}, 301),  # a window of more than a page
    ({"last": 50}, 951),  # a window of one read that is over a page's bytes: read again as pages
])
async def test_a_long_replay_arrives_whole_in_order_once_then_ready(
    server: AppServer, query: dict[str, int], first: int,
) -> None:
    await fill(server, "long", [text(i) for i in range(1, ROOM_SIZE + 1)])
    joiner = await Client.connect(server.ws_url("long", **query), wait_ready=False)
    replayed = []
    while (frame := await joiner.recv())["type"] != "ready":
        replayed.append(frame)
    assert ids(replayed) == list(range(first, ROOM_SIZE + 1))  # no gap, no reset, nothing twice
    assert [m["message"] for m in replayed] == [text(i) for i in range(first, ROOM_SIZE + 1)]
    assert frame["last_id"] == ROOM_SIZE

    poster = await Client.connect(server.ws_url("long"))
    assert (await poster.post("live"))["id"] == ROOM_SIZE + 1
    [live] = await joiner.messages(1)
    assert (live["id"], live["message"]) == (ROOM_SIZE + 1, "live")


async def test_messages_sent_during_a_long_replay_follow_it_exactly_once(server: AppServer) -> None:
    await fill(server, "busy", [f"{i:04d} {BIG}" for i in range(1, STALLED_SIZE + 1)])
    joiner = wsraw.open_socket(server.port, "/ws/chat/busy/?since=0", rcvbuf=4096)
    head = [read_json(joiner) for _ in range(10)]
    # The replay is in progress (the server cannot have written 8 MB to this client yet):
    # the room's next messages are sent now, and reach the joiner's queue meanwhile.
    poster = await Client.connect(server.ws_url("busy"))
    acked = [(await poster.post(f"live {i}"))["id"] for i in range(20)]
    assert acked == list(range(STALLED_SIZE + 1, STALLED_SIZE + 21))

    rest, ready = until(joiner, "ready")
    assert ids(head + rest) == list(range(1, STALLED_SIZE + 1))
    assert ready["last_id"] == STALLED_SIZE
    live = [read_json(joiner) for _ in range(20)]
    assert [(m["id"], m["message"]) for m in live] == [(STALLED_SIZE + 1 + i, f"live {i}") for i in range(20)]
    joiner.close()


async def test_an_epoch_drawn_between_pages_resets_the_joiner_and_replays_the_new_epoch(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    server = make_app(env={**ENV, "REDIS_URL": redis_server.url})
    epoch = await fill(server, "lost", [f"{i:04d} {BIG}" for i in range(1, STALLED_SIZE + 1)])
    joiner = wsraw.open_socket(server.port, "/ws/chat/lost/?since=0", rcvbuf=4096)
    head = [read_json(joiner)]
    # The room's sequence is lost mid-replay (a flushed key): the next page finds another epoch.
    redis.Redis.from_url(redis_server.url).delete("chat:{lost}:meta")

    before, reset = until(joiner, "reset")
    assert ids(head + before) == list(range(1, len(head + before) + 1))
    assert len(head + before) < STALLED_SIZE and reset["epoch"] != epoch
    # As for a live member: everything the new epoch holds (its ids go on after the log kept,
    # its base below the oldest held), then ready in it.
    assert reset["last_id"] == 0
    again, ready = until(joiner, "ready")
    assert ids(again) == list(range(1, STALLED_SIZE + 1))
    assert (ready["epoch"], ready["last_id"]) == (reset["epoch"], STALLED_SIZE)
    joiner.close()


async def test_history_failing_between_pages_sends_ready_where_the_joiner_got_and_fills_later(
    make_app: Callable[..., AppServer],
) -> None:
    store = RedisServer(appendonly=True).start()
    try:
        server = make_app(env={**ENV, "REDIS_URL": store.url})
        await fill(server, "gone", [f"{i:04d} {BIG}" for i in range(1, STALLED_SIZE + 1)])
        joiner = wsraw.open_socket(server.port, "/ws/chat/gone/?since=0", rcvbuf=4096, timeout=30)
        head = [read_json(joiner)]
        store.stop()  # the next page cannot be read

        before, ready = until(joiner, "ready")
        got = ids(head + before)
        assert got == list(range(1, len(got) + 1)) and len(got) < STALLED_SIZE
        assert ready["last_id"] == got[-1]  # where it got: every later message has a greater id
        # Once history answers again, the tail watcher's nudge fills the rest, in order, once.
        store.start()
        rest = [read_json(joiner) for _ in range(STALLED_SIZE - len(got))]
        assert ids(rest) == list(range(len(got) + 1, STALLED_SIZE + 1))
        joiner.close()
    finally:
        store.cleanup()
