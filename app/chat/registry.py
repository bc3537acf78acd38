"""The chat sockets this process holds, by room, so a drain can close every one of them.

A consumer is a member from its accept to its end (replay included), so this is also the
count of open chat sockets that the ``chat_connections_open`` gauge reports.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from app.chat import hangup
from app.chat.drain_schedule import schedule

if TYPE_CHECKING:  # history (and the frame rules under it) loads after listening
    from app.history.base import RoomState


class Member(Protocol):
    """What a registered chat socket offers the process's watchers and the drain."""

    room: str
    epoch: str
    last_id: int
    last_ts: int | None  # the tag of the message ``last_id`` names, as shown (None: unknown)
    sending_since: float  # monotonic start of the send in flight, 0.0 when none

    def idle(self) -> bool:
        """Nothing queued for it and nothing in flight (the tail watcher's test)."""

    async def nudge(self, state: RoomState) -> None:
        """History holds ``state``: catch up (or reset) from it."""

    def stalled(self) -> None:
        """The slow-client watchdog found its send stuck too long."""

    async def close_for_restart(self, code: int, reason: str) -> None:
        """The drain: tell the client to reconnect elsewhere, without waiting for it."""


class Registry:
    """Live chat consumers by room, with a bounded ``close_all`` that needs no task per member."""

    def __init__(self) -> None:
        self._rooms: dict[str, set[Member]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, member: Member) -> bool:
        return member in self._rooms.get(member.room, ())

    def add(self, member: Member) -> None:
        members = self._rooms.setdefault(member.room, set())
        if member not in members:
            members.add(member)
            self._count += 1

    def discard_if_present(self, member: Member) -> bool:
        """Remove ``member``; True if it was there (so callers count each close once)."""
        members = self._rooms.get(member.room)
        if members is None or member not in members:
            return False
        members.remove(member)
        self._count -= 1
        if not members:
            del self._rooms[member.room]
        return True

    def all(self) -> list[Member]:
        return [m for room in self._rooms.values() for m in room]

    def rooms(self) -> list[str]:
        """The rooms with members here."""
        return list(self._rooms)

    def members(self, room: str) -> list[Member]:
        """A snapshot of ``room``'s members here (none if it has none)."""
        return list(self._rooms.get(room, ()))

    async def close_all(self, code: int, reason: str, timeout: float, spread: float = 0.0) -> int:
        """Send every member a close frame; return how many there were.

        With ``spread`` > 0 the closes go out in batches over that many seconds
        (app/chat/drain_schedule.py), so the clients reconnect to the new colour at a
        rate it can admit; a member that left meanwhile is skipped. ``timeout`` bounds it all.

        A close to a writable socket completes without suspending, so members are closed
        one after another with no task each. A member whose client stopped reading drops
        its connection instead of waiting (``close_for_restart``); where the server cannot
        do that, its close is abandoned here rather than waited for, and the server's own
        shutdown closes the transport.
        """
        # Sockets already dropped as slow, still flushing their close frame, are no longer
        # members; the drain does not wait for them either.
        hangup.abort_lingering()
        members = self.all()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + max(timeout, 0.01)
        position = 0
        for offset, size in schedule(len(members), spread):
            if started + offset > loop.time():
                await asyncio.sleep(started + offset - loop.time())
            for member in members[position:position + size]:
                if loop.time() > deadline:
                    return len(members)
                if offset and member not in self._rooms.get(member.room, ()):
                    continue  # gone since the drain began: nothing to close
                try:
                    async with asyncio.timeout(0):  # cancels only if the send would wait
                        await member.close_for_restart(code, reason)
                except TimeoutError:
                    pass
            position += size
        return len(members)


REGISTRY = Registry()
