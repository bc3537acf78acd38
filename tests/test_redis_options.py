"""The retry policy every single-Redis client shares, against a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import redis_clients
from app.redis_clients import redis_client
from tools.procs import RedisServer


@pytest.fixture
def server() -> Iterator[RedisServer]:
    started = RedisServer().start()
    yield started
    started.cleanup()


def connections(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


async def test_a_command_a_stalled_redis_does_not_answer_is_not_sent_again(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stalled Redis (paused, or swapping) is no better on a fresh connection: each retry
    # would wait a whole socket timeout again, and a send would be answered `unavailable`
    # only after three (15 s), long after the client gave up on its ack.
    monkeypatch.setattr(redis_clients, "SOCKET_TIMEOUT", 0.3)
    client = redis_client(server.url)
    try:
        await client.ping()  # the pooled connection the write will use
        with redis.Redis.from_url(server.url) as admin:
            before = connections(admin)
            admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            try:
                with pytest.raises(RedisTimeoutError):
                    await client.incr("parley:test")
                opened = connections(admin) - before
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
        assert opened == 0  # no fresh connection to send it again on
    finally:
        await client.aclose()


async def test_a_command_on_a_connection_redis_closed_is_sent_again_on_a_fresh_one(
        server: RedisServer) -> None:
    client = redis_client(server.url)
    try:
        await client.ping()
        with redis.Redis.from_url(server.url) as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert await client.incr("parley:test") == 1
    finally:
        await client.aclose()
