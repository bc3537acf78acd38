"""Presence in Redis: one sorted set per room, member -> deadline (ms, Redis's own clock).

Processes hold their users by pushing deadlines forward (a heartbeat per process, batched per
room, never per socket), release them by setting the deadline to now + grace, and whoever's
step finds a deadline passed removes the user and announces the departure: one script per
room per step, so each join and each leave is reported to exactly one caller. A process that
is killed stops refreshing, and its users go after the grace. A room's keys share the hash tag
``{room}``, so every script touches one slot (Redis Cluster included).
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.presence.base import PresenceStore, PresenceUnavailable, RoomChange, RoomState
from app.presence.rules import MEMBERS_MAX
from app.redis_clients import FAILURES

# KEYS: members (zset), version. ARGV: hold_ms, release_ms, key_ttl_ms, sample, nhold,
# then the held users, then the released ones. Mirrors app.presence.rules.Roster.step.
_STEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local gone = redis.call('ZRANGEBYSCORE', key, '-inf', now)
local expired = {}
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  for _, u in ipairs(gone) do expired[u] = true end
end
local nhold = tonumber(ARGV[5])
local hold_until = now + tonumber(ARGV[1])
local joined = {}
for i = 6, 5 + nhold do
  local u = ARGV[i]
  if redis.call('ZADD', key, 'GT', hold_until, u) == 1 then
    if expired[u] then expired[u] = false else joined[#joined + 1] = u end
  end
end
local release_until = now + tonumber(ARGV[2])
for i = 6 + nhold, #ARGV do
  redis.call('ZADD', key, 'XX', release_until, ARGV[i])
end
local left = {}
for _, u in ipairs(gone) do
  if expired[u] then left[#left + 1] = u end
end
local version
if #joined > 0 or #left > 0 then
  version = redis.call('INCR', KEYS[2])
else
  version = tonumber(redis.call('GET', KEYS[2]) or '0')
end
local count = redis.call('ZCARD', key)
local next_ms = -1
local members = {}
if count > 0 then
  redis.call('PEXPIRE', key, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  next_ms = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) - now
  if tonumber(ARGV[4]) > 0 then members = redis.call('ZRANGE', key, 0, tonumber(ARGV[4]) - 1) end
end
return {count, version, joined, left, members, next_ms}
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

    def __init__(self, client: Any, grace: float, hold: float, cluster: bool = False) -> None:
        # One client: a single Redis, or a cluster (the keys of a room share one slot).
        self._client = client
        self._cluster = cluster
        self._step = client.register_script(_STEP)
        self._read = client.register_script(_READ)
        self._release_ms = int(grace * 1000)
        self._hold_ms = int(hold * 1000)
        self._key_ttl_ms = max(self._hold_ms, self._release_ms) + KEY_MARGIN_MS

    @staticmethod
    def _keys(room: str) -> list[str]:
        return [f"chat:{{{room}}}:present", f"chat:{{{room}}}:present:v"]

    def _args(self, change: RoomChange) -> list[Any]:
        return [self._hold_ms, self._release_ms, self._key_ttl_ms,
                MEMBERS_MAX if change.sample else 0, len(change.hold), *change.hold, *change.release]

    async def sync(self, changes: list[RoomChange]) -> list[RoomState]:
        if not changes:
            return []
        try:
            if self._cluster:
                # Rooms live on different masters: one script each, sent together.
                results = await asyncio.gather(*(
                    self._step(keys=self._keys(change.room), args=self._args(change)) for change in changes
                ))
            else:
                pipe = self._client.pipeline(transaction=False)
                for change in changes:
                    await self._step(keys=self._keys(change.room), args=self._args(change), client=pipe)
                results = await pipe.execute()
        except FAILURES as exc:
            raise PresenceUnavailable(str(exc) or type(exc).__name__) from exc
        states = []
        for count, version, joined, left, members, next_ms in results:
            states.append(RoomState(
                count=int(count), version=int(version), joined=_names(joined), left=_names(left),
                members=_names(members), next_due=None if int(next_ms) < 0 else int(next_ms) / 1000,
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
