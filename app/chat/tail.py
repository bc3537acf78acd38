"""Delivers the tail a lost broadcast leaves behind.

A consumer fills a hole when the next message arrives; if the lost message was the room's
last, nothing arrives. Once a second this watcher reads, in one batch, the newest id
history holds for every room with members here, and nudges each member that is still
behind what history held a tick ago *and* has nothing queued or in flight: that member
lost a message, rather than being in the middle of receiving it. Busy rooms and slow
readers cost nothing; the nudged consumer fills the gap from history.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from app.chat.registry import Registry
from app.history import History

logger = logging.getLogger("parley")


class Nudgeable(Protocol):
    last_id: int

    def idle(self) -> bool: ...

    async def nudge(self, last_id: int) -> None: ...


class TailWatcher:
    """Per-process loop; one batched history read per tick for all rooms with members."""

    def __init__(self, registry: Registry, history: History, interval: float) -> None:
        self.registry = registry
        self.history = history
        self.interval = interval
        self._held: dict[str, int] = {}

    async def tick(self) -> int:
        """One comparison; returns how many members were nudged."""
        rooms = self.registry.by_room()
        names = list(rooms)
        held_now = dict(zip(names, await self.history.last_ids(names), strict=True)) if names else {}
        nudged = 0
        for room, members in rooms.items():
            held_before = self._held.get(room, 0)
            for member in members:
                if member.last_id < held_before and member.idle():  # type: ignore[attr-defined]
                    await member.nudge(held_before)  # type: ignore[attr-defined]
                    nudged += 1
        self._held = held_now
        return nudged

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception as exc:  # Redis away: readiness reports it; try again next tick
                logger.debug("tail check skipped: %s", exc)
