"""The sequencer's rules: messages of a group handed on in number order, an early one held
until its turn or for ``hold`` at most (no sockets: releases are recorded)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.layers import sequencer as sequencer_module
from app.layers.sequencer import Sequencer

pytestmark = pytest.mark.unit

LONG = 60.0  # a hold no test waits out


def position(message: dict[str, Any]) -> tuple[str, int] | None:
    if "n" not in message:
        return None
    return message.get("era", "e1"), message["n"]


class Recorder:
    """The release hook: (group, number or name) per message, and an event per release."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []
        self.released = asyncio.Event()

    def __call__(self, group: str, message: dict[str, Any]) -> None:
        self.got.append((group, message.get("n", message.get("name"))))
        self.released.set()


def msg(n: int, era: str = "e1") -> dict[str, Any]:
    return {"type": "chat.message", "n": n, "era": era}


def recorded(hold: float = LONG) -> tuple[Recorder, Sequencer]:
    out = Recorder()
    return out, Sequencer(position, hold, out)


async def test_messages_in_order_pass_at_once() -> None:
    out, order = recorded()
    for n in (4, 5, 6):
        order.offer("room", msg(n))
    assert out.got == [("room", 4), ("room", 5), ("room", 6)]
    assert not order.lines["room"].held


async def test_an_early_message_waits_for_the_one_before_it() -> None:
    out, order = recorded()
    order.offer("room", msg(1))
    order.offer("room", msg(3))
    order.offer("room", msg(4))
    assert out.got == [("room", 1)]
    order.offer("room", msg(2))
    assert out.got == [("room", n) for n in (1, 2, 3, 4)]
    assert order.lines["room"].timer is None  # nothing left to wait for


async def test_groups_wait_apart() -> None:
    out, order = recorded()
    order.offer("a", msg(1))
    order.offer("b", msg(7))
    order.offer("a", msg(3))
    order.offer("b", msg(8))
    assert out.got == [("a", 1), ("b", 7), ("b", 8)]
    order.offer("a", msg(2))
    assert out.got[3:] == [("a", 2), ("a", 3)]


async def test_a_hole_that_does_not_fill_is_given_up_after_the_hold() -> None:
    out, order = recorded(0.01)
    order.offer("room", msg(1))
    order.offer("room", msg(4))
    order.offer("room", msg(3))
    out.released.clear()
    await asyncio.wait_for(out.released.wait(), 5)
    # Both in order once the wait ends; the members fill 2 from history.
    assert out.got == [("room", 1), ("room", 3), ("room", 4)]
    order.offer("room", msg(2))  # late: handed on at once, the members drop it as sent
    order.offer("room", msg(5))  # the line goes on after what it let go
    assert out.got[3:] == [("room", 2), ("room", 5)]


async def test_messages_without_a_position_never_wait() -> None:
    out, order = recorded()
    order.offer("room", msg(1))
    order.offer("room", msg(3))
    order.offer("room", {"type": "presence.event", "name": "join"})
    assert out.got == [("room", 1), ("room", "join")]


async def test_duplicates_and_numbers_already_held_pass_at_once() -> None:
    out, order = recorded()
    order.offer("room", msg(5))
    order.offer("room", msg(5))  # published twice: the members' id check drops it
    order.offer("room", msg(7))
    order.offer("room", {**msg(7), "other": True})  # another message under a held id
    assert out.got == [("room", 5), ("room", 5), ("room", 7)]
    order.offer("room", msg(6))
    assert out.got[3:] == [("room", 6), ("room", 7)]


async def test_a_new_era_lets_the_held_ones_go_first_and_starts_over() -> None:
    out, order = recorded()
    order.offer("room", msg(10))
    order.offer("room", msg(13))
    order.offer("room", msg(12))
    order.offer("room", msg(1, era="e2"))  # the room's ids started over
    assert out.got == [("room", n) for n in (10, 12, 13, 1)]
    order.offer("room", msg(2, era="e2"))
    assert out.got[-1] == ("room", 2)
    assert order.lines["room"].era == "e2" and order.lines["room"].timer is None


async def test_a_forgotten_group_starts_a_new_line() -> None:
    out, order = recorded()
    order.offer("room", msg(1))
    order.offer("room", msg(3))
    timer = order.lines["room"].timer
    assert timer is not None
    order.forget("room")  # its last member here left: nobody is owed the held one
    assert timer.cancelled() and "room" not in order.lines
    order.offer("room", msg(9))  # joined again later: no wait for what it was not subscribed to
    assert out.got == [("room", 1), ("room", 9)]


async def test_the_held_messages_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequencer_module, "MAX_HELD", 3)
    out, order = recorded()
    order.offer("room", msg(1))
    for n in (3, 4, 5):
        order.offer("room", msg(n))
    assert out.got == [("room", n) for n in (1, 3, 4, 5)]  # the third held one let them all go
    order.offer("room", msg(6))
    assert out.got[-1] == ("room", 6) and order.lines["room"].timer is None
