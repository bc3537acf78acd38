"""History in Redis Streams: one stream per room, ids assigned by one Lua script.

Keys of a room share the hash tag ``{room}`` so they live in one slot: on a Redis Cluster
the script runs on one master, followed by ``WAIT`` when acks must mean "on a replica too"
(app/history/replication.py).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from app.history import replication
from app.history.base import Appended, History, HistoryUnavailable, Replay, RoomState, new_epoch
from app.history.batch import BatchedReads
from app.history.slot_batches import SlotBatches
from app.protocol import FrameTemplate
from app.redis_clients import FAILURES, cluster_client, redis_client
from app.redis_scripts import ScriptPipeline

# A room's sequence lives in one hash, ``meta`` = {epoch, base, seq}: one key, so the epoch and
# the ids can never be lost apart (a flush, a restart without persistence, eviction and expiry
# take both). When it is missing, the next script to touch the room draws it again with the
# epoch the caller passed: ids continue after the newest entry the log still holds (0 when the
# log is gone too), in the new epoch, so no id of the log is ever given to another message.
_OPEN_EPOCH = """
local function state(meta, log, epoch, ttl)
  local s = redis.call('HMGET', meta, 'epoch', 'base', 'seq')
  if s[1] then return s[1], tonumber(s[2]), tonumber(s[3]) end
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  local base = 0
  if top[1] then base = tonumber(string.match(top[1][1], '^(%d+)')) end
  redis.call('HSET', meta, 'epoch', epoch, 'base', base, 'seq', base)
  redis.call('EXPIRE', meta, ttl)
  return epoch, base, base
end
"""

# KEYS: meta, log, dedupe. ARGV: prefix, suffix, maxlen, ttl, dedupe_ttl, new epoch.
# One script, so id assignment, the dedupe check and the write are a single atomic step.
# A dedupe key holds "<epoch>:<id>": a send recorded in an earlier epoch is not a resend.
_APPEND = _OPEN_EPOCH + """
local epoch, base, seq = state(KEYS[1], KEYS[2], ARGV[6], ARGV[4])
local prior = redis.call('GET', KEYS[3])
if prior then
  local cut = string.find(prior, ':', 1, true)
  if cut and string.sub(prior, 1, cut - 1) == epoch then
    return {tonumber(string.sub(prior, cut + 1)), 1, epoch, base, seq}
  end
