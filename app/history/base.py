"""The interface every history backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from app.protocol import FrameTemplate


class HistoryUnavailable(RuntimeError):
    """The store behind history did not answer; nothing was recorded."""


@dataclass(frozen=True)
class Appended:
    """The result of an append: the message's id, and whether it was a resend."""

    id: int
    frame: str | None
    duplicate: bool = False


@dataclass(frozen=True)
class Replay:
    """Messages after an id, oldest first, and the ids history no longer holds."""

    frames: list[tuple[int, str]] = field(default_factory=list)
    missing: tuple[int, int] | None = None


class History(abc.ABC):
    """Per-room ordered log: ids 1, 2, 3, ... assigned atomically, bounded and expiring."""

    @abc.abstractmethod
    async def append(self, room: str, template: FrameTemplate, client_id: str | None) -> Appended:
        """Assign the next id and record the frame, or return the id of an earlier send."""

    @abc.abstractmethod
    async def after(self, room: str, since: int, limit: int) -> Replay:
        """Up to ``limit`` frames with ids greater than ``since``, oldest first."""

    @abc.abstractmethod
    async def latest(self, room: str, count: int) -> list[tuple[int, str]]:
        """The newest ``count`` frames, oldest first."""

    @abc.abstractmethod
    async def last_id(self, room: str) -> int:
        """The id of the newest message of the room (0 for none)."""

    async def last_id_for_join(self, room: str) -> int:
        """``last_id`` for a member that has already joined the room's group: possibly a
        moment old, never newer than the truth. Older only means the member fills the
        difference from history (the consumer's gap check), so a backend may share one read
        among the joins that arrive together."""
        return await self.last_id(room)

    async def last_ids(self, rooms: list[str]) -> list[int]:
        """``last_id`` of several rooms; backends batch it into one round trip."""
        return [await self.last_id(room) for room in rooms]

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise HistoryUnavailable unless the store answers."""

    async def close(self) -> None:  # noqa: B027  (optional hook: memory has nothing to release)
        """Release connections."""
