"""Every use of channels-redis's private members, in one module.

Parley's pub/sub layer and Redis history build on channels-redis 4.3 (pinned in
requirements.txt) below its public API: its shard hash, its per-event-loop proxy, and its
per-host pub/sub connection. Nothing else in ``app`` may touch a name of channels_redis
that starts with ``_``. ``RELIED_ON`` lists each such member with the kind and parameters
used here; ``tests/layers/test_redis_internals.py`` checks them against the installed
channels-redis and fails naming the member an upgrade changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisSingleShardConnection
from channels_redis.utils import _consistent_hash, _wrap_close, decode_hosts
from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger("parley")

__all__ = ["RELIED_ON", "LayerProxy", "Shard", "consistent_hash", "decode_hosts"]

# The reader's pause after a lost connection, doubling up to the second (seconds).
RETRY_FIRST, RETRY_MAX = 0.05, 1.0


class Member(NamedTuple):
    """One private member of channels-redis this module relies on."""

    owner: str  # dotted path of the module or class
    name: str
    kind: str  # "function", "coroutine function" or "attribute"
    detail: tuple[str, ...]  # parameter names, or for an attribute the accepted type names
    why: str


RELIED_ON: tuple[Member, ...] = (
    Member("channels_redis.utils", "_consistent_hash", "function", ("value", "ring_size"),
           "the shard of a group channel; history puts a room on the same shard"),
    Member("channels_redis.utils", "_wrap_close", "function", ("proxy", "loop"),
           "flush a loop's layer when its event loop closes, as the stock proxy does"),
    Member("channels_redis.pubsub.RedisPubSubChannelLayer", "_get_layer", "function", ("self",),
           "overridden: the stock proxy's API methods reach the loop layer through it"),
    Member("channels_redis.pubsub.RedisPubSubChannelLayer", "_layers", "attribute", ("dict",),
           "event loop -> loop layer"),
    Member("channels_redis.pubsub.RedisPubSubChannelLayer", "_args", "attribute", ("tuple",),
           "the layer's positional options, passed on to each loop layer"),
    Member("channels_redis.pubsub.RedisPubSubChannelLayer", "_kwargs", "attribute", ("dict",),
           "the layer's keyword options, passed on to each loop layer"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "__init__", "function",
           ("self", "host", "channel_layer"), "called with a host from decode_hosts"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "_do_receiving", "coroutine function",
           ("self",), "overridden: the reader task that _ensure_receiver starts"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "_ensure_receiver", "function", ("self",),
           "starts _do_receiving (again) when _receive_task is None"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "_receive_task", "attribute", ("NoneType",),
           "the reader task: stopped while a SUBSCRIBE or UNSUBSCRIBE runs, started again after"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "_pubsub", "attribute", ("NoneType",),
           "the redis-py PubSub the reader polls (None until the first command)"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "_subscribed_to", "attribute", ("set",),
           "the Redis channels this connection has subscribed"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "_lock", "attribute", ("Lock",),
           "orders PUBLISH, SUBSCRIBE and flush on the connection; each publish batch holds it"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "_redis", "attribute", ("NoneType",),
           "the redis-py client publishes go through (None until _ensure_redis)"),
    Member("channels_redis.pubsub.RedisSingleShardConnection", "_ensure_redis", "function", ("self",),
           "creates _redis and _pubsub on first use, as the stock publish does"),
)


def consistent_hash(value: str, ring_size: int) -> int:
    """channels-redis's shard index for ``value`` among ``ring_size`` shards."""
    return int(_consistent_hash(value, ring_size))


