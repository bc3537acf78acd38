"""History backends against their real stores: process memory and a real redis-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis as redis_py

from app.history import History, HistoryUnavailable
from app.history.memory import MemoryHistory
from app.history.redis import PROBE_KEY, RedisHistory, resumes_by_room
from app.protocol import message_template
from app.redis_clients import NODE_CONNECTIONS
from app.redis_url import parse_redis_url
from tests.support import rooms_per_master
from tools.cluster import RedisClusterServers
from tools.procs import RedisServer


def template(text: str, client_id: str | None = None):
    return message_template("r", text, 1, "u", client_id)


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit), "redis"])
async def history(request: pytest.FixtureRequest) -> AsyncIterator[History]:
    if request.param == "memory":
        yield MemoryHistory(max_len=5, ttl=3600, dedupe_ttl=600)
        return
    redis = RedisServer().start()
    backend = RedisHistory((redis.url,), max_len=5, ttl=3600, dedupe_ttl=600)
    yield backend
    await backend.close()
    redis.cleanup()


async def test_ids_are_gap_free_per_room(history: History) -> None:
    ids = [(await history.append("r", template(str(i)), None)).id for i in range(3)]
    assert ids == [1, 2, 3]
    assert (await history.append("other", template("x"), None)).id == 1
    assert (await history.state("r")).last_id == 3


async def test_frame_carries_its_id(history: History) -> None:
    appended = await history.append("r", template("hello"), None)
    assert json.loads(appended.frame)["id"] == appended.id


async def test_concurrent_appends_get_distinct_consecutive_ids(history: History) -> None:
    results = await asyncio.gather(*(history.append("r", template(str(i)), None) for i in range(20)))
    assert sorted(r.id for r in results) == list(range(1, 21))


async def test_same_client_id_is_acked_with_the_original_id(history: History) -> None:
    first = await history.append("r", template("a", "c1"), "c1")
    again = await history.append("r", template("a", "c1"), "c1")
    assert (again.id, again.duplicate, again.frame) == (first.id, True, None)
    assert (await history.state("r")).last_id == first.id
    other_room = await history.append("r2", template("a", "c1"), "c1")
    assert not other_room.duplicate


async def test_after_returns_newer_messages_in_order(history: History) -> None:
    for i in range(4):
        await history.append("r", template(f"m{i}"), None)
    replay = await history.after("r", 1, 10)
    assert [i for i, _ in replay.frames] == [2, 3, 4]
    assert [json.loads(f)["message"] for _, f in replay.frames] == ["m1", "m2", "m3"]
    assert replay.missing is None
    assert [i for i, _ in (await history.after("r", 0, 2)).frames] == [1, 2]


async def test_history_is_bounded_and_reports_what_it_no_longer_holds(history: History) -> None:
    for i in range(8):
        await history.append("r", template(str(i)), None)
    replay = await history.after("r", 1, 100)
    assert [i for i, _ in replay.frames] == [4, 5, 6, 7, 8]
    assert replay.missing == (2, 3)


async def test_latest(history: History) -> None:
    for i in range(4):
        await history.append("r", template(str(i)), None)
    assert [i for i, _ in (await history.latest("r", 2)).frames] == [3, 4]
    assert (await history.latest("r", 0)).frames == []
    assert (await history.latest("empty", 3)).frames == []


async def test_unknown_room_is_empty(history: History) -> None:
    assert (await history.state("nobody")).last_id == 0
    replay = await history.after("nobody", 0, 10)
    assert replay.frames == [] and replay.missing is None


def _state_reads(redis: RedisServer) -> int:
    """Reads of a room's state: a join reads it with HMGET (the script only draws one)."""
    with redis_py.Redis.from_url(redis.url) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hmget", "evalsha"))


