"""Background confirms: the rooms due go as one batch, one batch at a time, and a room that
fell short waits before it is asked again."""

from __future__ import annotations

import asyncio

import pytest

from app.chat.confirms import MAX_RETRY, Confirms
from app.history import HistoryUnavailable
from app.history.memory import MemoryHistory

pytestmark = pytest.mark.unit


class ShortOfReplicas(MemoryHistory):
    """Confirms that fall short (a master without a replica), recorded; held until let go."""

    def __init__(self) -> None:
        super().__init__(100, 3600, 600)
        self.batches: list[list[str]] = []
        self.let_go = asyncio.Event()

    async def confirm(self, rooms: list[str]) -> list[BaseException | None]:
        self.batches.append(rooms)
        await self.let_go.wait()
        return [HistoryUnavailable("on 0 of 1 replicas")] * len(rooms)


async def test_the_rooms_due_go_as_one_batch_one_batch_at_a_time() -> None:
    history = ShortOfReplicas()
    confirms = Confirms(history)
    for room in ("a", "a", "b"):
        confirms.request(room)
    confirms.start()
    confirms.request("a")  # in the batch in flight: not asked twice
    confirms.request("c")
    confirms.start()  # waits for the batch in flight
    await asyncio.sleep(0)  # the batch's task runs up to its confirm
    assert history.batches == [["a", "b"]]
    history.let_go.set()
    await confirms.idle()
    confirms.start()
    await confirms.idle()
    assert history.batches == [["a", "b"], ["c"]]
    await confirms.close()


async def test_a_room_that_fell_short_is_not_asked_again_at_once_unless_no_longer_watched() -> None:
    history = ShortOfReplicas()
    history.let_go.set()
    confirms = Confirms(history, first_retry=MAX_RETRY / 4)
    confirms.request("a")
    confirms.start()
    await confirms.idle()
    confirms.request("a")  # within its wait: not asked
    confirms.start()
    await confirms.idle()
    assert history.batches == [["a"]]
    confirms.keep(["b"])  # "a" is no longer watched: its wait is forgotten
    confirms.request("a")
    confirms.start()
    await confirms.idle()
    assert history.batches == [["a"], ["a"]]
    await confirms.close()
