"""Scripts in a pipeline: no SCRIPT EXISTS per execute, and a flushed script cache costs
nothing but one more call for the scripts it hit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.redis_clients import redis_client
from app.redis_scripts import ScriptPipeline
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
