"""No message lost: ordered ids, resume with since/last, idempotent resend, gap filling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.chat.services import ChatServices
from app.history.redis import RedisHistory
from app.layers.pubsub import PubSubLayer
from app.protocol import message_template
from tests.support import Client
from tools.procs import AppServer, RedisServer


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, make_app: Callable[..., AppServer]) -> AppServer:
    if request.param == "memory":
        return make_app(env={"CHAT_HISTORY_MAX": "30"})
    redis = request.getfixturevalue("redis_server")
    return make_app(env={"REDIS_URL": redis.url, "CHAT_HISTORY_MAX": "30"})


async def test_reconnect_with_since_gets_exactly_what_was_missed_then_live(server: AppServer) -> None:
    sender = await Client.connect(server.ws_url("lobby"))
    away = await Client.connect(server.ws_url("lobby"))
    await sender.post("before")
    [seen] = await away.messages(1)
    await away.close()

    for i in range(20):
        await sender.post(f"missed {i}")

    back = await Client.connect(server.ws_url("lobby", since=seen["id"]), wait_ready=False)
    replayed = await back.messages(20)
    assert [m["message"] for m in replayed] == [f"missed {i}" for i in range(20)]
    assert [m["id"] for m in replayed] == list(range(seen["id"] + 1, seen["id"] + 21))
    ready = await back.recv_type("ready")
    assert ready["last_id"] == replayed[-1]["id"]

    await sender.post("live")
    [live] = await back.messages(1)
    assert (live["message"], live["id"]) == ("live", ready["last_id"] + 1)


async def test_a_replay_larger_than_one_write_arrives_whole_in_order_then_ready(server: AppServer) -> None:
    sender = await Client.connect(server.ws_url("lobby"))
    texts = [f"{i:02d} " + "é" * 3990 for i in range(30)]  # ~8 KB each: ~240 KB of replay
    for text in texts:
        await sender.post(text)
    back = await Client.connect(server.ws_url("lobby", since=0), wait_ready=False)
    replayed = await back.messages(30)
    assert [m["message"] for m in replayed] == texts
    assert [m["id"] for m in replayed] == list(range(1, 31))
    assert (await back.recv_type("ready"))["last_id"] == 30


async def test_last_opens_a_window_on_the_latest_messages(server: AppServer) -> None:
    sender = await Client.connect(server.ws_url("lobby"))
    for i in range(5):
        await sender.post(f"m{i}")
    window = await Client.connect(server.ws_url("lobby", last=3), wait_ready=False)
    assert [m["message"] for m in await window.messages(3)] == ["m2", "m3", "m4"]
    assert (await window.recv_type("ready"))["last_id"] == 5


async def test_since_older_than_history_says_gap_first(server: AppServer) -> None:
    sender = await Client.connect(server.ws_url("lobby"))
    for i in range(35):  # history holds 30
        await sender.post(f"m{i}")
    late = await Client.connect(server.ws_url("lobby", since=2), wait_ready=False)
    assert await late.recv() == {"type": "gap", "from": 3, "to": 5}
    replayed = await late.messages(30)
    assert [m["id"] for m in replayed] == list(range(6, 36))


async def test_resend_with_same_client_id_is_acked_again_and_broadcast_once(server: AppServer) -> None:
    sender = await Client.connect(server.ws_url("lobby"))
    watcher = await Client.connect(server.ws_url("lobby"))
    first = await sender.post("once", client_id="k-1")
    again = await sender.post("once", client_id="k-1")
    assert first == again == {"type": "ack", "id": 1, "client_id": "k-1"}
    await sender.post("next")
    assert [m["message"] for m in await watcher.messages(2)] == ["once", "next"]


async def test_concurrent_senders_on_two_instances_agree_on_one_order(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    env = {"REDIS_URL": redis_server.url}
    instances = [make_app(env=env), make_app(env=env)]
    members = [await Client.connect(s.ws_url("busy")) for s in instances for _ in range(2)]
    senders = [await Client.connect(s.ws_url("busy")) for s in instances]

    async def burst(client: Client, tag: str) -> list[int]:
        return [(await client.post(f"{tag}{i}"))["id"] for i in range(25)]

    acked = await asyncio.gather(burst(senders[0], "a"), burst(senders[1], "b"))
    assert sorted(acked[0] + acked[1]) == list(range(1, 51))
    sequences = [[(m["id"], m["message"]) for m in await member.messages(50)] for member in members]
    assert [i for i, _ in sequences[0]] == list(range(1, 51))
    assert all(sequence == sequences[0] for sequence in sequences)


async def lobby_after_one(server: AppServer) -> tuple[AppServer, Client, Client]:
    """``server``, a sender and a member in its lobby, once the sender's "one" (id 1) is acked."""
    sender = await Client.connect(server.ws_url("lobby"))
    member = await Client.connect(server.ws_url("lobby"))
    await sender.post("one")
    return server, sender, member


