"""A channel layer on Redis Cluster's sharded pub/sub (SSUBSCRIBE / SPUBLISH, Redis 7+).

channels-redis cannot run on a cluster (its issue #420); this layer has the shape of
``app.layers.pubsub``: a consumer's channel is a local inbox, a group is one sharded channel
that each process SSUBSCRIBEs once while it has members, and a group message is decoded once
per process and fanned out locally (``app.layers.fanout``). A group's sharded channel carries
its room as hash tag, ``parley:{<room>}:chat.<room>``, the tag of the room's history keys, so
a room's messages, ids and broadcasts live on one shard and one master failure touches the
rooms of that shard only.

redis-py's ``ClusterPubSub`` keeps one connection per master that holds subscriptions and
moves a channel's subscription to the slot's new owner when its slot map changes (a MOVED
reply, a refresh after a failed node). This layer reads each of those connections in a task
of its own, so a message waits on no other shard; a reader that loses its node refreshes the
slot map, which is what makes the client resubscribe on the promoted replica, and so does an
SSUBSCRIBE that cannot reach its node (a room joined anew after its master died). One task
at a time uses a node's connection: an SSUBSCRIBE or SUNSUBSCRIBE (this layer's or redis-py's)
interrupts the reader's wait for a message, and waits for a reconnect to end (``_NodePubSub``).
A slot that is migrated to another master drops its subscribers there (Redis pushes them a
``sunsubscribe``): the layer subscribes such a group again at the slot's new owner. Pub/sub
is at-most-once: what is published while a shard has no master is lost here and refilled by
consumers from history (their id checks and the tail watcher).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, cast

import msgpack  # type: ignore[import-untyped]
from channels.layers import BaseChannelLayer
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from app.layers.api import Direct, Missed, Position, Receive, Tap, Watch
from app.layers.fanout import fan_out
from app.layers.publisher import ShardPublisher
from app.layers.sequencer import Orders
from app.mailbox import Mailbox
from app.redis_clients import cluster_client
from app.rooms import room_of_group

logger = logging.getLogger("parley")

# How long group_add waits for the shard to confirm SSUBSCRIBE before the join fails.
SUBSCRIBE_TIMEOUT = 5.0
# A reader wakes this often with nothing to read, to notice it was replaced (seconds).
READ_TIMEOUT = 1.0
RETRY_FIRST, RETRY_MAX = 0.05, 0.5
# What an SSUBSCRIBE fails with when the node its slot map names does not answer.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def shard_channel(prefix: str, group: str) -> str:
    """The sharded channel of ``group``: hash-tagged by its room, so it shares the slot of
    the room's history keys (``chat:{<room>}:...``); other groups are tagged by their name."""
    room = room_of_group(group)
    return f"{prefix}:{{{room if room is not None else group}}}:{group}"


class _ShardedPubSub(ClusterPubSub):
    """``ClusterPubSub`` that says when it opens a connection to another node, so a reader
    can be started for it (the client opens them itself when it moves subscriptions)."""

    def __init__(self, cluster: RedisCluster, layer: _LoopLayer) -> None:
        self._layer = layer
        super().__init__(cluster)

    def _get_node_pubsub(self, node: ClusterNode) -> PubSub:
        known = self.node_pubsub_mapping.get(node.name)
        pubsub = super()._get_node_pubsub(node)
        if pubsub is not known:
            _NodePubSub.adopt(pubsub)
            self._layer.start_reader(node, pubsub)
        return pubsub


