"""Presence rules, pure: who is in a room, when someone counts as gone, what gets announced.

No I/O and no clock of its own: callers pass ``now``. ``Roster`` is the rule every store
follows (the Redis store runs the same steps in one Lua script); ``LocalUsers`` is what one
process holds; ``Coalescer`` decides whether a change goes out at once or in a room's diff.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# Names in a ``presence`` snapshot and in each list of a ``presence_diff``; ``count`` is exact.
MEMBERS_MAX = 100
# Above this many members a room's joins and leaves go out as one diff per interval.
BIG_ROOM = 100
COALESCE_INTERVAL = 0.5
# A user's typing notices are relayed at most once per this many seconds.
TYPING_INTERVAL = 2.0


def heartbeat_interval(grace: float) -> float:
    """How often a process refreshes its members' deadlines: a third of the grace (so a
    late refresh still lands well inside it), between 50 ms and 5 s."""
    return min(max(grace / 3, 0.05), 5.0)


def tick_interval(grace: float) -> float:
    """How often a process looks for departures due and diffs to send."""
    return min(COALESCE_INTERVAL, heartbeat_interval(grace))


@dataclass
class Outcome:
    """What one step did to a room: who arrived, who is gone, and the room after it."""

    joined: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    count: int = 0


class Roster:
    """One room's members. A held user stays; a released one is gone once its deadline
    passes, unless held again before that (then nothing is announced at all)."""

    def __init__(self) -> None:
        self.members: dict[str, None] = {}  # insertion-ordered set
        self.leaving: dict[str, float] = {}  # released users -> deadline
        self.version = 0

    def step(self, now: float, hold: Iterable[str], release: Iterable[str], until: float) -> Outcome:
        """Expire what is due, then hold ``hold`` and release ``release`` (deadline ``until``).

        A user who expires and is held again in the same step never left: neither is announced.
        """
        expired = {user for user, deadline in self.leaving.items() if deadline <= now}
        for user in expired:
            del self.leaving[user]
            del self.members[user]
        outcome = Outcome()
        for user in hold:
            self.leaving.pop(user, None)
            if user not in self.members:
                self.members[user] = None
                if user in expired:
                    expired.discard(user)
                else:
                    outcome.joined.append(user)
        for user in release:
            if user in self.members:
                self.leaving[user] = until
        outcome.left = [user for user in expired]
        outcome.count = len(self.members)
        if outcome.joined or outcome.left:
            self.version += 1
        return outcome

    def sample(self, limit: int = MEMBERS_MAX) -> list[str]:
        """Up to ``limit`` member names."""
        names: list[str] = []
        for user in self.members:
            if len(names) >= limit:
                break
            names.append(user)
        return names

    def next_deadline(self) -> float | None:
        return min(self.leaving.values(), default=None)


class LocalUsers:
    """The users with sockets in this process, per room: a user on three sockets is one user."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, list[float]]] = {}  # room -> user -> [sockets, typed at]

    def attach(self, room: str, user: str) -> bool:
        """One more socket of ``user`` in ``room``; True when it is the user's first here."""
        users = self._rooms.setdefault(room, {})
        entry = users.get(user)
        if entry is None:
            users[user] = [1, float("-inf")]
            return True
        entry[0] += 1
        return False

    def detach(self, room: str, user: str) -> bool:
        """One socket fewer; True when it was the user's last here."""
        users = self._rooms.get(room)
        entry = users.get(user) if users is not None else None
        if users is None or entry is None:
            return False
        entry[0] -= 1
        if entry[0] > 0:
            return False
        del users[user]
        if not users:
            del self._rooms[room]
        return True

    def rooms(self) -> list[str]:
        return list(self._rooms)

    def users(self, room: str) -> list[str]:
        return list(self._rooms.get(room, ()))

    def may_type(self, room: str, user: str, now: float, interval: float = TYPING_INTERVAL) -> bool:
        """True (and noted) when ``user``'s last relayed typing notice is ``interval`` old."""
        entry = self._rooms.get(room, {}).get(user)
        if entry is None or now - entry[1] < interval:
            return False
        entry[1] = now
        return True


@dataclass
class Announcement:
    """A change to announce: ``kind`` is "join", "leave" or "diff" (several users)."""

    kind: str
    count: int
    version: int
    user: str = ""
    joined: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


@dataclass
class _Diff:
    joined: dict[str, None] = field(default_factory=dict)
    left: dict[str, None] = field(default_factory=dict)
    count: int = 0
    version: int = 0
    due: float = 0.0


class Coalescer:
    """Small rooms hear each join and leave at once; a big room (or one with a diff already
    waiting) hears one diff per ``interval``, carrying everyone who came and went meanwhile."""

    def __init__(self, big_room: int = BIG_ROOM, interval: float = COALESCE_INTERVAL) -> None:
        self.big_room = big_room
        self.interval = interval
        self._pending: dict[str, _Diff] = {}
        self._sent: dict[str, float] = {}  # room -> when its last diff went out

    def add(self, room: str, outcome: Outcome, version: int, now: float) -> list[Announcement]:
        """Announcements to make now for ``outcome``; the rest waits in the room's diff."""
        if not outcome.joined and not outcome.left:
            return []
        if outcome.count <= self.big_room and room not in self._pending:
            return [Announcement("join", outcome.count, version, user=u) for u in outcome.joined] + [
                Announcement("leave", outcome.count, version, user=u) for u in outcome.left
            ]
        diff = self._pending.get(room)
        if diff is None:
            sent = self._sent.get(room)
            due = now if sent is None else max(now, sent + self.interval)
            diff = self._pending[room] = _Diff(due=due)
        for user in outcome.joined:
            if diff.left.pop(user, 0) is None:
                continue  # left and back within one diff: no change to announce
            diff.joined[user] = None
        for user in outcome.left:
            if diff.joined.pop(user, 0) is None:
                continue
            diff.left[user] = None
        if version >= diff.version:
            diff.count, diff.version = outcome.count, version
        return []

    def due(self, now: float) -> list[tuple[str, Announcement]]:
        """The diffs whose time has come, each at most ``MEMBERS_MAX`` names per list."""
        ready = [room for room, diff in self._pending.items() if diff.due <= now]
        out = []
        for room in ready:
            diff = self._pending.pop(room)
            self._sent[room] = now
            if not diff.joined and not diff.left:
                continue  # everyone who came also went: nothing changed
            out.append((room, Announcement("diff", diff.count, diff.version,
                                           joined=list(diff.joined)[:MEMBERS_MAX],
                                           left=list(diff.left)[:MEMBERS_MAX])))
        stale = [r for r, sent in self._sent.items() if now - sent > self.interval and r not in self._pending]
        for room in stale:
            del self._sent[room]
        return out
