"""The presence service's announcements, on a real Redis and the in-process channel layer."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.exceptions import ChannelFull

from app.layers.local import LocalChannelLayer
from app.presence.base import PresenceStore, PresenceUnavailable, RoomChange, RoomState
from app.presence.memory import MemoryPresence
from app.presence.redis import RedisPresence
from app.presence.service import Presence
from app.redis_clients import redis_client
from app.rooms import group_name
from tools.procs import RedisServer


async def test_a_heartbeat_that_steps_a_new_user_first_announces_the_join_to_the_others_only(
    redis_server: RedisServer,
) -> None:
    # Bob's first socket here: the heartbeat's step can reach the store before the join's own
    # batch (both hold him). He was never announced gone, so his own sockets must not hear
    # "bob joined" (only a user held again after an outage is told that).
    layer = LocalChannelLayer()
    store = RedisPresence(redis_client(redis_server.url), grace=1, hold=1.4)
    presence = Presence(store, layer, grace=1)
    listener = await layer.new_channel()
    await layer.group_add(group_name("lobby"), listener)
    try:
        entering = presence.enter("lobby", "bob")  # its batch goes out on the next loop turn
        await presence.tick()  # the first tick is a heartbeat
        event = await asyncio.wait_for(layer.receive(listener), 5)
        frame = json.loads(event["frame"])
        assert (frame["type"], frame["user"], event["skip"]) == ("join", "bob", "bob")
        assert json.loads((await asyncio.wait_for(entering, 5)).frame)["count"] == 1
    finally:
        await presence.close()


async def next_event(layer: LocalChannelLayer, channel: str, kind: str) -> dict[str, object]:
    while True:
        event = await asyncio.wait_for(layer.receive(channel), 10)
        if event["type"] == kind:
            return event


async def test_members_here_get_the_room_again_when_its_announcements_never_reach_this_process(
    redis_server: RedisServer,
) -> None:
    # Two processes' presence on one Redis, each on a layer of its own: what one announces
    # never reaches the other's members, as while a pub/sub connection is down.
    here_layer, there_layer = LocalChannelLayer(), LocalChannelLayer()
    here = Presence(RedisPresence(redis_client(redis_server.url), grace=1, hold=1.4), here_layer,
                    grace=1, repair_delay=0.2)
    there = Presence(RedisPresence(redis_client(redis_server.url), grace=1, hold=1.4), there_layer, grace=1)
    listener = await here_layer.new_channel()
    await here_layer.group_add(group_name("lobby"), listener)
    runner = asyncio.ensure_future(here.run())  # heartbeats, rounds, and the repairs due
    try:
        alice = await asyncio.wait_for(here.enter("lobby", "alice"), 5)
        here.enter("lobby", "carol")
        await next_event(here_layer, listener, "presence.event")  # alice's join: the chain's start
        carol = json.loads(str((await next_event(here_layer, listener, "presence.event"))["frame"]))
        assert carol["user"] == "carol"
        # Every announcement of this process reached its members: nothing to repair, ever.
        assert here.repairs is not None and here.repairs.due(time.monotonic() + 3600) == []

        await asyncio.wait_for(there.enter("lobby", "bob"), 5)  # announced over there only
        repair = await next_event(here_layer, listener, "presence.repair")  # a heartbeat saw it
        frame = json.loads(str(repair["frame"]))
        assert frame["type"] == "presence" and frame["count"] == 3
        assert {m["user"] for m in frame["members"]} == {"alice", "bob", "carol"}
        assert repair["version"] == frame["version"] > carol["version"] > alice.version
    finally:
        runner.cancel()
        await here.close()
        await there.close()


async def test_a_member_whose_snapshot_failed_gets_the_room_once_the_store_answers(
    redis_server: RedisServer,
) -> None:
    # Bob's snapshot started the room's chain; Alice joined while the store refused writes, so
    # hers failed. Her join, announced once the store is back, closes the chain, so no loss shows:
    # without a repair owed to her she never got a list at all.
    layer = LocalChannelLayer()
    presence = Presence(RedisPresence(redis_client(redis_server.url), grace=1, hold=1.4), layer,
                        grace=1, repair_delay=0.2)
    listener = await layer.new_channel()
    await layer.group_add(group_name("lobby"), listener)
    runner = asyncio.ensure_future(presence.run())
    try:
        await asyncio.wait_for(presence.enter("lobby", "bob"), 5)
        redis_server.cli("CONFIG", "SET", "maxmemory", "1")  # full: every step refused, data kept
        with pytest.raises(PresenceUnavailable):
            await asyncio.wait_for(presence.enter("lobby", "alice"), 10)
        redis_server.cli("CONFIG", "SET", "maxmemory", "0")
        repair = await next_event(layer, listener, "presence.repair")
        frame = json.loads(str(repair["frame"]))
        assert {m["user"] for m in frame["members"]} == {"alice", "bob"}
    finally:
        runner.cancel()
        await presence.close()


async def test_a_member_whose_mailbox_was_full_for_an_announcement_gets_the_room_on_its_own(
    redis_server: RedisServer,
) -> None:
    # Its mailbox full (a reader far behind), the member was dropped alice's join, which the
    # others got: the room's chain is whole, so no repair of the room would ever follow. It is
    # sent the room's snapshot, addressed to it alone, once it has room for one.
    layer = LocalChannelLayer(capacity=5)
    presence = Presence(RedisPresence(redis_client(redis_server.url), grace=1, hold=1.4), layer,
                        grace=1, repair_delay=0.2)
    reading, stuck = await layer.new_channel(), await layer.new_channel()
    for channel in (reading, stuck):
        await layer.group_add(group_name("lobby"), channel)
    runner = asyncio.ensure_future(presence.run())
    try:
        await asyncio.wait_for(presence.enter("lobby", "bob"), 5)
        await next_event(layer, reading, "presence.event")  # bob's join: the chain's start
        with pytest.raises(ChannelFull):
            for _ in range(6):
                await layer.send(stuck, {"type": "chat.filler"})
        await asyncio.wait_for(presence.enter("lobby", "alice"), 5)
        join = json.loads(str((await next_event(layer, reading, "presence.event"))["frame"]))
        assert (join["type"], join["user"]) == ("join", "alice")

        # The stuck member reads again: what it was dropped comes as a snapshot to it alone.
        repair = await next_event(layer, stuck, "presence.repair")
        assert repair["to"] == [stuck]
        frame = json.loads(str(repair["frame"]))
        assert {m["user"] for m in frame["members"]} == {"alice", "bob"}
        assert repair["version"] >= join["version"]
        assert here_alone(presence) == 0  # the room's own chain never broke
    finally:
        runner.cancel()
        await presence.close()


def here_alone(presence: Presence) -> int:
    """Rooms the chain watch finds short of the store (whole-room repairs due)."""
    assert presence.repairs is not None
    return len(presence.repairs.due(time.monotonic() + 3600))


class FailingRooms(PresenceStore):
    """Presence whose steps fail in the rooms of ``failing`` and stand in the others, as a
    cluster's when one master does not answer; every step it was asked is in ``steps``."""

    heartbeat = True

    def __init__(self) -> None:
        self.inner = MemoryPresence(grace=15)
        self.failing: set[str] = set()
        self.steps: list[list[RoomChange]] = []

    async def sync(self, changes: list[RoomChange]) -> list[RoomState | PresenceUnavailable]:
        self.steps.append(changes)
        stood = iter(await self.inner.sync([c for c in changes if c.room not in self.failing]))
        return [PresenceUnavailable(f"{c.room}: no answer") if c.room in self.failing else next(stood)
                for c in changes]

    async def read(self, room: str, limit: int) -> tuple[int, list[str]]:
        return await self.inner.read(room, limit)


