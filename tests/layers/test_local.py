"""The in-process channel layer."""

from __future__ import annotations

import asyncio

import pytest
from channels.exceptions import ChannelFull

from app.layers.local import LocalChannelLayer

pytestmark = pytest.mark.unit


async def test_group_send_reaches_every_member_once() -> None:
    layer = LocalChannelLayer()
    a, b, c = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("g", a)
    await layer.group_add("g", b)
    await layer.group_add("g", b)
    await layer.group_send("g", {"type": "x", "n": 1})
    assert await layer.receive(a) == {"type": "x", "n": 1}
    assert await layer.receive(b) == {"type": "x", "n": 1}
    assert layer.backlog(b) == 0 and layer.backlog(c) == 0


async def test_full_channels_drop_group_messages_but_refuse_direct_sends() -> None:
    layer = LocalChannelLayer(capacity=1)
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "n": 1})
    await layer.group_send("g", {"type": "x", "n": 2})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "x", "n": 3})
    assert (await layer.receive(channel))["n"] == 1


async def test_a_cancelled_receiver_leaves_nothing_behind() -> None:
    layer = LocalChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    waiter = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await layer.group_discard("g", channel)
    assert layer.channels == {} and layer.groups == {}


async def test_a_direct_receivers_membership_outlives_group_expiry() -> None:
    layer = LocalChannelLayer(group_expiry=1)
    live, plain = await layer.new_channel(), await layer.new_channel()
    layer.register_direct(live, lambda message: False)
    for channel in (live, plain):
        await layer.group_add("g", channel)
    layer.inboxes.sweep(now=layer.groups["g"][plain] + 2)  # as if two seconds had passed
    assert list(layer.groups["g"]) == [live]


async def test_group_send_hands_messages_to_a_direct_receiver_first() -> None:
    layer = LocalChannelLayer()
    taker, refuser = await layer.new_channel(), await layer.new_channel()
    taken: list[dict] = []
    layer.register_direct(taker, lambda message: taken.append(message) or True)
    layer.register_direct(refuser, lambda message: False)
    for channel in (taker, refuser):
        await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "n": 1})
    assert taken == [{"type": "x", "n": 1}] and layer.backlog(taker) == 0
    assert await layer.receive(refuser) == {"type": "x", "n": 1}


async def test_a_queued_message_is_never_overtaken_by_a_direct_one() -> None:
    layer = LocalChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "n": 1})  # queued: no direct receiver yet
    layer.register_direct(channel, lambda message: True)
    await layer.group_send("g", {"type": "x", "n": 2})
    assert [(await layer.receive(channel))["n"], (await layer.receive(channel))["n"]] == [1, 2]
    layer.unregister_direct(channel)
    assert layer.direct == {}


async def test_a_tap_sees_each_group_message_of_its_kind_once_before_the_members() -> None:
    layer = LocalChannelLayer()
    members = [await layer.new_channel() for _ in range(3)]
    order: list[str] = []
    layer.register_direct(members[0], lambda message: order.append("member") is None)
    for channel in members:
        await layer.group_add("g", channel)
    layer.tap("presence.event", lambda message: order.append(f"tap {message['n']}"))
    await layer.group_send("g", {"type": "presence.event", "n": 1})
    await layer.group_send("g", {"type": "chat.message", "n": 2})  # not its kind
    await layer.group_send("nobody-here", {"type": "presence.event", "n": 3})  # no members
    assert order == ["tap 1", "member", "member"]


async def test_a_failing_tap_costs_the_members_nothing(caplog: pytest.LogCaptureFixture) -> None:
    layer = LocalChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    layer.tap("x", lambda message: 1 / 0)
    await layer.group_send("g", {"type": "x"})
    assert await layer.receive(channel) == {"type": "x"}
    assert "group tap failed" in caplog.text


async def test_fan_out_local_reaches_the_members_of_this_layer() -> None:
    layer = LocalChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    layer.fan_out_local("g", {"type": "presence.repair", "n": 1})
    assert await layer.receive(channel) == {"type": "presence.repair", "n": 1}


async def test_an_ordered_group_with_nobody_here_keeps_no_place() -> None:
    """A backend posting to rooms nobody has joined (the HTTP API, embedded mode): nothing
    reaches anyone, so nothing is held and no group's line is kept, for any number of rooms."""
    layer = LocalChannelLayer()
    layer.order("chat.message", lambda m: ("e", m["id"]), 60.0)
    for room in range(100):
        for n in (1, 3):  # 3 before 2: would be held, with a timer, for a line nobody reads
            await layer.group_send(f"chat.r{room}", {"type": "chat.message", "id": n})
    assert layer.inboxes.orders.by_kind["chat.message"].lines == {}
