"""Channels' layer contract, as code other than the chat consumer relies on it (a worker, a
view in another process, a user's own consumer), checked on both of Parley's layers: the
in-memory one, and the pub/sub one against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from app.layers.inboxes import Inboxes
from app.layers.local import LocalChannelLayer
from app.layers.pubsub import PubSubLayer

MakeLayer = Callable[..., Any]
NO_MESSAGE = 0.3  # how long a receive waits to show that nothing arrives


@pytest.fixture(params=["local", "pubsub"])
def make_layer(request: pytest.FixtureRequest) -> MakeLayer:
    """``make_layer(**options)``: a layer of the parametrized kind with Channels' options."""
    if request.param == "local":
        return lambda **options: LocalChannelLayer(**options)
    url = request.getfixturevalue("redis_server").url
    return lambda **options: PubSubLayer(hosts=[url], **options)


def inboxes(layer: Any) -> Inboxes:
    """The layer's local channels and groups (to show what it lets go of)."""
    return layer.inboxes if isinstance(layer, LocalChannelLayer) else layer.loop_layer().inboxes


async def joined(layer: Any, group: str, channel: str) -> None:
    """``group_add``, and for pub/sub also wait until Redis reports the subscription
    (SUBSCRIBE is not acknowledged, so a PUBLISH right after it could overtake it)."""
    await layer.group_add(group, channel)
    if isinstance(layer, PubSubLayer):
        loop_layer = layer.loop_layer()
        key = f"{loop_layer.prefix}__group__{group}"
        client = aioredis.from_url(layer._kwargs["hosts"][0])
        try:
            async with asyncio.timeout(5):
                while (await client.pubsub_numsub(key))[0][1] < 1:
                    await asyncio.sleep(0.01)
        finally:
            await client.aclose()


async def nothing_for(layer: Any, channel: str) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), NO_MESSAGE)


async def test_send_then_receive_in_order(make_layer: MakeLayer) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "m", "n": n})
    assert [(await layer.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]


async def test_new_channels_are_valid_and_distinct(make_layer: MakeLayer) -> None:
    layer = make_layer()
    names = {await layer.new_channel() for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert BaseChannelLayer().require_valid_channel_name(name)
    assert (await layer.new_channel(prefix="worker.")).count("worker.") == 1


async def test_a_receiver_waiting_before_the_send_gets_it(make_layer: MakeLayer) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    waiting = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)  # let it start waiting
    await layer.send(channel, {"type": "m"})
    assert await asyncio.wait_for(waiting, 5) == {"type": "m"}


async def test_a_member_gets_group_messages_before_its_first_receive(make_layer: MakeLayer) -> None:
    layer = make_layer()
    first, second = await layer.new_channel(), await layer.new_channel()
    await joined(layer, "g", first)
    await joined(layer, "g", second)
    await layer.group_send("g", {"type": "m", "n": 1})
    assert await asyncio.wait_for(layer.receive(first), 5) == {"type": "m", "n": 1}
    assert await asyncio.wait_for(layer.receive(second), 5) == {"type": "m", "n": 1}


async def test_a_named_channel_added_to_a_group_gets_its_messages() -> None:
    layer = LocalChannelLayer()  # pub/sub groups take this process's channels only, as stock
    await layer.group_add("g", "worker.thumbnails")
    await layer.group_send("g", {"type": "m"})
    assert await asyncio.wait_for(layer.receive("worker.thumbnails"), 5) == {"type": "m"}


async def test_a_timed_out_receive_keeps_the_channel_and_its_groups(make_layer: MakeLayer) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    await joined(layer, "g", channel)
    await nothing_for(layer, channel)
    await layer.group_send("g", {"type": "m", "n": 1})
    await layer.send(channel, {"type": "m", "n": 2})
    # Two paths (a group message goes through Redis on pub/sub): no order between them.
    got = {(await asyncio.wait_for(layer.receive(channel), 5))["n"] for _ in range(2)}
    assert got == {1, 2}


async def test_a_cancelled_receive_loses_nothing_sent_later(make_layer: MakeLayer) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    await joined(layer, "g", channel)
    waiting = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert channel not in inboxes(layer).channels  # no mailbox kept for nobody ...
    await layer.group_send("g", {"type": "m"})  # ... yet the channel still works
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "m"}


