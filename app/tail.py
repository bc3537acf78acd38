"""Delivers the tail a lost broadcast leaves behind.

A consumer fills a hole when the next message arrives; if the lost message was the room's
last, nothing arrives. Once a second this watcher compares, per room with members here, the
newest id history held a tick ago with the lowest id every local member has been sent, and
nudges the room's consumers to catch up from history when some member is still behind it.
Comparing against the previous tick keeps busy rooms (where members trail by milliseconds)
from triggering needless history reads.
"""

from __future__ import annotations

import asyncio
import logging

from app.history import History
from app.registry import Registry
from app.rooms import group_name

logger = logging.getLogger("parley")


class TailWatcher:
    """Per-process loop; one batched history read per tick for all rooms with members."""

    def __init__(self, registry: Registry, history: History, layer: object, interval: float) -> None:
        self.registry = registry
        self.history = history
        self.layer = layer
        self.interval = interval
        self._held: dict[str, int] = {}

    async def tick(self) -> int:
        """One comparison; returns how many rooms were nudged."""
        behind = self.registry.rooms()
        rooms = list(behind)
        held_now = dict(zip(rooms, await self.history.last_ids(rooms))) if rooms else {}
        nudged = 0
        for room, lowest_sent in behind.items():
            held_before = self._held.get(room, 0)
            if lowest_sent < held_before:
                await self.layer.group_send(  # type: ignore[attr-defined]
                    group_name(room), {"type": "chat.sync", "last_id": held_before}
                )
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