end
local id = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local frame = ARGV[1] .. id .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id .. '-0', 'f', frame)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[3], epoch .. ':' .. id, 'EX', ARGV[5])
return {id, 0, epoch, base, id}
"""

# KEYS: meta, log. ARGV: new epoch, ttl. The room's state, drawn if missing.
_STATE = _OPEN_EPOCH + """
local epoch, base, seq = state(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
return {epoch, base, seq}
"""

# KEYS: meta, log. ARGV: new epoch, ttl, then (since, limit) pairs. For each pair the entries
# after ``since`` (up to ``limit``), then the id of the oldest entry held (false: none), then
# the room's state, drawn if missing: what ``after`` needs, read at one instant, and only the
# oldest entry's id, not its frame.
_READ = _OPEN_EPOCH + """
local out = {}
for i = 3, #ARGV, 2 do
  out[#out + 1] = redis.call('XRANGE', KEYS[2], '(' .. ARGV[i] .. '-0', '+', 'COUNT', ARGV[i + 1])
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
out[#out + 1] = first[1] and first[1][1] or false
out[#out + 1] = {state(KEYS[1], KEYS[2], ARGV[1], ARGV[2])}
return out
"""

# KEYS: meta, log. ARGV: stale epoch, new epoch, ttl. A new epoch if the room is still in the
# stale one; its base is below the oldest entry held, so a reset member is sent all of them.
_RESTART = _OPEN_EPOCH + """
local epoch, base, seq = state(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
if epoch == ARGV[1] then
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  base = seq
  if first[1] then base = tonumber(string.match(first[1][1], '^(%d+)')) - 1 end
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'base', base)
end
return {epoch, base, seq}
"""

# A resume's read: (room, since, limit), as ``History.after`` takes them.
Resume = tuple[str, int, int]


def resumes_by_room(keys: list[Resume]) -> dict[str, list[tuple[int, int]]]:
    """The ``(since, limit)`` pairs asked of each room, each once, in the order asked."""
    rooms: dict[str, list[tuple[int, int]]] = {}
    for room, since, limit in keys:
        asks = rooms.setdefault(room, [])
        if (since, limit) not in asks:
            asks.append((since, limit))
    return rooms


# Commands are retried on a fresh connection (app.redis_options). An append whose reply was
# lost may have run, so every append carries a dedupe key: the client's client_id, or else a
# one-off nonce kept long enough to cover retries.
NONCE_TTL = 30


class RedisHistory(History):
    """Per-room Redis Streams; ids are ``<id>-0`` entry ids, so XRANGE reads by message id."""

    def __init__(self, urls: tuple[str, ...], max_len: int, ttl: int, dedupe_ttl: int,
                 cluster: bool = False, min_replicas: int = 0, wait_timeout: float = 0.5) -> None:
        # A cluster is one client (it routes by slot; the keys of a room share one).
        self._cluster = cluster_client(urls) if cluster else None
        self._client: Any = self._cluster if self._cluster else redis_client(urls[0])
        self._min_replicas = min_replicas
        self._wait_ms = max(1, round(wait_timeout * 1000))
        self._slot_batches = None if self._cluster is None else SlotBatches(
            self._cluster, min_replicas, self._wait_ms)
        self._append_script = self._client.register_script(_APPEND)
        self._state_script = self._client.register_script(_STATE)
        self._restart_script = self._client.register_script(_RESTART)
        self._read_script = self._client.register_script(_READ)
        self._max_len = max_len
        self._join_reads: BatchedReads[str, RoomState] = BatchedReads(self._read_states, one_at_a_time=True)
        self._resumes: BatchedReads[Resume, Replay] = BatchedReads(self._read_resumes, share_in_flight=False)
        self._ttl = ttl
        self._dedupe_ttl = dedupe_ttl

    @staticmethod
    def _keys(room: str) -> tuple[str, str]:
        return f"chat:{{{room}}}:meta", f"chat:{{{room}}}:log"

    async def append(self, room: str, template: FrameTemplate, dedupe: str | None) -> Appended:
        meta, log = self._keys(room)
        if dedupe is not None:
            dedupe_key, dedupe_ttl = f"chat:{{{room}}}:cid:{dedupe}", self._dedupe_ttl
        else:
            dedupe_key, dedupe_ttl = f"chat:{{{room}}}:nonce:{secrets.token_hex(8)}", NONCE_TTL
        args: list[str | int] = [
            template.prefix, template.suffix, self._max_len, self._ttl, dedupe_ttl, new_epoch()
        ]
        try:
            message_id, duplicate, epoch, base, seq = await self._run_append(
                room, [meta, log, dedupe_key], args
            )
            if duplicate and self._min_replicas:
                await self._replicated(room, [("EXPIRE", dedupe_key, dedupe_ttl)])
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        state = RoomState(epoch=epoch.decode(), base=int(base), last_id=int(seq))
        if duplicate:
            return Appended(id=int(message_id), frame=None, duplicate=True, state=state)
        return Appended(id=int(message_id), frame=template.with_id(int(message_id)), state=state)

    async def _run_append(self, room: str, keys: list[str], args: list[str | int]) -> Any:
        """The append script's reply, once ``min_replicas`` replicas have the write
        (app/history/replication.py); HistoryUnavailable when they do not in time."""
        script = self._append_script
        if self._slot_batches is not None:
            return await self._slot_batches.run(keys[0], ("EVAL", _APPEND, len(keys), *keys, *args))
        if self._min_replicas:
            return await replication.script_then_wait(
                self._client, script, keys, args, self._min_replicas, self._wait_ms
            )
        return await script(keys=keys, args=args)

    async def _replicated(self, room: str, commands: list[replication.Command]) -> list[Any]:
        """Replies to ``commands`` run on the room's master, then ``WAIT`` if required. A
        resend found by dedupe waits too: its first send may not have been replicated."""
        wanted, ms = self._min_replicas, self._wait_ms
        if self._cluster is not None:
            return await replication.on_slot_master_then_wait(
                self._cluster, self._keys(room)[0], commands, wanted, ms)
        return await replication.commands_then_wait(self._client, commands, wanted, ms)

    async def after(self, room: str, since: int, limit: int) -> Replay:
        answer = (await self._read_rooms({room: [(since, limit)]}))[room, since, limit]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def resume(self, room: str, since: int, limit: int) -> Replay:
        # Resumes of one loop turn: one pipeline (one batch per room on a cluster), each
        # room's oldest entry and state read once, a read per distinct ``since``. Never shared
        # with a read already in flight: that one may predate this member's join.
        return await self._resumes.get((room, since, limit))

    async def _read_resumes(self, keys: list[Resume]) -> list[Replay | BaseException]:
        found = await self._read_rooms(resumes_by_room(keys))
        return [found[key] for key in keys]

    async def _read_rooms(
        self, rooms: dict[str, list[tuple[int, int]]]
    ) -> dict[Resume, Replay | BaseException]:
        """For each room, what ``after`` returns for each ``(since, limit)`` asked: one script
        call per room (``_READ``), all in one pipeline; on a cluster one call per room on its
        master, together, and a room that fails is its own resumes' error."""
        # One epoch for the batch: a room draws it only if it has none, and an epoch need
        # only differ from the room's own earlier ones.
        epoch = new_epoch()
        found: dict[Resume, Replay | BaseException] = {}
        if self._cluster is not None:
            reads = [self._read_on_master(room, asks, epoch) for room, asks in rooms.items()]
            replies = [await reads[0]] if len(reads) == 1 else await asyncio.gather(*reads)
        else:
            batch = ScriptPipeline(self._client)
            for room, asks in rooms.items():
                batch.script(self._read_script, self._keys(room), _read_args(asks, epoch, self._ttl))
            try:
                replies = await batch.execute()
            except FAILURES as exc:
                raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        for (room, asks), reply in zip(rooms.items(), replies, strict=True):
            if isinstance(reply, BaseException):
                found.update({(room, since, limit): reply for since, limit in asks})
            else:
                found.update(_replays(room, asks, reply))
        return found

    async def _read_on_master(self, room: str, asks: list[tuple[int, int]], epoch: str) -> Any:
        """A cluster room's ``_READ`` reply, or (returned) why it has none."""
        assert self._cluster is not None
        meta, log = self._keys(room)
        try:
            [reply] = await replication.on_slot_master(self._cluster, meta, [
                ("EVAL", _READ, 2, meta, log, *_read_args(asks, epoch, self._ttl)),
            ])
            return reply
        except FAILURES as exc:
            unavailable = HistoryUnavailable(str(exc) or type(exc).__name__)
            unavailable.__cause__ = exc
            return unavailable
        except HistoryUnavailable as exc:
            return exc

    async def latest(self, room: str, count: int) -> Replay:
        meta, log = self._keys(room)
        try:
            if self._cluster is not None:
                entries, raw_state = await replication.on_slot_master(self._cluster, meta, [
                    ("XREVRANGE", log, "+", "-", "COUNT", max(count, 1)),
                    ("EVAL", _STATE, 2, meta, log, new_epoch(), self._ttl),
                ])
            else:
                batch = ScriptPipeline(self._client)
                batch.pipe.xrevrange(log, count=max(count, 1))
                batch.script(self._state_script, [meta, log], [new_epoch(), self._ttl])
                entries, raw_state = await batch.execute()
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        return Replay(frames=_frames(reversed(entries)) if count > 0 else [], state=_state(raw_state))

    async def state(self, room: str) -> RoomState:
        meta, log = self._keys(room)
        try:
            raw = await self._state_script(
                keys=[meta, log], args=[new_epoch(), self._ttl]
            )
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        return _state(raw)

    async def restart(self, room: str, stale_epoch: str) -> RoomState:
        meta, log = self._keys(room)
        try:
            raw = await self._restart_script(
                keys=[meta, log], args=[stale_epoch, new_epoch(), self._ttl]
            )
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        return _state(raw)

    async def state_for_join(self, room: str) -> RoomState:
        # Each joiner is in the group already, so a read shared with joins that came a
        # moment earlier is safe (History.state_for_join); app/history/batch.py says why.
        return await self._join_reads.get(room)

    async def _read_states(self, rooms: list[str]) -> list[RoomState]:
        if self._cluster is not None:
            # On a cluster each room's script runs on its own master: one call each, together.
            return list(await asyncio.gather(*(self.state(room) for room in rooms)))
        # A plain read, not the script: a room nearly always has its state already, and the
        # script costs Redis a Lua call per join. Only a room without one runs the script,
        # which draws it (or finds it drawn meanwhile by someone else).
        held = await self.states(rooms)
        missing = [room for room, state in zip(rooms, held, strict=True) if state is None]
        drawn = dict(zip(missing, await asyncio.gather(*(self.state(room) for room in missing)), strict=True))
        return [state if state is not None else drawn[room] for room, state in zip(rooms, held, strict=True)]

    async def states(self, rooms: list[str]) -> list[RoomState | None]:
        """Read-only (nothing is drawn): one batched look at several rooms (the tail watcher's,
        and the joins' of one loop turn)."""
        if not rooms:
            return []
        pipe = self._client.pipeline(transaction=False)
        for room in rooms:
            pipe.hmget(self._keys(room)[0], "epoch", "base", "seq")
        return [
            RoomState(epoch=raw[0].decode(), base=int(raw[1]), last_id=int(raw[2])) if raw[0] else None
            for raw in await self._execute(pipe)
        ]

    @staticmethod
    async def _execute(pipe: Any) -> list[Any]:
        try:
            return list(await pipe.execute())
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        await self._client.aclose()


def _state(raw: list[Any]) -> RoomState:
    epoch, base, seq = raw
    return RoomState(epoch=epoch.decode() if isinstance(epoch, bytes) else str(epoch),
                     base=int(base), last_id=int(seq))


def _read_args(asks: list[tuple[int, int]], epoch: str, ttl: int) -> list[str | int]:
    return [epoch, ttl, *(value for ask in asks for value in ask)]


def _replays(room: str, asks: list[tuple[int, int]], reply: list[Any]) -> dict[Resume, Replay]:
    """``after``'s answers from one room's ``_READ`` reply: the entries after each ``since``
    asked, the oldest id held (None: the log is empty), then the room's state."""
    *ranges, oldest, raw_state = reply
    state = _state(raw_state)
    first_held = _entry_id(oldest) if oldest else state.last_id + 1
    found = {}
    for (since, limit), entries in zip(asks, ranges, strict=True):
        missing = (since + 1, first_held - 1) if since + 1 < first_held else None
        found[room, since, limit] = Replay(frames=_raw_frames(entries), missing=missing, state=state)
    return found


def _frames(entries: Any) -> list[tuple[int, str]]:
    # A record that is not UTF-8 (written by another tool, or damaged) is delivered with
    # U+FFFD in place of its bad bytes, under its id: it can never stop a replay.
    return [(_entry_id(entry_id), fields[b"f"].decode("utf-8", "replace")) for entry_id, fields in entries]


def _raw_frames(entries: list[Any]) -> list[tuple[int, str]]:
    """``_frames`` of entries as a script returns them: ``[id, [field, value, ...]]``."""
    return _frames((entry_id, dict(zip(fields[::2], fields[1::2], strict=False)))
                   for entry_id, fields in entries)


def _entry_id(raw: bytes) -> int:
    return int(raw.split(b"-", 1)[0])