class _NodePubSub(PubSub):
    """The ``PubSub`` of one node's connection, whose connection one task uses at a time: a
    command (SSUBSCRIBE, SUNSUBSCRIBE: this layer's, redis-py's moving subscriptions, or its
    subscribing again in a reconnect) or the node's reader (``_LoopLayer._read``).

    redis-py reconnects a pub/sub connection in whichever task finds it broken. After a master
    restarted in place, its reader and a join's SSUBSCRIBE did so at once: two sockets on one
    redis-py Connection, each task reading the other's replies ("read() called while another
    coroutine is already waiting") or closing the socket under the other's handshake, and the
    join was refused. Now a command interrupts the reader while it waits for a message (what
    has arrived stays buffered) and otherwise waits for its turn: the reader's (re)connect,
    and its subscribing again all the node holds, are never cut short, nor run beside one.

    redis-py makes the node's ``PubSub`` (its pool, its slot-aware resubscribe); ``adopt``
    gives it this class."""

    _turn: asyncio.Lock  # held by the task using the connection
    _holder: asyncio.Task[Any] | None  # that task: its connect's own SSUBSCRIBEs go on in it
    _commands: int  # commands waiting for their turn: the reader lets them go first
    _waiting: asyncio.Task[Any] | None  # the reader, while it only waits for a message
    _interrupted: bool  # a command has cancelled that wait

    @classmethod
    def adopt(cls, pubsub: PubSub) -> None:
        pubsub.__class__ = cls
        node = cast(_NodePubSub, pubsub)
        node._turn = asyncio.Lock()
        node._holder = node._waiting = None
        node._commands = 0
        node._interrupted = False

    async def execute_command(self, *args: EncodableT) -> None:
        task = asyncio.current_task()
        if self._holder is task:  # subscribing again in a reconnect of the turn's holder
            return await super().execute_command(*args)
        self._commands += 1
        try:
            if self._waiting is not None and not self._interrupted:
                self._interrupted = True
                self._waiting.cancel()
            await self._turn.acquire()
        finally:
            self._commands -= 1
        self._holder = task
        try:
            return await super().execute_command(*args)
        finally:
            self._holder = None
            self._turn.release()

    async def parse_response(self, block: bool = True, timeout: float = 0) -> Any:
        """The reader's read, in its turn: a connection found closed is connected again first
        (redis-py subscribes again all it holds); nothing is read while a command waits."""
        task = asyncio.current_task()
        assert task is not None
        async with self._turn:
            self._holder = task
            try:
                connection = self.connection
                if connection is not None and not connection.is_connected:
                    await connection.connect()
                if not self._commands:
                    self._waiting = task
                    try:
                        return await super().parse_response(block, timeout)
                    except asyncio.CancelledError:
                        if not self._interrupted:
                            raise
                        self._interrupted = False
                        if task.uncancel():  # cancelled for good as well (the layer closing)
                            raise
                        return None
                    finally:
                        self._waiting = None
                        if self._interrupted:
                            # The interrupt never landed (3.11's wait_for can swallow a
                            # cancel): take it back.
                            self._interrupted = False
                            task.uncancel()
            finally:
                self._holder = None
        # Commands wait for the turn: theirs now. The reader's next read queues behind them
        # on the lock, once they have run (one whose wait was cancelled leaves the count).
        await asyncio.sleep(0)
        return None

    async def _reconnect(self, conn: Any, *args: Any, **kwargs: Any) -> None:
        # redis-py's reconnect of a connection a read or a command found broken: from here on
        # the reader is not only waiting, and a command waits for the end of its turn.
        self._waiting = None
        await super()._reconnect(conn, *args, **kwargs)