async def test_joins_arriving_together_share_one_read_and_later_joins_read_afresh() -> None:
    redis = RedisServer().start()
    backend = RedisHistory((redis.url,), max_len=5, ttl=3600, dedupe_ttl=600)
    try:
        await backend.append("r", template("a"), None)
        await backend.state_for_join("warm")  # a room without state: the script draws it
        before = _state_reads(redis)
        joins = [asyncio.ensure_future(backend.state_for_join("r")) for _ in range(50)]
        await asyncio.sleep(0)  # every join has asked; cancel one: the others keep the read
        joins[0].cancel()
        assert [s.last_id for s in await asyncio.gather(*joins[1:])] == [1] * 49
        assert _state_reads(redis) - before == 1

        await backend.append("r", template("b"), None)
        assert (await backend.state_for_join("r")).last_id == 2
        assert (await backend.state_for_join("other")).last_id == 0
    finally:
        await backend.close()
        redis.cleanup()


async def test_a_resume_reads_what_after_reads(history: History) -> None:
    for i in range(8):  # history holds 4..8
        await history.append("r", template(str(i)), None)
    for since in (0, 2, 3, 5, 8, 12):
        assert await history.resume("r", since, 3) == await history.after("r", since, 3)
    assert await history.resume("nobody", 4, 10) == await history.after("nobody", 4, 10)


@pytest.mark.unit
def test_resumes_are_grouped_by_room_each_range_once_in_the_order_asked() -> None:
    asked = [("a", 6, 10), ("b", 0, 10), ("a", 6, 10), ("a", 1, 10), ("a", 6, 2)]
    assert resumes_by_room(asked) == {"a": [(6, 10), (1, 10), (6, 2)], "b": [(0, 10)]}
    assert resumes_by_room([]) == {}


def _calls(redis: RedisServer, *names: str) -> int:
    with redis_py.Redis.from_url(redis.url) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)


async def test_resumes_asked_together_are_one_read_per_room_each_answered_as_after() -> None:
    redis = RedisServer().start()
    backend = RedisHistory((redis.url,), max_len=5, ttl=3600, dedupe_ttl=600)
    try:
        for i in range(7):  # "a" holds 3..7
            await backend.append("a", template(f"a{i}"), None)
        await backend.append("b", template("b0"), None)
        asked = [("a", 6, 10), ("b", 0, 10), ("a", 6, 10), ("a", 1, 10), ("c", 0, 10), ("a", 7, 2)]
        expected = [await backend.after(*ask) for ask in asked]
        before = _calls(redis, "evalsha", "eval")
        resumes = [asyncio.ensure_future(backend.resume(*ask)) for ask in asked]
        await asyncio.sleep(0)  # every resume has asked; one gives up: the others keep the read
        resumes[0].cancel()
        assert await asyncio.gather(*resumes[1:]) == expected[1:]
        assert _calls(redis, "evalsha", "eval") - before == 3  # one script call per room
        replay = expected[3]
        assert [i for i, _ in replay.frames] == [3, 4, 5, 6, 7] and replay.missing == (2, 2)
    finally:
        await backend.close()
        redis.cleanup()


async def test_redis_down_raises_unavailable_and_recovers() -> None:
    redis = RedisServer(appendonly=True).start()
    backend = RedisHistory((redis.url,), max_len=5, ttl=3600, dedupe_ttl=600)
    await backend.append("r", template("kept"), None)
    redis.stop()
    with pytest.raises(HistoryUnavailable):
        await backend.append("r", template("lost"), None)
    with pytest.raises(HistoryUnavailable):
        await backend.ping()
    redis.start()
    assert (await backend.append("r", template("back"), None)).id == 2
    await backend.close()
    redis.cleanup()


@pytest.mark.unit
async def test_memory_rooms_expire_after_inactivity() -> None:
    backend = MemoryHistory(max_len=5, ttl=0.01, dedupe_ttl=600)
    await backend.append("r", template("old"), None)
    epoch = backend._rooms["r"].epoch
    backend._rooms["r"].touched -= 1  # an hour of silence, without waiting for it
    appended = await backend.append("r", template("new"), None)
    # The room's ids started over, so they are in a new epoch.
    assert appended.id == 1 and appended.state.epoch != epoch
    assert [i for i, _ in (await backend.latest("r", 5)).frames] == [1]


