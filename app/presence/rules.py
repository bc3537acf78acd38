"""Presence rules, pure: who is in a room, when someone counts as gone, what gets announced.

No I/O and no clock of its own: callers pass ``now``. ``Roster`` is the rule every store
follows (the Redis store runs the same steps in one Lua script); ``LocalUsers`` is what one
process holds; ``Coalescer`` decides whether a change goes out at once or in a room's diff.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

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


def stall_window(grace: float, timeout: float) -> tuple[float, float] | None:
    """The gaps between a room's steps (seconds, lowest and highest) that are taken for a store
    stall that no process saw fail, or None when no such stall can lapse a hold.

    A stall longer than the clients' socket ``timeout`` fails their commands, and each process
    then forgives what lapsed meanwhile itself: an unseen stall is shorter, and lapses a hold
    (the grace and a heartbeat, renewed each heartbeat) only at a grace under ``timeout``.
    Every live process holding users in a room steps it each heartbeat, so such a stall shows
    as a gap of up to ``timeout`` and a heartbeat. The lowest: two heartbeats, and a second more
    than one (a heartbeat runs late on a busy loop), but never above the grace (a stall that
    lapses a hold is at least that long). A longer gap is a room nobody steps, its holders
    dead: no stall, and nothing to spare."""
    if grace >= timeout:
        return None
    interval = heartbeat_interval(grace)
    return min(max(2 * interval, interval + 1.0), grace), timeout + interval


def tick_interval(grace: float) -> float:
    """How often a process looks for departures due and diffs to send."""
    return min(COALESCE_INTERVAL, heartbeat_interval(grace))


def longest_round(grace: float) -> float:
    """The longest a room's announcement rounds are ever spaced: half the grace (a join held
    back longer could reach clients after the same user's leave, announced at once by another
    process), and never below the interval."""
    return max(COALESCE_INTERVAL, grace / 2)


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
        return list(islice(self.members, limit))

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

    def holds(self, room: str) -> bool:
        """Does any user have a socket in ``room`` here?"""
        return room in self._rooms

    def users(self, room: str) -> list[str]:
        return list(self._rooms.get(room, ()))

    def may_type(self, room: str, user: str, now: float, interval: float = TYPING_INTERVAL) -> bool:
        """True (and noted) when ``user``'s last relayed typing notice is ``interval`` old."""
        entry = self._rooms.get(room, {}).get(user)
        if entry is None or now - entry[1] < interval:
            return False
        entry[1] = now
        return True


# One step that changed a room: its version before and after (app/presence/repair.py).
Link = tuple[int, int]


@dataclass
class Announcement:
    """A change to announce: ``kind`` is "join", "leave" or "diff" (several users).

    ``links`` are the steps the round covers; every frame of a round carries them, as frame
    ``part`` of ``parts``, so a process that misses any one of them can tell."""

    kind: str
    count: int
    version: int
    user: str = ""
    joined: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    # user -> the version of the step that made that user's change (``version`` is the
    # round's newest, which ``count`` is of): what clients compare a user's changes by.
    changed: dict[str, int] = field(default_factory=dict)
    # The room went from more than MEMBERS_MAX to at most that: its members were shown "any
    # 100", and no change names the rest, so each process sends its members the whole list.
    relist: bool = False
    links: tuple[Link, ...] = ()
    part: int = 0
    parts: int = 1


@dataclass
class _Diff:
    joined: dict[str, int] = field(default_factory=dict)  # user -> its step's version
    left: dict[str, int] = field(default_factory=dict)
    count: int = 0
    version: int = 0
    due: float = 0.0
    links: list[Link] = field(default_factory=list)
    before: int = 0  # the room's count before the round's first step


# At most this many changes go out as separate join/leave frames; more make one diff.
SINGLE_MAX = 3
# Announcement rounds are spaced so that each process sends about this many presence frames a
# second at most, over all its rooms together: a round costs a frame per member of its room,
# so rounds come further apart as the rooms announcing at once hold more members (2 rounds a
# second per room up to 1,000 members in all). Per room, 50 rooms of 100 each got 2 rounds a
# second: 10,000 frames a second during a join burst, more than the messages themselves.
DELIVERIES_PER_SECOND = 2000


def round_interval(members: int, interval: float = COALESCE_INTERVAL, longest: float = math.inf) -> float:
    """Seconds between two announcement rounds to a room, when the rooms announcing in this
    process hold ``members`` members together; never more than ``longest``."""
    return min(max(interval, members / DELIVERIES_PER_SECOND), longest)


