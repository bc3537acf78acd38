"""Each room's ``members`` JSON, extended rather than rebuilt while the room only grows.

In a join storm every batch sends its joiners a snapshot of up to 100 names, and between two
batches a room of fewer than 100 usually only gained the names at the end of its list (stores
list members in arrival order). Encoding 100 names is ~10 µs; appending the new ones is a
slice and a join. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from app.protocol import members_json


class MemberLists:
    """The last ``members`` JSON built per room, reused when the next list starts with it."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._rooms: dict[str, tuple[list[str], str, float]] = {}  # room -> names, JSON, used at

    def json(self, room: str, names: list[str], now: float) -> str:
        """``members_json(names)``, built from the room's last list when that is a prefix."""
        last = self._rooms.get(room)
        if last is not None and len(names) >= len(last[0]) and names[: len(last[0])] == last[0]:
            known, listed, _ = last
            if len(names) > len(known):
                tail = members_json(names[len(known):])
                listed = tail if not known else listed[:-1] + "," + tail[1:]
        else:
            listed = members_json(names)
        self._rooms[room] = (names, listed, now)
        return listed

    def sweep(self, now: float) -> None:
        """Forget rooms whose list was not asked for within ``max_age``."""
        stale = [room for room, (_, _, used) in self._rooms.items() if now - used >= self.max_age]
        for room in stale:
            del self._rooms[room]