async def test_a_room_has_one_epoch_until_its_ids_start_over(history: History) -> None:
    state = await history.state("r")
    assert state.epoch and state.last_id == 0
    appended = await history.append("r", template("a"), None)
    assert appended.state.epoch == state.epoch and appended.state.last_id == 1
    assert (await history.after("r", 0, 10)).state.epoch == state.epoch
    assert (await history.latest("r", 1)).state.epoch == state.epoch


async def test_restart_draws_a_new_epoch_below_everything_held(history: History) -> None:
    for i in range(7):  # history holds 3..7
        await history.append("r", template(str(i)), None)
    stale = (await history.state("r")).epoch
    fresh = await history.restart("r", stale)
    assert fresh.epoch != stale and fresh.base == 2 and fresh.last_id == 7
    assert await history.restart("r", stale) == fresh  # only the first observer restarts it
    assert (await history.append("r", template("x"), None)).id == 8


@pytest.fixture
async def redis_history() -> AsyncIterator[tuple[RedisHistory, RedisServer]]:
    redis = RedisServer().start()
    backend = RedisHistory((redis.url,), max_len=5, ttl=3600, dedupe_ttl=600)
    yield backend, redis
    await backend.close()
    redis.cleanup()


async def test_a_flushed_room_starts_over_in_a_new_epoch(
    redis_history: tuple[RedisHistory, RedisServer],
) -> None:
    backend, redis = redis_history
    first = await backend.append("r", template("a", "c1"), "c1")
    with redis_py.Redis.from_url(redis.url) as client:
        client.flushall()
    again = await backend.append("r", template("a", "c1"), "c1")
    # Not a duplicate: the earlier send is gone with the epoch it was recorded in.
    assert again.id == 1 and not again.duplicate and again.state.epoch != first.state.epoch


async def test_a_lost_sequence_key_continues_after_the_log_in_a_new_epoch_based_below_it(
    redis_history: tuple[RedisHistory, RedisServer],
) -> None:
    backend, redis = redis_history
    for i in range(3):
        first = await backend.append("r", template(str(i)), None)
    with redis_py.Redis.from_url(redis.url) as client:
        client.delete("chat:{r}:meta")
    after = await backend.append("r", template("next"), None)
    # ids go on after the log; a member reset to the new epoch is sent all of it
    assert after.id == 4 and after.state.epoch != first.state.epoch and after.state.base == 0


async def test_a_record_that_is_not_utf8_is_replayed_with_replacement_characters(
    redis_history: tuple[RedisHistory, RedisServer],
) -> None:
    backend, redis = redis_history
    await backend.append("r", template("fine"), None)
    with redis_py.Redis.from_url(redis.url) as client:
        client.hincrby("chat:{r}:meta", "seq", 1)
        client.xadd("chat:{r}:log", {"f": b'{"type":"message","id":2,"message":"\xed\xa0\x80"}'}, id="2-0")
    replay = await backend.after("r", 0, 10)
    assert [i for i, _ in replay.frames] == [1, 2]
    assert json.loads(replay.frames[1][1])["message"] == "\ufffd" * 3
    assert [i for i, _ in (await backend.latest("r", 5)).frames] == [1, 2]


async def test_a_record_that_is_not_a_message_under_its_id_is_replayed_as_a_replacement(
    redis_history: tuple[RedisHistory, RedisServer],
) -> None:
    # Pasted as they were, these made replays and API answers that no client could parse.
    backend, redis = redis_history
    records = [b'{"type":"message","room":"r","id":2,"mess', b"", b"not json", b"[2]",
               b'{"type":"ready","id":2}', b'{"type":"message","id":3}', b'{"type":"message","id":true}']
    for n, record in enumerate(records):
        room = f"r{n}"
        await backend.append(room, template("fine"), None)
        with redis_py.Redis.from_url(redis.url) as client:
            client.hincrby(f"chat:{{{room}}}:meta", "seq", 1)
            client.xadd(f"chat:{{{room}}}:log", {"f": record}, id="2-0")
        await backend.append(room, template("after"), None)
        frames = [json.loads(text) for _, text in (await backend.after(room, 0, 10)).frames]
        assert [(f["id"], f["message"]) for f in frames] == [(1, "fine"), (2, "\ufffd"), (3, "after")], record
        assert frames[1]["room"] == room


