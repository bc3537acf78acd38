"""Confirms rooms' unshown ids in the background, for the tail watcher.

A confirm is a write and a ``WAIT`` (``History.confirm``). Against a master with no replica
(a promoted one, until the dead node is back) it blocks for the whole ``WAIT`` timeout and
falls short. Awaited inside the tail watcher's loop, such rooms held up every room's tick;
run as a task per room, they held a pooled connection each for the whole ``WAIT`` and
drained the pool that joins, reads and the readiness check share. So the rooms due in a
tick are confirmed together, as one batch (one pipeline and one ``WAIT`` per master), one
batch at a time; and a room whose confirm fell short is not asked again for a while
(doubling up to ``MAX_RETRY``), so that hundreds of rooms on a replica-less master are not
asked every second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from app.history import History, HistoryUnavailable

logger = logging.getLogger("parley")

FIRST_RETRY = 1.0
MAX_RETRY = 30.0


class Confirms:
    """The rooms to confirm, the batch in flight, and when each room that fell short may
    try again."""

    def __init__(self, history: History, first_retry: float = FIRST_RETRY) -> None:
        self.history = history
        self.first_retry = first_retry
        self._due: dict[str, None] = {}  # insertion-ordered set
        self._batch: asyncio.Task[None] | None = None
        self._in_flight: set[str] = set()
        self._retry: dict[str, tuple[float, float]] = {}  # room -> (not before, last delay)

    def request(self, room: str) -> None:
        """Confirm ``room`` with the next batch, unless it is in one or must wait."""
        if room in self._in_flight or time.monotonic() < self._retry.get(room, (0.0, 0.0))[0]:
            return
        self._due[room] = None

    def start(self) -> None:
        """Send the rooms requested so far as one batch, unless one is still in flight
        (they go with the next)."""
        if not self._due or self._batch is not None:
            return
        rooms, self._due = list(self._due), {}
        self._in_flight = set(rooms)
        self._batch = asyncio.ensure_future(self._confirm(rooms))

    def keep(self, rooms: Iterable[str]) -> None:
        """Forget when rooms no longer watched may try again."""
        watched = set(rooms)
        for room in [r for r in self._retry if r not in watched]:
            del self._retry[room]

    async def _confirm(self, rooms: list[str]) -> None:
        try:
            try:
                outcomes = await self.history.confirm(rooms)
            except Exception as exc:  # a task of its own: nothing above it would see the error
                outcomes = [exc] * len(rooms)
            now = time.monotonic()
            for room, outcome in zip(rooms, outcomes, strict=True):
                if outcome is None:
                    self._retry.pop(room, None)
                    continue
                delay = min(self._retry.get(room, (0.0, self.first_retry / 2))[1] * 2, MAX_RETRY)
                self._retry[room] = (now + delay, delay)
                if not isinstance(outcome, HistoryUnavailable):  # not "no replica yet": a bug
                    logger.warning("confirming %s failed: %r", room, outcome)
            logger.debug("confirmed %d of %d rooms", outcomes.count(None), len(rooms))
        finally:
            self._batch, self._in_flight = None, set()

    async def idle(self) -> None:
        """Wait for the batch in flight now to end."""
        if self._batch is not None:
            await asyncio.gather(self._batch, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the batch in flight and wait for it to end."""
        if self._batch is not None:
            self._batch.cancel()
            await asyncio.gather(self._batch, return_exceptions=True)
