"""The Redis presence store's names: sent by Redis only when the process cannot work them out
from what it saw (the room changed elsewhere, or its keys were lost and made again)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis as redis_py

from app.presence.base import RoomChange
from app.presence.redis import RedisPresence
from app.presence.rules import heartbeat_interval, stall_window
from app.redis_clients import NODE_CONNECTIONS, SOCKET_TIMEOUT, cluster_client, redis_client
from app.redis_url import parse_redis_url
from tests.support import rooms_per_master
from tools.cluster import RedisClusterServers
from tools.procs import RedisServer


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[tuple[RedisPresence, RedisPresence]]:
    """Two processes' stores on one Redis."""
    pair = (RedisPresence(redis_client(redis_server.url), grace=15, hold=20),
            RedisPresence(redis_client(redis_server.url), grace=15, hold=20))
    yield pair
    for store in pair:
        await store.close()


async def names_sent(store: RedisPresence) -> int:
    """How many ZRANGE calls Redis ran for the store (the step's sample and its next deadline)."""
    stats = await store._client.info("commandstats")
    return int(stats.get("cmdstat_zrange", {}).get("calls", 0))


async def test_names_follow_every_change_here_elsewhere_and_after_keys_were_lost(
    stores: tuple[RedisPresence, RedisPresence],
) -> None:
    here, elsewhere = stores
    [state] = await here.sync([RoomChange("r", hold=("a", "b"), sample=True)])
    assert sorted(state.members) == ["a", "b"] and state.count == 2

    [state] = await here.sync([RoomChange("r", hold=("c",), release=("a",), sample=True)])
    assert sorted(state.members) == ["a", "b", "c"] and state.joined == ["c"]

    await elsewhere.sync([RoomChange("r", hold=("d",))])
    [state] = await here.sync([RoomChange("r", hold=("e",), sample=True)])
    assert sorted(state.members) == ["a", "b", "c", "d", "e"] and state.count == 5

    # Lost and made again (a flush, a restart without persistence): never the old names.
    await here._client.flushall()
    await elsewhere.sync([RoomChange("r", hold=("x", "y", "z", "w"))])
    [state] = await here.sync([RoomChange("r", hold=("v",), sample=True)])
    assert sorted(state.members) == ["v", "w", "x", "y", "z"] and state.count == 5


async def test_a_room_unchanged_since_the_last_step_here_costs_no_names(
    stores: tuple[RedisPresence, RedisPresence],
) -> None:
    here, _ = stores
    await here.sync([RoomChange("r", hold=tuple(f"u{i}" for i in range(50)), sample=True)])
    await here._client.config_resetstat()
    for i in range(50, 60):
        [state] = await here.sync([RoomChange("r", hold=(f"u{i}",), sample=True)])
        assert state.count == i + 1 and len(state.members) == i + 1
    assert await names_sent(here) == 10  # each step's next-deadline lookup only


async def test_versions_keep_growing_when_a_failover_brings_back_older_keys(
    stores: tuple[RedisPresence, RedisPresence],
) -> None:
    # A promoted replica that missed the last steps: the room's keys are there, with the
    # values of a few versions ago. The next change must still be above every version seen.
    here, elsewhere = stores
    await here.sync([RoomChange("r", hold=("a",))])
    stale = await here._client.get("chat:{r}:present:v")
    seen = []
    for user in ("b", "c", "d"):
        [state] = await elsewhere.sync([RoomChange("r", hold=(user,))])
        seen.append(state.version)
    await here._client.set("chat:{r}:present:v", stale)  # what the replica had
    [state] = await here.sync([RoomChange("r", hold=("e",))])
    assert state.version > max(seen)
    assert state.version < 2**53  # exact in JavaScript


async def test_a_room_its_last_user_left_keeps_no_key_without_an_expiry(
    stores: tuple[RedisPresence, RedisPresence],
) -> None:
    # The step that announced the last departure wrote the room's version key afresh (a SET
    # drops any expiry) and, the room being empty, gave it none: a key per room ever joined,
    # kept for good (a hostile probe: 2,000 rooms, 2,000 keys, weeks later).
    here, _ = stores
    members, *_ = RedisPresence._keys("emptied")
    await here.sync([RoomChange("emptied", hold=("a",))])
    await here._client.zadd(members, {"a": 0})  # its deadline long passed
    [state] = await here.sync([RoomChange("emptied")])
    assert state.left == ["a"] and state.count == 0
    keys = await here._client.keys("chat:{emptied}:*")
    assert keys and all([0 < await here._client.pttl(key) for key in keys]), keys


async def test_each_change_links_the_version_it_found_to_the_next(
    stores: tuple[RedisPresence, RedisPresence],
) -> None:
    # The announcements' chain (app/presence/repair.py): every step that changes a room says
    # which version it moved it from, so the steps of all processes form one chain.
    here, elsewhere = stores
    [first] = await here.sync([RoomChange("r", hold=("a",))])
    [second] = await elsewhere.sync([RoomChange("r", hold=("b",))])
    [same] = await here.sync([RoomChange("r", hold=("a",))])
    [third] = await elsewhere.sync([RoomChange("r", hold=("c",))])
    assert first.previous == 0 and second.previous == first.version and third.previous == second.version
    assert (same.joined, same.previous, same.version) == ([], second.version, second.version)
    assert first.version < second.version < third.version