async def test_resumes_on_a_cluster_read_each_room_on_its_master_as_after(
    redis_cluster: RedisClusterServers,
) -> None:
    target = parse_redis_url(redis_cluster.url)
    backend = RedisHistory(target.urls, max_len=5, ttl=3600, dedupe_ttl=600, cluster=True)
    try:
        rooms = [f"room{i}" for i in range(6)]  # spread over the masters' slots
        assert len({redis_cluster.master_of(f"chat:{{{room}}}:meta") for room in rooms}) > 1
        for n, room in enumerate(rooms):
            for i in range(n + 3):
                await backend.append(room, template(f"{room} {i}"), None)
        asked = [(room, since, 10) for room in [*rooms, "empty"] for since in (0, 2, 4)]
        expected = [await backend.after(*ask) for ask in asked]
        assert [i for i, _ in expected[0].frames] == [1, 2, 3] and expected[-1].frames == []
        assert expected[-6].missing == (1, 3)  # room5 holds 4..8 of 8
        assert await asyncio.gather(*(backend.resume(*ask) for ask in asked)) == expected
    finally:
        await backend.close()


async def test_joins_and_resumes_in_more_rooms_of_each_master_than_its_pool_all_read_at_once(
    cluster: RedisClusterServers,
) -> None:
    # A deploy's reconnect storm on a cluster: each loop turn's joins are one read per room,
    # sent together. Past a master's pool (64 connections) redis-py raised MaxConnectionsError
    # and every join of the batch was refused 503.
    backend = RedisHistory(parse_redis_url(cluster.url).urls, max_len=5, ttl=3600, dedupe_ttl=600,
                           cluster=True)
    try:
        prefix = f"storm-{uuid.uuid4().hex}"
        # A process up for a while (a new client's first commands wait in turn for its slot map).
        await backend.state_for_join(f"{prefix}-first")
        rooms = rooms_per_master(cluster, prefix, NODE_CONNECTIONS + 10)
        states = await asyncio.gather(*(backend.state_for_join(room) for room in rooms))
        assert [state.last_id for state in states] == [0] * len(rooms)
        replays = await asyncio.gather(*(backend.resume(room, 0, 10) for room in rooms))
        assert [replay.frames for replay in replays] == [[]] * len(rooms)
    finally:
        await backend.close()


async def test_a_room_being_migrated_is_read_and_written_on_its_new_master(
    redis_cluster: RedisClusterServers,
) -> None:
    # The ASK state: every key of the room's slot is on the importing master already, the
    # slot is not handed over yet. A read of several commands (latest: the log, then the
    # room's state) must reach the new master whole, not only its first command.
    target = parse_redis_url(redis_cluster.url)
    backend = RedisHistory(target.urls, max_len=5, ttl=3600, dedupe_ttl=600, cluster=True)
    try:
        for i in range(3):
            await backend.append("moving", template(f"m{i}"), None)
        epoch = (await backend.state("moving")).epoch
        key = "chat:{moving}:meta"
        other = next(port for port in redis_cluster.masters() if port != redis_cluster.master_of(key))
        slot, source = redis_cluster.begin_migration(key, other)
        assert redis_cluster.move_keys(slot, source, other) >= 2
        assert [i for i, _ in (await backend.latest("moving", 5)).frames] == [1, 2, 3]
        assert [i for i, _ in (await backend.after("moving", 1, 5)).frames] == [2, 3]
        # Joins read their rooms' states in one batch, which can't follow ASK: each room still
        # gets its own state (the room's own epoch, not one drawn anew).
        moving, fresh = await asyncio.gather(backend.state_for_join("moving"),
                                             backend.state_for_join("other"))
        assert (moving.epoch, moving.last_id) == (epoch, 3) and fresh.last_id == 0
        redis_cluster.finish_migration(slot, other)
        assert (await backend.append("moving", template("m3"), None)).id == 4
        assert [i for i, _ in (await backend.latest("moving", 5)).frames] == [1, 2, 3, 4]
    finally:
        await backend.close()