async def test_a_step_failing_in_some_rooms_fails_only_their_joins_and_holds_them_at_the_next_tick() -> None:
    store = FailingRooms()
    presence = Presence(store, LocalChannelLayer(), grace=15)
    try:
        entered = asyncio.gather(presence.enter("calm", "alice"), presence.enter("down", "bob"))
        await asyncio.wait_for(entered, 5)
        store.failing = {"down"}
        calm, down = presence.enter("calm", "carol"), presence.enter("down", "dave")
        assert json.loads((await asyncio.wait_for(calm, 5)).frame)["count"] == 2
        with pytest.raises(PresenceUnavailable):
            await asyncio.wait_for(down, 5)

        await presence.tick()  # the first tick is a heartbeat: "down" fails again, "calm" stands
        assert {c.room for c in store.steps[-1]} == {"calm", "down"}
        await presence.tick()  # no heartbeat due for seconds: "down" alone, its users held now
        assert store.steps[-1] == [RoomChange("down", hold=("bob", "dave"))]
        store.failing = set()
        await presence.tick()  # it answers: held
        assert store.steps[-1] == [RoomChange("down", hold=("bob", "dave"))]
        stepped = len(store.steps)
        await presence.tick()  # nothing failed: nothing to step until the next heartbeat
        assert len(store.steps) == stepped
        assert await store.read("down", 10) == (2, ["bob", "dave"])
    finally:
        await presence.close()


async def test_a_tick_whose_step_fails_still_sends_the_rounds_due(redis_server: RedisServer) -> None:
    # Redis refuses every step from the moment carol's join is held back for the room's next
    # round: each tick's heartbeat fails, and the round must go out all the same (a tick used
    # to raise before it, and every tick after a failed one was a heartbeat, failing too).
    layer = LocalChannelLayer()
    presence = Presence(RedisPresence(redis_client(redis_server.url), grace=1, hold=1.4), layer, grace=1)
    listener = await layer.new_channel()
    await layer.group_add(group_name("lobby"), listener)
    runner = asyncio.ensure_future(presence.run())
    try:
        await asyncio.wait_for(presence.enter("lobby", "bob"), 5)
        bob = json.loads(str((await next_event(layer, listener, "presence.event"))["frame"]))
        assert (bob["type"], bob["user"]) == ("join", "bob")  # a quiet room's first change: at once
        await asyncio.wait_for(presence.enter("lobby", "carol"), 5)  # the next: with the next round
        redis_server.cli("CONFIG", "SET", "maxmemory", "1")  # full: every step refused, data kept
        carol = json.loads(str((await next_event(layer, listener, "presence.event"))["frame"]))
        assert (carol["type"], carol["user"], carol["count"]) == ("join", "carol", 2)
    finally:
        redis_server.cli("CONFIG", "SET", "maxmemory", "0")
        runner.cancel()
        await presence.close()
