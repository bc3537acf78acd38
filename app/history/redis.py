"""History in Redis Streams: one stream per room, ids assigned by one Lua script.

Keys of a room share the hash tag ``{room}`` so they live in one slot: on a Redis Cluster
the script runs on one master, followed by ``WAIT`` when acks must mean "on a replica too"
(app/history/replication.py).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from typing import Any

from app.history import replication
from app.history.base import Appended, History, HistoryUnavailable, Replay, RoomState, new_epoch
from app.history.batch import BatchedReads
from app.history.slot_batches import SlotBatches
from app.protocol import REPLACEMENT, FrameTemplate, is_message_frame, message_template
from app.redis_clients import FAILURES, cluster_client, redis_client
from app.redis_scripts import ScriptPipeline

# A room's sequence lives in one hash, ``meta`` = {epoch, base, seq}: one key, so the epoch and
# the ids can never be lost apart (a flush, a restart without persistence, eviction and expiry
# take both). When it is missing, the next script to touch the room draws it again with the
# epoch the caller passed: ids continue after the newest entry the log still holds (0 when the
# log is gone too), in the new epoch, so no id of the log is ever given to another message; its
# base is below the oldest entry held, so a member reset to it is sent every entry the log
# holds, none skipped (the log may hold messages a member was away for).
# When acks wait for replicas (``honour`` '1'), none of the log it inherits is shown: it may
# hold sends whose WAIT fell short, and only a confirm (a WAIT of its own) can tell.
# Drawn for a room with no log at all (a join, or a read of the HTTP history), it is kept
# EMPTY_ROOM_TTL seconds, not CHAT_HISTORY_TTL: a client reading made-up rooms left a key
# per room for a week (a hostile probe: 20,000 rooms in 43 s); the room's first message
# gives it the full TTL. Members of a room still empty when its state lapses get a ``reset``
# (from the tail watcher, which draws it again): they had seen nothing, and lose nothing.
EMPTY_ROOM_TTL = 3600
_OPEN_EPOCH = """
-- The id just below the oldest entry the log holds; ``default`` when it holds none.
local function below_oldest(log, default)
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if first[1] then return tonumber(string.match(first[1][1], '^(%d+)')) - 1 end
  return default
end
local function state(meta, log, epoch, ttl, honour)
  local s = redis.call('HMGET', meta, 'epoch', 'base', 'seq')
  if s[1] then return s[1], tonumber(s[2]), tonumber(s[3]) end
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  local seq = 0
  if top[1] then seq = tonumber(string.match(top[1][1], '^(%d+)')) end
  local base = below_oldest(log, seq)
  redis.call('HSET', meta, 'epoch', epoch, 'base', base, 'seq', seq)
  if honour == '1' then redis.call('HSET', meta, 'shown', base) end
  if not top[1] then ttl = math.min(ttl, @EMPTY_TTL@) end
  redis.call('EXPIRE', meta, ttl)
  return epoch, base, seq
end
-- The tag of the message with id ``id`` (app/history/lineage.py): ``tip`` if it is that id's
-- (``tip_id``), else false (unknown: an older release appended after it, or it was lost).
local function tag(meta, id)
  local t = redis.call('HMGET', meta, 'tip', 'tip_id')
  if t[1] and tonumber(t[2]) == id then return t[1] end
  return false
end
-- The newest id that may be shown: ``shown`` when acks wait for replicas (``honour`` is '1'),
-- never above ``seq``; otherwise (and in a room that has never waited) every id given.
local function shown(meta, seq, honour)
  if honour == '1' then
    local held = redis.call('HGET', meta, 'shown')
    if held then return math.min(tonumber(held), seq) end
  end
  return seq
