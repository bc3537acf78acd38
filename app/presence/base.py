"""The interface every presence store implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field


class PresenceUnavailable(RuntimeError):
    """The store behind presence did not answer."""


@dataclass(frozen=True)
class RoomChange:
    """One room's step: users to hold (present), users to release (gone after the grace),
    and whether the caller wants the room's count and names back."""

    room: str
    hold: tuple[str, ...] = ()
    release: tuple[str, ...] = ()
    sample: bool = False


@dataclass(frozen=True)
class RoomState:
    """A room after a step: who arrived and who is gone (each reported to exactly one
    caller, whichever step noticed), the exact count, names if asked, the room's version
    (it grows with every announced change), the version the step found (``previous``: a step
    that changed the room moved it from there to ``version``) and seconds until the next
    departure is due."""

    count: int
    version: int
    joined: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    next_due: float | None = None
    previous: int = 0


class PresenceStore(abc.ABC):
    """Per-room membership with deadlines: held users stay, released ones go after the grace."""

    # True when holds expire unless refreshed (a process that dies stops refreshing them).
    heartbeat: bool = False

    @abc.abstractmethod
    async def sync(self, changes: list[RoomChange]) -> Sequence[RoomState | PresenceUnavailable]:
        """Apply each room's step (expire what is due first); one round trip for all rooms.

        Raises PresenceUnavailable when the store did not answer. A store in parts (a
        cluster's masters) answers each room on its own: a room whose part did not answer
        gets PresenceUnavailable in its place, and the other rooms' steps stand.
        """

    @abc.abstractmethod
    async def read(self, room: str, limit: int) -> tuple[int, list[str]]:
        """The room's exact count and up to ``limit`` names, changing nothing."""

    async def close(self) -> None:  # noqa: B027  (optional hook: memory has nothing to release)
        """Release connections."""
