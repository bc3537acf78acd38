"""The tuned pub/sub layer against a real redis-server, across two layer instances."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app.chat.services import position
from app.layers.api import GroupOrder
from app.layers.pubsub import PubSubLayer
from app.redis_options import DRIVER, RETRY
from tests.support import published_out_of_order, subscribers_reach
from tools.net import wait_until
from tools.procs import RedisServer


@pytest.fixture
async def layers(redis_server: RedisServer) -> AsyncIterator[tuple[PubSubLayer, PubSubLayer]]:
    one, two = PubSubLayer(hosts=[redis_server.url]), PubSubLayer(hosts=[redis_server.url])
    yield one, two
    await one.flush()
    await two.flush()


def redis_url(layer: PubSubLayer) -> str:
    return layer._kwargs["hosts"][0]


async def test_group_messages_cross_processes_and_reach_every_local_member(layers: tuple) -> None:
    one, two = layers
    here = [await one.new_channel() for _ in range(3)]
    there = await two.new_channel()
    for channel in here:
        await one.group_add("room", channel)
    await two.group_add("room", there)
    await subscribers_reach(redis_url(one), f"{one.loop_layer().prefix}__group__room", 2)
    await two.group_send("room", {"type": "chat.message", "id": 7})
    got = [await asyncio.wait_for(one.receive(c), 5) for c in here]
    assert got == [{"type": "chat.message", "id": 7}] * 3
    assert await asyncio.wait_for(two.receive(there), 5) == {"type": "chat.message", "id": 7}


async def test_a_message_published_before_the_one_ahead_of_it_waits_for_it(layers: tuple) -> None:
    one, two = layers
    assert isinstance(one, GroupOrder)
    one.order("chat.message", position, 60.0)  # only its predecessor can let one go in time
    here, there = await one.new_channel(), await two.new_channel()
    await one.group_add("room", here)
    await two.group_add("room", there)
    await subscribers_reach(redis_url(one), f"{one.loop_layer().prefix}__group__room", 2)
    await published_out_of_order(one, two, "room", here, there)
    await one.group_discard("room", here)  # the group's line ends with its last member
    assert not one.loop_layer().inboxes.orders.by_kind["chat.message"].lines


async def test_consumer_channels_are_local_no_redis_subscription(layers: tuple) -> None:
    one, _ = layers
    channel = await one.new_channel()
    await one.send(channel, {"type": "direct"})
    assert await asyncio.wait_for(one.receive(channel), 5) == {"type": "direct"}
    assert not one.loop_layer()._shards[0].is_subscribed(channel)


async def test_a_cancelled_receiver_leaves_no_mailbox_but_the_channel_still_works(layers: tuple) -> None:
    one, _ = layers
    channel = await one.new_channel()
    waiter = asyncio.ensure_future(one.receive(channel))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert channel not in one.loop_layer().inboxes.channels
    await one.send(channel, {"type": "later"})
    assert await asyncio.wait_for(one.receive(channel), 5) == {"type": "later"}


async def test_joining_a_subscribed_group_does_not_queue_behind_publishes(layers: tuple) -> None:
    """The shard's one lock orders every PUBLISH; a join to a group this process already
    subscribed must not wait for it (after a deploy, thousands of joins did, and held every
    broadcast back by seconds)."""
    one, _ = layers
    first, second = await one.new_channel(), await one.new_channel()
    await one.group_add("room", first)
    shard = one.loop_layer()._shards[0]
    async with shard._lock:  # as a long queue of publishes would hold it
        await asyncio.wait_for(one.group_add("room", second), 1)
    assert second in one.loop_layer().inboxes.groups[f"{one.loop_layer().prefix}__group__room"]


async def test_publishes_queued_behind_a_round_trip_go_out_together_in_order(layers: tuple) -> None:
    """While the connection is busy, publishes queue; they then go out as one batch, in the
    order they were asked, and each caller returns once its own was published."""
    one, two = layers
    there = await two.new_channel()
    await two.group_add("room", there)
    await subscribers_reach(redis_url(two), f"{two.loop_layer().prefix}__group__room", 1)
    shard = one.loop_layer()._shards[0]
    async with shard._lock:  # as a slow round trip would hold it
        sends = [asyncio.ensure_future(one.group_send("room", {"type": "chat.message", "id": i}))
                 for i in range(50)]
        await asyncio.sleep(0.05)
        assert not any(send.done() for send in sends)
    await asyncio.wait_for(asyncio.gather(*sends), 5)
    got = [(await asyncio.wait_for(two.receive(there), 5))["id"] for _ in range(50)]
    assert got == list(range(50))


async def test_a_group_left_while_redis_is_down_is_not_subscribed_again(redis_server: RedisServer) -> None:
    # redis-py subscribes again, on reconnecting, every channel Redis never confirmed leaving.
    server = redis_server
    layer = PubSubLayer(hosts=[server.url])
    try:
        members = {room: await layer.new_channel() for room in ("left", "kept")}
        for room, channel in members.items():
            await layer.group_add(room, channel)
        prefix = layer.loop_layer().prefix
        await subscribers_reach(server.url, f"{prefix}__group__kept", 1)
        server.stop()
        with contextlib.suppress(Exception):  # the lost connection's error, if it noticed yet
            await layer.group_discard("left", members["left"])
        server.start()
        await subscribers_reach(server.url, f"{prefix}__group__kept", 1)  # reconnected
        assert await numsub(server.url, f"{prefix}__group__left") == 0
    finally:
        await layer.flush()


async def numsub(url: str, channel: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        return int((await client.pubsub_numsub(channel))[0][1])
    finally:
        await client.aclose()


async def test_a_tap_sees_what_reaches_this_process_and_fan_out_local_stays_here(layers: tuple) -> None:
    one, two = layers
    here, there = await one.new_channel(), await two.new_channel()
    await one.group_add("room", here)
    await two.group_add("room", there)
    await subscribers_reach(redis_url(one), f"{one.loop_layer().prefix}__group__room", 2)
    tapped: list[dict] = []
    one.tap("presence.event", tapped.append)
    await two.group_send("room", {"type": "presence.event", "n": 1})
    got = await asyncio.wait_for(one.receive(here), 5)
    assert tapped == [got] and tapped[0] is got
    assert (await asyncio.wait_for(two.receive(there), 5))["n"] == 1  # the one decoded object, seen once

    one.fan_out_local("room", {"type": "presence.repair", "n": 2})
    two.fan_out_local("room", {"type": "presence.repair", "n": 3})
    await two.group_send("room", {"type": "chat.message", "n": 4})  # after both, over Redis
    assert [(await asyncio.wait_for(one.receive(here), 5))["n"] for _ in range(2)] == [2, 4]
    assert [(await asyncio.wait_for(two.receive(there), 5))["n"] for _ in range(2)] == [3, 4]


async def test_a_join_refused_while_redis_is_down_leaves_nothing(redis_server: RedisServer) -> None:
    # The SUBSCRIBE of a join to a new room fails: the caller is told, and the chat consumer,
    # never joined, does not leave. The member used to stay (for group_expiry, a day), so the
    # room stayed subscribed after everyone really in it had gone.
    server = redis_server
    layer = PubSubLayer(hosts=[server.url])
    try:
        refused, later = await layer.new_channel(), await layer.new_channel()
        loop_layer = layer.loop_layer()
        key = f"{loop_layer.prefix}__group__room"
        connection = loop_layer._shards[0]._pubsub.connection
        server.stop()
        # The layer has noticed (its reader lost the connection): a SUBSCRIBE now fails
        # rather than going into a socket whose peer is gone.
        await asyncio.to_thread(wait_until, lambda: not connection.is_connected, 10,
                                "the layer to notice Redis is gone")
        with pytest.raises(RedisConnectionError):
            await layer.group_add("room", refused)
        assert key not in loop_layer.inboxes.groups
        assert not loop_layer._shards[0].is_subscribed(key)

        server.start()
        await layer.group_add("room", later)  # the room joined and left as usual
        await subscribers_reach(server.url, key, 1)
        await layer.group_discard("room", later)
        await asyncio.to_thread(wait_until, lambda: channels(server) == set(), 10,
                                "the room's subscription to go")
    finally:
        await layer.flush()


# A host as the app gives it (app.layers.channel_layers: redis-py retries a failed command on
# a fresh connection), and as a bare URL (redis-py reconnects, then raises).
HOSTS = {"app": lambda url: {"address": url, "retry": RETRY, "driver_info": DRIVER}, "bare": lambda url: url}


@pytest.mark.parametrize("host", HOSTS)
async def test_a_room_joined_right_after_a_restart_the_layer_has_not_seen_is_subscribed(
    redis_server: RedisServer, host: str,
) -> None:
    # Redis restarts while the layer has no turn (this test holds the event loop), so its
    # connection still looks open to the join's SUBSCRIBE. That SUBSCRIBE went into the dead
    # socket without an error and was lost: the join returned, and the room stayed deaf until
    # the reader reconnected. Or the reader's reconnect and the join's ran at once on the one
    # connection and the join failed (refused 503).
    server = redis_server
    layer = PubSubLayer(hosts=[HOSTS[host](server.url)])
    try:
        kept, joined = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("kept", kept)
        server.stop()
        server.start()
        await layer.group_add("joined", joined)
        prefix = layer.loop_layer().prefix
        # Asked before the layer's next turn: Redis has both rooms once the join returns.
        assert {f"{prefix}__group__kept", f"{prefix}__group__joined"} <= channels(server)
        for room, channel in (("joined", joined), ("kept", kept)):
            await layer.group_send(room, {"type": "chat.message", "room": room})
            assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "chat.message", "room": room}

        server.stop()
        server.start()
        await layer.group_discard("kept", kept)  # the UNSUBSCRIBE too goes on a fresh connection
        assert channels(server) == {f"{prefix}__group__joined"}
    finally:
        await layer.flush()


async def test_a_join_after_redis_stopped_unseen_is_refused_at_once(redis_server: RedisServer) -> None:
    # The dead connection took the SUBSCRIBE without an error: the join was accepted with
    # Redis down. Now it is refused, as one is once the reader has seen the outage.
    server = redis_server
    layer = PubSubLayer(hosts=[HOSTS["app"](server.url)])
    try:
        kept, refused = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("kept", kept)
        server.stop()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(layer.group_add("refused", refused), 5)
        assert f"{layer.loop_layer().prefix}__group__refused" not in layer.loop_layer().inboxes.groups
        server.start()
        await subscribers_reach(server.url, f"{layer.loop_layer().prefix}__group__kept", 1)  # the reader's
    finally:
        await layer.flush()


def channels(server: RedisServer) -> set[str]:
    """The group channels Redis has subscribers for (PUBSUB CHANNELS), not the layer's own."""
    return {name for name in server.cli("PUBSUB", "CHANNELS").split() if "__group__" in name}


