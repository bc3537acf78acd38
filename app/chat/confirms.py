"""Confirms rooms' unshown ids in the background, for the tail watcher.

A confirm is a write and a ``WAIT`` (``History.confirm``). Against a master with no replica
(a promoted one, until the dead node is back) it blocks for the whole ``WAIT`` timeout and
falls short. Awaited inside the tail watcher's loop, such rooms held up every room's tick,
one timeout each: lost broadcasts and epoch resets went unrepaired in healthy rooms for
rooms × timeout. So each confirm is its own task, at most one per room, and a room whose
confirm fell short is not asked again for a while (doubling up to ``MAX_RETRY``), so that
hundreds of rooms on a replica-less master are not asked every second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from app.history import History, HistoryUnavailable, RoomState

logger = logging.getLogger("parley")

FIRST_RETRY = 1.0
MAX_RETRY = 30.0


class Confirms:
    """One process's confirms in flight, and when each room that fell short may try again."""

    def __init__(self, history: History, first_retry: float = FIRST_RETRY) -> None:
        self.history = history
        self.first_retry = first_retry
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # room -> (not before, last delay)

    def request(self, room: str, state: RoomState) -> None:
        """Confirm ``room`` (at ``state``) unless a confirm is in flight or it must wait."""
        if room in self._tasks or time.monotonic() < self._retry.get(room, (0.0, 0.0))[0]:
            return
        task = asyncio.ensure_future(self._confirm(room, state))
        self._tasks[room] = task
        task.add_done_callback(lambda _: self._tasks.pop(room, None))

    def keep(self, rooms: Iterable[str]) -> None:
        """Forget when rooms no longer watched may try again."""
        watched = set(rooms)
        for room in [r for r in self._retry if r not in watched]:
            del self._retry[room]

    async def _confirm(self, room: str, state: RoomState) -> None:
        try:
            await self.history.confirm(room, state)
        except Exception as exc:  # a task of its own: nothing above it would see the error
            delay = min(self._retry.get(room, (0.0, self.first_retry / 2))[1] * 2, MAX_RETRY)
            self._retry[room] = (time.monotonic() + delay, delay)
            if isinstance(exc, HistoryUnavailable):  # no replica yet: the room's sends fail too
                logger.debug("unshown ids of %s not confirmed: %s", room, exc)
            else:
                logger.warning("confirming %s failed", room, exc_info=True)
        else:
            self._retry.pop(room, None)

    async def idle(self) -> None:
        """Wait for the confirms in flight now to end."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel the confirms in flight and wait for them to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
