"""History kept in process memory: the embedded single-process default."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from app.history.base import Appended, History, Replay
from app.protocol import FrameTemplate


@dataclass
class _Room:
    entries: deque[tuple[int, str]]
    seq: int = 0
    touched: float = 0.0
    dedupe: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)


class MemoryHistory(History):
    """Ordered, bounded, expiring per-room logs in a dict; ids restart with the process."""

    def __init__(self, max_len: int, ttl: float, dedupe_ttl: float) -> None:
        self._rooms: dict[str, _Room] = {}
        self._max_len = max_len
        self._ttl = ttl
        self._dedupe_ttl = dedupe_ttl
        self._next_sweep = 0.0

    def _room(self, room: str, now: float) -> _Room:
        state = self._rooms.get(room)
        if state is None or now - state.touched > self._ttl:
            state = _Room(entries=deque(maxlen=self._max_len), seq=state.seq if state else 0)
            self._rooms[room] = state
        return state

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self._ttl, 60.0)
        for name in [n for n, s in self._rooms.items() if now - s.touched > self._ttl]:
            del self._rooms[name]

    async def append(self, room: str, template: FrameTemplate, client_id: str | None) -> Appended:
        now = time.monotonic()
        self._sweep(now)
        state = self._room(room, now)
        state.touched = now
        while state.dedupe and next(iter(state.dedupe.values()))[1] <= now:
            state.dedupe.popitem(last=False)
        if client_id is not None and client_id in state.dedupe:
            return Appended(id=state.dedupe[client_id][0], frame=None, duplicate=True)
        state.seq += 1
        frame = template.with_id(state.seq)
        state.entries.append((state.seq, frame))
        if client_id is not None:
            state.dedupe[client_id] = (state.seq, now + self._dedupe_ttl)
        return Appended(id=state.seq, frame=frame)

    async def after(self, room: str, since: int, limit: int) -> Replay:
        state = self._rooms.get(room)
        if state is None or not state.entries:
            last = state.seq if state else 0
            return Replay(missing=(since + 1, last) if last > since else None)
        oldest = state.entries[0][0]
        missing = (since + 1, oldest - 1) if since + 1 < oldest else None
        start = max(since + 1 - oldest, 0)
        frames = [state.entries[i] for i in range(start, min(start + limit, len(state.entries)))]
        return Replay(frames=frames, missing=missing)

    async def latest(self, room: str, count: int) -> list[tuple[int, str]]:
        state = self._rooms.get(room)
        if state is None or count <= 0:
            return []
        return list(state.entries)[-count:]

    async def last_id(self, room: str) -> int:
        state = self._rooms.get(room)
        return state.seq if state else 0

    async def ping(self) -> None:
        return None
