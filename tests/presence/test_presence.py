"""Presence and typing with real processes: both stores, two processes on one Redis, a
SIGTERM cutover and a SIGKILL, typing never stored.

Absence ("no leave was announced") is shown without sleeping: a sentinel user leaves after
the change under test, and its leave is awaited. Departures fall due in deadline order, so
a leave the change under test had caused would have arrived first.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.chat.auth import mint
from app.protocol import anonymous_name
from app.rooms import group_name
from tests import wsraw
from tests.support import AppServer, Client, RedisServer, http_get, subscribers_reach

SECRET = "presence-test-secret-with-at-least-32-bytes"
GRACE = "1"
JWT = {"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET, "CHAT_PRESENCE_GRACE": GRACE}
PRESENCE_KINDS = {"presence", "join", "leave", "presence_diff"}


def token(sub: str, rooms: list[str] | str = "*") -> str:
    return mint(sub, rooms, 600, SECRET)


async def join(server: AppServer, room: str, sub: str) -> tuple[Client, dict[str, Any]]:
    """A member of ``room`` as ``sub``; its first presence snapshot."""
    client = await Client.connect(server.ws_url(room, token=token(sub)), presence=True)
    return client, await client.recv_type("presence")


async def frames_until(client: Client, kind: str, user: str, timeout: float = 15) -> list[dict[str, Any]]:
    """Every frame up to and including the first ``kind`` frame about ``user``."""
    seen = []
    while True:
        frame = await client.recv(timeout)
        seen.append(frame)
        if frame["type"] == kind and frame.get("user") == user:
            return seen


async def frames_until_joined(client: Client, users: set[str], timeout: float = 15) -> list[dict[str, Any]]:
    """Every frame up to and including the last of the ``join`` frames of ``users``, in
    whatever order they arrive."""
    seen, waiting = [], set(users)
    while waiting:
        frame = await client.recv(timeout)
        seen.append(frame)
        if frame["type"] == "join":
            waiting.discard(frame["user"])
    return seen


def about(frames: list[dict[str, Any]], user: str) -> list[str]:
    """The presence changes in ``frames`` that name ``user``."""
    kinds = []
    for frame in frames:
        if frame["type"] in ("join", "leave") and frame.get("user") == user:
            kinds.append(frame["type"])
        elif frame["type"] == "presence_diff":
            kinds += ["join" for u in frame["joined"] if u["user"] == user]
            kinds += ["leave" for u in frame["left"] if u["user"] == user]
    return kinds


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, make_app: Callable[..., AppServer]) -> AppServer:
    if request.param == "memory":
        return make_app(env=JWT)
    redis = request.getfixturevalue("redis_server")
    return make_app(env={**JWT, "REDIS_URL": redis.url})


async def test_joiner_gets_the_room_and_others_hear_one_join_per_user(server: AppServer) -> None:
    alice, first = await join(server, "lobby", "alice")
    assert first == {"type": "presence", "room": "lobby", "count": 1,
                     "members": [{"user": "alice"}], "version": first["version"]}

    bob, snapshot = await join(server, "lobby", "bob")
    assert snapshot["count"] == 2
    assert {m["user"] for m in snapshot["members"]} == {"alice", "bob"}
    joined = await alice.recv_type("join")
    assert (joined["user"], joined["count"], joined["room"]) == ("bob", 2, "lobby")
    assert joined["version"] > first["version"]

    # Bob's second socket: counted once, announced never.
    bob2, again = await join(server, "lobby", "bob")
    assert again["count"] == 2
    await bob2.close()
    await bob.close()
    frames = await frames_until(alice, "leave", "bob")
    assert about(frames, "bob") == ["leave"]
    assert frames[-1]["count"] == 1


async def test_the_snapshot_comes_right_after_ready(server: AppServer) -> None:
    # Often in the same write as ready (when the store has answered by then), never before it.
    for sub in ("first", "second"):
        url = server.ws_url("order", token=token(sub))
        client = await Client.connect(url, wait_ready=False, presence=True)
        assert [(await client.recv())["type"] for _ in range(2)] == ["ready", "presence"]


async def test_a_reconnect_within_the_grace_announces_nothing(server: AppServer) -> None:
    watcher, _ = await join(server, "lobby", "watcher")
    carol, _ = await join(server, "lobby", "carol")
    assert (await watcher.recv_type("join"))["user"] == "carol"
    await carol.close()
    carol, snapshot = await join(server, "lobby", "carol")
    assert snapshot["count"] == 2

    sentinel, _ = await join(server, "lobby", "sentinel")
    await sentinel.close()
    frames = await frames_until(watcher, "leave", "sentinel")
    assert about(frames, "carol") == []
    assert about(frames, "sentinel") == ["join", "leave"]


async def test_typing_reaches_the_others_once_per_interval_and_is_never_stored(server: AppServer) -> None:
    alice, _ = await join(server, "lobby", "alice")
    bob, _ = await join(server, "lobby", "bob")
    await alice.recv_type("join")

    await bob.send_raw(json.dumps({"type": "typing"}))
    assert await alice.recv_type("typing") == {"type": "typing", "room": "lobby", "user": "bob"}
    await bob.send_raw(json.dumps({"type": "typing"}))  # within the interval: not relayed
    ack = await bob.post("hello")
    assert ack["type"] == "ack"
    [message] = await alice.messages(1)
    assert message["message"] == "hello"
    assert [f for f in alice.skipped if f["type"] == "typing"] == []
    # Typing is no message: nothing with an id, nothing in history.
    assert [f for f in bob.skipped if f["type"] == "typing"] == []  # not echoed to the typist
    reader = {"Authorization": f"Bearer {token('reader', ['lobby'])}"}
    status, body = http_get(server.base + "/api/rooms/lobby/messages", headers=reader)
    assert status == 200
    assert [m["message"] for m in json.loads(body)["messages"]] == ["hello"]


async def test_typing_does_not_spend_the_message_rate(make_app: Callable[..., AppServer]) -> None:
    server = make_app(env={**JWT, "CHAT_RATE_PER_SECOND": "0.001", "CHAT_RATE_BURST": "2"})
    alice, _ = await join(server, "lobby", "alice")
    for _ in range(2):
        await alice.send_raw(json.dumps({"type": "typing"}))
    assert (await alice.post("one"))["type"] == "ack"
    assert (await alice.post("two"))["type"] == "ack"
    # Typing has a flood bucket of its own.
    await alice.send_raw(json.dumps({"type": "typing"}))
    assert (await alice.recv_type("error"))["code"] == "rate_limited"


async def test_the_presence_api_answers_with_a_token_for_the_room(server: AppServer) -> None:
    alice, _ = await join(server, "lobby", "alice")
    url = server.base + "/api/rooms/lobby/presence"
    assert http_get(url)[0] == 401

    def get(tok: str) -> tuple[int, Any]:
        status, body = http_get(url, headers={"Authorization": f"Bearer {tok}"})
        return status, json.loads(body)

    status, refused = get(token("eve", ["elsewhere"]))
    assert (status, refused["code"]) == (403, "room_not_allowed")
    assert get(token("eve", ["lobby"])) == (200, {"room": "lobby", "count": 1,
                                                  "members": [{"user": "alice"}]})
    # The header is read as the history API reads it: the scheme in any case.
    status, _ = http_get(url, headers={"Authorization": f"bearer {token('eve', ['lobby'])}"})
    assert status == 200


async def test_anonymous_connections_are_each_their_own_user(make_app: Callable[..., AppServer]) -> None:
    server = make_app(env={"CHAT_PRESENCE_GRACE": GRACE})
    one = await Client.connect(server.ws_url("lobby"), presence=True)
    await one.recv_type("presence")
    two = await Client.connect(server.ws_url("lobby"), presence=True)
    snapshot = await two.recv_type("presence")
    assert snapshot["count"] == 2
    assert (await one.recv_type("join"))["user"] == two.ready["user"]  # type: ignore[index]
    status, body = http_get(server.base + "/api/rooms/lobby/presence")
    assert (status, json.loads(body)["count"]) == (200, 2)


async def test_an_anonymous_client_that_sends_its_secret_keeps_its_name(
    make_app: Callable[..., AppServer],
) -> None:
    server = make_app(env={"CHAT_PRESENCE_GRACE": "30"})
    secret = "Zq3_x-9aB1cD2eF3gH4iJ5"
    first = await Client.connect(server.ws_url("lobby", anon=secret), presence=True)
    await first.recv_type("presence")
    await first.close()
    # A reconnect (within the grace) is the same member: same name, counted once.
    again = await Client.connect(server.ws_url("lobby", anon=secret), presence=True)
    snapshot = await again.recv_type("presence")
    assert again.ready["user"] == first.ready["user"] == anonymous_name(secret)  # type: ignore[index]
    assert snapshot["count"] == 1 and snapshot["members"] == [{"user": anonymous_name(secret)}]
    # Without it, a name of its own, as before.
    other = await Client.connect(server.ws_url("lobby"), presence=True)
    assert (await other.recv_type("presence"))["count"] == 2
    assert other.ready["user"] != anonymous_name(secret)  # type: ignore[index]
    await again.close()
    await other.close()


async def test_a_bad_anon_parameter_refuses_the_handshake(make_app: Callable[..., AppServer]) -> None:
    server = make_app()
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(server.ws_url("lobby", anon="too-short"))
    assert info.value.response.status_code == 400
    assert json.loads(info.value.response.body)["code"] == "bad_anon"


async def test_anon_is_ignored_with_jwt(make_app: Callable[..., AppServer]) -> None:
    # With tokens, a user is its token's sub, whatever else the query says.
    server = make_app(env=JWT)
    member = await Client.connect(server.ws_url("lobby", token=token("alice"), anon="Zq3_x-9aB1cD2eF3gH4iJ5"))
    assert member.ready["user"] == "alice"  # type: ignore[index]
    await member.close()
    # Not even checked: a page that sends a malformed one (an old client) still gets in.
    other = await Client.connect(server.ws_url("lobby", token=token("bob"), anon="short"))
    assert other.ready["user"] == "bob"  # type: ignore[index]
    await other.close()


async def test_a_big_room_hears_diffs_and_the_count_stays_exact(make_app: Callable[..., AppServer]) -> None:
    server = make_app(env={"CHAT_PRESENCE_GRACE": GRACE})
    watcher = await Client.connect(server.ws_url("big"), presence=True)
    await watcher.recv_type("presence")
    others = [await Client.connect(server.ws_url("big"), presence=True) for _ in range(120)]
    count, diffs, joins = 1, 0, 0
    while count < 121:
        frame = await watcher.recv()
        if frame["type"] == "presence_diff":
            diffs += 1
            assert len(frame["joined"]) <= 100
        elif frame["type"] == "join":
            joins += 1
        else:
            continue
        count = frame["count"]
    assert count == 121 and diffs >= 1 and joins <= 100
    late = await Client.connect(server.ws_url("big"), presence=True)
    snapshot = await late.recv_type("presence")
    assert snapshot["count"] == 122 and len(snapshot["members"]) == 100
    for other in others:
        await other.close()


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_room_small_again_is_sent_whole_to_its_members(
    make_app: Callable[..., AppServer], store: str, request: pytest.FixtureRequest,
) -> None:
    # A hostile probe: shown any 100 of 116, then 40 of the named ones left; the observer
    # kept count 76 with 60 names, for good (no change ever names the 16 never shown).
    env = {"CHAT_PRESENCE_GRACE": GRACE}
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    server = make_app(env=env)
    others = [await Client.connect(server.ws_url("shrink"), presence=True) for _ in range(115)]
    watcher = await Client.connect(server.ws_url("shrink"), presence=True)
    snapshot = await watcher.recv_type("presence")
    assert snapshot["count"] == 116 and len(snapshot["members"]) == 100
    shown = {m["user"] for m in snapshot["members"]}
    shown.discard(watcher.ready["user"])
    leaving = [other for other in others if other.ready["user"] in shown][:40]
    for other in leaving:
        await other.close()
    staying = {other.ready["user"] for other in others if other not in leaving} | {watcher.ready["user"]}
    # Kept as a page keeps it: the 40 leaves may be stepped in one round or several, so the
    # fresh list may come at any count from 100 down; whatever follows it names the rest.
    # PROTOCOL.md's rule too: a change at or below the last snapshot's version is in it.
    listed, count, shown_at = {m["user"] for m in snapshot["members"]}, snapshot["count"], snapshot["version"]
    while (count, listed) != (76, staying):
        frame = await watcher.recv(timeout=30)
        if frame["type"] == "presence":
            listed, shown_at = {m["user"] for m in frame["members"]}, frame["version"]
        elif frame["type"] in ("join", "leave"):
            if frame["changed"] > shown_at:
                listed = listed | {frame["user"]} if frame["type"] == "join" else listed - {frame["user"]}
        elif frame["type"] == "presence_diff":
            listed = ((listed | {u["user"] for u in frame["joined"] if u["changed"] > shown_at})
                      - {u["user"] for u in frame["left"] if u["changed"] > shown_at})
        else:
            continue
        count = frame["count"]
    for other in others:
        if other not in leaving:
            await other.close()


# -- two processes on one Redis ---------------------------------------------------------------


@pytest.fixture
def pair(make_app: Callable[..., AppServer], redis_server: RedisServer) -> tuple[AppServer, AppServer]:
    env = {**JWT, "REDIS_URL": redis_server.url, "SHUTDOWN_TIMEOUT": "3"}
    return make_app(env={**env, "APP_COLOR": "blue"}), make_app(env={**env, "APP_COLOR": "green"})


async def test_presence_is_shared_by_processes(pair: tuple[AppServer, AppServer]) -> None:
    blue, green = pair
    alice, _ = await join(blue, "lobby", "alice")
    bob, snapshot = await join(green, "lobby", "bob")
    assert {m["user"] for m in snapshot["members"]} == {"alice", "bob"}
    assert (await alice.recv_type("join"))["user"] == "bob"
    # The same user on both processes is one member.
    alice2, again = await join(green, "lobby", "alice")
    assert again["count"] == 2
    await bob.send_raw(json.dumps({"type": "typing"}))
    assert (await alice.recv_type("typing"))["user"] == "bob"


async def test_a_sigterm_cutover_to_the_other_process_announces_nothing(
    pair: tuple[AppServer, AppServer],
) -> None:
    blue, green = pair
    watcher, _ = await join(green, "lobby", "watcher")
    dave, _ = await join(blue, "lobby", "dave")
    assert (await watcher.recv_type("join"))["user"] == "dave"

    blue.signal(signal.SIGTERM)
    with pytest.raises(ConnectionClosed):
        while True:
            await dave.recv()
    assert dave.ws.close_code == 1012
    dave, snapshot = await join(green, "lobby", "dave")
    assert snapshot["count"] == 2
    assert blue.wait() == 0

    sentinel, _ = await join(green, "lobby", "sentinel")
    await sentinel.close()
    frames = await frames_until(watcher, "leave", "sentinel")
    assert about(frames, "dave") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["drained", "killed"])
async def test_a_member_whose_process_stopped_and_who_does_not_come_back_leaves_after_the_grace(
    pair: tuple[AppServer, AppServer], sig: signal.Signals,
) -> None:
    # Drained: the 1012 starts the user's grace. Killed: the holds stop being refreshed.
    # Either way nobody holds the user again, and the other process announces the departure.
    blue, green = pair
    watcher, _ = await join(green, "lobby", "watcher")
    erin, _ = await join(blue, "lobby", "erin")
    assert (await watcher.recv_type("join"))["user"] == "erin"

    blue.signal(sig)
    assert blue.wait() == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    frames = await frames_until(watcher, "leave", "erin")
    assert about(frames, "erin") == ["leave"]
    assert frames[-1]["count"] == 1
    status, body = http_get(green.base + "/api/rooms/lobby/presence")
    assert status == 401  # jwt mode: the API wants a token too


# -- the store away or losing its data --------------------------------------------------------


async def told_only_of_carol_and_dave(*members: tuple[Client, dict[str, Any]]) -> None:
    """Each of two members (a client and the snapshot it joined with) is told, since its
    snapshot, of carol and dave joining (4 here) and of nothing else.

    Each process announces its own joiner, so carol's and dave's joins may arrive in either
    order; and bob's join, announced before alice's snapshot, may reach her after it, stale
    by its version (docs/PROTOCOL.md). Neither is news. What is: a leave, or bob or alice
    joining again after the snapshot a client holds."""
    for client, snapshot in members:
        frames = await frames_until_joined(client, {"carol", "dave"})
        news = [f for f in frames if f["version"] > snapshot["version"]]
        assert sorted((f["type"], f.get("user")) for f in news) == [("join", "carol"), ("join", "dave")]
        assert max(f["count"] for f in news) == 4


async def test_a_redis_outage_longer_than_a_hold_announces_nobody_gone(
    make_app: Callable[..., AppServer],
) -> None:
    # Nobody could renew a hold while Redis was down: the first step back used to announce
    # every user gone (their own clients included) and the heartbeats announce them back.
    redis = RedisServer(appendonly=True).start()  # its data outlives the restart
    try:
        env = {**JWT, "REDIS_URL": redis.url}
        blue, green = make_app(env={**env, "APP_COLOR": "blue"}), make_app(env={**env, "APP_COLOR": "green"})
        bob, bob_snapshot = await join(blue, "lobby", "bob")
        alice, alice_snapshot = await join(green, "lobby", "alice")
        assert (await bob.recv_type("join"))["user"] == "alice"
        redis.stop()
        # The outage itself: longer than a hold (the grace, 1 s, and a heartbeat interval).
        await asyncio.sleep(3 * float(GRACE))
        redis.start()
        # Presence frames go over pub/sub, which loses what is published while a process is
        # not subscribed (its members would get the room again later, as a repaired snapshot,
        # not as joins): the joins below wait until both processes are subscribed again.
        await subscribers_reach(redis.url, f"parley__group__{group_name('lobby')}", 2)
        carol, _ = await join(blue, "lobby", "carol")  # after the outage, on each process
        dave, _ = await join(green, "lobby", "dave")
        await told_only_of_carol_and_dave((bob, bob_snapshot), (alice, alice_snapshot))
    finally:
        redis.cleanup()


async def test_a_redis_pause_longer_than_a_hold_announces_nobody_gone(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    # A pause (CLIENT PAUSE, as a FAILOVER makes) shorter than the client's socket timeout
    # fails no command: the steps sent meanwhile ran after it with no forgiveness and
    # announced users gone (a hostile probe: 6 of 6 runs at grace 2 with a 4 s pause).
    import redis as redis_py

    env = {**JWT, "REDIS_URL": redis_server.url}
    blue, green = make_app(env={**env, "APP_COLOR": "blue"}), make_app(env={**env, "APP_COLOR": "green"})
    bob, bob_snapshot = await join(blue, "lobby", "bob")
    alice, alice_snapshot = await join(green, "lobby", "alice")
    assert (await bob.recv_type("join"))["user"] == "alice"
    with redis_py.Redis.from_url(redis_server.url) as admin:
        admin.client_pause(int(3000 * float(GRACE)), all=True)  # past a hold: the grace and a third
    carol, _ = await join(blue, "lobby", "carol")  # held up until the pause ends
    dave, _ = await join(green, "lobby", "dave")
    await told_only_of_carol_and_dave((bob, bob_snapshot), (alice, alice_snapshot))


async def test_versions_keep_growing_when_redis_loses_the_rooms_data(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    # Clients keep the count of the highest version seen: versions that started over at 1
    # after a FLUSHALL (or a restart without persistence) were ignored until they caught up.
    import redis.asyncio as aioredis

    server = make_app(env={**JWT, "REDIS_URL": redis_server.url})
    alice, first = await join(server, "lobby", "alice")
    bob, _ = await join(server, "lobby", "bob")
    before = (await alice.recv_type("join"))["version"]
    assert before > first["version"]
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    carol, _ = await join(server, "lobby", "carol")
    frames = [f for f in await frames_until(alice, "join", "carol") if f["type"] in PRESENCE_KINDS]
    assert frames and all(f["version"] > before for f in frames)


async def test_a_join_refused_for_storage_is_never_announced(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    # Bob's join fails reading the room (its state is not a hash: Redis answers WRONGTYPE,
    # as it fails while a slot is half-migrated): 503, and the room hears nothing of him.
    import redis.asyncio as aioredis
    from websockets.exceptions import InvalidStatus

    server = make_app(env={**JWT, "REDIS_URL": redis_server.url})
    alice, _ = await join(server, "lobby", "alice")
    client = aioredis.from_url(redis_server.url)
    state = await client.hgetall("chat:{lobby}:meta")
    await client.delete("chat:{lobby}:meta")
    await client.set("chat:{lobby}:meta", "not a hash")
    with pytest.raises(InvalidStatus) as refused:
        await Client.connect(server.ws_url("lobby", token=token("bob")), presence=True)
    assert refused.value.response.status_code == 503
    await client.delete("chat:{lobby}:meta")
    await client.hset("chat:{lobby}:meta", mapping=state)
    await client.aclose()
    carol, snapshot = await join(server, "lobby", "carol")
    assert {m["user"] for m in snapshot["members"]} == {"alice", "carol"}
    assert about(await frames_until(alice, "join", "carol"), "bob") == []
    await carol.close()
    assert about(await frames_until(alice, "leave", "carol"), "bob") == []


def presence_frames(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """The presence frames a raw client reads, in order, until a read times out (fails)."""
    while True:
        opcode, payload = wsraw.read_frame(sock)
        if opcode == 0x1:
            frame = json.loads(payload)
            if frame["type"] in PRESENCE_KINDS:
                yield frame


def as_a_page_keeps_it(shown: set[str], frame: dict[str, Any]) -> set[str]:
    """The member list after ``frame``, as docs/CLIENT.md says to keep it (client.js does)."""
    if frame["type"] == "presence":
        return {m["user"] for m in frame["members"]}
    if frame["type"] == "join":
        return shown | {frame["user"]}
    if frame["type"] == "leave":
        return shown - {frame["user"]}
    return (shown | {u["user"] for u in frame["joined"]}) - {u["user"] for u in frame["left"]}


async def test_a_member_that_stopped_reading_has_the_room_right_once_it_reads_again(
    make_app: Callable[..., AppServer],
) -> None:
    # Stuck in its join replay, the member's mailbox (1 frame here) filled with an announcement
    # and the joins after it were dropped for it alone. The others got them, so the room's
    # announcements chain whole: only the drop itself can say this member needs the room again.
    server = make_app(env={**JWT, "CHAT_LAYER_CAPACITY": "1", "CHAT_SEND_TIMEOUT": "120",
                           "CHAT_PING_INTERVAL": "0", "CHAT_RATE_PER_SECOND": "100000",
                           "CHAT_RATE_BURST": "100000"})
    poster, _ = await join(server, "full", "poster")
    for i in range(300):
        assert (await poster.post("\U0001f600" * 4000, client_id=f"fill-{i}"))["type"] == "ack"
    stuck = wsraw.open_socket(server.port, f"/ws/chat/full/?last=1000&token={token('stuck')}", rcvbuf=4096)
    try:
        others = []
        for i in range(3):  # one announcement each: the poster hears each before the next joins
            others.append(await join(server, "full", f"user{i}"))
            await frames_until(poster, "join", f"user{i}")
        truth = {"poster", "stuck", *(f"user{i}" for i in range(3))}
        shown: set[str] = set()
        snapshots = 0
        frames = presence_frames(stuck)
        while shown != truth:
            frame = await asyncio.to_thread(next, frames)
            snapshots += frame["type"] == "presence"
            shown = as_a_page_keeps_it(shown, frame)
        assert snapshots >= 2  # its own on joining, then the one it was owed
        for client, _ in others:
            await client.close()
    finally:
        stuck.close()