class Shard(RedisSingleShardConnection):
    """One Redis host's pub/sub connection, handing each message to ``on_message``.

    Stock, the reader polls every 0.1 s while nothing is subscribed (so the first group
    waited up to that long) and pushes raw bytes into the loop layer's queues; here a
    subscription wakes it, and each message goes to ``on_message(redis_channel, data)``.
    After a lost connection it retries from 50 ms rather than a flat second: what is
    published meanwhile is lost to pub/sub, and consumers refill it from history.
    SUBSCRIBE and UNSUBSCRIBE run with the reader stopped (``_command``).
    """

    _receive_task: asyncio.Future[None] | None  # set by channels-redis's __init__ and _ensure_receiver

    def __init__(self, host: dict[str, Any], on_message: Callable[[str, bytes], None]) -> None:
        super().__init__(host, None)
        self.on_message = on_message
        self._subscribed = asyncio.Event()
        self._retry_delay = RETRY_FIRST  # the reader's, kept while it is stopped for a command
        self._outbox: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._publisher: asyncio.Task[None] | None = None

    async def publish(self, channel: str, message: bytes) -> None:
        """PUBLISH, in call order, batched: what is asked while a batch is out goes in the
        next one, one pipeline and one round trip for all of it.

        Stock, each publish holds the connection's lock for its own round trip, so a
        process publishes at most one message per round trip. During a reconnect storm a
        round trip took 20-50 ms and the queue on that lock grew to seconds: members then
        looked behind history, and the tail watcher refilled thousands of them from it.
        One connection keeps Redis' order; the caller still returns only once its message
        was published (or with the error that stopped it).
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, message, done))
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.ensure_future(self._publish_batches())
        await asyncio.shield(done)  # a caller giving up must not cancel the others' batch

    async def _publish_batches(self) -> None:
        while self._outbox:
            batch: list[tuple[str, bytes, asyncio.Future[None]]] = []
            error: BaseException | None = asyncio.CancelledError()  # unless it completes
            try:
                async with self._lock:
                    # Taken once the connection is ours: what queued meanwhile goes too.
                    batch, self._outbox = self._outbox, []
                    self._ensure_redis()
                    pipe = self._redis.pipeline(transaction=False)
                    for channel, message, _ in batch:
                        pipe.publish(channel, message)
                    await pipe.execute()
                error = None
            except Exception as exc:  # every caller of the batch gets it, as each would have
                error = exc
            finally:  # cancelled too (the loop closing): no caller is left waiting
                if isinstance(error, asyncio.CancelledError):
                    batch, self._outbox = batch + self._outbox, []
                for _, _, done in batch:
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    elif isinstance(error, asyncio.CancelledError):
                        done.cancel()
                    else:
                        done.set_exception(error)
                        done.exception()  # retrieved: a caller that gave up must not log it

    def is_subscribed(self, channel: str) -> bool:
        return channel in self._subscribed_to

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            if channel not in self._subscribed_to:
                self._ensure_redis()
                await self._command(lambda: self._pubsub.subscribe(channel))
                self._subscribed_to.add(channel)
        self._subscribed.set()

    async def unsubscribe(self, channel: str, wanted: Callable[[str], bool] | None = None) -> None:
        """UNSUBSCRIBE, and forget the channel whether or not Redis heard it. redis-py drops
        a channel only when Redis confirms the UNSUBSCRIBE, and subscribes what it still
        holds again when it reconnects: a room whose last member left during an outage
        stayed subscribed for good, its every broadcast received and thrown away here.

        ``wanted(channel)``, asked once this call holds the connection: true leaves the
        subscription alone. A join that found the channel still subscribed returned without
        waiting for anything, so the one place its subscription can be kept safe is here,
        after whatever this call queued behind."""
        async with self._lock:
            if channel not in self._subscribed_to or (wanted is not None and wanted(channel)):
                return
            self._subscribed_to.discard(channel)
            self._ensure_redis()
            try:
                await self._command(lambda: self._pubsub.unsubscribe(channel))
            finally:  # sent or not: not ours any more, so not subscribed again on reconnect
                for key in self._pubsub._normalize_keys({channel: None}):
                    self._pubsub.channels.pop(key, None)

    async def _command(self, send: Callable[[], Awaitable[object]]) -> None:
        """``send`` a SUBSCRIBE or UNSUBSCRIBE (the caller holds ``_lock``) with the reader
        stopped; once more on a fresh connection if the one it found had died.

        redis-py reconnects a pub/sub connection in whichever task finds it broken. After a
        Redis restart the reader and a join's SUBSCRIBE did so at once, two sockets on one
        redis-py Connection and each task reading the other's replies: the join failed
        ("read() called while another coroutine is already waiting", or its handshake's
        socket closed under it by the reader) and was refused 503. Stopped, the reader
        leaves the connection to the command until it is done."""
        await self._stop_receiver()
        try:
            try:
                await self._read_arrived()
                await send()
            except RedisConnectionError:
                # redis-py reconnects a connection whose command failed before raising. Now
                # connected: the old connection had died with a restart and Redis answers on
                # a fresh one, on which redis-py has subscribed again all it holds, so send
                # once more. Not connected: Redis is down; the caller is told now, a join
                # refused `unavailable` as ever.
                connection = self._pubsub.connection
                if connection is None or not connection.is_connected:
                    raise
                await send()
        finally:
            self._ensure_receiver()

    async def _stop_receiver(self) -> None:
        # Cancelled mid-read, the reader loses nothing: redis-py's own read timeout cancels
        # it the same way ten times a second, and what has arrived stays buffered. A cancel
        # it loses, it notices it was replaced at its next turn (within its 0.1 s poll).
        task, self._receive_task = self._receive_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _read_arrived(self) -> None:
        """Hand on what has already arrived, as the reader would have, so that a connection
        Redis closed fails here and redis-py reconnects it. A restart the reader had no turn
        to see left a connection that took a SUBSCRIBE without an error and lost it: the
        join returned and its room stayed deaf until the reader reconnected."""
        pubsub = self._pubsub
        if pubsub.connection is None or not pubsub.connection.is_connected:
            return  # the command connects afresh
        while (message := await pubsub.get_message(timeout=0)) is not None:
            if message["type"] == "message":  # not a confirmation of a (un)subscribe
                self._deliver(message)

    def _deliver(self, message: dict[str, Any]) -> None:
        name = message["channel"]
        self.on_message(name.decode() if isinstance(name, bytes) else name, message["data"])

    async def _do_receiving(self) -> None:
        # Until replaced (``_stop_receiver``). Python 3.11 can drop the cancel that stops it:
        # a wait_for whose result arrives with the cancel returns it (redis-py sends through
        # one), and the reader read on, its stopper waiting for good. It ends here instead.
        while self._receive_task is asyncio.current_task():
            try:
                pubsub = self._pubsub
                if pubsub is not None and pubsub.subscribed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    if message is not None:
                        self._deliver(message)
                    self._retry_delay = RETRY_FIRST
                else:
                    self._subscribed.clear()
                    await self._subscribed.wait()
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                # Once per outage at warning level: every command restarts the reader, and
                # each refused join during an outage would log its own line.
                log = logger.warning if self._retry_delay == RETRY_FIRST else logger.debug
                log("pub/sub connection lost (%s); retrying in %.2fs", exc, self._retry_delay)
                await asyncio.sleep(self._retry_delay)
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)


class LayerProxy(RedisPubSubChannelLayer):
    """channels-redis's pub/sub proxy (one loop layer per event loop, flushed when its
    loop closes), with the loop layer made by ``make_loop_layer``."""

    def make_loop_layer(self, *args: Any, **kwargs: Any) -> Any:
        """Hook: the loop layer for the running event loop."""
        raise NotImplementedError

    def loop_layer(self) -> Any:
        """The running event loop's loop layer, made on first use."""
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = self.make_loop_layer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer

    _get_layer = loop_layer  # the stock proxy reaches the loop layer through this name
