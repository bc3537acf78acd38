"""SPUBLISHes of one loop turn as one cluster pipeline: every one delivered, in order per
channel, and each caller answered."""

from __future__ import annotations

import asyncio

from app.layers.cluster import ClusterLayer
from app.layers.publisher import ShardPublisher
from app.redis_clients import cluster_client
from app.redis_url import parse_redis_url
from tools.cluster import RedisClusterServers


async def test_a_burst_arrives_whole_and_in_order(cluster: RedisClusterServers) -> None:
    # Through the layer that uses it: another process's layer receives what this one sends.
    sender, receiver = (ClusterLayer(hosts=parse_redis_url(cluster.url).urls) for _ in range(2))
    try:
        groups = [f"chat.burst-{i}" for i in range(8)]
        inboxes = {group: await receiver.new_channel() for group in groups}
        for group, channel in inboxes.items():
            await receiver.group_add(group, channel)
        await asyncio.gather(*(sender.group_send(group, {"type": "t", "n": n})
                               for n in range(20) for group in groups))
        await sender.group_send(groups[0], {"type": "t", "n": "after"})  # a later turn
        for group, channel in inboxes.items():
            got = [(await asyncio.wait_for(receiver.receive(channel), 5))["n"] for _ in range(20)]
            assert got == list(range(20)), group
        assert (await asyncio.wait_for(receiver.receive(inboxes[groups[0]]), 5))["n"] == "after"
    finally:
        await sender.flush()
        await receiver.flush()


async def test_a_failed_batch_fails_its_callers_and_the_next_goes_out(cluster: RedisClusterServers) -> None:
    client = cluster_client(parse_redis_url(cluster.url).urls)
    publisher = ShardPublisher(client)
    try:
        # A payload the client cannot send fails the whole batch it is in: both callers hear.
        failed = await asyncio.gather(publisher.publish("parley:{x}:chat.x", None),  # type: ignore[arg-type]
                                      publisher.publish("parley:{w}:chat.w", b"0"), return_exceptions=True)
        assert all(isinstance(f, Exception) and "Invalid input" in str(f) for f in failed), failed
        assert await asyncio.gather(publisher.publish("parley:{y}:chat.y", b"1"),
                                    publisher.publish("parley:{z}:chat.z", b"2")) == [None, None]
    finally:
        await publisher.close()
        await client.aclose()
