"""History kept in process memory: the embedded single-process default."""

from __future__ import annotations

import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from app.history.base import Appended, History, Replay, RoomState, new_epoch
from app.protocol import FrameTemplate

# What the byte budget charges beyond the text itself, measured with tracemalloc on CPython
# 3.11: a room's dataclass, deque block and dict slots; an entry's tuple, int and deque slot;
# a dedupe entry's OrderedDict node, tuple, int and float. An entry is (id, frame, tag): its
# tag (app/history/lineage.py) is another int of 32 bytes and a tuple slot.
ROOM_COST = 2048
ENTRY_COST = 136
DEDUPE_COST = 200


@dataclass
class _Room:
    entries: deque[tuple[int, str, int | None]]  # (id, frame, tag)
    epoch: str = field(default_factory=new_epoch)
    base: int = 0
    seq: int = 0
    touched: float = 0.0
    dedupe: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)
    cost: int = ROOM_COST

    def state(self) -> RoomState:
        # The newest entry is never trimmed while the room is held, so it is ``seq``'s.
        tip = self.entries[-1][2] if self.entries else None
        return RoomState(epoch=self.epoch, base=self.base, last_id=self.seq, tip=tip)


def _entry_cost(frame: str) -> int:
    return sys.getsizeof(frame) + ENTRY_COST


def _dedupe_cost(key: str) -> int:
    return sys.getsizeof(key) + DEDUPE_COST


def _replay(entries: list[tuple[int, str, int | None]], missing: tuple[int, int] | None,
            state: RoomState, prev: int | None) -> Replay:
    """A replay of ``entries`` (oldest first), with their tags."""
    return Replay(frames=[(message_id, frame) for message_id, frame, _ in entries], missing=missing,
                  state=state, prev=prev, tag=entries[-1][2] if entries else None)


