"""The interface every history backend implements.

A room's ids count 1, 2, 3, ... within an **epoch**: a random id the backend draws whenever
the room's sequence starts over (its state was lost: a Redis restart without persistence, a
flushed or deleted key, expiry, a new process for memory history; or it went back in time:
a failover to a replica that lacked the last writes). An id means something only together
with its epoch, so a client that resumes in another epoch is reset rather than skipped.
"""

from __future__ import annotations

import abc
import secrets
from dataclasses import dataclass, field

from app.history.batch import SharedCalls
from app.protocol import FrameTemplate


class HistoryUnavailable(RuntimeError):
    """The store behind history did not answer; nothing was recorded."""


@dataclass(frozen=True)
class RoomState:
    """Where a room's sequence is: its epoch, the id the epoch's first message follows
    (``base``: ids of this epoch are ``base + 1``, ``base + 2``, ...) and its newest id that
    may be shown (``last_id``).

    ``unshown``: ids given after ``last_id`` whose writes no replica is known to hold yet
    (an append waiting for ``WAIT``, or one whose ``WAIT`` fell short). A failover can still
    lose them, so nobody is shown them until they are confirmed; they are not lost either,
    so a client at one of them (``top``) is not ahead of the room.

    ``tip``: the tag (app/history/lineage.py) of the message ``last_id`` names; None when
    unknown, or when ids after ``last_id`` are unshown (the store's tip is then theirs)."""

    epoch: str
    base: int
    last_id: int
    unshown: int = 0
    tip: int | None = None

    @property
    def top(self) -> int:
        """The newest id given in this epoch, shown or not."""
        return self.last_id + self.unshown


NO_STATE = RoomState(epoch="", base=0, last_id=0)


def new_epoch() -> str:
    """A fresh epoch id: 64 random bits, so two epochs of one room never collide."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Appended:
    """The result of an append: the message's id and epoch, and whether it was a resend.

    ``prev``: the tag (app/history/lineage.py) of the message before it in the log, None when
    unknown; members check it against the tag of the message they were shown last."""

    id: int
    frame: str | None
    duplicate: bool = False
    state: RoomState = NO_STATE
    prev: int | None = None


@dataclass(frozen=True)
class Replay:
    """Messages after an id, oldest first, the ids history no longer holds, and the room's
    state read with them.

    Tags (app/history/lineage.py), None when unknown: ``prev``, of the message before the
    first frame; ``tag``, of the last frame."""

    frames: list[tuple[int, str]] = field(default_factory=list)
    missing: tuple[int, int] | None = None
    state: RoomState = NO_STATE
    prev: int | None = None
    tag: int | None = None


class History(abc.ABC):
    """Per-room ordered log: ids 1, 2, 3, ... assigned atomically, bounded and expiring."""

    @abc.abstractmethod
    async def append(self, room: str, template: FrameTemplate, dedupe: str | None) -> Appended:
        """Assign the next id and record the frame, or return the id of an earlier send with
        the same ``dedupe`` key (app.protocol.dedupe_key) in the same epoch."""

    @abc.abstractmethod
    async def after(self, room: str, since: int, limit: int) -> Replay:
        """Up to ``limit`` frames with ids greater than ``since``, oldest first, and the
        room's state (an epoch is drawn if the room has none)."""

    @abc.abstractmethod
    async def latest(self, room: str, count: int) -> Replay:
        """The newest ``count`` frames, oldest first, and the room's state."""

    @abc.abstractmethod
    async def state(self, room: str) -> RoomState:
        """The room's epoch and ids; an epoch is drawn if the room has none."""

    @abc.abstractmethod
    async def restart(self, room: str, stale_epoch: str) -> RoomState:
        """Start a new epoch if the room is still in ``stale_epoch`` (its ids were seen to go
        back in time); return the room's state either way. The new epoch's ``base`` is below
        every message history still holds, so members reset to it are sent all of them."""

    _restarts: SharedCalls[tuple[str, str], RoomState] | None = None

    async def restart_shared(self, room: str, stale_epoch: str) -> RoomState:
        """``restart`` for the members that found the store diverged from what they were
        shown (app/history/lineage.py): a room's members find it together, from the same
        message, so those in flight at once share one call."""
        if self._restarts is None:
            self._restarts = SharedCalls()
        return await self._restarts.get((room, stale_epoch), lambda: self.restart(room, stale_epoch))

    _fills: SharedCalls[tuple[str, str, int, int], Replay] | None = None

    async def fill(self, room: str, epoch: str, since: int, upto: int) -> Replay:
        """``between(room, since, upto)`` for a member in ``epoch`` that lacks the ids after
        ``since`` and knows every id below ``upto`` is recorded and confirmed (it was sent
        ``upto``, or read that history showed ``upto - 1``).

        Members of a room fall behind together (a lost broadcast, or the tail watcher
        nudging a whole room whose pub/sub is late): identical fills in flight share one read,
        not one each. Safe: whoever began the shared read knew the same before beginning it,
        so the read holds every id of that epoch below ``upto``, and an id of an epoch names
        one message for good (an epoch that comes back, after a slot migration cut short by
        a failover, comes back with its own keys).
        """
        if self._fills is None:
            self._fills = SharedCalls()
        return await self._fills.get((room, epoch, since, upto), lambda: self.between(room, since, upto))

    async def between(self, room: str, since: int, upto: int) -> Replay:
        """The frames with ids after ``since`` and below ``upto``, for a caller that knows
        every id below ``upto`` is confirmed (it was sent ``upto`` live, or read that history
        showed ``upto - 1``): unlike ``after``, not cut at what the store shows now, which
        can be behind that after a failover (its note that they are shown was lost)."""
        return await self.after(room, since, upto - since - 1)

    async def confirm(self, rooms: list[str]) -> list[BaseException | None]:
        """Show the rooms' unshown ids once replicas are found to hold them (the tail
        watcher's, for ids left unshown: a send answered ``unavailable`` that replicated late
        and was never resent, or a failover that lost the note that they were shown), all
        together: one ``WAIT`` covers every write before it. Per room, None or why not.
        Stores that show every write at once have nothing to do."""
        return [None] * len(rooms)

    async def state_for_join(self, room: str) -> RoomState:
        """``state`` for a member that has already joined the room's group: possibly a
        moment old, never newer than the truth. Older only means the member fills the
        difference from history (the consumer's gap check), or is reset when the epoch it
        was given is already gone, so a backend may share one read among the joins that
        arrive together."""
        return await self.state(room)

    async def resume(self, room: str, since: int, limit: int) -> Replay:
        """``after`` for a member that has already joined the room's group (a reconnect with
        ``?since=``). A backend may read the resumes asked in one event-loop turn together,
        sharing one read among those of a room with the same ``since``: each is still read
        after its member joined, so nothing published before the join is missed."""
        return await self.after(room, since, limit)

    async def states(self, rooms: list[str]) -> list[RoomState | None]:
        """The state of several rooms, ``None`` for a room with none (nothing is created);
        backends batch it into one round trip."""
        return [await self.state(room) for room in rooms]

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise HistoryUnavailable unless the store would take an append now (Redis: it runs a
        script that writes)."""

    async def setup_warnings(self) -> list[str]:
        """What the operator should change in the store's setup, read once after ready
        (none for a store with nothing to set up)."""
        return []

    async def close(self) -> None:  # noqa: B027  (optional hook: memory has nothing to release)
        """Release connections."""
