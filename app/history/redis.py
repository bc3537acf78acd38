"""History in Redis Streams: one stream per room, ids assigned by one Lua script.

Keys of a room share the hash tag ``{room}`` so they live in one slot: on a Redis Cluster
the script runs on one master, followed by ``WAIT`` when acks must mean "on a replica too"
(app/history/replication.py). (``shard_index`` and the per-URL client list are what is left
of the comma-separated shard list, which config now refuses: always one client here.)
"""

from __future__ import annotations

import secrets
from typing import Any

from channels_redis.utils import _consistent_hash
from redis.exceptions import RedisError

from app.history import replication
from app.history.base import Appended, History, HistoryUnavailable, Replay
from app.history.batch import BatchedReads
from app.protocol import FrameTemplate
from app.redis_clients import cluster_client, redis_client
from app.rooms import group_name

# KEYS: seq, log, dedupe. ARGV: prefix, suffix, maxlen, ttl, dedupe_ttl.
# One script, so id assignment, the dedupe check and the write are a single atomic step.
_APPEND = """
local prior = redis.call('GET', KEYS[3])
if prior then return {tonumber(prior), 1} end
local id = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. id .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id .. '-0', 'f', frame)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], id, 'EX', ARGV[5])
return {id, 0}
"""

# Commands are retried on a fresh connection (app.redis_options). An append whose reply was
# lost may have run, so every append carries a dedupe key: the client's client_id, or else a
# one-off nonce kept long enough to cover retries.
NONCE_TTL = 30


def shard_index(room: str, shards: int) -> int:
    """The shard of a room: the one channels-redis's core layer picks for the room's group."""
    return _consistent_hash(group_name(room), shards)


class RedisHistory(History):
    """Per-room Redis Streams; ids are ``<id>-0`` entry ids, so XRANGE reads by message id."""

    def __init__(self, urls: tuple[str, ...], max_len: int, ttl: int, dedupe_ttl: int,
                 cluster: bool = False, min_replicas: int = 0, wait_timeout: float = 0.5) -> None:
        # A cluster is one client (it routes by slot; the keys of a room share one).
        self._cluster = cluster_client(urls) if cluster else None
        self._clients: list[Any] = [self._cluster] if self._cluster else [redis_client(url) for url in urls]
        self._min_replicas = min_replicas
        self._wait_ms = max(1, round(wait_timeout * 1000))
        self._scripts = [client.register_script(_APPEND) for client in self._clients]
        self._max_len = max_len
        self._join_reads = BatchedReads(self._read_last_ids)
        self._ttl = ttl
        self._dedupe_ttl = dedupe_ttl

    def _shard(self, room: str) -> int:
        return shard_index(room, len(self._clients))

    @staticmethod
    def _keys(room: str) -> tuple[str, str]:
        return f"chat:{{{room}}}:seq", f"chat:{{{room}}}:log"

    async def append(self, room: str, template: FrameTemplate, client_id: str | None) -> Appended:
        seq, log = self._keys(room)
        if client_id is not None:
            dedupe, dedupe_ttl = f"chat:{{{room}}}:cid:{client_id}", self._dedupe_ttl
        else:
            dedupe, dedupe_ttl = f"chat:{{{room}}}:nonce:{secrets.token_hex(8)}", NONCE_TTL
        args: list[str | int] = [template.prefix, template.suffix, self._max_len, self._ttl, dedupe_ttl]
        try:
            message_id, duplicate = await self._run_append(room, [seq, log, dedupe], args)
            if duplicate and self._min_replicas:
                await self._replicated(room, [("EXPIRE", dedupe, dedupe_ttl)])
        except (RedisError, OSError) as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        if duplicate:
            return Appended(id=int(message_id), frame=None, duplicate=True)
        return Appended(id=int(message_id), frame=template.with_id(int(message_id)))

    async def _run_append(self, room: str, keys: list[str], args: list[str | int]) -> Any:
        """The append script's reply, once ``min_replicas`` replicas have the write
        (app/history/replication.py); HistoryUnavailable when they do not in time."""
        script = self._scripts[self._shard(room)]
        if self._cluster is not None:
            return (await self._replicated(room, [("EVAL", _APPEND, len(keys), *keys, *args)]))[0]
        if self._min_replicas:
            return await replication.script_then_wait(
                self._clients[self._shard(room)], script, keys, args, self._min_replicas, self._wait_ms
            )
        return await script(keys=keys, args=args)

    async def _replicated(self, room: str, commands: list[replication.Command]) -> list[Any]:
        """Replies to ``commands`` run on the room's master, then ``WAIT`` if required. A
        resend found by dedupe waits too: its first send may not have been replicated."""
        wanted, ms = self._min_replicas, self._wait_ms
        if self._cluster is not None:
            tail = [replication.wait_command(wanted, ms)] if wanted else []
            replies = await replication.on_slot_master(self._cluster, self._keys(room)[0], [*commands, *tail])
            if wanted:
                replication.require_replicas(replies.pop(), wanted, ms)
            return replies
        return await replication.commands_then_wait(self._clients[self._shard(room)], commands, wanted, ms)

    async def after(self, room: str, since: int, limit: int) -> Replay:
        seq, log = self._keys(room)
        client = self._clients[self._shard(room)]
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.xrange(log, min=f"({since}-0", max="+", count=limit)
                pipe.xrange(log, min="-", max="+", count=1)
                pipe.get(seq)
                entries, oldest, last = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        frames = [(_entry_id(entry_id), fields[b"f"].decode()) for entry_id, fields in entries]
        last_id = int(last or 0)
        first_held = _entry_id(oldest[0][0]) if oldest else last_id + 1
        missing = (since + 1, first_held - 1) if since + 1 < first_held else None
        return Replay(frames=frames, missing=missing)

    async def latest(self, room: str, count: int) -> list[tuple[int, str]]:
        if count <= 0:
            return []
        _, log = self._keys(room)
        try:
            entries: Any = await self._clients[self._shard(room)].xrevrange(log, count=count)
        except (RedisError, OSError) as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        return [(_entry_id(entry_id), fields[b"f"].decode()) for entry_id, fields in reversed(entries)]

    async def last_id(self, room: str) -> int:
        seq, _ = self._keys(room)
        try:
            return int(await self._clients[self._shard(room)].get(seq) or 0)
        except (RedisError, OSError) as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc

    async def last_id_for_join(self, room: str) -> int:
        # Each joiner is in the group already, so a read shared with joins that came a
        # moment earlier is safe (History.last_id_for_join); app/history/batch.py says why.
        return await self._join_reads.get(room)

    async def _read_last_ids(self, rooms: list[str]) -> list[int]:
        return [await self.last_id(rooms[0])] if len(rooms) == 1 else await self.last_ids(rooms)

    async def last_ids(self, rooms: list[str]) -> list[int]:
        pipes = [client.pipeline(transaction=False) for client in self._clients]
        for room in rooms:
            pipes[self._shard(room)].get(self._keys(room)[0])
        try:
            results = [iter(await pipe.execute()) for pipe in pipes]
        except (RedisError, OSError) as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        return [int(next(results[self._shard(room)]) or 0) for room in rooms]

    async def ping(self) -> None:
        try:
            for client in self._clients:
                await client.ping()
        except (RedisError, OSError) as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


def _entry_id(raw: bytes) -> int:
    return int(raw.split(b"-", 1)[0])
