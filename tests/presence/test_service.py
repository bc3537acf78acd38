"""The presence service's announcements, on a real Redis and the in-process channel layer."""

from __future__ import annotations

import asyncio
import json

from app.layers.local import LocalChannelLayer
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
        assert json.loads(await asyncio.wait_for(entering, 5))["count"] == 1
    finally:
        await presence.close()
