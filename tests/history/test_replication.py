"""An ack means "on a replica too" when CHAT_REDIS_MIN_REPLICAS asks for it (real servers)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from app.history import HistoryUnavailable
from app.history.redis import RedisHistory
from app.history.replication import ReplicationShortfall, require_replicas
from app.protocol import message_template
from tests.support import RedisServer, wait_until


def test_too_few_replicas_is_a_shortfall_enough_is_not() -> None:
    require_replicas(1, 1, 100)
    require_replicas(2, 1, 100)
    with pytest.raises(ReplicationShortfall, match="on 0 of 1 replicas after 100 ms"):
        require_replicas(0, 1, 100)
    assert issubclass(ReplicationShortfall, HistoryUnavailable)  # answered `unavailable`


def cli(server: RedisServer, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(server.port), *args], capture_output=True,
                          text=True, timeout=5, check=True).stdout


@pytest.fixture
def replica() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


def attach(master: RedisServer, replica: RedisServer) -> None:
    cli(replica, "REPLICAOF", "127.0.0.1", str(master.port))
    wait_until(lambda: "state=online" in cli(master, "INFO", "replication"), 10, "the replica to sync")


def history(server: RedisServer, min_replicas: int) -> RedisHistory:
    # WAIT's timeout: long enough for a replica that is online to answer on a busy machine
    # (100 ms was not, once, in a full run), short enough that "no replica" fails quickly.
    return RedisHistory((server.url,), max_len=100, ttl=60, dedupe_ttl=60,
                        min_replicas=min_replicas, wait_timeout=1.0)


async def test_without_a_replica_nothing_is_acked_and_a_resend_is_once_one_syncs(
    redis_server: RedisServer, replica: RedisServer,
) -> None:
    store = history(redis_server, min_replicas=1)
    template = message_template("r", "hello", 1, "u", "c1")
    try:
        with pytest.raises(ReplicationShortfall):
            await store.append("r", template, "c1")
        attach(redis_server, replica)
        # The resend finds the first send by its client_id and waits for it to be replicated.
        again = await store.append("r", template, "c1")
        assert (again.id, again.duplicate) == (1, True)
        fresh = await store.append("r", message_template("r", "next", 2, "u", "c2"), "c2")
        assert (fresh.id, fresh.duplicate) == (2, False)
        # Acked means the replica holds it, whatever happens to the master next.
        redis_server.stop()
        held = cli(replica, "XRANGE", "chat:{r}:log", "-", "+")
        assert '"id":1,' in held and '"id":2,' in held
    finally:
        await store.close()


async def test_no_replicas_asked_for_acks_as_before(redis_server: RedisServer) -> None:
    store = history(redis_server, min_replicas=0)
    try:
        appended = await store.append("r", message_template("r", "hi", 1, "u", None), None)
        assert appended.id == 1 and not appended.duplicate
    finally:
        await store.close()
