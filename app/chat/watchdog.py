"""Drops clients that stopped reading.

A send to a client waits while that socket's write buffer is full. Each consumer stamps
when its current send began; once a second this watchdog stops consumers whose send has
waited longer than ``CHAT_SEND_TIMEOUT``, so the server holds at most one socket buffer
per stalled client, never an unbounded backlog. Consumers are members from their accept, so
this covers every frame a socket is sent: the join's replay, gap fills, error frames and the
close frame as much as live messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

from app.chat.registry import Member, Registry

CHECK_INTERVAL = 1.0


class SlowClientWatchdog:
    """Finds members stuck in a send past the timeout, and tells them."""

    def __init__(self, members: Registry, send_timeout: float, sending: Collection[Member]) -> None:
        self.members = members
        self.send_timeout = send_timeout
        # Whatever has a send in flight (app.chat.serial.IN_SEND): only those of them that
        # are members are looked at, not every socket of the process.
        self.sending = sending

    def check(self, now: float) -> int:
        """Stop every stuck member; returns how many."""
        limit = now - self.send_timeout
        stuck = [m for m in list(self.sending) if m in self.members and 0.0 < m.sending_since < limit]
        for member in stuck:
            member.stalled()
        return len(stuck)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(min(CHECK_INTERVAL, self.send_timeout))
            self.check(time.monotonic())