async def test_a_message_older_than_expiry_is_dropped(make_layer: MakeLayer) -> None:
    layer = make_layer(expiry=0.05)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m", "n": 1})
    await asyncio.sleep(0.1)  # the passage of time is what is under test
    await layer.send(channel, {"type": "m", "n": 2})
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "m", "n": 2}
    await nothing_for(layer, channel)


async def test_an_abandoned_channel_leaves_its_groups_once_its_messages_expire(make_layer: MakeLayer) -> None:
    layer = make_layer(expiry=0.05)
    abandoned, reader = await layer.new_channel(), await layer.new_channel()
    await joined(layer, "g", abandoned)
    await joined(layer, "g", reader)
    await layer.group_send("g", {"type": "m"})
    assert await asyncio.wait_for(layer.receive(reader), 5) == {"type": "m"}
    await asyncio.sleep(0.1)
    await nothing_for(layer, reader)  # a receive runs the sweep
    state = inboxes(layer)
    assert abandoned not in state.channels
    assert [list(members) for members in state.groups.values()] == [[reader]]


async def test_membership_lapses_after_group_expiry_unless_the_receiver_is_registered(
    make_layer: MakeLayer,
) -> None:
    layer = make_layer(group_expiry=0.05)
    plain, registered = await layer.new_channel(), await layer.new_channel()
    layer.register_direct(registered, lambda message: False)  # a live receiver, until forget
    await joined(layer, "g", plain)
    await joined(layer, "g", registered)
    await asyncio.sleep(0.1)
    await layer.group_send("g", {"type": "m"})
    assert await asyncio.wait_for(layer.receive(registered), 5) == {"type": "m"}
    await nothing_for(layer, plain)


async def test_send_beyond_capacity_is_channel_full_and_group_send_drops(make_layer: MakeLayer) -> None:
    layer = make_layer(capacity=2)
    channel, member = await layer.new_channel(), await layer.new_channel()
    await layer.send(channel, {"type": "m", "n": 1})
    await layer.send(channel, {"type": "m", "n": 2})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "m", "n": 3})
    assert [(await layer.receive(channel))["n"] for _ in range(2)] == [1, 2]

    await joined(layer, "g", member)
    for n in range(4):
        await layer.group_send("g", {"type": "m", "n": n})  # never raises
    # Redis delivers to a subscriber in publish order: once this arrives, all four have.
    probe = await layer.new_channel()
    await joined(layer, "probe", probe)
    await layer.group_send("probe", {"type": "probe"})
    assert await asyncio.wait_for(layer.receive(probe), 5) == {"type": "probe"}
    assert [(await asyncio.wait_for(layer.receive(member), 5))["n"] for _ in range(2)] == [0, 1]
    await nothing_for(layer, member)


async def test_group_discard(make_layer: MakeLayer) -> None:
    layer = make_layer()
    stays, leaves = await layer.new_channel(), await layer.new_channel()
    await layer.group_discard("g", stays)  # never added: not an error
    await joined(layer, "g", stays)
    await joined(layer, "g", leaves)
    await layer.group_discard("g", leaves)
    await layer.group_send("g", {"type": "m"})
    assert await asyncio.wait_for(layer.receive(stays), 5) == {"type": "m"}
    await nothing_for(layer, leaves)
    await layer.group_discard("g", stays)
    assert inboxes(layer).groups == {}


async def test_flush_empties_the_layer_and_it_stays_usable(make_layer: MakeLayer) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    await joined(layer, "g", channel)
    await layer.send(channel, {"type": "m"})
    await layer.flush()
    assert inboxes(layer).channels == {} and inboxes(layer).groups == {}
    fresh = await layer.new_channel()
    await layer.send(fresh, {"type": "after"})
    assert await asyncio.wait_for(layer.receive(fresh), 5) == {"type": "after"}


async def test_a_message_that_is_not_a_dict_is_refused_clearly(make_layer: MakeLayer) -> None:
    layer = make_layer()
    if isinstance(layer, PubSubLayer):
        foreign = f"{layer.loop_layer().prefix}specific.0123456789abcdef!00"  # another loop's
        with pytest.raises(TypeError, match="dict"):
            await layer.send(foreign, "text")
    else:
        with pytest.raises(TypeError, match="dict"):
            await layer.send(await layer.new_channel(), "text")  # type: ignore[arg-type]