end
""".replace("@EMPTY_TTL@", str(EMPTY_ROOM_TTL))

# KEYS: meta, log, dedupe. ARGV: prefix, suffix, maxlen, ttl, dedupe_ttl, new epoch, honour,
# tag (the message's ts; '' when it has none).
# One script, so id assignment, the dedupe check and the write are a single atomic step.
# The meta's ``tip``/``tip_id`` are the newest entry's tag and id; each entry keeps its own tag
# (``t``) and its predecessor's (``p``, absent when unknown): app/history/lineage.py.
# A dedupe key holds "<epoch>:<id>": a send recorded in an earlier epoch is not a resend
# (the state that gave its id was lost: the id may have been lost with it, or given again).
# When acks wait for replicas the new id is not shown until ``_SHOW`` says so, after WAIT.
_APPEND = _OPEN_EPOCH + """
local epoch, base, seq = state(KEYS[1], KEYS[2], ARGV[6], ARGV[4], ARGV[7])
local prior = redis.call('GET', KEYS[3])
if prior then
  local cut = string.find(prior, ':', 1, true)
  if cut and string.sub(prior, 1, cut - 1) == epoch then
    return {tonumber(string.sub(prior, cut + 1)), 1, epoch, base, seq, false}
  end
end
local prev = tag(KEYS[1], seq)
local noted = redis.call('HEXISTS', KEYS[1], 'shown') == 1
if ARGV[7] == '1' and not noted then redis.call('HSET', KEYS[1], 'shown', seq) end
local id = redis.call('HINCRBY', KEYS[1], 'seq', 1)
-- Acks that wait for nobody show at once; a note left by processes that wait is kept true.
if ARGV[7] ~= '1' and noted then redis.call('HSET', KEYS[1], 'shown', id) end
local frame = ARGV[1] .. id .. ARGV[2]
local fields = {'f', frame}
if ARGV[8] ~= '' then
  fields[3], fields[4] = 't', ARGV[8]
  redis.call('HSET', KEYS[1], 'tip', ARGV[8], 'tip_id', id)
