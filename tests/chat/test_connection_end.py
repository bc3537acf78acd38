"""How a chat connection ends, over real sockets against ``python -m app``: whatever ends it
(the client, a policy close, the slow-client limit, a drain), everything it held is let go
once, and a client that never reads cannot hold a socket, a slot or a drain."""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
import termios
from collections.abc import Callable

import psutil
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from app.history.redis import RedisHistory
from app.protocol import message_template
from app.rooms import group_name
from tests import wsraw
from tests.support import AppServer, Client, RedisServer, wait_until

FLOODERS = 100
FLOOD = 150  # frames written at once: past the burst (40) and the strikes (50)
# The longest message allowed by default, 16,000 bytes in UTF-8; 500 of them make 8 MB of
# replay, more than the kernel's largest send buffer here (4 MB) plus the server's own.
BIG = "\U0001f600" * 4000
BIG_MESSAGES = 500


def flood_then_leave(port: int, room: str) -> int:
    """A client that writes ``FLOOD`` frames in one go, reads until the server's close
    frame, answers it and disconnects; the close code it was sent."""
    # 100 of these at once on 2 shared cores: a generous bound on each read, not a timing.
    sock = wsraw.open_socket(port, f"/ws/chat/{room}/", timeout=60)
    burst = b"".join(wsraw.frame(json.dumps({"message": f"m{i}"}).encode()) for i in range(FLOOD))
    sock.sendall(burst)
    code = until_close_frame(sock)
    sock.sendall(wsraw.frame(struct.pack("!H", 1000), opcode=0x8))
    sock.close()
    return code


def until_close_frame(sock: socket.socket) -> int:
    """Read server frames until a close frame; its code."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed without a close frame")
        data += chunk
        while len(data) >= 2:
            opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                length, start = struct.unpack("!H", data[2:4])[0], 4
            if len(data) < start + length:
                break
            if opcode == 0x8:
                return int(struct.unpack("!H", data[start:start + 2])[0])
            data = data[start + length:]


def group_subscribers(client: redis.Redis, room: str) -> int:
    """Subscribers on the Redis pub/sub channels of ``room``'s group."""
    channels = [c for c in client.pubsub_channels() if group_name(room) in c.decode()]
    return sum(count for _, count in client.pubsub_numsub(*channels)) if channels else 0


async def test_flooders_are_closed_for_flooding_with_presence_on(make_app: Callable[..., AppServer]) -> None:
    server = make_app()
    bystander = await Client.connect(server.ws_url("flood0"))
    codes = await asyncio.gather(*(
        asyncio.to_thread(flood_then_leave, server.port, f"flood{i % 4}") for i in range(FLOODERS)
    ))
    assert set(codes) == {1008}
    await bystander.close()


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_clients_that_flood_then_disconnect_leave_nothing_behind(
    make_app: Callable[..., AppServer], request: pytest.FixtureRequest, storage: str
) -> None:
    redis_server: RedisServer | None = request.getfixturevalue("redis_server") if storage == "redis" else None
    # Presence off here; the test above floods with it on.
    extra = {"CHAT_PRESENCE": "false"}
    server = make_app(env={"REDIS_URL": redis_server.url, **extra} if redis_server else extra)
    rooms = [f"flood{i}" for i in range(4)]
    bystander = await Client.connect(server.ws_url(rooms[0]))
    subscribers = redis.Redis.from_url(redis_server.url) if redis_server else None
    if subscribers:  # the probe below sees a member: it can tell "left" from "never seen"
        assert group_subscribers(subscribers, rooms[0]) == 1

    codes = await asyncio.gather(*(
        asyncio.to_thread(flood_then_leave, server.port, rooms[i % len(rooms)]) for i in range(FLOODERS)
    ))
    # Each is closed for flooding ("rate limit", 1008), however long the server takes to
    # work through the frames: the rate limit counts from when they arrived.
    assert set(codes) == {1008}

    wait_until(lambda: server.metric("chat_connections_open") == 1, 30, "only the bystander to be open")
    assert server.metric("chat_connections_opened_total") == FLOODERS + 1
    assert server.metric('chat_connections_closed_total{code="1008"}') == FLOODERS
    # Still a member of a working room: it receives what is posted now, after the flood's.
    poster = await Client.connect(server.ws_url(rooms[0]))
    ack = await poster.post("after the flood")
    assert ack["type"] == "ack"
    received = [m["id"] for m in await bystander.messages(ack["id"] - bystander.ready["last_id"])]
    assert received[-1] == ack["id"]

    await bystander.close()
    await poster.close()
    wait_until(lambda: server.metric("chat_connections_open") == 0, 10, "every socket to be let go")
    if subscribers:
        wait_until(lambda: all(group_subscribers(subscribers, room) == 0 for room in rooms), 10,
                   "every group to be left")
    output = server.output()
    assert "Unexpected ASGI message" not in output
    assert "Traceback" not in output


async def fill_room(server: AppServer, room: str) -> int:
    """Post ``BIG_MESSAGES`` of the largest size to ``room``; the id of the last."""
    poster = await Client.connect(server.ws_url(room))
    last = 0
    for i in range(BIG_MESSAGES):
        ack = await poster.post(BIG, client_id=f"fill-{i}")
        assert ack["type"] == "ack", ack
        last = ack["id"]
    await poster.close()
    return last


