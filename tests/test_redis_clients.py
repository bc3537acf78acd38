"""The cluster client on a real Redis Cluster: a command waits for its turn at its node
rather than fail past the node's pool, and fails as the store unavailable only when no turn
comes free in time."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from app import redis_clients
from app.history import replication
from app.redis_clients import FAILURES, NODE_CONNECTIONS, NODE_GATE, NodeBusy, cluster_client
from app.redis_url import parse_redis_url
from tools.cluster import RedisClusterServers


async def _clients_of(port: int) -> int:
    """The client connections the Redis on ``port`` has now (replicas not counted)."""
    admin = aioredis.Redis(port=port)
    try:
        return int((await admin.info("clients"))["connected_clients"]) - 1  # less this one
    finally:
        await admin.aclose()


async def test_more_commands_at_once_on_one_master_than_its_pool_holds_all_answer(
    cluster: RedisClusterServers,
) -> None:
    # redis-py's cluster client raises MaxConnectionsError at once past a node's pool (64):
    # a presence step or a batch of join reads in more rooms of one master failed whole.
    client = cluster_client(parse_redis_url(cluster.url).urls)
    key = f"{{crowd-{uuid.uuid4().hex}}}:n"
    port = cluster.master_of(key)
    assert port is not None
    try:
        await client.initialize()
        before = await _clients_of(port)
        burst = 3 * NODE_CONNECTIONS
        replies = await asyncio.gather(*(client.incr(key) for _ in range(burst)))
        assert sorted(replies) == list(range(1, burst + 1))
        # Pipelines of app code on one node take their turns too (appends, reads on a master).
        batches = await asyncio.gather(*(replication.on_slot_master(client, key, [("INCR", key)])
                                         for _ in range(burst)))
        assert sorted(reply for [reply] in batches) == list(range(burst + 1, 2 * burst + 1))
        assert 0 < await _clients_of(port) - before <= NODE_GATE
    finally:
        await client.aclose()


async def test_a_command_that_gets_no_turn_in_time_fails_as_the_store_not_answering(
    cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_clients, "POOL_TIMEOUT", 0.05)
    client = cluster_client(parse_redis_url(cluster.url).urls, node_gate=1)
    key = f"{{busy-{uuid.uuid4().hex}}}"
    try:
        await client.initialize()
        node = client.get_node_from_key(key)
        gate = await client.take_turn(node)  # type: ignore[attr-defined]  # the node's one turn, held
        try:
            with pytest.raises(NodeBusy) as refused:
                await client.get(key)
            assert isinstance(refused.value, FAILURES)  # callers answer "unavailable"
        finally:
            gate.release()
        assert await client.get(key) is None  # its turn free again, it runs
    finally:
        await client.aclose()


async def test_a_new_clients_first_commands_sent_together_each_run_once(cluster: RedisClusterServers) -> None:
    # Before its slot map was loaded, redis-py sent them to arbitrary nodes; at every 5th
    # MOVED it closed all its connections under the commands in flight, then sent those
    # again: some ran twice (a presence step that runs twice reports no join the second time).
    for _ in range(5):  # a new client each time: the race is at its first use
        client = cluster_client(parse_redis_url(cluster.url).urls)
        keys = [f"{{once-{uuid.uuid4().hex}}}" for _ in range(60)]  # over every master
        try:
            assert await asyncio.gather(*(client.incr(key) for key in keys)) == [1] * len(keys)
        finally:
            await client.aclose()


def test_a_node_gate_leaves_room_in_the_pool() -> None:
    with pytest.raises(ValueError, match="node_gate"):
        cluster_client(("redis://127.0.0.1:7000",), max_connections=8, node_gate=8)


async def test_a_script_new_to_a_live_master_runs_while_another_master_is_down(
    redis_cluster: RedisClusterServers,
) -> None:
    # redis-py loads a script a node doesn't know with SCRIPT LOAD on every master: with one
    # master down, rooms on the live ones failed their first script there (a join refused).
    client = cluster_client(parse_redis_url(redis_cluster.url).urls)
    try:
        masters = redis_cluster.masters()
        keys = {redis_cluster.master_of(key): key for key in (f"{{fresh-{n}}}" for n in range(200))}
        await asyncio.gather(*(client.set(key, "v") for key in keys.values()))  # slot map loaded
        dead, *live = masters
        redis_cluster.kill(dead)
        script = client.register_script(f"return redis.call('GET', KEYS[1]) .. '{uuid.uuid4().hex}'")
        for port in live:
            assert (await script(keys=[keys[port]])).startswith(b"v")
            assert await script(keys=[keys[port]])  # cached on that master now: EVALSHA
    finally:
        await client.aclose()


async def test_a_client_new_while_its_first_master_is_down_serves_the_other_masters_keys(
    redis_cluster: RedisClusterServers,
) -> None:
    """redis-py reads its command table (``COMMAND``) from the first master of each slot map
    it loads: a client that loaded one while that master was down, before its replica took
    over (a process started then, or one that lost its map), failed every command, whatever
    master served the key."""
    # One seed, a replica: each client learns the same map, masters in the same order.
    seed = next(port for port in redis_cluster.ports if port not in redis_cluster.masters())
    urls = (f"redis://127.0.0.1:{seed}",)
    probe = cluster_client(urls)
    try:
        await probe.initialize()
        dead = probe.get_default_node().port
    finally:
        await probe.aclose()
    keys = {redis_cluster.master_of(key): key for key in (f"{{first-{n}}}" for n in range(200))}
    redis_cluster.kill(dead)
    client = cluster_client(urls)
    try:
        for port, key in keys.items():
            if port != dead:
                assert await client.set(key, "v"), port
    finally:
        await client.aclose()