end
if prev then fields[#fields + 1], fields[#fields + 2] = 'p', prev end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id .. '-0', unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[3], epoch .. ':' .. id, 'EX', ARGV[5])
return {id, 0, epoch, base, id, prev}
"""

# KEYS: meta, log. ARGV: new epoch, ttl, honour. The room's state (its epoch, base, newest id,
# newest shown id and that one's tag), drawn if missing.
_STATE = _OPEN_EPOCH + """
local epoch, base, seq = state(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
local last = shown(KEYS[1], seq, ARGV[3])
return {epoch, base, seq, last, tag(KEYS[1], last)}
"""

# KEYS: meta, log. ARGV: new epoch, ttl, honour, cut, then (since, limit) pairs. For each pair
# the entries after ``since`` (up to ``limit``; with ``cut`` '1' none past the newest shown),
# then the id of the oldest entry held (false: none), then the room's state, drawn if
# missing: what ``after`` needs, read at one instant, and only the oldest entry's id.
_READ = _OPEN_EPOCH + """
local epoch, base, seq = state(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
local last = shown(KEYS[1], seq, ARGV[3])
local stop = '+'
if ARGV[4] == '1' then stop = string.format('%d', last) end
local out = {}
for i = 5, #ARGV, 2 do
  out[#out + 1] = redis.call('XRANGE', KEYS[2], '(' .. ARGV[i] .. '-0', stop, 'COUNT', ARGV[i + 1])
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
out[#out + 1] = first[1] and first[1][1] or false
out[#out + 1] = {epoch, base, seq, last, tag(KEYS[1], last)}
return out
"""

# KEYS: meta, log. ARGV: new epoch, ttl, honour, count. The newest ``count`` shown entries,
# newest first, and the room's state.
_LATEST = _OPEN_EPOCH + """
local epoch, base, seq = state(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
local last = shown(KEYS[1], seq, ARGV[3])
local entries = {}
if tonumber(ARGV[4]) > 0 then
  entries = redis.call('XREVRANGE', KEYS[2], string.format('%d', last), '-', 'COUNT', ARGV[4])
end
return {entries, {epoch, base, seq, last, tag(KEYS[1], last)}}
"""

# KEYS: meta, log. ARGV: stale epoch, new epoch, ttl, honour. A new epoch if the room is still
# in the stale one; its base is below the oldest entry held, so a reset member is sent all.
_RESTART = _OPEN_EPOCH + """
local epoch, base, seq = state(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4])
if epoch == ARGV[1] then
  base = below_oldest(KEYS[2], seq)
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'base', base)
end
local last = shown(KEYS[1], seq, ARGV[4])
return {epoch, base, seq, last, tag(KEYS[1], last)}
"""

# KEYS: meta. ARGV: id, epoch. Replicas hold every id up to ``id`` of ``epoch``: show them
# (never fewer than already shown; nothing if the room's sequence started over since).
_SHOW = """
local s = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'shown')
if s[1] ~= ARGV[2] then return 0 end
local id = math.min(tonumber(ARGV[1]), tonumber(s[2]))
if not s[3] or tonumber(s[3]) < id then redis.call('HSET', KEYS[1], 'shown', id) end
return 1
"""

# KEYS: meta. ARGV: ttl. A write (the room's expiry renewed), so that a ``WAIT`` after it on
# the same connection covers every id given so far; the epoch and newest id it covers.
_TOUCH = """
if redis.call('EXPIRE', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('HMGET', KEYS[1], 'epoch', 'seq')
"""

# KEYS: a key nothing stores. The readiness probe: a write that changes nothing (``ping``).
_PROBE = "return redis.call('PEXPIRE', KEYS[1], 1)"
PROBE_KEY = "parley:probe"  # outside the chat: keyspace, so never a room's

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
        # Acks wait for replicas: a new id is shown only once they hold it (``_SHOW``).
        self._honour = "1" if min_replicas else "0"
        self._wait_ms = max(1, round(wait_timeout * 1000))
        self._slot_batches = None if self._cluster is None else SlotBatches(
            self._cluster, min_replicas, self._wait_ms)
        # The turn's notes that ids are shown, batched like the appends (they need no WAIT).
        self._show_batches = None if self._cluster is None else SlotBatches(self._cluster, 0, self._wait_ms)
        self._append_script = self._client.register_script(_APPEND)
        self._state_script = self._client.register_script(_STATE)
        self._restart_script = self._client.register_script(_RESTART)
        self._read_script = self._client.register_script(_READ)
        self._latest_script = self._client.register_script(_LATEST)
        self._show_script = self._client.register_script(_SHOW)
        self._probe_script = self._client.register_script(_PROBE)
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
            template.prefix, template.suffix, self._max_len, self._ttl, dedupe_ttl, new_epoch(),
            self._honour, "" if template.ts is None else template.ts,
        ]
        try:
            message_id, duplicate, epoch, base, seq, prev = await self._run_append(
                room, [meta, log, dedupe_key], args
            )
            if self._min_replicas:
                if duplicate:
                    await self._replicated(room, [("EXPIRE", dedupe_key, dedupe_ttl)])
                # On replicas now (WAIT said so): members may be shown it.
                await self._show(room, int(message_id), epoch)
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        state = RoomState(epoch=epoch.decode(), base=int(base), last_id=int(seq))
        if duplicate:
            return Appended(id=int(message_id), frame=None, duplicate=True, state=state)
        return Appended(id=int(message_id), frame=template.with_id(int(message_id)), state=state,
                        prev=_tag(prev))

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

    async def _show(self, room: str, message_id: int, epoch: bytes | str) -> None:
        """Note that replicas hold every id of ``epoch`` up to ``message_id``."""
        meta = self._keys(room)[0]
        if self._show_batches is not None:
            await self._show_batches.run(meta, ("EVAL", _SHOW, 1, meta, message_id, epoch))
        else:
            await self._show_script(keys=[meta], args=[message_id, epoch])

    async def confirm(self, rooms: list[str]) -> list[BaseException | None]:
        if not self._min_replicas or not rooms:
            return [None] * len(rooms)
        # A write per room, then WAIT on the same connection: once replicas have those, they
        # have every write made before them, so every id given before. One pipeline and one
        # WAIT for all the rooms (per master on a cluster): a WAIT holds its connection until
        # replicas answer or it times out, and a connection per room drained the pool that
        # joins and reads share, while a master had no replica.
        metas = [self._keys(room)[0] for room in rooms]
        touches = [("EVAL", _TOUCH, 1, meta, self._ttl) for meta in metas]
        covered: list[Any]
        if self._slot_batches is not None:
            covered = list(await asyncio.gather(*(self._slot_batches.run(meta, touch)
                                                  for meta, touch in zip(metas, touches, strict=True)),
                                                return_exceptions=True))
        else:
            try:
                covered = await replication.commands_then_wait(
                    self._client, touches, self._min_replicas, self._wait_ms)
            except Exception as exc:  # noqa: BLE001  (every room's answer: _unavailable says which)
                covered = [exc] * len(rooms)
        return list(await asyncio.gather(*(self._show_covered(room, touched)
                                           for room, touched in zip(rooms, covered, strict=True))))

    async def _show_covered(self, room: str, touched: Any) -> BaseException | None:
        """Show what a confirm's write covered (``_TOUCH``'s reply, or why there is none):
        None, or why not."""
        if isinstance(touched, BaseException):
            return _unavailable(touched)
        if not touched:
            return None  # the room's state is gone: nothing to show
        epoch, seq = touched
        try:
            await self._show(room, int(seq), epoch)
        except Exception as exc:  # noqa: BLE001  (the room's answer, as the others')
            return _unavailable(exc)
        return None

    async def _replicated(self, room: str, commands: list[replication.Command]) -> list[Any]:
        """Replies to ``commands`` run on the room's master, then ``WAIT`` if required. A
        resend found by dedupe waits too: its first send may not have been replicated."""
        wanted, ms = self._min_replicas, self._wait_ms
        if self._cluster is not None:
            return await replication.on_slot_master_then_wait(
                self._cluster, self._keys(room)[0], commands, wanted, ms)
        return await replication.commands_then_wait(self._client, commands, wanted, ms)

    async def after(self, room: str, since: int, limit: int) -> Replay:
        return await self._read_one(room, since, limit, cut=True)

    async def between(self, room: str, since: int, upto: int) -> Replay:
        return await self._read_one(room, since, upto - since - 1, cut=False)

    async def _read_one(self, room: str, since: int, limit: int, cut: bool) -> Replay:
        answer = (await self._read_rooms({room: [(since, limit)]}, cut))[room, since, limit]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def resume(self, room: str, since: int, limit: int) -> Replay:
        # Resumes of one loop turn: one pipeline (one batch per room on a cluster), each
        # room's oldest entry and state read once, a read per distinct ``since``. Never shared
        # with a read already in flight: that one may predate this member's join.
        return await self._resumes.get((room, since, limit))

    async def _read_resumes(self, keys: list[Resume]) -> list[Replay | BaseException]:
        found = await self._read_rooms(resumes_by_room(keys), cut=True)
        return [found[key] for key in keys]

    async def _read_rooms(
        self, rooms: dict[str, list[tuple[int, int]]], cut: bool
    ) -> dict[Resume, Replay | BaseException]:
        """For each room, what ``after`` returns for each ``(since, limit)`` asked (``cut``:
        none past the newest shown id; else ``between``'s): one script call per room
        (``_READ``), all in one pipeline; on a cluster one call per room on its master,
        together, and a room that fails is its own resumes' error."""
        # One epoch for the batch: a room draws it only if it has none, and an epoch need
        # only differ from the room's own earlier ones.
        args: list[str | int] = [new_epoch(), self._ttl, self._honour, "1" if cut else "0"]
        found: dict[Resume, Replay | BaseException] = {}
        if self._cluster is not None:
            reads = [self._read_on_master(room, asks, args) for room, asks in rooms.items()]
            replies = [await reads[0]] if len(reads) == 1 else await asyncio.gather(*reads)
        else:
            batch = ScriptPipeline(self._client)
            for room, asks in rooms.items():
                batch.script(self._read_script, self._keys(room), _read_args(args, asks))
            try:
                replies = await batch.execute()
            except FAILURES as exc:
                raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        for (room, asks), reply in zip(rooms.items(), replies, strict=True):
            if isinstance(reply, BaseException):
                found.update({(room, since, limit): reply for since, limit in asks})
            else:
                found.update(_replays(room, asks, reply, cut))
        return found

    async def _read_on_master(self, room: str, asks: list[tuple[int, int]], args: list[str | int]) -> Any:
        """A cluster room's ``_READ`` reply, or (returned) why it has none."""
        assert self._cluster is not None
        meta, log = self._keys(room)
        try:
            [reply] = await replication.on_slot_master(self._cluster, meta, [
                ("EVAL", _READ, 2, meta, log, *_read_args(args, asks)),
            ])
            return reply
        except FAILURES as exc:
            return _unavailable(exc)
        except HistoryUnavailable as exc:
            return exc

    async def latest(self, room: str, count: int) -> Replay:
        meta, log = self._keys(room)
        args: list[str | int] = [new_epoch(), self._ttl, self._honour, max(count, 0)]
        try:
            if self._cluster is not None:
                [(entries, raw_state)] = await replication.on_slot_master(self._cluster, meta, [
                    ("EVAL", _LATEST, 2, meta, log, *args),
                ])
            else:
                entries, raw_state = await self._latest_script(keys=[meta, log], args=args)
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        entries.reverse()
        return _raw_replay(room, entries, None, _state(raw_state))

    async def state(self, room: str) -> RoomState:
        meta, log = self._keys(room)
        try:
            raw = await self._state_script(
                keys=[meta, log], args=[new_epoch(), self._ttl, self._honour]
            )
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        return _state(raw)

    async def restart(self, room: str, stale_epoch: str) -> RoomState:
        meta, log = self._keys(room)
        try:
            raw = await self._restart_script(
                keys=[meta, log], args=[stale_epoch, new_epoch(), self._ttl, self._honour]
            )
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
        return _state(raw)

    async def state_for_join(self, room: str) -> RoomState:
        # Each joiner is in the group already, so a read shared with joins that came a
        # moment earlier is safe (History.state_for_join); app/history/batch.py says why.
        return await self._join_reads.get(room)

    async def _read_states(self, rooms: list[str]) -> Sequence[RoomState | BaseException]:
        # A plain read, not the script: a room nearly always has its state already, and the
        # script costs Redis a Lua call per room (on a cluster, also a round of the cluster
        # client's own per-command work: a sixth of a join's CPU in a connect storm). Only a
        # room without one runs the script, which draws it (or finds it drawn meanwhile).
        try:
            held = await self.states(rooms)
        except HistoryUnavailable:
            if self._cluster is None:
                raise
            # One master down, or a slot moving (the batch can't follow ASK): each room's
            # script on its own, through the client that follows MOVED/ASK, so a room that
            # fails fails its own joins only.
            held = [None] * len(rooms)
        missing = [room for room, state in zip(rooms, held, strict=True) if state is None]
        drawn = await asyncio.gather(*(self.state(room) for room in missing), return_exceptions=True)
        by_room = dict(zip(missing, drawn, strict=True))
        return [by_room[room] if state is None else state for room, state in zip(rooms, held, strict=True)]

    async def states(self, rooms: list[str]) -> list[RoomState | None]:
        """Read-only (nothing is drawn): one batched look at several rooms (the tail watcher's,
        and the joins' of one loop turn)."""
        if not rooms:
            return []
        pipe = self._client.pipeline(transaction=False)
        for room in rooms:
            pipe.hmget(self._keys(room)[0], "epoch", "base", "seq", "shown", "tip", "tip_id")
        found: list[RoomState | None] = []
        for epoch, base, seq, shown, tip, tip_id in await self._execute(pipe):
            if not epoch:
                found.append(None)
                continue
            last = _shown(seq, shown) if self._min_replicas else int(seq)
            # The scripts' ``tag()``: the tip only if it is the newest shown id's.
            known = tip_id is not None and int(tip_id) == last
            found.append(_state([epoch, base, seq, last, tip if known else None]))
        return found

    @staticmethod
    async def _execute(pipe: Any) -> list[Any]:
        try:
            return list(await pipe.execute())
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc

    async def ping(self) -> None:
        # A script that writes, as appends do: a read-only replica (a REDIS_URL left pointing
        # at a demoted master) and a Redis that renamed or denies EVAL answer PING, and every
        # append then failed while /readyz said 200. PEXPIRE of a key that does not exist
        # stores nothing, so a Redis at maxmemory, which still serves reads, passes.
        if self._cluster is not None:
            await _ping_masters(self._cluster)
            return
        try:
            await self._probe_script(keys=[PROBE_KEY], args=[])
        except FAILURES as exc:
            raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc

    async def setup_warnings(self) -> list[str]:
        # Any policy but noeviction lets Redis drop keys of ours when full: a dedupe key (a
        # resend then posted twice) or a room's meta (its members reset and sent the log
        # again). Every master of a cluster is asked: each holds its own rooms. A Redis that
        # does not let us ask (CONFIG renamed or denied, as managed services do) is named too,
        # so the operator knows it was not checked.
        masters: list[Any] = [None]
        if self._cluster is not None:
            try:
                await self._cluster.initialize()  # the slot map, on a process nothing used yet
            except FAILURES as exc:
                return [_unchecked("", exc)]
            masters = self._cluster.get_primaries()
        warnings = []
        for node in masters:
            where = f" ({node.name})" if node is not None else ""
            asked = {} if node is None else {"target_nodes": node}
            try:
                found = dict(await self._client.config_get("maxmemory-policy", **asked))
            except FAILURES as exc:
                warnings.append(_unchecked(where, exc))
                continue
            policy = _decoded(found.get(b"maxmemory-policy", found.get("maxmemory-policy")))
            if policy not in (None, "noeviction"):
                warnings.append(
                    f"Redis maxmemory-policy is {policy}{where}: when full, Redis may evict Parley's keys "
                    "(a client's resend is then posted twice, a room's members are reset); set "
                    "maxmemory-policy noeviction (README, Configuration)")
        return warnings

    async def close(self) -> None:
        await self._client.aclose()


def _unchecked(where: str, exc: Exception) -> str:
    return (f"could not read Redis maxmemory-policy{where} ({exc}): make sure it is noeviction "
            "(README, Configuration)")


def _unavailable(exc: BaseException) -> BaseException:
    """A store failure as ``HistoryUnavailable`` (what callers expect of history); others as
    they are."""
    if isinstance(exc, FAILURES) and not isinstance(exc, HistoryUnavailable):
        unavailable = HistoryUnavailable(str(exc) or type(exc).__name__)
        unavailable.__cause__ = exc
        return unavailable
    return exc


def _decoded(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _state(raw: list[Any]) -> RoomState:
    """A state as the scripts give it: epoch, base, newest id, newest shown id, its tag."""
    epoch, base, seq, shown, tip = raw
    return RoomState(epoch=epoch.decode() if isinstance(epoch, bytes) else str(epoch),
                     base=int(base), last_id=int(shown), unshown=int(seq) - int(shown), tip=_tag(tip))


def _tag(raw: bytes | int | None) -> int | None:
    """A tag as Redis holds it (app/history/lineage.py); None when absent or not a number
    (written by another tool: no check is possible, which is never a mismatch)."""
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


async def _ping_masters(cluster: Any) -> None:
    """The store answers when any master of the cluster does (an ``EVAL`` on each, the first
    answer enough). A master failing is an outage of its rooms, their sends ``unavailable``
    until its replica takes over, not of the process: probing one key's master made every
    process unready, and hold each new connection to any room, for that master's failover.
    The client routes to masters by its slot map, so a demoted master is not asked."""
    try:
        await cluster.initialize()  # a no-op but when it has no slot map
        masters = cluster.get_primaries()
    except FAILURES as exc:
        raise HistoryUnavailable(str(exc) or type(exc).__name__) from exc
    pending = {asyncio.ensure_future(cluster.execute_command("EVAL", "return 1", 0, target_nodes=node))
               for node in masters}
    for probe in pending:  # the slower ones finish on their own (and a hung one times out)
        probe.add_done_callback(_retrieved)
    error: BaseException | None = None
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for probe in done:
            failed = probe.exception()
            if failed is None:
                return
            if not isinstance(failed, FAILURES):
                raise failed  # not the store failing: a bug
            error = error or failed
    if error is None:
        raise HistoryUnavailable("no master known")
    raise HistoryUnavailable(str(error) or type(error).__name__) from error


def _retrieved(probe: asyncio.Future[Any]) -> None:
    if not probe.cancelled():
        probe.exception()


def _shown(seq: bytes, shown: bytes | None) -> int:
    """The scripts' ``shown()``, for a plain read of the fields."""
    return int(seq) if shown is None else min(int(shown), int(seq))


def _read_args(args: list[str | int], asks: list[tuple[int, int]]) -> list[str | int]:
    return [*args, *(value for ask in asks for value in ask)]


def _replays(room: str, asks: list[tuple[int, int]], reply: list[Any], cut: bool) -> dict[Resume, Replay]:
    """``after``'s answers from one room's ``_READ`` reply: the entries after each ``since``
    asked, the oldest id held (None: the log is empty), then the room's state. Cut (what is
    shown only): a gap never reaches past the newest shown id, even when the oldest entry
    held is an unshown one (sends whose WAIT fell short trimmed the log below it)."""
    *ranges, oldest, raw_state = reply
    state = _state(raw_state)
    first_held = _entry_id(oldest) if oldest else state.last_id + 1
    if cut:
        first_held = min(first_held, state.last_id + 1)
    found = {}
    for (since, limit), entries in zip(asks, ranges, strict=True):
        missing = (since + 1, first_held - 1) if since + 1 < first_held else None
        found[room, since, limit] = _raw_replay(room, entries, missing, state)
    return found


def _raw_replay(room: str, entries: list[Any], missing: tuple[int, int] | None, state: RoomState) -> Replay:
    """A replay of entries as a script returns them, oldest first, with their tags (frames
    and entries are one to one: ``_raw_frames`` keeps every entry under its id)."""
    return Replay(frames=_raw_frames(room, entries), missing=missing, state=state,
                  prev=_field(entries[0], b"p") if entries else None,
                  tag=_field(entries[-1], b"t") if entries else None)


def _field(entry: Any, name: bytes) -> int | None:
    """A tag field of an entry as a script returns it (``[id, [field, value, ...]]``)."""
    return _tag(_value(entry[1], name))


def _value(fields: list[Any], name: bytes) -> Any:
    """The value of field ``name`` in an entry's flat ``[field, value, ...]`` list (None when
    it has none), found without building the entry's dict."""
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == name:
            return fields[index + 1]
    return None


def _raw_frames(room: str, entries: list[Any]) -> list[tuple[int, str]]:
    """The frames of entries as a script returns them: ``[id, [field, value, ...]]``.

    A record that is not UTF-8 (written by another tool, or damaged) is delivered with
    U+FFFD in place of its bad bytes, and one with no frame, or with a frame that is not a
    message under its id (cut short, not JSON), as a message of U+FFFD under its id: a record
    can never stop a replay (a missing field ended every member's connection and refused
    every join of the room) nor make an answer that clients cannot parse."""
    frames = []
    for raw_id, fields in entries:
        entry_id = _entry_id(raw_id)
        found = _value(fields, b"f")
        text = found.decode("utf-8", "replace") if isinstance(found, bytes) else None
        if text is None or not is_message_frame(text, entry_id):
            text = message_template(room, REPLACEMENT, 0, "").with_id(entry_id)
        frames.append((entry_id, text))
    return frames


def _entry_id(raw: bytes) -> int:
    return int(raw.split(b"-", 1)[0])