async def test_a_cancelled_join_leaves_nothing_and_a_concurrent_member_keeps_the_room(
    layers: tuple[PubSubLayer, PubSubLayer],
) -> None:
    # Two joins of a new room wait for the connection (as behind a publish batch); the first
    # is cancelled there (its socket closed mid-join). The other's subscription must stand,
    # and the cancelled one must not stay a member.
    one, two = layers
    cancelled, member = await one.new_channel(), await one.new_channel()
    loop_layer = one.loop_layer()
    key = f"{loop_layer.prefix}__group__room"
    async with loop_layer._shards[0]._lock:
        first = asyncio.ensure_future(one.group_add("room", cancelled))
        second = asyncio.ensure_future(one.group_add("room", member))
        await asyncio.sleep(0)  # one step each: both are in the group, waiting for the lock
        assert set(loop_layer.inboxes.groups[key]) == {cancelled, member}
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
    await asyncio.wait_for(second, 5)
    assert set(loop_layer.inboxes.groups[key]) == {member}
    await subscribers_reach(redis_url(one), key, 1)
    await two.group_send("room", {"type": "chat.message", "id": 1})
    assert await asyncio.wait_for(one.receive(member), 5) == {"type": "chat.message", "id": 1}
    assert one.backlog(cancelled) == 0
