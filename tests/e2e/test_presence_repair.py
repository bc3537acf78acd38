"""Presence announcements lost on their way to one process are repaired: two real app
processes on one real redis-server, real WebSocket clients.

One process reaches Redis through its socket file, the other over TCP. Its pub/sub connection
is cut (``CLIENT KILL``) and kept down (the socket file moved away, so its reconnects fail while
its other connections carry on) while a user joins and another leaves through the other
process. Its member never gets those frames, and is sent the room's whole list again once the
process notices (app/presence/repair.py). Nothing sleeps: each step awaits the frame or the
Redis state that shows it happened.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.chat.auth import mint
from app.rooms import group_name
from tests.support import AppServer, Client, RedisServer, subscribers_reach

SECRET = "presence-repair-test-secret-with-32-bytes"
JWT = {"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET, "CHAT_PRESENCE_GRACE": "1"}
CHANNEL = f"parley__group__{group_name('lobby')}"  # the room's pub/sub channel
WAIT = 30  # seconds any one step may take before the test fails


@pytest.fixture
def redis_two_ways() -> Iterator[RedisServer]:
    """A redis-server on a loopback port and on a socket file."""
    server = RedisServer(unix_socket=True).start()
    yield server
    server.cleanup()


async def join(server: AppServer, sub: str) -> tuple[Client, dict[str, Any]]:
    client = await Client.connect(server.ws_url("lobby", token=mint(sub, "*", 600, SECRET)), presence=True)
    return client, await client.recv_type("presence")


def names(frame: dict[str, Any]) -> set[str]:
    return {member["user"] for member in frame["members"]}


async def frames_until(client: Client, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Every frame up to and including the first for which ``last`` is true."""
    seen = []
    async with asyncio.timeout(WAIT):
        while True:
            seen.append(await client.recv(WAIT))
            if last(seen[-1]):
                return seen


def about(frames: list[dict[str, Any]], user: str) -> list[str]:
    """The joins and leaves of ``user`` that ``frames`` announce."""
    kinds = []
    for frame in frames:
        if frame["type"] in ("join", "leave") and frame["user"] == user:
            kinds.append(frame["type"])
        elif frame["type"] == "presence_diff":
            kinds += ["join" for u in frame["joined"] if u["user"] == user]
            kinds += ["leave" for u in frame["left"] if u["user"] == user]
    return kinds


async def subscribers(redis: RedisServer) -> int:
    client = aioredis.from_url(redis.url)
    try:
        return int((await client.pubsub_numsub(CHANNEL))[0][1])
    finally:
        await client.aclose()


async def cut_socket_file_pubsub(redis: RedisServer) -> None:
    """Kill the pub/sub connections that came through the socket file, and keep new ones from
    coming that way until ``restore``; connections already open there carry on."""
    assert redis.socket_path is not None
    os.rename(redis.socket_path, redis.socket_path + ".away")
    admin = aioredis.from_url(redis.url)
    try:
        for client in await admin.client_list(_type="pubsub"):
            if client["addr"].startswith("/"):  # a socket file's path, not host:port
                await admin.client_kill_filter(_id=client["id"])
    finally:
        await admin.aclose()


def restore(redis: RedisServer) -> None:
    assert redis.socket_path is not None
    os.rename(redis.socket_path + ".away", redis.socket_path)


async def test_a_process_cut_off_from_pubsub_sends_its_members_the_room_again(
    make_app: Callable[..., AppServer], redis_two_ways: RedisServer,
) -> None:
    redis = redis_two_ways
    cut = make_app(env={**JWT, "REDIS_URL": redis.unix_url, "APP_COLOR": "blue"})
    other = make_app(env={**JWT, "REDIS_URL": redis.url, "APP_COLOR": "green"})
    alice, _ = await join(cut, "alice")
    bob, _ = await join(other, "bob")
    dave, _ = await join(other, "dave")
    # Before the cut, both processes deliver: alice hears both joins.
    heard = await frames_until(alice, lambda f: about([f], "dave") == ["join"])
    assert about(heard, "bob") == ["join"]
    await frames_until(bob, lambda f: about([f], "dave") == ["join"])

    await cut_socket_file_pubsub(redis)
    assert await subscribers(redis) == 1  # only the other process hears the room now
    carol, _ = await join(other, "carol")
    await frames_until(bob, lambda f: about([f], "carol") == ["join"])  # published meanwhile
    await dave.close()
    # Gone after the grace, announced by whichever process stepped first (its publishes still
    # go out; if that one failed, bob's process repairs him too).
    await frames_until(bob, lambda f: about([f], "dave") == ["leave"]
                       or (f["type"] == "presence" and "dave" not in names(f)))
    restore(redis)
    await subscribers_reach(redis.url, CHANNEL, 2, timeout=WAIT)

    # Alice never heard carol come or dave go; the room's whole list reaches her instead.
    right = {"alice", "bob", "carol"}
    frames = await frames_until(alice, lambda f: f["type"] == "presence" and names(f) == right)
    assert about(frames, "carol") == [] and about(frames, "dave") == []
    repaired = frames[-1]
    assert repaired["count"] == 3
    # And what follows it is heard as before, newer than the list it replaced.
    erin, _ = await join(other, "erin")
    joined = (await frames_until(alice, lambda f: about([f], "erin") == ["join"]))[-1]
    assert joined["version"] > repaired["version"] and joined["count"] == 4
    for client in (alice, bob, carol, erin):
        await client.close()