def never_reading(port: int, room: str) -> socket.socket:
    """A raw client that joins with ``?last=1000`` and never reads, with a tiny receive buffer."""
    return wsraw.open_socket(port, f"/ws/chat/{room}/?last=1000", rcvbuf=4096)


def unread_bytes(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]


FAST = {"CHAT_RATE_PER_SECOND": "100000", "CHAT_RATE_BURST": "100000"}


@pytest.mark.parametrize("ping", ["0", "20"])
async def test_a_client_that_never_reads_its_join_replay_is_closed_slow(
    make_app: Callable[..., AppServer], ping: str
) -> None:
    server = make_app(env={**FAST, "CHAT_SEND_TIMEOUT": "3", "CHAT_PING_INTERVAL": ping})
    await fill_room(server, "big")
    stalled = never_reading(server.port, "big")

    wait_until(lambda: server.metric("chat_slow_clients_total") == 1, 30, "the stalled client to be dropped")
    frames = wsraw.read_frames(stalled)
    stalled.close()
    # It got what the server could send before it stopped reading, then the close frame.
    assert frames, "nothing at all was sent"
    opcode, payload = frames[-1]
    assert (opcode, struct.unpack("!H", payload[:2])[0], payload[2:]) == (0x8, 1008, b"slow")
    assert len(frames) - 1 < BIG_MESSAGES
    wait_until(lambda: server.metric("chat_connections_open") == 0, 10, "its slot to be let go")
    # The room is unharmed.
    reader = await Client.connect(server.ws_url("big", last="1"))
    assert len(await reader.messages(1)) == 1
    assert "Traceback" not in server.output()


async def test_a_drain_does_not_wait_for_a_client_that_never_reads(
    make_app: Callable[..., AppServer],
) -> None:
    budget = 5
    # The watchdog would drop it after a minute: only the drain is under test.
    server = make_app(env={**FAST, "CHAT_SEND_TIMEOUT": "60", "SHUTDOWN_TIMEOUT": str(budget)})
    await fill_room(server, "big")
    stalled = never_reading(server.port, "big")
    wait_until(lambda: unread_bytes(stalled) > 0, 10, "the replay to start arriving")
    polite = await Client.connect(server.ws_url("lobby"))

    server.signal()
    with pytest.raises(ConnectionClosed) as info:
        await polite.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012

    assert server.wait(budget + 5) == 0
    stalled.close()
    output = server.output()
    assert "timeout graceful shutdown exceeded" not in output, output
    assert "overran its budget" not in output
    assert "Traceback" not in output


async def test_a_drain_does_not_wait_for_a_client_already_dropped_as_slow(
    make_app: Callable[..., AppServer],
) -> None:
    # Dropped as slow, its close frame waits behind unread data for another CHAT_SEND_TIMEOUT:
    # longer than the whole shutdown budget here, so waiting for it would overrun.
    server = make_app(env={**FAST, "CHAT_SEND_TIMEOUT": "3", "SHUTDOWN_TIMEOUT": "1"})
    await fill_room(server, "big")
    stalled = never_reading(server.port, "big")
    wait_until(lambda: server.metric("chat_slow_clients_total") == 1, 30, "the stalled client to be dropped")

    server.signal()
    assert server.wait(10) == 0
    stalled.close()
    output = server.output()
    assert "timeout graceful shutdown exceeded" not in output, output
    assert "Traceback" not in output


JOINERS = 10
ROOM_OF_BIG = 1000  # CHAT_HISTORY_MAX of the largest messages: a ~16 MB replay


async def test_joiners_that_never_read_hold_a_page_each_not_their_replay(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    # A hostile probe: 20 ``?since=0`` joiners that never read a full room of the largest
    # messages took the server from 117 to 407 MB, each holding its whole replay (~16 MB)
    # until the watchdog dropped it. Replayed a page at a time, each holds one page.
    server = make_app(env={**FAST, "REDIS_URL": redis_server.url, "CHAT_SEND_TIMEOUT": "60",
                           "CHAT_PING_INTERVAL": "0"})  # nobody is dropped while measured
    history = RedisHistory((redis_server.url,), max_len=ROOM_OF_BIG, ttl=3600, dedupe_ttl=600)
    for i in range(ROOM_OF_BIG):
        await history.append("huge", message_template("huge", BIG, 1000 + i, "u"), None)
    await history.close()
    # One whole replay read first, so what is measured is not the first replay's allocations.
    reader = await Client.connect(server.ws_url("huge", since=0), wait_ready=False)
    assert len(await reader.messages(ROOM_OF_BIG)) == ROOM_OF_BIG
    await reader.recv_type("ready")
    await reader.close()

    process = psutil.Process(server.process.pid)
    before = peak = process.memory_info().rss

    def sampled() -> int:
        nonlocal peak
        peak = max(peak, process.memory_info().rss)
        return peak

    stalled = []
    for _ in range(JOINERS):
        # Each joins once the one before was accepted: every join reads history on its own.
        stalled.append(wsraw.open_socket(server.port, "/ws/chat/huge/?since=0", rcvbuf=4096))
        sampled()
    wait_until(lambda: sampled() > 0 and all(unread_bytes(s) > 0 for s in stalled), 30,
               "every replay to be under way")
    replay = ROOM_OF_BIG * len(BIG.encode())
    assert peak - before < JOINERS * replay / 4, f"grew {peak - before} with {JOINERS} joiners not reading"
    assert server.metric("chat_slow_clients_total") == 0  # all still held when measured
    for sock in stalled:
        sock.close()
