"""Presence kept in process memory: the embedded single-process default."""

from __future__ import annotations

import time

from app.presence.base import PresenceStore, RoomChange, RoomState
from app.presence.rules import MEMBERS_MAX, Roster


class MemoryPresence(PresenceStore):
    """``Roster``s in a dict. Holds never expire here: the process holding them is this one."""

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._rooms: dict[str, Roster] = {}

    async def sync(self, changes: list[RoomChange]) -> list[RoomState]:
        now = time.monotonic()
        return [self._step(change, now) for change in changes]

    def _step(self, change: RoomChange, now: float) -> RoomState:
        roster = self._rooms.get(change.room)
        if roster is None:
            if not change.hold:
                return RoomState(count=0, version=0)
            roster = self._rooms[change.room] = Roster()
        previous = roster.version
        outcome = roster.step(now, change.hold, change.release, now + self._grace)
        members = roster.sample(MEMBERS_MAX) if change.sample else []
        deadline = roster.next_deadline()
        state = RoomState(count=outcome.count, version=roster.version, joined=outcome.joined,
                          left=outcome.left, members=members,
                          next_due=None if deadline is None else max(deadline - now, 0.0),
                          previous=previous)
        if not roster.members:
            del self._rooms[change.room]
        return state

    async def read(self, room: str, limit: int) -> tuple[int, list[str]]:
        roster = self._rooms.get(room)
        if roster is None:
            return 0, []
        # Members whose deadline passed but whose departure no step has noticed yet are gone.
        now = time.monotonic()
        present = [u for u in roster.members if roster.leaving.get(u, now + 1) > now]
        return len(present), present[:limit]