class MemoryHistory(History):
    """Ordered, bounded, expiring per-room logs in a dict. A room's ids start over (in a new
    epoch) with the process, when the room expired (idle longer than the TTL), and when it
    was dropped to keep within the byte budget.

    All rooms together are held to ``max_bytes``: past it, the least recently used rooms are
    dropped whole (their members get ``reset``, as after an expiry), rooms that never held a
    message first, and a single room larger than the budget loses its oldest dedupe keys,
    then its oldest messages.
    """

    def __init__(self, max_len: int, ttl: float, dedupe_ttl: float, max_bytes: int = 256 << 20) -> None:
        # Least recently used first: every read and write moves a room to the end.
        self._rooms: OrderedDict[str, _Room] = OrderedDict()
        # Rooms that never held a message, in the same order: dropped first. Every read makes
        # a room (its epoch must outlive the read), so reads of made-up rooms, which need no
        # token, used to push rooms with acked history out of the budget.
        self._empty: OrderedDict[str, None] = OrderedDict()
        self._max_len = max_len
        self._ttl = ttl
        self._dedupe_ttl = dedupe_ttl
        self._max_bytes = max_bytes
        self._bytes = 0
        self._next_sweep = 0.0

    @property
    def bytes_held(self) -> int:
        """The budgeted size of every room held, in bytes."""
        return self._bytes

    def _drop(self, room: str) -> None:
        self._bytes -= self._rooms.pop(room).cost
        self._empty.pop(room, None)

    def _room(self, room: str, now: float) -> _Room:
        state = self._rooms.get(room)
        if state is not None and now - state.touched <= self._ttl:
            self._rooms.move_to_end(room)
            if room in self._empty:
                self._empty.move_to_end(room)
            return state
        if state is not None:
            self._drop(room)
        state = self._rooms[room] = _Room(entries=deque(maxlen=self._max_len), touched=now)
        self._empty[room] = None
        self._bytes += state.cost
        self._enforce_budget(room)
        return state

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self._ttl, 60.0)
        for name in [n for n, s in self._rooms.items() if now - s.touched > self._ttl]:
            self._drop(name)

    def _charge(self, state: _Room, amount: int) -> None:
        state.cost += amount
        self._bytes += amount

    def _forget_oldest_dedupe(self, state: _Room) -> None:
        key, _ = state.dedupe.popitem(last=False)
        self._charge(state, -_dedupe_cost(key))

    def _victim(self, current: str) -> str | None:
        """The room the budget drops next: the least recently used one that never held a
        message (only its epoch is lost), else the least recently used; never ``current``
        (the most recent, so first in its order only when it is alone there)."""
        for rooms in (self._empty, self._rooms):
            oldest = next(iter(rooms), None)
            if oldest is not None and oldest != current:
                return oldest
        return None

    def _enforce_budget(self, current: str) -> None:
        while self._bytes > self._max_bytes and (victim := self._victim(current)) is not None:
            self._drop(victim)
        state = self._rooms[current]
        while self._bytes > self._max_bytes and state.dedupe:
            self._forget_oldest_dedupe(state)
        while self._bytes > self._max_bytes and len(state.entries) > 1:
            _, frame, _ = state.entries.popleft()
            self._charge(state, -_entry_cost(frame))

    async def append(self, room: str, template: FrameTemplate, dedupe: str | None) -> Appended:
        now = time.monotonic()
        self._sweep(now)
        state = self._room(room, now)
        state.touched = now
        while state.dedupe and next(iter(state.dedupe.values()))[1] <= now:
            self._forget_oldest_dedupe(state)
        if dedupe is not None and dedupe in state.dedupe:
            return Appended(id=state.dedupe[dedupe][0], frame=None, duplicate=True, state=state.state())
        # Memory cannot go back in time (a new process is a new epoch), but gives the same
        # tags as Redis so that members take one path whatever the backend.
        prev = state.entries[-1][2] if state.entries else None
        state.seq += 1
        frame = template.with_id(state.seq)
        if len(state.entries) == state.entries.maxlen:
            self._charge(state, -_entry_cost(state.entries[0][1]))
        state.entries.append((state.seq, frame, template.ts))
        self._empty.pop(room, None)
        self._charge(state, _entry_cost(frame))
        if dedupe is not None:
            state.dedupe[dedupe] = (state.seq, now + self._dedupe_ttl)
            self._charge(state, _dedupe_cost(dedupe))
        self._enforce_budget(room)
        return Appended(id=state.seq, frame=frame, state=state.state(), prev=prev)

    async def after(self, room: str, since: int, limit: int) -> Replay:
        state = self._room(room, time.monotonic())
        if not state.entries:
            last = state.seq
            return Replay(missing=(since + 1, last) if last > since else None, state=state.state())
        oldest = state.entries[0][0]
        missing = (since + 1, oldest - 1) if since + 1 < oldest else None
        start = max(since + 1 - oldest, 0)
        entries = [state.entries[i] for i in range(start, min(start + limit, len(state.entries)))]
        prev = state.entries[start - 1][2] if entries and start > 0 else None
        return _replay(entries, missing, state.state(), prev)

    async def latest(self, room: str, count: int) -> Replay:
        state = self._room(room, time.monotonic())
        entries = list(state.entries)[-count:] if count > 0 else []
        return _replay(entries, None, state.state(), None)

    async def state(self, room: str) -> RoomState:
        return self._room(room, time.monotonic()).state()

    async def states(self, rooms: list[str]) -> list[RoomState | None]:
        now = time.monotonic()
        found = [self._rooms.get(room) for room in rooms]
        return [s.state() if s is not None and now - s.touched <= self._ttl else None for s in found]

    async def restart(self, room: str, stale_epoch: str) -> RoomState:
        state = self._room(room, time.monotonic())
        if state.epoch == stale_epoch:
            state.epoch = new_epoch()
            state.base = state.entries[0][0] - 1 if state.entries else state.seq
            while state.dedupe:
                self._forget_oldest_dedupe(state)
        return state.state()

    async def ping(self) -> None:
        return None
