"""Which rooms' members here may have missed presence announcements, and when to repair them.

Presence frames reach a process over pub/sub, which is at-most-once: what is published while
its subscription is down (a Redis restart, a network blip, a failover) never reaches its
members, whose member lists would stay wrong until the users concerned changed again. Chat
messages have ids without gaps to notice that by; presence versions are Redis's clock and
skip, so a process cannot tell from the versions it receives whether one went missing, and
the next frame to arrive would hide a hole from a highest-version mark.

What it can tell: every step that changes a room moves its version from ``previous`` to
``version``, a *link*, reported to the one process whose step it was and announced in that
process's next round for the room; every frame of the round carries the round's links. The
links a process received chain from the snapshot its first member of the room got to
the store's version only if no announcement was lost here. A lost one leaves a hole that no
later link closes. The store's version comes for free with the steps a process makes anyway
(joins, departures, heartbeats), and a chain still short of a version the store had
``settle`` seconds ago (longer than an announcement takes to arrive: a round held back, the
tick that sends it, transit) makes the room due for a repair: a fresh snapshot for its
members here, from which the chain starts again. A snapshot read before a frame newer than it
reached the members would take their lists back in time: it is not sent, and asked again.

Pure: no I/O and no clock of its own (callers pass ``now``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from app.presence.rules import Link, longest_round, tick_interval

# Beyond the longest a round holds a change and the tick that sends it: the step's answer, the
# publish and its delivery, and a busy event loop on either side.
TRANSIT = 1.0


def repair_after(grace: float) -> float:
    """Seconds an announced change may take to reach every process (``RepairWatch.settle``)."""
    return longest_round(grace) + tick_interval(grace) + TRANSIT


@dataclass
class _Room:
    start: int | None = None  # every link up to this version is here (None: no snapshot yet)
    ahead: dict[int, int] = field(default_factory=dict)  # previous -> version, past a hole
    parts: dict[Link, set[int]] = field(default_factory=dict)  # a round's frames seen, by its first link
    highest: int = -1  # the highest version a frame reaching the members here carried
    asked: bool = False  # a repair snapshot is being read


class RepairWatch:
    """The announcement chain of each room with members in this process, against the store's
    version; which rooms need their members sent a fresh snapshot."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._rooms: dict[str, _Room] = {}
        # Rooms whose chain is short of a version the store had: the oldest such version and
        # when it was seen; and the first newer one seen meanwhile, next in line once the
        # chain reaches the first (so a loss right after a frame in flight waits no longer).
        self._behind: dict[str, tuple[int, float]] = {}
        self._newer: dict[str, tuple[int, float]] = {}

    def watch(self, room: str) -> None:
        """``room`` has members here: its chain starts at the first snapshot one gets."""
        if room not in self._rooms:
            self._rooms[room] = _Room()

    def forget(self, room: str) -> None:
        """``room`` has no members here any more."""
        self._rooms.pop(room, None)
        self._behind.pop(room, None)
        self._newer.pop(room, None)

    def delivered(self, room: str, links: Iterable[Sequence[int]], part: int = 0, parts: int = 1) -> None:
        """A frame carrying its round's ``links`` reached the room's members here (frame
        ``part`` of the round's ``parts``: the links count once every frame has come)."""
        state = self._rooms.get(room)
        received = [(int(link[0]), int(link[1])) for link in links]
        if state is None or not received:
            return
        state.highest = max(state.highest, *(version for _, version in received))
        if state.start is not None and all(version <= state.start for _, version in received):
            return  # chained already (a frame published twice, or older than a snapshot)
        if parts > 1:
            seen = state.parts.setdefault(received[0], set())
            seen.add(part)
            if len(seen) < parts:
                return
            del state.parts[received[0]]
        for previous, version in received:
            if state.start is None or version > state.start:
                state.ahead[previous] = version
        self._advance(room, state)

    def baseline(self, room: str, version: int) -> None:
        """A member here was sent the room's snapshot at ``version``. The chain starts there
        if it has not started yet; otherwise the members before it still need every link."""
        state = self._rooms.get(room)
        if state is not None and state.start is None:
            self._restart(room, state, version)

    def stored(self, room: str, version: int, now: float) -> None:
        """A step found the room at ``version`` in the store at ``now``."""
        state = self._rooms.get(room)
        if state is None or (state.start is not None and version <= state.start):
            return
        behind = self._behind.get(room)
        if behind is None:
            self._behind[room] = (version, now)
        elif version > behind[0] and room not in self._newer:
            self._newer[room] = (version, now)

    def due(self, now: float) -> list[str]:
        """Rooms to repair now: their chain still short of a version the store had ``settle``
        seconds ago. Each is returned once until ``repaired`` or ``failed``."""
        out = []
        for room, (_, since) in self._behind.items():
            state = self._rooms[room]
            if not state.asked and now - since >= self.settle:
                state.asked = True
                out.append(room)
        return out

    def repaired(self, room: str, version: int) -> bool:
        """A repair snapshot read at ``version``: True when it may be sent, and the chain
        starts again from it. False when a frame newer than it has reached the members here
        (it would take their lists back): the room is due again at once."""
        state = self._rooms.get(room)
        if state is None:
            return False
        state.asked = False
        if state.highest > version:
            return False
        self._restart(room, state, version)
        return True

    def newer_reached(self, room: str, version: int) -> bool:
        """Whether a frame newer than ``version`` reached the room's members here (a snapshot
        read at ``version`` would take their lists back)."""
        state = self._rooms.get(room)
        return state is None or state.highest > version

    def failed(self, room: str) -> None:
        """The repair snapshot could not be read: the room is due again at once."""
        state = self._rooms.get(room)
        if state is not None:
            state.asked = False

    def _restart(self, room: str, state: _Room, version: int) -> None:
        state.start = version
        state.ahead = {previous: after for previous, after in state.ahead.items() if previous >= version}
        state.parts = {first: seen for first, seen in state.parts.items() if first[1] > version}
        self._advance(room, state)

    def _advance(self, room: str, state: _Room) -> None:
        if state.start is None:
            return
        following = state.ahead.pop(state.start, None)
        while following is not None:
            state.start = following
            following = state.ahead.pop(state.start, None)
        behind = self._behind.get(room)
        if behind is not None and state.start >= behind[0]:
            newer = self._newer.pop(room, None)
            if newer is not None and newer[0] > state.start:
                self._behind[room] = newer
            else:
                del self._behind[room]