class Coalescer:
    """At most one announcement round per room per interval, further apart when the rooms
    announcing hold more than 1,000 members together (so a process's presence frames stay near
    DELIVERIES_PER_SECOND). A round in a small room with a few changes is separate
    ``join``/``leave`` frames; otherwise one diff naming everyone who came and went since the
    last round. A quiet room's first change goes out at once."""

    def __init__(self, big_room: int = BIG_ROOM, interval: float = COALESCE_INTERVAL,
                 longest: float = math.inf) -> None:
        self.big_room = big_room
        self.interval = interval
        # A join held back longer than the grace could reach clients after the same user's
        # leave, announced at once by another process: rounds stay within half the grace.
        self.longest = max(interval, longest)
        self._pending: dict[str, _Diff] = {}
        self._next: dict[str, float] = {}  # room -> earliest time of its next round
        # Rooms announcing (a round pending or spaced) -> their member count, and the sum.
        self._counts: dict[str, int] = {}
        self._members = 0

    def add(self, room: str, outcome: Outcome, version: int, now: float,
            link: Link | None = None) -> list[Announcement]:
        """Announcements to make now for ``outcome`` (the step ``link`` made); the rest waits
        for the room's next round."""
        if not outcome.joined and not outcome.left:
            return []
        diff = self._pending.get(room)
        if diff is None:
            before = outcome.count - len(outcome.joined) + len(outcome.left)
            diff = self._pending[room] = _Diff(due=self._next.get(room, now), before=before)
        if link is not None:
            diff.links.append(link)
        for user in outcome.joined:
            if diff.left.pop(user, None) is not None:
                continue  # left and back within one round: no change to announce
            diff.joined[user] = version
        for user in outcome.left:
            if diff.joined.pop(user, None) is not None:
                continue
            diff.left[user] = version
        if version >= diff.version:
            diff.count, diff.version = outcome.count, version
            self._members += diff.count - self._counts.get(room, 0)
            self._counts[room] = diff.count
        if diff.due <= now:
            return self._round(room, now)
        return []

    def due(self, now: float) -> list[tuple[str, Announcement]]:
        """The rounds whose time has come."""
        out = []
        for room in [room for room, diff in self._pending.items() if diff.due <= now]:
            out += [(room, announcement) for announcement in self._round(room, now)]
        stale = [r for r, at in self._next.items() if at <= now and r not in self._pending]
        for room in stale:
            del self._next[room]
            self._members -= self._counts.pop(room, 0)
        return out

    def _round(self, room: str, now: float) -> list[Announcement]:
        diff = self._pending.pop(room)
        self._next[room] = now + round_interval(self._members, self.interval, self.longest)
        changes = len(diff.joined) + len(diff.left)
        links = tuple(diff.links)
        relist = diff.before > MEMBERS_MAX >= diff.count
        # Each user's change keeps its own step's version: stamped with the round's newest, a
        # leave stepped here before the user came back through another process (announced
        # there at once) read as newer than that return, and clients dropped a present user.
        if 0 < changes <= SINGLE_MAX and diff.count <= self.big_room:
            out = [Announcement("join", diff.count, diff.version, user=u, changed={u: v})
                   for u, v in diff.joined.items()] + [
                Announcement("leave", diff.count, diff.version, user=u, changed={u: v})
                for u, v in diff.left.items()
            ]
            for part, announcement in enumerate(out):
                announcement.links, announcement.part, announcement.parts = links, part, len(out)
                announcement.relist = relist
            return out
        # A round whose changes cancelled out (everyone who came also went) is a diff naming
        # nobody: its steps moved the room's version, and silence would look lost elsewhere.
        joined, left = list(diff.joined)[:MEMBERS_MAX], list(diff.left)[:MEMBERS_MAX]
        changed = {u: diff.joined[u] for u in joined} | {u: diff.left[u] for u in left}
        return [Announcement("diff", diff.count, diff.version, links=links,
                             joined=joined, left=left, changed=changed, relist=relist)]


@dataclass(frozen=True)
class Seen:
    """A room's membership as seen after a step: its version, every name, and its birth (the
    store's mark of the room's current keys: a room made again is another room)."""

    version: int
    names: tuple[str, ...]
    born: str


class KnownRosters:
    """The whole membership of small rooms (at most ``limit``) as this process last saw it.

    A store that is told the version, count and birth a caller last saw can answer
    "unchanged since" instead of sending names: the names after the step are then those seen,
    less who left, plus who joined in that step. Entries unused for ``max_age`` are dropped
    (the process left the room, or only others change it now).
    """

    def __init__(self, limit: int = MEMBERS_MAX, max_age: float = 60.0) -> None:
        self.limit = limit
        self.max_age = max_age
        self._rooms: dict[str, tuple[Seen, float]] = {}  # room -> what was seen, when last used
        self._swept = 0.0

    def base(self, room: str, now: float) -> Seen | None:
        """``room`` as last seen, if known."""
        if now - self._swept >= self.max_age:
            self._swept = now
            for stale in [r for r, (_, used) in self._rooms.items() if now - used >= self.max_age]:
                del self._rooms[stale]
        entry = self._rooms.get(room)
        return None if entry is None else entry[0]

    def settle(self, room: str, base: Seen | None, unchanged: bool, after: Seen, count: int,
               joined: list[str], left: list[str], sampled: list[str] | None, now: float) -> list[str] | None:
        """The room's names after a step made from ``base`` (``after`` gives its version and
        birth): worked out when the store found the room ``unchanged`` since ``base``, else
        ``sampled`` (None when neither); remembered when they are the whole room."""
        listed: list[str] | None
        if unchanged and base is not None:
            names = dict.fromkeys(base.names)
            for user in left:
                names.pop(user, None)
            names.update(dict.fromkeys(joined))
            listed = list(names)
        else:
            listed = sampled
        current = self._rooms.get(room)
        if current is not None and current[0].born == after.born and current[0].version > after.version:
            return listed  # a later step has already told us more
        if listed is not None and after.born and len(listed) == count <= self.limit:
            self._rooms[room] = (Seen(after.version, tuple(listed), after.born), now)
        else:
            self._rooms.pop(room, None)
        return listed
