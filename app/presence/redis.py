"""Presence in Redis: one sorted set per room, member -> deadline (ms, Redis's own clock).

Processes hold their users by pushing deadlines forward (a heartbeat per process, batched per
room, never per socket), release them by setting the deadline to now + grace, and whoever's
step finds a deadline passed removes the user and announces the departure: one script per
room per step, so each join and each leave is reported to exactly one caller. A process that
is killed stops refreshing, and its users go after the grace. A room's keys share the hash tag
``{room}``, so every script touches one slot (Redis Cluster included).
"""

from __future__ import annotations

import time
from typing import Any

from app.presence.base import PresenceStore, PresenceUnavailable, RoomChange, RoomState
from app.presence.rules import MEMBERS_MAX, KnownRosters, Seen, stall_window
from app.redis_clients import FAILURES, SOCKET_TIMEOUT
from app.redis_scripts import ScriptPipeline, scripts_by_node

# KEYS: members (zset), version, born, clock (hash). ARGV: hold_ms, release_ms, key_ttl_ms,
# sample, nhold, known version, known count, known born, forgive_ms, stall_min_ms,
# stall_max_ms, then the held users, then the released ones. forgive_ms: deadlines that
# passed less than this long ago are not departures yet (the caller's store was unreachable,
# so nobody could renew them). stall_*: the same found by the room itself, for steps that
# were already on their way when the store stalled (a CLIENT PAUSE, as a failover makes; a
# Redis frozen by a slow command) and so carry no forgive_ms: ``clock`` keeps the time of the
# room's last step (``last``), and a step that finds the room unstepped for a gap in the
# window (app.presence.rules.stall_window; 0: no window, the clock unused) spares the holds
# that lapsed after ``last`` for a hold (``spared``, until ``until``): each process that
# lived through the stall has held its users again by then, and those of one that did not
# go after it. A hold's deadline is
# n + 0.5 ms, a release's a whole n: a release is a departure asked for, never spared (the
# last user of a room leaving, the room unstepped until it is due, is no stall).
# A room made anew (or whose keys were lost) starts its version at Redis's clock in
# microseconds, above any version it had before, and a version is never below that clock (a
# failover can keep both keys with stale values): clients keep the count of the highest
# version they have seen.
# Mirrors app.presence.rules.Roster.step. "known": the room is still as the caller last saw
# it (its version, count and birth: when its version key was made, so a room whose keys
# were lost and made again is never taken for the one seen before), so the caller works out
# the names from its copy and this step's joined and left, and no names are sent: a sample
# of up to 100 names per join was most of presence's cost in rooms of up to 100. "previous":
# the version the step found, so a change is the link previous -> version (the announcements'
# chain that app/presence/repair.py checks).
_STEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[9])
local spared, spared_until
if tonumber(ARGV[10]) > 0 then
  local clock = redis.call('HMGET', KEYS[4], 'last', 'spared', 'until')
  local last = tonumber(clock[1])
  spared, spared_until = tonumber(clock[2]), tonumber(clock[3])
  if last and now - last > tonumber(ARGV[10]) and now - last <= tonumber(ARGV[11]) then
    spared, spared_until = last, now + tonumber(ARGV[1])
    redis.call('HSET', KEYS[4], 'spared', string.format('%.0f', spared),
      'until', string.format('%.0f', spared_until))
  end
  if not (spared and now < spared_until) then spared = nil end
  redis.call('HSET', KEYS[4], 'last', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
local key = KEYS[1]
local born = redis.call('GET', KEYS[3])
local known = born and born == ARGV[8]
  and tonumber(redis.call('GET', KEYS[2]) or '0') == tonumber(ARGV[6])
  and redis.call('ZCARD', key) == tonumber(ARGV[7])
local gone = {}
local expired = {}
if spared then
  -- A hold (its deadline n + 0.5 ms) that lapsed after the last step before a stall was not
  -- renewed because nobody could: spared. A release (a whole n) was a departure already.
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', cutoff, 'WITHSCORES')
  for i = 1, #due, 2 do
    local score = tonumber(due[i + 1])
    if score <= spared or score % 1 == 0 then gone[#gone + 1] = due[i] end
  end
  for i = 1, #gone, 1000 do
    redis.call('ZREM', key, unpack(gone, i, math.min(i + 999, #gone)))
  end
else
  gone = redis.call('ZRANGEBYSCORE', key, '-inf', cutoff)
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff) end
end
for _, u in ipairs(gone) do expired[u] = true end
local nhold = tonumber(ARGV[5])
local hold_until = now + tonumber(ARGV[1]) + 0.5
local joined = {}
for i = 12, 11 + nhold do
  local u = ARGV[i]
  if redis.call('ZADD', key, 'GT', hold_until, u) == 1 then
    if expired[u] then expired[u] = false else joined[#joined + 1] = u end
  end
end
local release_until = now + tonumber(ARGV[2])
for i = 12 + nhold, #ARGV do
  redis.call('ZADD', key, 'XX', release_until, ARGV[i])
end
local left = {}
for _, u in ipairs(gone) do
  if expired[u] then left[#left + 1] = u end
end
local version
local previous
if #joined > 0 or #left > 0 then
  local stored = redis.call('GET', KEYS[2])
  previous = tonumber(stored or '0')
  if not born or not stored then
    born = tostring(now) .. '-' .. tostring(t[2])
    redis.call('SET', KEYS[3], born)
  end
  -- The next version, and never below the clock in microseconds: a failover to a replica
  -- that missed the last steps keeps both keys with older values, and counting on from
  -- those would give clients versions lower than ones they already saw.
  local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
  version = math.max(tonumber(stored or '0') + 1, micros)
  redis.call('SET', KEYS[2], string.format('%.0f', version))
else
  version = tonumber(redis.call('GET', KEYS[2]) or '0')
  previous = version
end
local count = redis.call('ZCARD', key)
local next_ms = -1
local members = {}
-- Also when the room is now empty: a SET above dropped the version key's expiry, and an
-- emptied room's keys must still vanish (a no-op for a key that does not exist).
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if born then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
if count > 0 then
  redis.call('PEXPIRE', key, ARGV[3])
  local first = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
  -- What is left at or below the cutoff is spared: due when the sparing ends.
  local due = first <= cutoff and spared_until or first + tonumber(ARGV[9])
  next_ms = math.max(math.ceil(due - now), 0)
  if tonumber(ARGV[4]) > 0 and not known then
    members = redis.call('ZRANGE', key, 0, tonumber(ARGV[4]) - 1)
  end
end
return {count, version, joined, left, members, next_ms, known and 1 or 0, born or '', previous}
"""

# KEYS: members. ARGV: limit. Read-only: users whose deadline passed are not counted.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
return {count, members}
"""

# Keys outlive every deadline in them by this much, then vanish with an empty room.
KEY_MARGIN_MS = 60_000


class RedisPresence(PresenceStore):
    """Per-room sorted sets; several URLs shard rooms as history does (same ring)."""

    heartbeat = True

    def __init__(self, client: Any, grace: float, hold: float, cluster: bool = False,
                 timeout: float = SOCKET_TIMEOUT) -> None:
        # ``timeout``: the client's socket timeout (app.presence.rules.stall_window).
        # One client: a single Redis, or a cluster (the keys of a room share one slot).
        self._client = client
        self._cluster = cluster
        self._step = client.register_script(_STEP)
        self._read = client.register_script(_READ)
        self._release_ms = int(grace * 1000)
        self._hold_ms = int(hold * 1000)
        window = stall_window(grace, timeout)
        self._stall_ms = (0, 0) if window is None else (int(window[0] * 1000), int(window[1] * 1000))
        self._key_ttl_ms = max(self._hold_ms, self._release_ms) + KEY_MARGIN_MS
        self._known = KnownRosters()
        self._answered_at: float | None = None  # monotonic: the store's last answer
        self._failing = False
        self._forgive: tuple[float, int] = (0.0, 0)  # (until, ms): see _forgive_ms

    @staticmethod
    def _keys(room: str) -> list[str]:
        return [f"chat:{{{room}}}:present", f"chat:{{{room}}}:present:v", f"chat:{{{room}}}:present:born",
                f"chat:{{{room}}}:present:clock"]

    def _forgive_ms(self, now: float) -> int:
        """How long ago a deadline may have passed and still not be a departure.

        While the store did not answer, no process could renew its users' holds: after an
        outage longer than a hold, the first step announced every user gone, connected or
        not, and the heartbeats announced them back. For a hold's length after the outage,
        deadlines that passed during it are forgiven; by then every process that lived
        through it has held its users again (a heartbeat is its first step back), and the
        users of one that did not are gone.
        """
        if self._failing and self._answered_at is not None:
            self._forgive = (now + self._hold_ms / 1000, int((now - self._answered_at) * 1000))
        until, forgive_ms = self._forgive
        return forgive_ms if now < until else 0

    def _args(self, change: RoomChange, base: Seen | None, forgive_ms: int) -> list[Any]:
        known = (base.version, len(base.names), base.born) if base is not None else (-1, -1, "")
        return [self._hold_ms, self._release_ms, self._key_ttl_ms, MEMBERS_MAX if change.sample else 0,
                len(change.hold), *known, forgive_ms, *self._stall_ms, *change.hold, *change.release]

    async def sync(self, changes: list[RoomChange]) -> list[RoomState | PresenceUnavailable]:
        if not changes:
            return []
        now = time.monotonic()
        bases = [self._known.base(change.room, now) for change in changes]
        forgive_ms = self._forgive_ms(now)
        results: list[Any]
        try:
            if self._cluster:
                # Rooms live on different masters: one pipeline each (app/redis_scripts.py). A
                # room whose master does not answer fails alone: the others' steps ran, and
                # what they found (who left, who joined) is reported exactly once, so it must
                # not be dropped.
                results = await scripts_by_node(self._client, self._step, [
                    (self._keys(change.room), self._args(change, base, forgive_ms))
                    for change, base in zip(changes, bases, strict=True)
                ])
                failed = [result for result in results if isinstance(result, BaseException)]
                for error in failed:
                    if not isinstance(error, FAILURES):
                        raise error  # not the store failing: a bug, as before
                if len(failed) == len(results):
                    raise failed[0]
            else:
                batch = ScriptPipeline(self._client)
                for change, base in zip(changes, bases, strict=True):
                    batch.script(self._step, self._keys(change.room), self._args(change, base, forgive_ms))
                results = await batch.execute()
        except FAILURES as exc:
            self._failing = True
            raise PresenceUnavailable(str(exc) or type(exc).__name__) from exc
        # Any room failing counts as the store failing (``_forgive_ms``): its holds were not
        # renewed. The store answered when every room did.
        self._failing = any(isinstance(result, BaseException) for result in results)
        if not self._failing:
            self._answered_at = now
        states: list[RoomState | PresenceUnavailable] = []
        for change, base, result in zip(changes, bases, results, strict=True):
            if isinstance(result, BaseException):
                states.append(PresenceUnavailable(str(result) or type(result).__name__))
                continue
            count, version, joined, left, members, next_ms, unchanged, born, previous = result
            joined, left = _names(joined), _names(left)
            listed = self._known.settle(
                change.room, base, bool(unchanged), Seen(int(version), (), born.decode()), int(count),
                joined, left, _names(members) if change.sample and not unchanged else None, now,
            )
            states.append(RoomState(
                count=int(count), version=int(version), joined=joined, left=left,
                members=(listed or [])[:MEMBERS_MAX] if change.sample else [],
                next_due=None if int(next_ms) < 0 else int(next_ms) / 1000, previous=int(previous),
            ))
        return states

    async def read(self, room: str, limit: int) -> tuple[int, list[str]]:
        try:
            count, members = await self._read(keys=self._keys(room)[:1], args=[limit])
        except FAILURES as exc:
            raise PresenceUnavailable(str(exc) or type(exc).__name__) from exc
        return int(count), _names(members)

    async def close(self) -> None:
        await self._client.aclose()


def _names(raw: list[bytes]) -> list[str]:
    return [name.decode() for name in raw]