async def test_joins_on_a_cluster_with_a_master_down_fail_in_its_rooms_only(
    redis_cluster: RedisClusterServers,
) -> None:
    # Acks wait for a replica, as on a cluster by default: what was acked survives the failover
    # (a fresh cluster's replicas may still be syncing: a long WAIT).
    backend = RedisHistory(parse_redis_url(redis_cluster.url).urls, max_len=5, ttl=3600,
                           dedupe_ttl=600, cluster=True, min_replicas=1, wait_timeout=10)
    try:
        rooms = rooms_per_master(redis_cluster, "down", 2)
        for room in rooms:
            await backend.append(room, template(room), None)
        masters = {room: redis_cluster.master_of(f"chat:{{{room}}}:meta") for room in rooms}
        # An ack waits for the entry's replication, not for the ``shown`` mark written after it:
        # every master's writes on its replica first, so that a promoted one shows id 1 too.
        for port in set(masters.values()):
            with redis_py.Redis(port=port) as admin:
                assert admin.wait(1, 10_000) == 1
        dead = masters[rooms[0]]
        redis_cluster.kill(dead)
        answers = await asyncio.gather(*(backend.state_for_join(room) for room in rooms),
                                       return_exceptions=True)
        for room, answer in zip(rooms, answers, strict=True):
            if masters[room] != dead:
                assert not isinstance(answer, BaseException) and answer.last_id == 1, (room, answer)
            else:  # refused; or, once its replica has taken over, answered: never wrong
                assert isinstance(answer, HistoryUnavailable) or answer.last_id == 1, (room, answer)
    finally:
        await backend.close()


async def test_a_room_read_but_never_written_is_kept_briefly_and_its_first_message_keeps_it_long(
    redis_history: tuple[RedisHistory, RedisServer],
) -> None:
    # Reading made-up rooms (joins, the HTTP history) drew a state kept CHAT_HISTORY_TTL: a
    # key per room for a week (a hostile probe).
    from app.history.redis import EMPTY_ROOM_TTL

    _, redis = redis_history
    backend = RedisHistory((redis.url,), max_len=5, ttl=7 * 86400, dedupe_ttl=600)
    await backend.state("ghost")
    await backend.after("phantom", 0, 10)
    with redis_py.Redis.from_url(redis.url) as client:
        assert 0 < client.ttl("chat:{ghost}:meta") <= EMPTY_ROOM_TTL
        assert 0 < client.ttl("chat:{phantom}:meta") <= EMPTY_ROOM_TTL
        await backend.append("ghost", template("first"), None)
        assert client.ttl("chat:{ghost}:meta") > EMPTY_ROOM_TTL
    await backend.close()


def tagged(text: str, ts: int):
    return message_template("r", text, ts, "u")


async def test_each_message_names_its_predecessor_by_its_ts(history: History) -> None:
    first = await history.append("r", tagged("a", 100), None)
    second = await history.append("r", tagged("b", 200), None)
    assert (first.prev, second.prev) == (None, 100)
    state = await history.state("r")
    assert (state.last_id, state.tip) == (2, 200)
    assert (await history.states(["r"]))[0] == state
    replay = await history.after("r", 1, 10)
    assert (replay.frames[0][0], replay.prev, replay.tag) == (2, 100, 200)
    latest = await history.latest("r", 2)
    assert (latest.prev, latest.tag) == (None, 200)