class _LoopLayer:
    """The layer's state on one event loop: the cluster client, subscriptions, inboxes."""

    def __init__(self, seeds: Sequence[str], prefix: str, capacity: int) -> None:
        self.prefix = prefix
        self.capacity = capacity
        self.cluster = cluster_client(tuple(seeds))
        self.pubsub = _ShardedPubSub(self.cluster, self)
        self.publisher = ShardPublisher(self.cluster)
        self.channels: dict[str, Mailbox] = {}
        self.direct: dict[str, Direct] = {}
        self.taps: dict[str, Watch] = {}  # message type -> hook (GroupTap)
        self.orders = Orders(self.fan_out_local)  # message types handed on in order (GroupOrder)
        self.groups: dict[str, set[str]] = {}
        self.group_of: dict[bytes, str] = {}  # sharded channel -> group
        self.subscribed: dict[str, asyncio.Future[None]] = {}  # group -> SSUBSCRIBE confirmed
        self.tasks: set[asyncio.Task[None]] = set()  # the readers and other background work
        self.dropped: set[str] = set()  # groups whose shard ended their subscription
        self.forgetting: set[bytes] = set()  # leftover channels being unsubscribed
        self._resubscriber: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._ready = asyncio.Lock()
        self._initialized = False

    async def _initialize(self) -> None:
        if not self._initialized:
            async with self._ready:
                if not self._initialized:
                    await self.cluster.initialize()
                    self._initialized = True

    # -- channels -------------------------------------------------------------------------

    def new_channel(self, prefix: str) -> str:
        channel = f"{self.prefix}.{prefix}{uuid.uuid4().hex}"
        self._open(channel)
        return channel

    def _open(self, channel: str) -> Mailbox:
        """A channel's inbox, bounded by ``capacity``: beyond it deliveries are dropped, and
        the consumer refills them from history."""
        queue = self.channels[channel] = Mailbox(self.capacity)
        return queue

    async def receive(self, channel: str) -> dict[str, Any]:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self._open(channel)
        try:
            return await queue.get()
        except (asyncio.CancelledError, GeneratorExit):
            self.channels.pop(channel, None)  # the consumer is exiting: forget its inbox
            raise

    # -- groups ---------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        members = self.groups.setdefault(group, set())
        already = channel in members  # an earlier call's membership, not this one's to undo
        members.add(channel)
        try:
            confirmed = self.subscribed.get(group)
            if confirmed is None:
                confirmed = self.subscribed[group] = asyncio.get_running_loop().create_future()
                try:
                    await self._subscribe(group)
                except BaseException as exc:
                    if self.subscribed.get(group) is confirmed:
                        del self.subscribed[group]  # the next join sends its own SSUBSCRIBE
                    # Joiners waiting on it fail with it; this join's cancellation is not
                    # theirs, so they get an error rather than a CancelledError.
                    if not isinstance(exc, Exception):
                        exc = RedisConnectionError(f"subscribing {group} was abandoned")
                    confirmed.set_exception(exc)
                    confirmed.exception()  # retrieved: nobody may be waiting on it
                    raise
            # Joined once the shard confirms: a message published after this returns
            # reaches the member (the consumer reads the room's last id after it).
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)
        except BaseException:
            # All or nothing: a caller told the join failed never leaves the group (the chat
            # consumer does not: it was never joined). Only the member used to be taken
            # back: a room whose SSUBSCRIBE went unanswered (every master paused) kept an
            # empty group here and, once the shard answered, a live subscription whose every
            # broadcast was received and thrown away, for as long as the process lived.
            if not already:
                self._undo_join(group, channel)
            raise

    async def _subscribe(self, group: str) -> None:
        await self._initialize()
        name = shard_channel(self.prefix, group)
        self.group_of[name.encode()] = group
        tried = self.cluster.get_node_from_key(name)
        try:
            await self.pubsub.ssubscribe(name)
        except UNREACHABLE:
            # The slot's master, as this client's slot map has it, did not answer. redis-py
            # refreshes the map when a command fails, not when an SSUBSCRIBE does, and a
            # reader only refreshes it for a connection that was open: a room with nobody
            # here when its master died was joined on the dead node for good, every join
            # refused until something else happened to refresh the map (seconds to never
            # after the failover). Refresh it now; once a replica has taken over, subscribe
            # there at once. Before that, the join fails fast and the next one asks again.
            failed = tried.name if tried is not None else None
            await self._refresh_slots(failed=failed)
            now = self.cluster.get_node_from_key(name)
            if now is None or now.name == failed:
                raise
            await self.pubsub.ssubscribe(name)

    def _undo_join(self, group: str, channel: str) -> None:
        """Take back a ``group_add`` that failed: its member, and with the group's last
        member the group and whatever its SSUBSCRIBE started.

        Waiting members keep the group and its pending SSUBSCRIBE (each undoes its own join
        if that fails too). The SUNSUBSCRIBE goes out off the caller's path, so its error is
        not held up and a second cancellation cannot cut it short; see
        ``_unsubscribe_abandoned`` for a join of the group that comes meanwhile."""
        members = self.groups.get(group)
        if members is None or channel not in members:
            return
        members.discard(channel)
        if members:
            return
        name = self._drop_group(group)
        if self._held(name):
            self._background(self._unsubscribe_abandoned(name))

    def _drop_group(self, group: str) -> str:
        """Forget ``group``, whose last member here left; its sharded channel."""
        del self.groups[group]
        self.orders.forget(group)
        self.subscribed.pop(group, None)
        self.dropped.discard(group)
        name = shard_channel(self.prefix, group)
        self.group_of.pop(name.encode(), None)
        return name

    def _held(self, name: str) -> bool:
        """Does redis-py hold a subscription to ``name`` (confirmed or not)? An SSUBSCRIBE
        is recorded once sent, and a send that fails closes its connection, so one it does
        not hold was never made: nothing to undo, and no SUNSUBSCRIBE to queue on the lock
        every SSUBSCRIBE takes (during an outage, behind a connect that may not answer)."""
        key = name.encode()
        return key in self.pubsub.shard_channels or any(
            key in node.shard_channels for node in self.pubsub.node_pubsub_mapping.values()
        )

    async def _unsubscribe_abandoned(self, name: str) -> None:
        """SUNSUBSCRIBE what a failed join subscribed, unless the group was joined again
        before this ran: that join's SSUBSCRIBE is out or queued on the subscription lock
        already, and this one, sent after it, would leave its member deaf (the shard's
        ``sunsubscribe`` looks like the client's own, so nothing would subscribe it again).
        A join after this point queues its SSUBSCRIBE behind it on the same lock.

        If the SUNSUBSCRIBE cannot be sent now (the node is down), redis-py keeps the
        channel and subscribes it again on reconnecting or after a failover; its
        ``ssubscribe`` then finds no group here and ``_dispatch`` drops it (``_forget``)."""
        if name.encode() in self.group_of:
            return
        try:
            await self.pubsub.sunsubscribe(name)
        except Exception as exc:
            logger.debug("unsubscribing %s after a failed join failed: %s", name, exc)

    async def group_discard(self, group: str, channel: str) -> None:
        members = self.groups.get(group)
        if members is None:
            return
        members.discard(channel)
        if members:
            return
        await self.pubsub.sunsubscribe(self._drop_group(group))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._initialize()
        await self.publisher.publish(shard_channel(self.prefix, group), msgpack.packb(message))

    # -- reading --------------------------------------------------------------------------

    def start_reader(self, node: ClusterNode, pubsub: PubSub) -> None:
        self._background(self._read(node, pubsub))

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of this layer's: kept until done, cancelled on close."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _read(self, node: ClusterNode, pubsub: PubSub) -> None:
        delay = RETRY_FIRST
        mapping = self.pubsub.node_pubsub_mapping
        # Ends when the client drops or replaces this node's connection (after moving its
        # subscriptions elsewhere, or on close); its successor has a reader of its own.
        while mapping.get(node.name) is pubsub:
            if pubsub.connection is None:
                # Opened for an SSUBSCRIBE that is still on its way (or failed; the client
                # drops such a connection at its next slot-map refresh).
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            try:
                message = await self.pubsub.get_sharded_message(timeout=READ_TIMEOUT, target_node=node)
                delay = RETRY_FIRST
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                # MOVED (or ASK) answering an SSUBSCRIBE sent with a stale slot map, as a bulk
                # reshard causes by the dozen: the connection is fine and other rooms'
                # messages wait behind it. Refresh the map (redis-py then moves the
                # subscription) and read on at once; no backoff, no outage.
                logger.debug("sharded pub/sub on %s: %s; refreshing the slot map", node.name, exc)
                self._refresh_soon()
                continue
            except Exception as exc:
                if mapping.get(node.name) is not pubsub:
                    return
                # Once per outage at warning level: a failover takes seconds of retries.
                log = logger.warning if delay == RETRY_FIRST else logger.debug
                log("sharded pub/sub on %s lost (%s); retrying in %.2fs", node.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                await self._refresh_slots(failed=node.name)
                continue
            if message is None:
                continue
            if message["type"] in (b"sunsubscribe", "sunsubscribe"):
                self._unsubscribed(pubsub, message["channel"])
            else:
                self._dispatch(message)

    def _unsubscribed(self, pubsub: PubSub, name: bytes) -> None:
        """A ``sunsubscribe`` from a node. The client's own (group_discard, or redis-py
        moving a subscription) are off ``pubsub.shard_channels`` by now; one that is still
        on it came from the server: the slot left that node (a migration) while the group
        still has members here, and nobody else would subscribe it again."""
        group = self.group_of.get(name)
        if group is None or group not in self.groups or name not in pubsub.shard_channels:
            return
        logger.info("the shard dropped %s (slot moved); subscribing again", name.decode(errors="replace"))
        self.dropped.add(group)
        if self._resubscriber is None or self._resubscriber.done():
            self._resubscriber = self._background(self._resubscribe())

    async def _resubscribe(self) -> None:
        # Until the new owner confirms (``_dispatch`` clears ``dropped``): the slot map may
        # not show the new owner yet (the SETSLOT spreads by gossip), and an SSUBSCRIBE sent
        # to the old owner is answered MOVED, so refresh and send again, backing off.
        delay = RETRY_FIRST
        while True:
            self.dropped &= self.groups.keys()
            if not self.dropped:
                return
            await self._refresh_slots()
            for group in list(self.dropped):
                try:
                    # Moves the channel to the slot's owner in redis-py's bookkeeping too.
                    await self.pubsub.ssubscribe(shard_channel(self.prefix, group))
                except Exception as exc:
                    logger.debug("subscribing %s again failed: %s", group, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _refresh_soon(self) -> None:
        """One slot-map refresh in the background, however many replies ask for it meanwhile."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = self._background(self._refresh_slots())

    async def _refresh_slots(self, failed: str | None = None) -> None:
        # A fresh slot map is what makes ClusterPubSub move subscriptions to a promoted
        # replica (it listens for the refresh); a failure here is retried on the next turn.
        # ``failed``: the node that just did not answer, asked for the map last (a dead
        # host that drops packets would hold the refresh for the whole connect timeout).
        try:
            await self.cluster.nodes_manager.initialize(last_failed_node_name=failed)
        except Exception as exc:
            logger.debug("slot map refresh failed: %s", exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, name = message["type"], message["channel"]
        if isinstance(kind, bytes):
            kind = kind.decode()
        group = self.group_of.get(name)
        if group is None:
            if kind in ("smessage", "ssubscribe"):
                self._forget(name)
            return
        if kind == "ssubscribe":
            self.dropped.discard(group)
            confirmed = self.subscribed.get(group)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "smessage":
            return
        members = self.groups.get(group)
        if not members:
            return
        self.orders.offer(group, msgpack.unpackb(message["data"]))  # decoded once, for all

    def fan_out_local(self, group: str, message: dict[str, Any]) -> None:
        """Deliver ``message`` to this loop's members of ``group`` (after its tap, if any)."""
        members = self.groups.get(group)
        if members:
            fan_out(members, message, self.channels, self.direct, self._open, self.taps)

    def _forget(self, name: bytes) -> None:
        """Unsubscribe a channel no group here wants any more but the shard still sends: its
        last member left while its master was down, so the SUNSUBSCRIBE never got an answer,
        and redis-py moved the subscription to the promoted replica with the others."""
        if name in self.forgetting:
            return
        self.forgetting.add(name)
        self._background(self._unsubscribe_leftover(name))

    async def _unsubscribe_leftover(self, name: bytes) -> None:
        try:
            await self.pubsub.sunsubscribe(name)
        except Exception as exc:  # the next message for it tries again
            logger.debug("dropping a leftover subscription failed: %s", exc)
        finally:
            self.forgetting.discard(name)
        group = self.group_of.get(name)
        if group is not None and group in self.groups:
            # A member joined meanwhile (its SSUBSCRIBE may have gone out first): subscribe
            # again so the unsubscribe above cannot leave it deaf.
            await self._subscribe(group)

    async def close(self) -> None:
        self.orders.clear()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.publisher.close()
        await self.pubsub.aclose()
        await self.cluster.aclose()


class ClusterLayer(BaseChannelLayer):
    """Channels layer on Redis Cluster sharded pub/sub, with local consumer channels and
    decode-once fan-out; implements ``app.layers.api.DirectDelivery``."""

    extensions = ["groups", "flush"]

    def __init__(self, hosts: Sequence[str], prefix: str = "parley", capacity: int = 500,
                 **_: Any) -> None:
        super().__init__(capacity=capacity)
        self.seeds = tuple(hosts)
        self.prefix = prefix
        self._layers: dict[asyncio.AbstractEventLoop, _LoopLayer] = {}

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(self.seeds, self.prefix, self.capacity)
        return layer

    async def new_channel(self, prefix: str = "specific.") -> str:
        # Local only: nothing outside this process addresses a consumer directly.
        return self._get_layer().new_channel(prefix)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for a local channel (consumer channels are never remote)."""
        queue = self._get_layer().channels.get(channel)
        if queue is not None and queue.qsize() < self.capacity:
            queue.put_nowait(message)

    async def receive(self, channel: str) -> dict[str, Any]:
        return await self._get_layer().receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        await self._get_layer().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._get_layer().group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.require_valid_group_name(group)
        await self._get_layer().group_send(group, message)

    async def flush(self) -> None:
        """Close this loop's subscriptions and connections."""
        layer = self._layers.pop(asyncio.get_running_loop(), None)
        if layer is not None:
            await layer.close()

    # -- DirectDelivery -------------------------------------------------------------------

    def register_direct(self, channel: str, deliver: Direct) -> None:
        """Let group messages reach ``channel``'s receiver by a synchronous call first."""
        self._get_layer().direct[channel] = deliver

    def unregister_direct(self, channel: str) -> None:
        self._get_layer().direct.pop(channel, None)

    def forget(self, channel: str) -> None:
        layer = self._get_layer()
        layer.direct.pop(channel, None)
        layer.channels.pop(channel, None)

    def bound_receive(self) -> Receive:
        """This loop's ``receive``, without the per-call proxy hop of ``self.receive``."""
        return self._get_layer().receive

    def backlog(self, channel: str) -> int:
        """Messages waiting for a local channel's receiver."""
        queue = self._get_layer().channels.get(channel)
        return 0 if queue is None else queue.qsize()

    # -- GroupTap -------------------------------------------------------------------------

    def tap(self, kind: str, hook: Tap, missed: Missed | None = None) -> None:
        """Show ``hook`` each group message of type ``kind`` this loop receives, once."""
        self._get_layer().taps[kind] = Watch(hook, missed)

    def fan_out_local(self, group: str, message: dict[str, Any]) -> None:
        """Deliver ``message`` to this loop's members of ``group`` only."""
        self._get_layer().fan_out_local(group, message)

    # -- GroupOrder -----------------------------------------------------------------------

    def order(self, kind: str, position: Position, hold: float) -> None:
        """Hand group messages of type ``kind`` this loop receives on in ``position`` order."""
        self._get_layer().orders.order(kind, position, hold)
