"""Issue 16 item 5: ids that start over are announced with ``reset``, never skipped in silence.

Real ``python -m app`` processes, real redis-server (no persistence), real WebSocket clients.
The sequence starts over when the process restarts (memory), when Redis restarts without
persistence, or when its keys are flushed or deleted; members are told with ``reset`` and
then get the new epoch's messages, and clients that resume with a stale epoch are reset too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import redis as redis_py

from tests.support import PRESENCE_FRAMES, AppServer, Client, RedisServer


class Recorder:
    """Every frame a member receives, in order, read by a task of its own."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.frames: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.client.ws:
            frame = json.loads(raw)
            if frame["type"] not in PRESENCE_FRAMES:  # who is here is not this test's subject
                self.frames.append(frame)
                self.changed.set()

    async def until(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15) -> None:
        async def wait() -> None:
            while not predicate(self.frames):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)

    def messages_by_epoch(self, epoch: str) -> list[tuple[str, int, str]]:
        """(epoch, id, client_id) of each message, with the epoch it counts in."""
        out = []
        for frame in self.frames:
            if frame["type"] == "reset":
                epoch = frame["epoch"]
            elif frame["type"] == "message":
                out.append((epoch, frame["id"], frame.get("client_id", "")))
        return out

    async def close(self) -> None:
        await self.client.close()
        self.task.cancel()


def assert_consistent(stream: list[tuple[str, int, str]]) -> None:
    """Within an epoch ids only grow and each names one message."""
    seen: dict[tuple[str, int], str] = {}
    last: dict[str, int] = {}
    for epoch, message_id, client_id in stream:
        assert seen.setdefault((epoch, message_id), client_id) == client_id, stream
        assert message_id > last.get(epoch, 0), stream
        last[epoch] = message_id


