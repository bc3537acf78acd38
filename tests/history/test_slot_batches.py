"""Cluster appends of one loop turn: one pipeline and one WAIT per master, each caller its own
reply, and a command the batch could not run is sent again on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from app.history.slot_batches import SlotBatches
from app.redis_clients import cluster_client
from app.redis_url import parse_redis_url
from tools.cluster import RedisClusterServers


@pytest.fixture
async def client(cluster: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    redis = cluster_client(parse_redis_url(cluster.url).urls)
    yield redis
    await redis.aclose()


def waits(cluster: RedisClusterServers) -> int:
    """WAITs run so far, over the masters."""
    total = 0
    for port in cluster.masters():
        for line in cluster._cli(port, "INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_wait:"):
                total += int(line.split("calls=")[1].split(",")[0])
    return total


async def test_a_turns_appends_share_one_wait_per_master(
    cluster: RedisClusterServers, client: RedisCluster,
) -> None:
    batches = SlotBatches(client, replicas=1, timeout_ms=2000)
    rooms = [f"batch-{i}" for i in range(60)]
    before = waits(cluster)
    replies = await asyncio.gather(*(
        batches.run(f"chat:{{{room}}}:n", ("INCRBY", f"chat:{{{room}}}:n", i)) for i, room in enumerate(rooms)
    ))
    assert replies == list(range(60))
    assert waits(cluster) - before == len({cluster.master_of(f"chat:{{{r}}}:n") for r in rooms}) == 3
    for i, room in enumerate(rooms):  # stored, and on the replica too (WAIT said so)
        assert await client.get(f"chat:{{{room}}}:n") == str(i).encode()


async def test_a_command_that_fails_in_the_batch_fails_alone(
    cluster: RedisClusterServers, client: RedisCluster,
) -> None:
    batches = SlotBatches(client, replicas=0, timeout_ms=2000)
    await client.set("chat:{wrong}:kind", "text")
    good, bad, also = await asyncio.gather(
        batches.run("chat:{ok}:n", ("INCR", "chat:{ok}:n")),
        batches.run("chat:{wrong}:kind", ("INCR", "chat:{wrong}:kind")),
        batches.run("chat:{ok}:m", ("INCR", "chat:{ok}:m")),
        return_exceptions=True,
    )
    assert (good, also) == (1, 1)
    assert isinstance(bad, Exception) and "not an integer" in str(bad)


async def test_too_few_replicas_in_time_fails_every_append_of_the_master(
    cluster: RedisClusterServers, client: RedisCluster,
) -> None:
    batches = SlotBatches(client, replicas=2, timeout_ms=50)  # each master has one replica
    replies = await asyncio.gather(
        *(batches.run(f"chat:{{short-{i}}}:n", ("INCR", f"chat:{{short-{i}}}:n")) for i in range(10)),
        return_exceptions=True,
    )
    assert all(type(r).__name__ == "ReplicationShortfall" for r in replies), replies
