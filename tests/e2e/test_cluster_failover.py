"""Chat on a real Redis Cluster across two app processes, and a master SIGKILLed mid-chat
or a room's slot migrated to another master mid-chat.

Members of each room sit on both processes. While they chat, the master of one room's slot
is killed: its replica is promoted, the killed node is started again once the cluster has
failed over (it rejoins as the new master's replica). Sends that cannot be made durable in
the meantime are answered ``unavailable`` and are resent with the same client_id, as a
client does. Every acked message must reach every member exactly once, in id order, be in
history afterwards, and both processes must still be serving, never restarted. The same
holds while the room's slot moves to another master, keys and all, as ``redis-cli --cluster
reshard`` moves it (sends that meet the slot half-moved are answered ``unavailable`` too).
And a room nobody is in when its master is killed takes joins again once the replica has
taken over.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
from websockets.exceptions import InvalidStatus

from app.chat.services import READINESS_GROUP
from app.layers.cluster import shard_channel
from tests.support import AppServer, Client, wait_until
from tools.cluster import RedisClusterServers

PER_SENDER = 12  # acked messages each sender needs
KILL_AFTER = 4  # acks in the doomed room before its master is killed
RESEND_PAUSE = 0.1  # the client's own retry pause, as client.js's sendRetryDelay


async def _send_until_acked(sender: Client, text: str, client_id: str, refusals: list[str]) -> int:
    while True:
        answer = await sender.post(text, client_id=client_id)
        if answer["type"] == "ack":
            assert answer["client_id"] == client_id
            return int(answer["id"])
        assert answer["code"] in {"unavailable", "rate_limited"}, answer
        refusals.append(answer["code"])
        await asyncio.sleep(RESEND_PAUSE)


async def _chat(sender: Client, room: str, name: str, acked: dict[int, str], refusals: list[str],
                progress: Callable[[], None]) -> None:
    for n in range(PER_SENDER):
        client_id = f"{name}-{n}"
        message_id = await _send_until_acked(sender, f"{room} {client_id}", client_id, refusals)
        assert message_id not in acked, f"id {message_id} acked twice in {room}"
        acked[message_id] = client_id
        progress()


async def _messages(member: Client, count: int, timeout: float = 20) -> list[dict[str, object]]:
    """The member's next ``count`` message frames; on a timeout, fail showing what came."""
    frames = [f for f in member.skipped if f["type"] == "message"]
    others = [f for f in member.skipped if f["type"] != "message"]
    try:
        while len(frames) < count:
            frame = await member.recv(timeout)
            (frames if frame["type"] == "message" else others).append(frame)
    except TimeoutError:
        raise AssertionError(f"got ids {[f['id'] for f in frames]} of {count}; other frames: "
                             f"{[f for f in others if f['type'] != 'ack']}") from None
    return frames