async def post(client: Client, text: str, client_id: str, timeout: float = 20) -> dict[str, Any]:
    """Send until acked (storage may be coming back): the resend is safe by client_id."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await client.post(text, client_id=client_id)
        if answer["type"] == "ack" or asyncio.get_running_loop().time() > deadline:
            return answer
        await asyncio.sleep(0.1)  # "unavailable": Redis is on its way back


async def test_resuming_into_a_restarted_memory_process_is_reset(make_app: Callable[..., AppServer]) -> None:
    server = make_app()
    first = await Client.connect(server.ws_url("r"))
    assert (await first.post("before", client_id="b-1"))["id"] == 1
    old_epoch = first.ready["epoch"]
    await first.close()
    server.stop()
    server.start()
    writer = await Client.connect(server.ws_url("r"))
    assert writer.ready["epoch"] != old_epoch
    assert (await writer.post("after", client_id="a-1"))["id"] == 1  # id 1 again: new epoch

    back = await Client.connect(server.ws_url("r", since=1, epoch=old_epoch), wait_ready=False)
    reset = await back.recv()
    assert reset == {"type": "reset", "room": "r", "epoch": writer.ready["epoch"], "last_id": 0}
    assert [(m["id"], m["message"]) for m in await back.messages(1)] == [(1, "after")]
    ready = await back.recv_type("ready")
    assert (ready["epoch"], ready["last_id"]) == (writer.ready["epoch"], 1)
    for client in (writer, back):
        await client.close()


async def test_a_redis_restart_without_persistence_resets_live_members(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    server = make_app(env={"REDIS_URL": redis_server.url})
    sender = await Client.connect(server.ws_url("r"))
    watcher = Recorder(await Client.connect(server.ws_url("r")))
    epoch = sender.ready["epoch"]
    for i in (1, 2):
        assert (await post(sender, f"m{i}", f"c-{i}"))["id"] == i
    await watcher.until(lambda f: len([x for x in f if x["type"] == "message"]) == 2)

    redis_server.stop()
    redis_server.start()  # same port, empty: the room's ids start over
    ack = await post(sender, "m3", "c-3")
    assert ack["type"] == "ack" and ack["id"] == 1
    resets = [f for f in sender.skipped if f["type"] == "reset"]
    assert resets and resets[-1]["epoch"] != epoch  # the sender was reset before that ack

    await watcher.until(lambda f: any(x.get("client_id") == "c-3" for x in f))
    kinds = [(f["type"], f.get("id")) for f in watcher.frames]
    assert kinds == [("message", 1), ("message", 2), ("reset", None), ("message", 1)]
    assert_consistent(watcher.messages_by_epoch(epoch))
    await sender.close()
    await watcher.close()


async def test_flushing_or_deleting_keys_mid_chat_loses_nothing_in_silence(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    """A sender posts 60 messages; Redis is flushed after the 20th and the room's sequence
    key deleted after the 40th. Every acked message reaches the other member, and no id
    names two messages without a reset between."""
    server = make_app(env={"REDIS_URL": redis_server.url})
    sender = await Client.connect(server.ws_url("busy"))
    watcher = Recorder(await Client.connect(server.ws_url("busy")))
    epoch = sender.ready["epoch"]
    acked = []
    with redis_py.Redis.from_url(redis_server.url) as admin:
        for i in range(60):
            ack = await post(sender, f"m{i}", f"c-{i}")
            assert ack["type"] == "ack"
            acked.append(f"c-{i}")
            if i == 19:
                admin.flushall()
            if i == 39:
                admin.delete("chat:{busy}:meta")
    await watcher.until(lambda f: {x.get("client_id") for x in f} >= set(acked))
    stream = watcher.messages_by_epoch(epoch)
    assert_consistent(stream)
    # Each in order; after the lost sequence key's reset the log's messages come again (the
    # member is sent all history holds: 21-40 twice, which clients dedupe by client_id).
    assert list(dict.fromkeys(c for _, _, c in stream)) == acked
    assert [c for _, _, c in stream] == acked[:40] + acked[20:]
    assert len([f for f in watcher.frames if f["type"] == "reset"]) == 2
    # The sender's own stream (acks included) never reuses an id without a reset between.
    own, current, seen = sender.skipped, epoch, set()
    for frame in own:
        if frame["type"] == "reset":
            current, seen = frame["epoch"], set()
        elif frame["type"] == "message":
            assert (current, frame["id"]) not in seen
            seen.add((current, frame["id"]))
    await sender.close()
    await watcher.close()


async def test_a_member_away_when_the_sequence_key_is_lost_gets_every_message_it_missed(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    """The log outlived its sequence key (deleted, evicted): a member that was away at id 5
    is reset to the new epoch and sent all the log holds, 6-10 included, not reset past them."""
    server = make_app(env={"REDIS_URL": redis_server.url})
    sender = await Client.connect(server.ws_url("away"))
    for i in range(1, 11):
        assert (await post(sender, f"m{i}", f"c-{i}"))["id"] == i
    with redis_py.Redis.from_url(redis_server.url) as admin:
        admin.delete("chat:{away}:meta")
    back = await Client.connect(server.ws_url("away", since=5, epoch=sender.ready["epoch"]),
                                wait_ready=False)
    reset = await back.recv()
    assert reset["type"] == "reset" and reset["epoch"] != sender.ready["epoch"]
    assert reset["last_id"] == 0  # below the oldest entry held: everything comes again
    replayed = await back.messages(10)
    assert [m["client_id"] for m in replayed] == [f"c-{i}" for i in range(1, 11)]
    assert (await back.recv_type("ready"))["last_id"] == 10
    for client in (sender, back):
        await client.close()


async def test_a_flush_with_no_new_message_still_resets_members(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    """The tail watcher notices a room whose state is gone, so members learn of it at once."""
    server = make_app(env={"REDIS_URL": redis_server.url})
    member = Recorder(await Client.connect(server.ws_url("quiet")))
    epoch = member.client.ready["epoch"]
    with redis_py.Redis.from_url(redis_server.url) as admin:
        admin.flushall()
    await member.until(lambda f: any(x["type"] == "reset" for x in f))
    [reset] = [f for f in member.frames if f["type"] == "reset"]
    assert reset["epoch"] != epoch and reset["last_id"] == 0
    await member.close()


async def test_resuming_with_a_stale_epoch_or_ids_ahead_of_the_room_is_reset(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    server = make_app(env={"REDIS_URL": redis_server.url})
    writer = await Client.connect(server.ws_url("r"))
    for i in (1, 2):
        await writer.post(f"m{i}", client_id=f"w-{i}")
    epoch = writer.ready["epoch"]
    for query in ({"since": 2, "epoch": "0123456789abcdef"}, {"since": 9, "epoch": epoch}, {"since": 9}):
        client = await Client.connect(server.ws_url("r", **query), wait_ready=False)
        assert await client.recv() == {"type": "reset", "room": "r", "epoch": epoch, "last_id": 0}
        assert [m["id"] for m in await client.messages(2)] == [1, 2]
        assert (await client.recv_type("ready"))["last_id"] == 2
        await client.close()
    # The right epoch resumes as before: no reset, only what was missed.
    client = await Client.connect(server.ws_url("r", since=1, epoch=epoch), wait_ready=False)
    assert (await client.recv())["id"] == 2 and (await client.recv())["type"] == "ready"
    await client.close()
    await writer.close()


async def test_a_room_whose_old_epoch_comes_back_takes_its_members_back_to_it(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    """A slot migration cut short by a failover: the room's keys vanish for a moment (a new
    epoch is drawn and used), then the old keys are back. A member reset into the new epoch
    used to drop every message of the old one as stale, for good: it must return to it from
    where it left, and get what was acked there since."""
    env = {"REDIS_URL": redis_server.url, "CHAT_REDIS_MIN_REPLICAS": "0"}
    server = make_app(env=env)
    sender = await Client.connect(server.ws_url("flip"))
    watcher = Recorder(await Client.connect(server.ws_url("flip")))
    first = sender.ready["epoch"]
    for i in range(3):
        assert (await post(sender, f"m{i}", f"a{i}"))["type"] == "ack"
    with redis_py.Redis.from_url(redis_server.url) as admin:
        admin.rename("chat:{flip}:meta", "saved:meta")  # the old keys away
        admin.rename("chat:{flip}:log", "saved:log")
        assert (await post(sender, "in between", "b0"))["type"] == "ack"  # a new epoch
        await watcher.until(lambda f: any(x.get("client_id") == "b0" for x in f))
        admin.delete("chat:{flip}:meta", "chat:{flip}:log")  # ...and the old ones back
        admin.rename("saved:meta", "chat:{flip}:meta")
        admin.rename("saved:log", "chat:{flip}:log")
    later = [f"a{i}" for i in range(3, 6)]
    for client_id in later:
        assert (await post(sender, client_id, client_id))["type"] == "ack"
    await watcher.until(lambda f: {x.get("client_id") for x in f} >= set(later))
    resets = [f for f in watcher.frames if f["type"] == "reset"]
    assert [r["epoch"] for r in resets][-1] == first and resets[-1]["last_id"] == 3
    stream = watcher.messages_by_epoch(first)
    assert [c for _, _, c in stream] == ["a0", "a1", "a2", "b0", *later]  # each once
    assert [(e, i) for e, i, _ in stream][-3:] == [(first, 4), (first, 5), (first, 6)]
    await sender.close()
    await watcher.close()
