"""The chat sockets this process holds, so a drain can close every one of them."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Closable(Protocol):
    async def close_for_restart(self, code: int, reason: str) -> None: ...


class Registry:
    """A set of live chat consumers with a bounded, concurrent ``close_all``."""

    def __init__(self) -> None:
        self._members: set[Closable] = set()

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: Closable) -> None:
        self._members.add(member)

    def discard_if_present(self, member: Closable) -> bool:
        """Remove ``member``; True if it was there (so callers count each close once)."""
        if member in self._members:
            self._members.remove(member)
            return True
        return False

    async def close_all(self, code: int, reason: str, timeout: float) -> int:
        """Send every member a close frame; return how many there were.

        A member whose client stops reading can block its send, so the whole step is
        bounded by ``timeout``; uvicorn's own shutdown then closes what is left.
        """
        members = list(self._members)
        if not members:
            return 0
        tasks = [asyncio.ensure_future(m.close_for_restart(code, reason)) for m in members]
        _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.01))
        for task in pending:
            task.cancel()
        return len(members)


REGISTRY = Registry()