async def test_a_message_without_a_ts_leaves_its_successor_untagged(history: History) -> None:
    from app.protocol import FrameTemplate

    await history.append("r", tagged("a", 100), None)
    plain = message_template("r", "b", 0, "u")
    untagged = await history.append("r", FrameTemplate(plain.prefix, plain.suffix), None)
    after = await history.append("r", tagged("c", 300), None)
    assert (untagged.prev, after.prev) == (100, None)
    assert (await history.after("r", 1, 10)).tag == 300


async def test_entries_an_older_release_wrote_have_no_tags() -> None:
    redis = RedisServer().start()
    backend = RedisHistory((redis.url,), max_len=5, ttl=3600, dedupe_ttl=600)
    try:
        await backend.append("r", tagged("new", 100), None)
        # What the append of a release without tags leaves: seq moved on, no ``tip`` of its
        # own, an entry with ``f`` only.
        client = backend._client
        await client.hincrby("chat:{r}:meta", "seq", 1)
        await client.xadd("chat:{r}:log", {"f": template("old").with_id(2)}, id="2-0")
        state = await backend.state("r")
        assert (state.last_id, state.tip) == (2, None)
        assert (await backend.states(["r"]))[0] == state
        replay = await backend.after("r", 1, 10)
        assert (replay.prev, replay.tag) == (None, None)
        # The next tagged message cannot name an untagged predecessor.
        assert (await backend.append("r", tagged("next", 300), None)).prev is None
    finally:
        await backend.close()
        redis.cleanup()


async def test_every_master_of_a_cluster_is_checked_for_an_evicting_policy(
    cluster: RedisClusterServers,
) -> None:
    # Each master holds its own rooms: every one that evicts is named, whichever they are.
    backend = RedisHistory(parse_redis_url(cluster.url).urls, max_len=5, ttl=3600, dedupe_ttl=600,
                           cluster=True)
    evicting = dict(zip(cluster.masters()[1:], ["allkeys-lru", "volatile-lfu"], strict=True))
    for port, policy in evicting.items():
        cluster._cli(port, "CONFIG", "SET", "maxmemory-policy", policy)
    try:
        warnings = await backend.setup_warnings()
        assert len(warnings) == 2
        for port, policy in evicting.items():
            assert any(f"maxmemory-policy is {policy} (127.0.0.1:{port})" in w for w in warnings)
    finally:
        for port in evicting:
            cluster._cli(port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        await backend.close()


async def test_a_redis_that_will_not_say_its_policy_is_named_as_unchecked(redis_server: RedisServer) -> None:
    # Managed services deny CONFIG: the operator is told it was not checked, not left to assume.
    redis_server.cli("ACL", "SETUSER", "parley", "on", ">pw", "~*", "&*", "+@all", "-config")
    url = f"redis://parley:pw@127.0.0.1:{redis_server.port}/0"
    backend = RedisHistory((url,), max_len=5, ttl=3600, dedupe_ttl=600)
    try:
        [warning] = await backend.setup_warnings()
        assert warning.startswith("could not read Redis maxmemory-policy (")
        assert "make sure it is noeviction" in warning
        assert (await backend.append("r", template("still works"), None)).id == 1
    finally:
        await backend.close()


async def test_a_cluster_is_answering_while_any_master_answers(redis_cluster: RedisClusterServers) -> None:
    # Readiness asks history's ping: one master's failover is an outage of its rooms only, and
    # must not make every process unready (new connections to every room held up meanwhile).
    backend = RedisHistory(parse_redis_url(redis_cluster.url).urls, max_len=5, ttl=3600,
                           dedupe_ttl=600, cluster=True)
    try:
        await backend.ping()
        redis_cluster.kill(redis_cluster.master_of(PROBE_KEY))  # the master a single key lives on
        await backend.ping()
        for port in redis_cluster.live_ports():
            redis_cluster.kill(port)
        with pytest.raises(HistoryUnavailable):
            await backend.ping()
    finally:
        await backend.close()
