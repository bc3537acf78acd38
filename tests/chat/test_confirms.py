"""Background confirms: one per room in flight, and a room that fell short waits to retry."""

from __future__ import annotations

import asyncio

import pytest

from app.chat.confirms import MAX_RETRY, Confirms
from app.history import HistoryUnavailable, RoomState
from app.history.memory import MemoryHistory

pytestmark = pytest.mark.unit

STATE = RoomState(epoch="e", base=0, last_id=1, unshown=1)


class ShortOfReplicas(MemoryHistory):
    """Confirms that fall short (a master without a replica), counted; held until let go."""

    def __init__(self) -> None:
        super().__init__(100, 3600, 600)
        self.asked: list[str] = []
        self.let_go = asyncio.Event()

    async def confirm(self, room: str, state: RoomState) -> RoomState:
        self.asked.append(room)
        await self.let_go.wait()
        raise HistoryUnavailable("on 0 of 1 replicas")


async def test_one_confirm_per_room_at_a_time() -> None:
    history = ShortOfReplicas()
    confirms = Confirms(history)
    for room in ("a", "a", "b"):
        confirms.request(room, STATE)
    await asyncio.sleep(0)  # let the tasks start
    assert sorted(history.asked) == ["a", "b"]
    await confirms.close()


async def test_a_room_that_fell_short_is_not_asked_again_at_once_unless_no_longer_watched() -> None:
    history = ShortOfReplicas()
    history.let_go.set()
    confirms = Confirms(history, first_retry=MAX_RETRY / 4)
    confirms.request("a", STATE)
    await confirms.idle()
    confirms.request("a", STATE)  # within its wait: not asked
    await confirms.idle()
    assert history.asked == ["a"]
    confirms.keep(["b"])  # "a" is no longer watched: its wait is forgotten
    confirms.request("a", STATE)
    await confirms.idle()
    assert history.asked == ["a", "a"]
    await confirms.close()