@pytest.mark.parametrize("fault", ["kill", "migrate"])
async def test_a_master_lost_or_a_slot_moved_mid_chat_loses_and_duplicates_nothing(
    redis_cluster: RedisClusterServers, make_app: Callable[..., AppServer], fault: str,
) -> None:
    env = {"REDIS_URL": redis_cluster.url, "CHAT_RATE_PER_SECOND": "100", "CHAT_RATE_BURST": "100"}
    apps = [make_app(env=env), make_app(env=env)]
    rooms = ["doomed", "bystander"]
    doomed_master = redis_cluster.master_of("chat:{doomed}:seq")
    assert doomed_master is not None

    # Per room: a sender and a listener on each process.
    senders = {room: [await Client.connect(app.ws_url(room)) for app in apps] for room in rooms}
    listeners = {room: [await Client.connect(app.ws_url(room)) for app in apps] for room in rooms}
    acked: dict[str, dict[int, str]] = {room: {} for room in rooms}
    refusals: list[str] = []
    enough = asyncio.Event()

    def progress() -> None:
        if len(acked["doomed"]) >= KILL_AFTER:
            enough.set()

    async def kill_mid_chat() -> None:
        await enough.wait()
        if fault == "migrate":
            target = next(port for port in redis_cluster.masters() if port != doomed_master)
            await asyncio.to_thread(redis_cluster.migrate, "chat:{doomed}:seq", target)
            return
        await asyncio.to_thread(redis_cluster.kill, doomed_master)
        await asyncio.to_thread(
            wait_until,
            lambda: redis_cluster.master_of("chat:{doomed}:seq") not in (None, doomed_master)
            and redis_cluster.serving(),
            30, "the doomed slot's replica to be promoted", 0.1,
        )
        await asyncio.to_thread(redis_cluster.restart, doomed_master)

    chats = [
        _chat(sender, room, f"{room}-{i}", acked[room], refusals, progress)
        for room in rooms for i, sender in enumerate(senders[room])
    ]
    async with asyncio.timeout(90):
        await asyncio.gather(kill_mid_chat(), *chats)

    if fault == "kill":
        assert "unavailable" in refusals, "no send was refused while the master was gone"
    else:
        assert redis_cluster.master_of("chat:{doomed}:seq") != doomed_master
    for room in rooms:
        expected = sorted(acked[room])
        assert len(expected) == PER_SENDER * len(senders[room])
        for member in [*listeners[room], *senders[room]]:
            frames = await _messages(member, len(expected))
            ids = [frame["id"] for frame in frames]
            assert ids == expected, f"{room}: a member got {ids}, acked were {expected}"
            assert [frame["client_id"] for frame in frames] == [acked[room][i] for i in expected]
        status, body = apps[0].get(f"/api/rooms/{room}/messages?since=0&limit=1000")
        assert status == 200, body
        stored = {frame["id"]: frame["client_id"] for frame in body["messages"]}
        assert {i: stored.get(i) for i in expected} == acked[room], f"{room}: history lacks acked messages"
    for app in apps:
        assert app.process is not None and app.process.poll() is None
        assert app.get("/readyz")[0] == 200
    for client in itertools.chain(*senders.values(), *listeners.values()):
        await client.close()



async def test_joins_to_a_room_nobody_was_in_resume_once_its_master_has_failed_over(
    redis_cluster: RedisClusterServers, make_app: Callable[..., AppServer],
) -> None:
    # A hostile run: ~20 new sockets a second into one room, each closed at once, and the
    # room's master SIGKILLed. Joins were refused 503 ``unavailable`` for 12 s and more
    # after the cluster had promoted the replica: a process with nobody in the room at the
    # kill kept its channel layer's slot map and sent every SSUBSCRIBE to the dead node,
    # until something else (there, a presence ``leave`` published after its grace) happened
    # to refresh the map. Here the room is first joined after the kill, on a master the
    # process holds no connection to: not slot 0's (the cluster client's default node) nor
    # the readiness check's. An idle connection there would turn the refused SSUBSCRIBE into
    # a broken subscription whose reader refreshes the map, which hid the fault by luck.
    app = make_app(env={"REDIS_URL": redis_cluster.url})  # ready: its layer has the slot map
    talked_to = {redis_cluster.master_of_slot(0),
                 redis_cluster.master_of(shard_channel("parley", READINESS_GROUP))}
    room = next(f"room{i}" for i in range(1000)
                if redis_cluster.master_of(shard_channel("parley", f"chat.room{i}")) not in talked_to)
    channel = shard_channel("parley", f"chat.{room}")
    master = redis_cluster.master_of(channel)
    assert master is not None
    await asyncio.to_thread(redis_cluster.kill, master)
    try:  # joins go on meanwhile; while the slot has no master they are refused
        await (await Client.connect(app.ws_url(room))).close()
    except InvalidStatus:
        pass

    def promoted() -> bool:
        return redis_cluster.master_of(channel) not in (None, master) and redis_cluster.serving()

    await asyncio.to_thread(wait_until, promoted, 30, "the room's replica to be promoted", 0.1)
    loop = asyncio.get_running_loop()

    def joins() -> bool:
        async def join() -> None:
            client = await Client.connect(app.ws_url(room))
            await client.close()

        try:
            asyncio.run_coroutine_threadsafe(join(), loop).result(15)
        except InvalidStatus:
            return False
        return True

    await asyncio.to_thread(wait_until, joins, 15, "a join to the room after the failover", 0.1)
    assert app.process is not None and app.process.poll() is None