async def test_a_lost_broadcast_is_filled_from_history(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    server, sender, member = await lobby_after_one(make_app(env={"REDIS_URL": redis_server.url}))
    # Record message 2 durably but never broadcast it: what a lost pub/sub message looks like.
    history = RedisHistory((redis_server.url,), max_len=100, ttl=3600, dedupe_ttl=600)
    await history.append("lobby", message_template("lobby", "two", 0, "x"), None)
    await history.close()
    await sender.post("three")
    got = await member.messages(3)
    assert [(m["id"], m["message"]) for m in got] == [(1, "one"), (2, "two"), (3, "three")]
    # Both members (sender included) saw the hole and filled it.
    assert "chat_gaps_filled_total 2.0" in server.get("/metrics")[1].decode()


async def test_in_memory_layer_overflow_loses_nothing(make_app: Callable[..., AppServer]) -> None:
    # A channel capacity of 1 makes the in-memory layer drop deliveries under a burst.
    server = make_app(env={"CHAT_LAYER_CAPACITY": "1"})
    member = await Client.connect(server.ws_url("lobby"))
    senders = [await Client.connect(server.ws_url("lobby")) for _ in range(4)]

    async def burst(client: Client, tag: str) -> None:
        for i in range(15):
            await client.send(f"{tag}{i}")

    await asyncio.gather(*(burst(s, str(n)) for n, s in enumerate(senders)))
    got = await member.messages(60)
    assert [m["id"] for m in got] == list(range(1, 61))


async def test_redis_down_sends_get_unavailable_and_chat_recovers(make_app: Callable[..., AppServer]) -> None:
    redis = RedisServer(appendonly=True).start()
    try:
        server = make_app(env={"REDIS_URL": redis.url})
        sender = await Client.connect(server.ws_url("lobby"))
        member = await Client.connect(server.ws_url("lobby"))
        assert (await sender.post("kept", client_id="c-1"))["id"] == 1
        assert [m["message"] for m in await member.messages(1)] == ["kept"]

        redis.stop()
        refused = await sender.post("while down", client_id="c-2")
        assert refused["type"] == "error" and refused["code"] == "unavailable"
        server.wait_status("/readyz", 503)

        redis.start()
        server.wait_status("/readyz", 200)
        resent = await sender.post("while down", client_id="c-2")
        assert resent == {"type": "ack", "id": 2, "client_id": "c-2"}
        # Members connected through the outage get it too, without reconnecting.
        assert [m["message"] for m in await member.messages(1)] == ["while down"]
        fresh = await Client.connect(server.ws_url("lobby", since=0), wait_ready=False)
        assert [m["message"] for m in await fresh.messages(2)] == ["kept", "while down"]
    finally:
        redis.cleanup()


class Kept:
    """A channel layer that keeps what it is asked to send, to be published later."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    async def group_send(self, group: str, event: dict) -> None:
        self.sent.append((group, event))


async def test_a_broadcast_that_overtakes_the_one_before_it_waits_for_it(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    server, _, member = await lobby_after_one(make_app(env={"REDIS_URL": redis_server.url}))
    # Two messages recorded as another process would, their broadcasts published in the
    # other order (two appends answered out of order): what two senders at once look like.
    kept = Kept()
    history = RedisHistory((redis_server.url,), max_len=100, ttl=3600, dedupe_ttl=600)
    posting = ChatServices(layer=kept, history=history)
    for text in ("two", "three"):
        await posting.post("lobby", message_template("lobby", text, 0, "x"), None)
    await history.close()
    layer = PubSubLayer(hosts=[redis_server.url], prefix="parley")
    try:
        await asyncio.gather(*(layer.group_send(group, event) for group, event in reversed(kept.sent)))
    finally:
        await layer.flush()
    got = await member.messages(3)
    assert [(m["id"], m["message"]) for m in got] == [(1, "one"), (2, "two"), (3, "three")]
    # In order from the live stream: no member read history for "two".
    assert "chat_gaps_filled_total 0.0" in server.get("/metrics")[1].decode()
