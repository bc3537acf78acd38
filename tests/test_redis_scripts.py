"""Scripts in a pipeline: no SCRIPT EXISTS per execute, and a flushed script cache costs
nothing but one more call for the scripts it hit; on a cluster, one pipeline per master whose
calls each answer, or fail, as if sent alone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.redis_clients import FAILURES, cluster_client, redis_client
from app.redis_scripts import ScriptPipeline, scripts_by_node
from app.redis_url import parse_redis_url
from tools.cluster import RedisClusterServers
from tools.procs import RedisServer

COUNTER = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_server.url)
    yield client
    await client.aclose()


async def script_exists_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))


async def test_scripts_and_commands_answer_in_order_without_script_exists(client: aioredis.Redis) -> None:
    counter = client.register_script(COUNTER)
    await client.script_load(COUNTER)
    batch = ScriptPipeline(client)
    batch.script(counter, ["n"], [2])
    batch.pipe.get("n")
    batch.script(counter, ["n"], [3])
    assert await batch.execute() == [2, b"2", 5]
    assert await script_exists_calls(client) == 0


async def test_a_flushed_script_runs_once_when_redis_lost_it(client: aioredis.Redis) -> None:
    counter = client.register_script(COUNTER)
    await client.script_flush()
    batch = ScriptPipeline(client)
    batch.script(counter, ["n"], [2])
    batch.script(counter, ["m"], [7])
    assert await batch.execute() == [2, 7]
    assert await client.mget("n", "m") == [b"2", b"7"]  # each ran once


async def test_other_errors_are_raised(client: aioredis.Redis) -> None:
    counter = client.register_script(COUNTER)
    await client.set("n", "not a number")
    batch = ScriptPipeline(client)
    batch.script(counter, ["n"], [1])
    with pytest.raises(aioredis.ResponseError):
        await batch.execute()


def _keys_per_master(cluster: RedisClusterServers, per_master: int) -> dict[int, list[str]]:
    keys: dict[int, list[str]] = {port: [] for port in cluster.masters()}
    owners = cluster.slot_owners()
    n = 0
    while any(len(picked) < per_master for picked in keys.values()):
        key = f"{{batch-{uuid.uuid4().hex[:8]}-{n}}}"
        picked = keys[owners[cluster.slot_of(key)]]
        if len(picked) < per_master:
            picked.append(key)
        n += 1
    return keys


async def test_on_a_cluster_calls_over_every_master_answer_in_order(cluster: RedisClusterServers) -> None:
    client = cluster_client(parse_redis_url(cluster.url).urls)
    try:
        keys = [key for picked in _keys_per_master(cluster, 3).values() for key in picked]
        calls = [([key], [n + 1]) for n, key in enumerate(keys)] + [([keys[0]], [100])]
        # The script is new to every master: each call is answered NOSCRIPT, then run alone.
        script = client.register_script(f"{COUNTER} -- {uuid.uuid4().hex}")
        assert await scripts_by_node(client, script, calls) == list(range(1, len(keys) + 1)) + [101]
        again = await scripts_by_node(client, script, calls)  # loaded now: the pipelines answer
        assert again == [102] + [2 * n for n in range(2, len(keys) + 1)] + [202]
    finally:
        await client.aclose()


async def test_on_a_cluster_a_master_down_fails_its_own_calls_only(
    redis_cluster: RedisClusterServers,
) -> None:
    client = cluster_client(parse_redis_url(redis_cluster.url).urls)
    try:
        per_master = _keys_per_master(redis_cluster, 2)
        script = client.register_script(COUNTER)
        calls = [([key], [1]) for picked in per_master.values() for key in picked]
        assert await scripts_by_node(client, script, calls) == [1] * len(calls)
        dead = next(iter(per_master))
        redis_cluster.kill(dead)
        replies = await scripts_by_node(client, script, calls)
        owners = [(port, key) for port, picked in per_master.items() for key in picked]
        for (port, key), reply in zip(owners, replies, strict=True):
            if port != dead:
                assert reply == 2, (key, reply)
            else:  # refused; or, once its replica has taken over, run (after the first, if it got it)
                assert isinstance(reply, FAILURES) or reply in (1, 2), (key, reply)
    finally:
        await client.aclose()
