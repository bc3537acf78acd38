"""An ack means "on a replica too" when CHAT_REDIS_MIN_REPLICAS asks for it (real servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from app.chat.confirms import Confirms
from app.chat.registry import Registry
from app.chat.tail import TailWatcher
from app.history import Appended, HistoryUnavailable, Replay
from app.history.redis import RedisHistory
from app.history.replication import ReplicationShortfall, require_replicas
from app.protocol import message_template
from tests.chat.test_tail import Member
from tests.support import RedisServer, wait_until


def test_too_few_replicas_is_a_shortfall_enough_is_not() -> None:
    require_replicas(1, 1, 100)
    require_replicas(2, 1, 100)
    with pytest.raises(ReplicationShortfall, match="on 0 of 1 replicas after 100 ms"):
        require_replicas(0, 1, 100)
    assert issubclass(ReplicationShortfall, HistoryUnavailable)  # answered `unavailable`


def cli(server: RedisServer, *args: str) -> str:
    return server.cli(*args)


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


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisHistory]:
    """History on ``redis_server`` with acks waiting for one replica (none attached yet)."""
    history_ = history(redis_server, min_replicas=1)
    yield history_
    await history_.close()


async def send(store: RedisHistory, n: int, room: str = "r") -> Appended:
    """Send message ``n`` of ``room`` (client_id ``c<n>``)."""
    return await store.append(room, message_template(room, f"m{n}", n, "u", f"c{n}"), f"c{n}")


def ids(replay: Replay) -> list[int]:
    return [message_id for message_id, _ in replay.frames]


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


async def test_a_send_no_replica_has_is_shown_to_nobody_until_one_has_it(
    redis_server: RedisServer, replica: RedisServer, store: RedisHistory,
) -> None:
    # The failover this guards against: members shown a send answered `unavailable`, whose
    # master then died before any replica had it; the next message got the same id and
    # those members dropped it as already seen.
    with pytest.raises(ReplicationShortfall):
        await send(store, 1)
    state = await store.state("r")
    assert (state.last_id, state.unshown, state.top) == (0, 1, 1)
    assert await store.states(["r"]) == [state]
    # Joins (with ?last, or resuming), the HTTP history and the tail watcher's reads.
    assert (await store.latest("r", 10)).frames == []
    assert (await store.after("r", 0, 10)).frames == []
    assert (await store.resume("r", 0, 10)).frames == []
    # Nothing to confirm it with: it stays unshown, and it is not lost either.
    [short] = await store.confirm(["r"])
    assert isinstance(short, ReplicationShortfall)
    assert (await store.state("r")) == state

    attach(redis_server, replica)
    sent = await send(store, 2)
    assert sent.id == 2
    # Replication is in order: id 2 on the replica means id 1 is too; both are shown.
    shown = await store.state("r")
    assert (shown.last_id, shown.unshown) == (2, 0)
    assert ids(await store.latest("r", 10)) == [1, 2]


async def test_an_unshown_send_that_replicated_late_is_confirmed_or_shown_by_its_resend(
    redis_server: RedisServer, replica: RedisServer, store: RedisHistory,
) -> None:
    for n in (1, 2):
        with pytest.raises(ReplicationShortfall):
            await send(store, n)
    attach(redis_server, replica)
    # The resend of the first is acked under its id and shows it; the second's sender
    # never resent: the tail watcher's confirm shows it.
    again = await send(store, 1)
    assert (again.id, again.duplicate) == (1, True)
    assert ((await store.state("r")).last_id, (await store.state("r")).unshown) == (1, 1)
    assert await store.confirm(["r"]) == [None]
    confirmed = await store.state("r")
    assert (confirmed.last_id, confirmed.unshown) == (2, 0)
    assert ids(await store.after("r", 0, 10)) == [1, 2]


async def test_a_fill_reads_ids_below_a_live_message_whatever_is_noted_as_shown(
    redis_server: RedisServer, replica: RedisServer, store: RedisHistory,
) -> None:
    # After a failover that lost the note (not the ids), a member sent id 2 live still gets
    # id 1 from history: a live id is confirmed, and so is everything below it.
    attach(redis_server, replica)
    for n in (1, 2):
        await send(store, n)
    cli(redis_server, "HSET", "chat:{r}:meta", "shown", "0")  # the lost note
    state = await store.state("r")
    assert ids(await store.fill("r", state.epoch, 0, 2)) == [1]
    assert (await store.after("r", 0, 10)).frames == []


async def test_the_tail_watcher_nudges_nobody_to_an_unshown_id_and_confirms_it_once_replicated(
    redis_server: RedisServer, replica: RedisServer,
) -> None:
    store = history(redis_server, min_replicas=1)
    registry = Registry()
    watcher = TailWatcher(registry, store, interval=1)
    watcher.confirms = Confirms(store, first_retry=0)  # no waiting between tries here
    try:
        member = Member("r", epoch=(await store.state("r")).epoch)
        registry.add(member)
        with pytest.raises(ReplicationShortfall):
            await send(store, 1)
        for _ in range(3):
            assert await watcher.tick() == 0
            await watcher.confirms.idle()  # fell short: no replica
        assert (await store.state("r")).unshown == 1
        attach(redis_server, replica)
        assert await watcher.tick() == 0
        await watcher.confirms.idle()  # confirmed now: shown from the next read on
        assert (await store.state("r")).unshown == 0
        assert [await watcher.tick() for _ in range(2)] == [0, 1]
        assert member.nudges == [1]
    finally:
        await watcher.confirms.close()
        await store.close()


class StalledConfirms(RedisHistory):
    """A store whose confirms hang until let go: a master without a replica, made to last."""

    let_go: asyncio.Event

    async def confirm(self, rooms: list[str]) -> list[BaseException | None]:
        await self.let_go.wait()
        return await super().confirm(rooms)


async def test_a_room_that_cannot_be_confirmed_holds_up_no_other_rooms_repair(
    redis_server: RedisServer, replica: RedisServer,
) -> None:
    attach(redis_server, replica)
    store = StalledConfirms((redis_server.url,), max_len=100, ttl=60, dedupe_ttl=60,
                            min_replicas=1, wait_timeout=1.0)
    store.let_go = asyncio.Event()
    registry = Registry()
    watcher = TailWatcher(registry, store, interval=1)
    try:
        behind = Member("ok", epoch=(await store.state("ok")).epoch)
        registry.add(behind)
        registry.add(Member("stuck", epoch=(await store.state("stuck")).epoch))
        cli(replica, "REPLICAOF", "NO", "ONE")  # "stuck" gets an unshown id
        with pytest.raises(ReplicationShortfall):
            await send(store, 1, "stuck")
        attach(redis_server, replica)
        await send(store, 2, "ok")
        assert await watcher.tick() == 0  # first sight of both
        # "stuck" is being confirmed (and hangs); "ok"'s member is repaired all the same.
        assert await asyncio.wait_for(watcher.tick(), 30) == 1
        assert behind.nudges == [1]
        store.let_go.set()
        await watcher.confirms.idle()
        assert (await store.state("stuck")).unshown == 0
    finally:
        await watcher.confirms.close()
        await store.close()


async def test_a_room_drawn_again_over_its_log_shows_none_of_it_until_confirmed(
    redis_server: RedisServer, replica: RedisServer, store: RedisHistory,
) -> None:
    # The meta key lost (deleted, evicted) while the log stays: the log may end with sends
    # whose WAIT fell short, and nothing says which.
    attach(redis_server, replica)
    await send(store, 1)
    cli(replica, "REPLICAOF", "NO", "ONE")
    with pytest.raises(ReplicationShortfall):
        await send(store, 2)
    cli(redis_server, "DEL", "chat:{r}:meta")
    drawn = await store.state("r")
    assert (drawn.last_id, drawn.top, drawn.base) == (0, 2, 0)
    assert (await store.latest("r", 10)).frames == []
    assert (await store.after("r", 0, 10)).frames == []
    attach(redis_server, replica)
    assert await store.confirm(["r"]) == [None]
    confirmed = await store.state("r")
    assert (confirmed.last_id, confirmed.unshown) == (2, 0)
    assert ids(await store.latest("r", 10)) == [1, 2]
    # The send that fell short, resent into the new epoch: a new message (PROTOCOL.md),
    # after base, so members reset to the epoch get it; acked under an id at or below base,
    # they would never have.
    again = await send(store, 2)
    assert (again.id, again.duplicate) == (3, False) and again.id > drawn.base


def wait_calls(server: RedisServer) -> int:
    """How many WAITs the server has run (its INFO commandstats)."""
    for line in cli(server, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_wait:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def test_many_rooms_are_confirmed_with_one_wait(
    redis_server: RedisServer, replica: RedisServer, store: RedisHistory,
) -> None:
    # A WAIT per room held a pooled connection each until it timed out: with a master
    # lacking its replica, confirms drained the pool joins and reads share.
    rooms = [f"r{n}" for n in range(30)]
    hasty = RedisHistory((redis_server.url,), max_len=100, ttl=60, dedupe_ttl=60, min_replicas=1,
                         wait_timeout=0.01)  # the sends only have to fall short
    try:
        for n, room in enumerate(rooms):
            with pytest.raises(ReplicationShortfall):
                await send(hasty, n, room)
    finally:
        await hasty.close()
    waits = wait_calls(redis_server)
    outcomes = await store.confirm(rooms)
    assert all(isinstance(outcome, ReplicationShortfall) for outcome in outcomes)
    assert wait_calls(redis_server) == waits + 1
    attach(redis_server, replica)
    assert await store.confirm(rooms) == [None] * len(rooms)
    assert [state.unshown if state else None for state in await store.states(rooms)] == [0] * len(rooms)


async def test_a_process_whose_acks_wait_for_nobody_keeps_the_note_true(
    redis_server: RedisServer, store: RedisHistory,
) -> None:
    # A room noted by processes that wait for replicas, then written by one that does not
    # (CHAT_REDIS_MIN_REPLICAS=0): its acked messages were hidden from the others' readers.
    with pytest.raises(ReplicationShortfall):
        await send(store, 1)
    plain = history(redis_server, min_replicas=0)
    try:
        assert (await send(plain, 2)).id == 2
    finally:
        await plain.close()
    state = await store.state("r")
    assert (state.last_id, state.unshown) == (2, 0)


async def test_a_gap_never_reaches_past_what_is_shown(
    redis_server: RedisServer, replica: RedisServer,
) -> None:
    # Unshown sends can trim the log below them (its length counts every entry): a resume
    # was told the ids up to the oldest held were gone, and went live above what is shown,
    # where a failover could give those ids to other messages.
    attach(redis_server, replica)
    store = RedisHistory((redis_server.url,), max_len=3, ttl=60, dedupe_ttl=60, min_replicas=1,
                         wait_timeout=1.0)
    try:
        for n in (1, 2):
            await send(store, n)
        cli(replica, "REPLICAOF", "NO", "ONE")
        for n in range(3, 7):
            with pytest.raises(ReplicationShortfall):
                await send(store, n)
        resumed = await store.resume("r", 2, 10)
        assert (resumed.frames, resumed.missing, resumed.state.last_id) == ([], None, 2)
        assert (await store.after("r", 0, 10)).missing == (1, 2)
    finally:
        await store.close()
