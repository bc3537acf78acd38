"""History kept in process memory: the embedded single-process default."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from app.history.base import Appended, History, Replay, RoomState, new_epoch
from app.protocol import FrameTemplate


@dataclass
class _Room:
    entries: deque[tuple[int, str]]
    epoch: str = field(default_factory=new_epoch)
    base: int = 0
    seq: int = 0
    touched: float = 0.0
    dedupe: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)

    def state(self) -> RoomState:
        return RoomState(epoch=self.epoch, base=self.base, last_id=self.seq)


class MemoryHistory(History):
    """Ordered, bounded, expiring per-room logs in a dict. A room's ids start over (in a new
    epoch) with the process, and when the room expired (idle longer than the TTL)."""

    def __init__(self, max_len: int, ttl: float, dedupe_ttl: float) -> None:
        self._rooms: dict[str, _Room] = {}
        self._max_len = max_len
        self._ttl = ttl
        self._dedupe_ttl = dedupe_ttl
        self._next_sweep = 0.0

    def _room(self, room: str, now: float) -> _Room:
        state = self._rooms.get(room)
        if state is None or now - state.touched > self._ttl:
            state = _Room(entries=deque(maxlen=self._max_len), touched=now)
            self._rooms[room] = state
        return state

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self._ttl, 60.0)
        for name in [n for n, s in self._rooms.items() if now - s.touched > self._ttl]:
            del self._rooms[name]

    async def append(self, room: str, template: FrameTemplate, dedupe: str | None) -> Appended:
        now = time.monotonic()
        self._sweep(now)
        state = self._room(room, now)
        state.touched = now
        while state.dedupe and next(iter(state.dedupe.values()))[1] <= now:
            state.dedupe.popitem(last=False)
        if dedupe is not None and dedupe in state.dedupe:
            return Appended(id=state.dedupe[dedupe][0], frame=None, duplicate=True, state=state.state())
        state.seq += 1
        frame = template.with_id(state.seq)
        state.entries.append((state.seq, frame))
        if dedupe is not None:
            state.dedupe[dedupe] = (state.seq, now + self._dedupe_ttl)
        return Appended(id=state.seq, frame=frame, state=state.state())

    async def after(self, room: str, since: int, limit: int) -> Replay:
        state = self._room(room, time.monotonic())
        if not state.entries:
            last = state.seq
            return Replay(missing=(since + 1, last) if last > since else None, state=state.state())
        oldest = state.entries[0][0]
        missing = (since + 1, oldest - 1) if since + 1 < oldest else None
        start = max(since + 1 - oldest, 0)
        frames = [state.entries[i] for i in range(start, min(start + limit, len(state.entries)))]
        return Replay(frames=frames, missing=missing, state=state.state())

    async def latest(self, room: str, count: int) -> Replay:
        state = self._room(room, time.monotonic())
        frames = list(state.entries)[-count:] if count > 0 else []
        return Replay(frames=frames, state=state.state())

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
            state.dedupe.clear()
        return state.state()

    async def ping(self) -> None:
        return None
