"""The Redis Cluster channel layer against a real cluster, across two layer instances."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from app.chat.services import position
from app.layers import cluster as cluster_layer
from app.layers.api import DirectDelivery, GroupOrder, GroupTap
from app.layers.cluster import ClusterLayer, shard_channel
from app.redis_url import parse_redis_url
from tests.support import published_out_of_order, wait_until
from tools.cluster import RedisClusterServers


def test_a_rooms_channel_shares_the_slot_of_its_history_keys() -> None:
    for room in ["lobby", "a", "room-42", "x.y_z"]:
        channel = shard_channel("parley", f"chat.{room}")
        assert key_slot(channel.encode()) == key_slot(f"chat:{{{room}}}:seq".encode())
    assert shard_channel("parley", "parley.readiness") == "parley:{parley.readiness}:parley.readiness"



Pair = tuple[ClusterLayer, ClusterLayer]


async def two_layers(cluster: RedisClusterServers) -> AsyncIterator[Pair]:
    """Two layers (two processes' worth) on ``cluster``, flushed after."""
    seeds = parse_redis_url(cluster.url).urls
    one, two = ClusterLayer(hosts=seeds), ClusterLayer(hosts=seeds)
    yield one, two
    await one.flush()
    await two.flush()


@pytest.fixture
async def layers(cluster: RedisClusterServers) -> AsyncIterator[tuple[ClusterLayer, ClusterLayer]]:
    async for pair in two_layers(cluster):
        yield pair


@pytest.fixture
async def fresh_layers(redis_cluster: RedisClusterServers) -> AsyncIterator[Pair]:
    """``layers`` on a cluster of their own, for tests that kill its nodes."""
    async for pair in two_layers(redis_cluster):
        yield pair


def sharded(cluster: RedisClusterServers, group: str) -> tuple[str, int]:
    """``group``'s sharded channel and the port of its master now."""
    name = shard_channel("parley", group)
    port = cluster.master_of(name)
    assert port is not None
    return name, port


def a_room(cluster: RedisClusterServers, prefix: str, on: int | None, same: bool) -> str:
    """A room named ``<prefix><n>`` whose master is ``on`` (``same``), or is not."""
    return next(f"{prefix}{i}" for i in range(1000)
                if (cluster.master_of(shard_channel("parley", f"{prefix}{i}")) == on) == same)


async def promoted(cluster: RedisClusterServers, name: str, old: int) -> None:
    """Wait until a replica has taken over ``name``'s slot from the killed master ``old``."""
    await asyncio.to_thread(
        wait_until, lambda: cluster.master_of(name) not in (None, old) and cluster.serving(),
        30, "the replica to be promoted", 0.1,
    )


def shard_subscribers(cluster: RedisClusterServers, group: str) -> int:
    name, port = sharded(cluster, group)
    return int(cluster._cli(port, "PUBSUB", "SHARDNUMSUB", name).split()[-1])


async def test_group_messages_cross_processes_decoded_once_for_local_members(
    layers: tuple[ClusterLayer, ClusterLayer],
) -> None:
    one, two = layers
    assert isinstance(one, DirectDelivery)
    here = [await one.new_channel() for _ in range(3)]
    there = await two.new_channel()
    for channel in here:
        await one.group_add("chat.cross", channel)
    await two.group_add("chat.cross", there)
    await one.group_send("chat.cross", {"type": "chat.message", "id": 7})
    got = [await asyncio.wait_for(one.receive(c), 5) for c in here]
    assert got == [{"type": "chat.message", "id": 7}] * 3
    assert got[0] is got[1] is got[2]  # one decode, one object for every local member
    assert await asyncio.wait_for(two.receive(there), 5) == {"type": "chat.message", "id": 7}


async def test_a_message_published_before_the_one_ahead_of_it_waits_for_it(
    layers: tuple[ClusterLayer, ClusterLayer],
) -> None:
    one, two = layers
    assert isinstance(one, GroupOrder)
    one.order("chat.message", position, 60.0)  # only its predecessor can let one go in time
    here, there = await one.new_channel(), await two.new_channel()
    await one.group_add("chat.ordered", here)
    await two.group_add("chat.ordered", there)
    await published_out_of_order(one, two, "chat.ordered", here, there)
    await one.group_discard("chat.ordered", here)  # the group's line ends with its last member
    assert "chat.ordered" not in one._get_layer().orders.by_kind["chat.message"].lines


async def test_group_add_returns_once_the_shard_has_the_subscription(
    cluster: RedisClusterServers, layers: tuple[ClusterLayer, ClusterLayer],
) -> None:
    one, _ = layers
    first, second = await one.new_channel(), await one.new_channel()
    await one.group_add("chat.confirmed", first)
    await one.group_add("chat.confirmed", second)
    assert shard_subscribers(cluster, "chat.confirmed") == 1  # one SSUBSCRIBE per process
    await one.group_discard("chat.confirmed", first)
    assert shard_subscribers(cluster, "chat.confirmed") == 1
    await one.group_discard("chat.confirmed", second)
    await asyncio.to_thread(wait_until, lambda: shard_subscribers(cluster, "chat.confirmed") == 0,
                            5, "SUNSUBSCRIBE to reach the shard")


async def test_direct_delivery_first_queue_when_declined(layers: tuple[ClusterLayer, ClusterLayer]) -> None:
    one, two = layers
    taken, declined = await one.new_channel(), await one.new_channel()
    seen: list[dict[str, object]] = []
    one.register_direct(taken, lambda message: seen.append(message) is None)
    one.register_direct(declined, lambda message: False)
    for channel in (taken, declined):
        await one.group_add("chat.direct", channel)
    await two.group_send("chat.direct", {"type": "chat.message", "id": 1})
    assert await asyncio.wait_for(one.receive(declined), 5) == {"type": "chat.message", "id": 1}
    assert seen == [{"type": "chat.message", "id": 1}]
    assert one.backlog(taken) == 0
    one.forget(taken)
    assert one.backlog(taken) == 0


async def test_a_listening_process_follows_its_rooms_slot_to_another_master(
    cluster: RedisClusterServers, layers: tuple[ClusterLayer, ClusterLayer],
) -> None:
    # ``one`` only listens: no publish of its own gets the MOVED that would tell it the
    # slot moved; the new owner has no subscriber of its own until the layer subscribes again.
    one, two = layers
    member = await one.new_channel()
    await one.group_add("chat.migrant", member)
    name = shard_channel("parley", "chat.migrant")
    source = cluster.master_of(name)
    target = next(port for port in cluster.masters() if port != source)
    await asyncio.to_thread(cluster.migrate, name, target)
    await asyncio.to_thread(wait_until, lambda: shard_subscribers(cluster, "chat.migrant") == 1,
                            15, "the subscription to follow the slot to its new master", 0.05)
    assert cluster.master_of(name) == target
    await two.group_send("chat.migrant", {"type": "chat.message", "id": 3})
    assert await asyncio.wait_for(one.receive(member), 5) == {"type": "chat.message", "id": 3}
    await one.group_discard("chat.migrant", member)  # its SUNSUBSCRIBE finds the new master
    await asyncio.to_thread(wait_until, lambda: shard_subscribers(cluster, "chat.migrant") == 0,
                            5, "SUNSUBSCRIBE to reach the new master", 0.05)


async def test_a_moved_reply_on_a_healthy_subscription_connection_holds_up_nothing(
    cluster: RedisClusterServers, layers: tuple[ClusterLayer, ClusterLayer], caplog: pytest.LogCaptureFixture,
) -> None:
    # A bulk reshard makes SSUBSCRIBEs go out with a stale slot map: the node answers MOVED on
    # a connection that is fine. The reader took each such reply for an outage (a warning,
    # a backoff sleep, messages of every room on that node waiting behind it: seconds late).
    one, two = layers
    member = await one.new_channel()
    await one.group_add("chat.steady", member)
    here = cluster.master_of(shard_channel("parley", "chat.steady"))
    elsewhere = a_room(cluster, "chat.elsewhere", here, same=False)
    node_pubsub = next(pubsub for name, pubsub in one._get_layer().pubsub.node_pubsub_mapping.items()
                       if name.endswith(f":{here}"))
    with caplog.at_level(logging.WARNING, logger="parley"):
        await node_pubsub.execute_command("SSUBSCRIBE", shard_channel("parley", elsewhere))  # -> MOVED
        await two.group_send("chat.steady", {"type": "chat.message", "id": 5})
        assert await asyncio.wait_for(one.receive(member), 5) == {"type": "chat.message", "id": 5}
    assert [r.getMessage() for r in caplog.records if "lost" in r.getMessage()] == []


PAUSE_MS = "3000"  # long enough for a join (SUBSCRIBE_TIMEOUT shortened) to give up inside it


async def paused_join(
    cluster: RedisClusterServers, layer: ClusterLayer, group: str, monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, int, str]:
    """Join ``group`` while its master is paused (CLIENT PAUSE ALL): the SSUBSCRIBE goes out
    on the layer's open connection to that master but gets no answer, and the join gives up.
    Returns the group's sharded channel, its master and the refused member's channel."""
    name, port = sharded(cluster, group)
    # A member in another room on that master: the layer has its slot map and a
    # subscription connection there, so the SSUBSCRIBE is sent (and answered after the pause).
    await layer.group_add(a_room(cluster, f"{group}.kept", port, same=True), await layer.new_channel())
    refused = await layer.new_channel()
    monkeypatch.setattr(cluster_layer, "SUBSCRIBE_TIMEOUT", 0.2)
    cluster._cli(port, "CLIENT", "PAUSE", PAUSE_MS, "ALL")
    with pytest.raises(TimeoutError):
        await layer.group_add(group, refused)
    monkeypatch.setattr(cluster_layer, "SUBSCRIBE_TIMEOUT", 30.0)  # later joins wait the pause out
    return name, port, refused


async def served(cluster: RedisClusterServers, port: int, layer: ClusterLayer, barrier: str) -> None:
    """Wait out the pause of ``port``'s master, then until it has answered what the layer
    sent it before: a join to a new room there (``<barrier><n>``), on the same connection,
    is confirmed."""
    client = aioredis.Redis(port=port, socket_timeout=30)
    try:
        await client.ping()  # answered once the pause is over
    finally:
        await client.aclose()
    await layer.group_add(a_room(cluster, barrier, port, same=True), await layer.new_channel())


async def test_a_join_whose_ssubscribe_goes_unanswered_leaves_nothing(
    cluster: RedisClusterServers, layers: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The caller is told the join failed, so it never leaves the room (the chat consumer,
    # never joined, does not). Only the member used to be taken back: the empty group, its
    # pending subscription and, once the shard answered, a live SSUBSCRIBE stayed for good,
    # every message of the room received here and thrown away.
    one, _ = layers
    name, port, _refused = await paused_join(cluster, one, "chat.unanswered", monkeypatch)
    layer = one._get_layer()
    assert "chat.unanswered" not in layer.groups
    assert "chat.unanswered" not in layer.subscribed
    assert name.encode() not in layer.group_of
    await served(cluster, port, one, "chat.barrier")  # the SSUBSCRIBE has reached the shard by now
    await asyncio.to_thread(wait_until, lambda: shard_subscribers(cluster, "chat.unanswered") == 0,
                            10, "the refused join's subscription to go", 0.05)
    assert name not in cluster._cli(port, "PUBSUB", "SHARDCHANNELS").split()


async def test_a_join_right_after_a_refused_one_keeps_its_subscription(
    cluster: RedisClusterServers, layers: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The refused join's SUNSUBSCRIBE is still to go out when another member joins the room
    # (here in the same turn, as a consumer retrying would): sent after that member's
    # SSUBSCRIBE it would leave the member deaf, its join confirmed all the same.
    one, two = layers
    member = await one.new_channel()
    _name, port, _refused = await paused_join(cluster, one, "chat.rejoined", monkeypatch)
    await one.group_add("chat.rejoined", member)  # confirmed once the pause is over
    assert one._get_layer().groups["chat.rejoined"] == {member}
    await served(cluster, port, one, "chat.barrier")  # all the layer sent for the room is answered
    assert shard_subscribers(cluster, "chat.rejoined") == 1
    await two.group_send("chat.rejoined", {"type": "chat.message", "id": 1})
    assert await asyncio.wait_for(one.receive(member), 5) == {"type": "chat.message", "id": 1}
    await one.group_discard("chat.rejoined", member)


async def test_subscriptions_follow_a_failover_to_the_promoted_replica(
    cluster: RedisClusterServers, layers: tuple[ClusterLayer, ClusterLayer],
) -> None:
    # Last in this module: it kills a master of the shared cluster.
    one, two = layers
    member = await one.new_channel()
    await one.group_add("chat.survivor", member)
    name, old = sharded(cluster, "chat.survivor")
    cluster.kill(old)
    await promoted(cluster, name, old)
    # The layer moves its SSUBSCRIBE to the new master by itself, without a new group_add.
    await asyncio.to_thread(wait_until, lambda: shard_subscribers(cluster, "chat.survivor") == 1,
                            15, "the subscription to move to the promoted replica", 0.05)
    await two.group_send("chat.survivor", {"type": "chat.message", "id": 2})
    assert await asyncio.wait_for(one.receive(member), 5) == {"type": "chat.message", "id": 2}


async def test_a_room_left_while_its_master_is_down_is_not_kept_after_the_failover(
    redis_cluster: RedisClusterServers, fresh_layers: Pair,
) -> None:
    # The last member leaves while the shard has no master: the SUNSUBSCRIBE cannot reach it,
    # and redis-py moves what it still holds to the promoted replica. The process must not
    # stay subscribed to a room it has nobody in (receiving, and dropping, its every message).
    one, two = fresh_layers
    name, old = sharded(redis_cluster, "chat.deserted")
    # A room on the same master that keeps its member: once it is subscribed on the
    # promoted replica, the subscriptions have been moved.
    kept = a_room(redis_cluster, "chat.kept", old, same=True)
    leaving, staying = await one.new_channel(), await one.new_channel()
    await one.group_add("chat.deserted", leaving)
    await one.group_add(kept, staying)
    redis_cluster.kill(old)
    await one.group_discard("chat.deserted", leaving)
    await promoted(redis_cluster, name, old)
    await asyncio.to_thread(wait_until, lambda: shard_subscribers(redis_cluster, kept) == 1,
                            15, "the kept room to be subscribed on the promoted replica", 0.05)
    loop = asyncio.get_running_loop()

    def dropped() -> bool:
        # A message to the room finds the leftover subscription, if any; then it must go.
        asyncio.run_coroutine_threadsafe(two.group_send("chat.deserted", {"type": "x"}), loop).result(5)
        return shard_subscribers(redis_cluster, "chat.deserted") == 0

    await asyncio.to_thread(wait_until, dropped, 15, "the deserted room's subscription to go", 0.2)
    await two.group_send(kept, {"type": "chat.message", "id": 1})
    assert await asyncio.wait_for(one.receive(staying), 5) == {"type": "chat.message", "id": 1}


async def test_a_room_first_joined_after_its_master_failed_over_is_joined_on_the_promoted_replica(
    redis_cluster: RedisClusterServers, fresh_layers: Pair,
) -> None:
    # Nobody here is in the room when its master dies, so no reader holds a connection there
    # to notice the failover and refresh the slot map, and redis-py does not refresh it when
    # an SSUBSCRIBE cannot connect: every join went on to the dead node and was refused,
    # long after the replica had taken over.
    one, two = fresh_layers
    name, old = sharded(redis_cluster, "chat.latecomer")
    # The layer has its slot map, and a member in a room on another master only; and no
    # idle connection to ``old`` (its default node, slot 0's master, got one at start):
    # a refused SSUBSCRIBE on one would break a subscription whose reader then
    # refreshes the map, which hides the fault by luck.
    assert redis_cluster.master_of_slot(0) != old
    elsewhere = a_room(redis_cluster, "chat.elsewhere", old, same=False)
    await one.group_add(elsewhere, await one.new_channel())
    member = await one.new_channel()
    redis_cluster.kill(old)
    try:  # a join while the slot has no master: refused (how soon does not matter here)
        await asyncio.wait_for(one.group_add("chat.latecomer", member), 10)
    except Exception:  # noqa: BLE001
        pass
    await promoted(redis_cluster, name, old)
    loop = asyncio.get_running_loop()

    def joins() -> bool:
        try:
            asyncio.run_coroutine_threadsafe(one.group_add("chat.latecomer", member), loop).result(10)
        except Exception:  # noqa: BLE001  (refused: poll again)
            return False
        return True

    await asyncio.to_thread(wait_until, joins, 15, "a join to the room on the promoted replica", 0.1)
    assert shard_subscribers(redis_cluster, "chat.latecomer") == 1
    await two.group_send("chat.latecomer", {"type": "chat.message", "id": 1})
    assert await asyncio.wait_for(one.receive(member), 5) == {"type": "chat.message", "id": 1}


class ConnectionUsers:
    """Which tasks are inside a redis-py Connection (connecting, reading, sending) at once.
    Two at a time is the race, whatever it then breaks: the second opens its own socket on
    the same Connection, reads the other's replies, or closes the socket under its handshake."""

    def __init__(self, connection: Any) -> None:
        self.inside: dict[asyncio.Task[Any] | None, str] = {}
        self.overlaps: list[str] = []
        for name in ("connect_check_health", "read_response", "send_packed_command"):
            setattr(connection, name, self._tracked(name, getattr(connection, name)))

    def _tracked(self, name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def tracked(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            others = [what for user, what in self.inside.items() if user is not task]
            if others:
                self.overlaps.append(f"{name} while another task is in {others[0]}")
            if task in self.inside:  # a read or send of this task's own connect
                return await method(*args, **kwargs)
            self.inside[task] = name
            try:
                return await method(*args, **kwargs)
            finally:
                del self.inside[task]

        return tracked


async def test_a_room_joined_while_its_restarted_master_is_being_reconnected_is_joined(
    redis_cluster: RedisClusterServers, fresh_layers: Pair,
) -> None:
    # A master restarts in place (same port, no failover) and a room on it is joined just as
    # the layer's reader for that master reconnects. The join's SSUBSCRIBE connected the one
    # redis-py connection too, at the same time: two sockets on one Connection, each task
    # reading the other's replies ("read() called while another coroutine is already
    # waiting"), or a socket closed under the other's handshake, and the join was refused.
    one, two = fresh_layers
    kept, port = sharded(redis_cluster, "chat.kept")
    joined, refused = (a_room(redis_cluster, name, port, same=True) for name in ("chat.joined", "chat.no"))
    for node in redis_cluster.live_ports():  # no failover however long the restart takes
        redis_cluster._cli(node, "CONFIG", "SET", "cluster-node-timeout", "60000")
    staying, member = await one.new_channel(), await one.new_channel()
    await one.group_add("chat.kept", staying)
    mapping = one._get_layer().pubsub.node_pubsub_mapping
    connection = next(pubsub.connection for name, pubsub in mapping.items() if name.endswith(f":{port}"))
    redis_cluster.kill(port)
    await asyncio.to_thread(wait_until, lambda: not connection.is_connected, 10, "the reader to see it go")
    with pytest.raises(RedisConnectionError):  # while it is down, a join there is refused at once
        await asyncio.wait_for(one.group_add(refused, await one.new_channel()), 5)
    redis_cluster.restart(port)  # the layer has no turn until the master is back

    # The join starts the moment the reader begins to reconnect (its socket not open yet).
    joining: asyncio.Future[asyncio.Task[None]] = asyncio.get_running_loop().create_future()
    reconnect = connection._connect

    async def reconnect_and_join() -> None:
        connection._connect = reconnect
        joining.set_result(asyncio.create_task(one.group_add(joined, member)))
        await reconnect()

    connection._connect = reconnect_and_join
    users = ConnectionUsers(connection)
    join = await asyncio.wait_for(joining, 10)
    outcome = await asyncio.gather(asyncio.wait_for(join, 10), return_exceptions=True)
    assert users.overlaps == [], outcome  # and what the join came to
    assert outcome == [None]
    assert redis_cluster.master_of(kept) == port
    for room, channel in ((joined, member), ("chat.kept", staying)):
        await two.group_send(room, {"type": "chat.message", "room": room})
        assert await asyncio.wait_for(one.receive(channel), 5) == {"type": "chat.message", "room": room}
    assert users.overlaps == []


async def test_a_tap_sees_what_reaches_this_process_and_fan_out_local_stays_here(
    layers: tuple[ClusterLayer, ClusterLayer],
) -> None:
    one, two = layers
    assert isinstance(one, GroupTap)
    here, there = await one.new_channel(), await two.new_channel()
    await one.group_add("chat.tapped", here)
    await two.group_add("chat.tapped", there)
    tapped: list[dict[str, object]] = []
    one.tap("presence.event", tapped.append)
    await two.group_send("chat.tapped", {"type": "presence.event", "n": 1})
    got = await asyncio.wait_for(one.receive(here), 5)
    assert tapped == [got] and tapped[0] is got
    assert (await asyncio.wait_for(two.receive(there), 5))["n"] == 1

    one.fan_out_local("chat.tapped", {"type": "presence.repair", "n": 2})
    two.fan_out_local("chat.tapped", {"type": "presence.repair", "n": 3})
    await two.group_send("chat.tapped", {"type": "chat.message", "n": 4})
    assert [(await asyncio.wait_for(one.receive(here), 5))["n"] for _ in range(2)] == [2, 4]
    assert [(await asyncio.wait_for(two.receive(there), 5))["n"] for _ in range(2)] == [3, 4]
