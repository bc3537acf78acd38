"""One process in more rooms of each master of a real Redis Cluster than a cluster client has
connections to it (64): presence keeps every member present, and a burst of joins into
those rooms is never refused.

Both used to fail there: presence steps and join reads send one command per room at once,
and redis-py raised MaxConnectionsError past a node's pool instead of waiting. A heartbeat in
that many rooms failed whole, at every tick after: the members' holds lapsed, a joiner on
another process was shown a room without them and they were told they had left, while
connected. A deploy's reconnect storm had its joins refused 503.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from app.redis_clients import NODE_CONNECTIONS
from tests.support import AppServer, Client, rooms_per_master
from tools.cluster import RedisClusterServers

T = TypeVar("T")
PER_MASTER = NODE_CONNECTIONS + 10  # rooms of each master, all on one process
GRACE = 5  # a hold lasts the grace and a heartbeat (a third of it): some 7 s


async def _at_most(limit: int, calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Each call's result, ``limit`` of them at a time (joins in small batches, as clients
    that come one by one: only the heartbeats then reach many rooms at once)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


async def _frame(client: Client, seen: list[dict[str, Any]], wanted: Callable[[dict[str, Any]], bool],
                 timeout: float = 20) -> dict[str, Any]:
    """The client's next frame that is ``wanted``; every frame read is kept in ``seen``."""
    while True:
        frame = await client.recv(timeout)
        seen.append(frame)
        if wanted(frame):
            return frame


def _names(frame: dict[str, Any], key: str) -> set[str]:
    return {entry["user"] for entry in frame.get(key, [])}


async def _holds_have_lapsed(admin: RedisCluster, cluster: RedisClusterServers, rooms: list[str],
                             users: list[str]) -> None:
    """Until Redis's clock is past every deadline the members' joins gave them: from then on,
    a member still present was held again since (a heartbeat), or the next step anywhere in
    the room finds them gone."""
    pipe = admin.pipeline()
    for room, user in zip(rooms, users, strict=True):
        pipe.zscore(f"chat:{{{room}}}:present", user)
    deadlines = await pipe.execute()
    assert None not in deadlines, "a member was never held"
    clock = aioredis.Redis(port=cluster.masters()[0])  # one host: every node has this clock
    try:
        async with asyncio.timeout(60):
            while True:
                seconds, micros = await clock.time()
                if seconds * 1000 + micros // 1000 > max(deadlines):
                    return
                await asyncio.sleep(0.1)
    finally:
        await clock.aclose()


async def test_members_of_more_rooms_per_master_than_a_pool_stay_present_to_joiners_elsewhere(
    cluster: RedisClusterServers, make_app: Callable[..., AppServer],
) -> None:
    env = {"REDIS_URL": cluster.url, "CHAT_PRESENCE_GRACE": str(GRACE)}
    here, there = make_app(env=env), make_app(env=env)
    rooms = rooms_per_master(cluster, f"held-{uuid.uuid4().hex[:8]}", PER_MASTER)
    admin = RedisCluster.from_url(f"redis://127.0.0.1:{cluster.ports[0]}")
    members: list[Client] = []
    joiners: list[Client] = []
    try:
        async def member(room: str) -> Client:
            client = await Client.connect(here.ws_url(room), presence=True)
            members.append(client)
            return client

        async def joiner(room: str) -> Client:
            client = await Client.connect(there.ws_url(room), presence=True)
            joiners.append(client)
            return client

        seen: list[list[dict[str, Any]]] = [[] for _ in rooms]
        first = await _at_most(16, [lambda room=room: member(room) for room in rooms])
        snapshots = [await _frame(m, seen[i], lambda f: f["type"] == "presence") for i, m in enumerate(first)]
        assert [s["count"] for s in snapshots] == [1] * len(rooms)
        users = [m.ready["user"] for m in first if m.ready is not None]
        await _holds_have_lapsed(admin, cluster, rooms, users)

        # A second member of each room, on the other process: its snapshot must show both.
        second = await _at_most(16, [lambda room=room: joiner(room) for room in rooms])
        shown = [await j.recv_type("presence") for j in second]
        missing = [room for room, frame in zip(rooms, shown, strict=True) if frame["count"] != 2]
        assert not missing, f"{len(missing)} of {len(rooms)} rooms shown without their member: {missing[:5]}"

        # Each first member hears of the second, then of its typing, sent after that: any
        # announcement of that room made with the join (its own departure, say) came before.
        newcomers = [j.ready["user"] for j in second if j.ready is not None]
        for i, (m, user) in enumerate(zip(first, newcomers, strict=True)):
            await _frame(m, seen[i], lambda f, u=user: (f["type"] == "join" and f["user"] == u)
                         or u in _names(f, "joined"))
        for j in second:
            await j.ws.send(json.dumps({"type": "typing"}))
        for i, (m, user) in enumerate(zip(first, newcomers, strict=True)):
            await _frame(m, seen[i], lambda f, u=user: f["type"] == "typing" and f["user"] == u)
        told_gone = [rooms[i] for i, frames in enumerate(seen)
                     if any(f["type"] == "leave" or _names(f, "left") for f in frames)]
        assert not told_gone, f"{len(told_gone)} connected members were told someone left: {told_gone[:5]}"
    finally:
        await asyncio.gather(*(c.close() for c in [*members, *joiners]), return_exceptions=True)
        await admin.aclose()


async def test_a_burst_of_joins_into_more_rooms_per_master_than_a_pool_is_never_refused(
    cluster: RedisClusterServers, make_app: Callable[..., AppServer],
) -> None:
    app = make_app(env={"REDIS_URL": cluster.url})
    rooms = rooms_per_master(cluster, f"burst-{uuid.uuid4().hex[:8]}", 2 * NODE_CONNECTIONS)
    joined = await asyncio.gather(*(Client.connect(app.ws_url(room)) for room in rooms),
                                  return_exceptions=True)
    try:
        refused = [f"{room}: {result!r}" for room, result in zip(rooms, joined, strict=True)
                   if isinstance(result, BaseException)]
        assert not refused, f"{len(refused)} of {len(rooms)} joins refused: {refused[:3]}"
    finally:
        await asyncio.gather(*(c.close() for c in joined if isinstance(c, Client)), return_exceptions=True)