async def test_a_step_in_more_rooms_of_each_master_than_its_pool_steps_every_room_on_a_cluster(
    cluster: RedisClusterServers,
) -> None:
    # One script per room, sent together: past a master's pool (64 connections) redis-py
    # raised MaxConnectionsError, and the whole step failed, at every heartbeat after.
    store = RedisPresence(cluster_client(parse_redis_url(cluster.url).urls), grace=15, hold=20, cluster=True)
    prefix = f"crowd-{uuid.uuid4().hex}"
    rooms = rooms_per_master(cluster, prefix, NODE_CONNECTIONS + 10)
    try:
        await store.sync([RoomChange(f"{prefix}-first", hold=("a",))])  # a process up for a while
        states = await store.sync([RoomChange(room, hold=("a",)) for room in rooms])
        assert [(state.count, state.joined) for state in states] == [(1, ["a"])] * len(rooms)
        states = await store.sync([RoomChange(room, hold=("a",)) for room in rooms])  # a heartbeat
        assert [(state.count, state.joined, state.left) for state in states] == [(1, [], [])] * len(rooms)
    finally:
        await store.close()


async def test_a_step_already_sent_when_the_store_stalled_announces_no_one_gone(
    redis_server: RedisServer,
) -> None:
    # A step on its way when Redis paused (CLIENT PAUSE, as a failover makes) carried no
    # forgiveness, its process having seen no failure: run after the pause, it announced
    # every user whose hold lapsed meanwhile gone, and their process's next heartbeat back.
    grace = 1.0
    hold = grace + heartbeat_interval(grace)
    here, elsewhere = (RedisPresence(redis_client(redis_server.url), grace=grace, hold=hold) for _ in "ab")
    try:
        await here.sync([RoomChange("r", hold=("a",))])
        await elsewhere.sync([RoomChange("r", hold=("b",))])
        with redis_py.Redis.from_url(redis_server.url) as admin:
            admin.client_pause(int((hold + 1) * 1000), all=True)  # past a's hold
        [state] = await elsewhere.sync([RoomChange("r", hold=("b",))])  # runs when it ends
        assert (state.left, state.count) == ([], 2)
        # Spared, not kept: with no heartbeat from a's process, a goes a hold later.
        gone: list[str] = []
        async with asyncio.timeout(10):
            while not gone:
                await asyncio.sleep(state.next_due or 0.05)  # when the store says one is due
                [state] = await elsewhere.sync([RoomChange("r", hold=("b",))])
                gone += state.left
        assert (gone, state.count) == (["a"], 1)
    finally:
        await here.close()
        await elsewhere.close()


async def test_the_last_user_leaving_a_room_nobody_steps_meanwhile_leaves_after_the_grace(
    redis_server: RedisServer,
) -> None:
    # The room is stepped next when the departure is due, longer after its last step than a
    # stall takes to be noticed: a release is a departure asked for, never spared.
    grace = 2.0
    window = stall_window(grace, SOCKET_TIMEOUT)
    assert window is not None and window[0] < grace
    store = RedisPresence(redis_client(redis_server.url), grace=grace,
                          hold=grace + heartbeat_interval(grace))
    try:
        await store.sync([RoomChange("quiet", hold=("a",))])
        [state] = await store.sync([RoomChange("quiet", release=("a",))])
        assert state.next_due is not None and state.next_due <= grace
        await asyncio.sleep(state.next_due)  # when the store says the departure is due
        [state] = await store.sync([RoomChange("quiet")])
        assert (state.left, state.count) == (["a"], 0)
    finally:
        await store.close()


async def test_a_room_nobody_steps_after_its_holders_died_is_no_stall(redis_server: RedisServer) -> None:
    # A gap longer than any unseen stall (the socket timeout and a heartbeat) is a room whose
    # holders died: taken for a stall, a killed process's users were shown to joiners for a
    # whole hold more (a hostile probe: 20 s at the default grace).
    grace, timeout = 1.0, 1.5
    hold = grace + heartbeat_interval(grace)
    dead, alive = (RedisPresence(redis_client(redis_server.url), grace=grace, hold=hold, timeout=timeout)
                   for _ in "ab")
    try:
        await dead.sync([RoomChange("r", hold=("kate",))])  # its last step: then killed
        window = stall_window(grace, timeout)
        assert window is not None
        await asyncio.sleep(window[1] + 0.2)  # the room unstepped for longer than any stall
        [state] = await alive.sync([RoomChange("r", hold=("joe",), sample=True)])
        assert (state.left, state.members, state.count) == (["kate"], ["joe"], 1)
    finally:
        await dead.close()
        await alive.close()
