"""The tail watcher, with the real in-memory channel layer and history."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from app.chat.registry import Registry
from app.chat.tail import TailWatcher
from app.history import RoomState
from app.history.memory import MemoryHistory
from app.protocol import message_template

pytestmark = pytest.mark.unit


@dataclass(eq=False)
class Member:
    room: str
    last_id: int = 0
    busy: bool = False
    last_ts: int | None = None
    epoch: str = ""
    nudges: list[int] = field(default_factory=list)

    def idle(self) -> bool:
        return not self.busy

    async def nudge(self, state: RoomState) -> None:
        self.nudges.append(state.last_id)

    async def close_for_restart(self, code: int, reason: str) -> None:
        return None


async def setup() -> tuple[Registry, MemoryHistory, TailWatcher]:
    registry, history = Registry(), MemoryHistory(100, 3600, 600)
    return registry, history, TailWatcher(registry, history, interval=1)


async def test_an_idle_member_behind_a_message_held_for_a_tick_is_nudged() -> None:
    registry, history, watcher = await setup()
    member = Member("r", epoch=(await history.state("r")).epoch)
    registry.add(member)
    await history.append("r", message_template("r", "lost", 0, "u"), None)
    assert await watcher.tick() == 0  # first sight of id 1: it may still be in flight
    assert await watcher.tick() == 1  # a tick later the member still lacks it
    assert member.nudges == [1]


async def test_members_that_kept_up_or_are_still_receiving_are_left_alone() -> None:
    registry, history, watcher = await setup()
    epoch = (await history.state("r")).epoch
    kept_up, receiving = Member("r", epoch=epoch), Member("r", busy=True, epoch=epoch)
    registry.add(kept_up)
    registry.add(receiving)
    await history.append("r", message_template("r", "seen", 0, "u"), None)
    await watcher.tick()
    kept_up.last_id = 1
    assert await watcher.tick() == 0
    assert kept_up.nudges == receiving.nudges == []


def test_registry_groups_members_by_room() -> None:
    registry = Registry()
    a, b, c = Member("x", 5), Member("x", 3), Member("y", 9)
    for member in (a, b, c, a):
        registry.add(member)
    assert len(registry) == 3
    assert {room: len(registry.members(room)) for room in registry.rooms()} == {"x": 2, "y": 1}
    assert registry.discard_if_present(b) and not registry.discard_if_present(b)
    assert registry.members("x") == [a]
    assert registry.discard_if_present(c) and registry.rooms() == ["x"] and registry.members("y") == []


async def test_a_member_in_another_epoch_is_nudged_with_the_rooms_state() -> None:
    registry, history, watcher = await setup()
    member = Member("r", epoch="gone", last_id=7)
    registry.add(member)
    assert await watcher.tick() == 1
    assert member.nudges == [0]


async def test_a_member_ahead_of_its_room_gets_the_room_a_new_epoch() -> None:
    """Ids the member saw are ones the store lost (a failover): they will be given again."""
    registry, history, watcher = await setup()
    await history.append("r", message_template("r", "kept", 0, "u"), None)
    epoch = (await history.state("r")).epoch
    member = Member("r", epoch=epoch, last_id=5)
    registry.add(member)
    assert await watcher.tick() == 1
    assert (await history.state("r")).epoch != epoch


async def test_members_level_with_the_room_are_nudged_when_its_epoch_changes() -> None:
    registry, history, watcher = await setup()
    epoch = (await history.state("r")).epoch
    await history.append("r", message_template("r", "seen", 0, "u"), None)
    members = [Member("r", epoch=epoch, last_id=1) for _ in range(3)]
    for member in members:
        registry.add(member)
    assert await watcher.tick() == 0
    assert await watcher.tick() == 0  # level with the room: nothing to do
    restarted = await history.restart("r", epoch)
    assert restarted.epoch != epoch
    assert await watcher.tick() == 3
    assert all(member.nudges == [restarted.last_id] for member in members)


@dataclass(eq=False)
class CountedMember(Member):
    """A member that counts how often its position is read."""

    reads: int = 0

    def __getattribute__(self, name: str) -> object:
        if name == "last_id":
            object.__setattr__(self, "reads", object.__getattribute__(self, "reads") + 1)
        return object.__getattribute__(self, name)


async def test_a_settled_room_is_not_read_member_by_member_until_history_moves() -> None:
    registry, history, watcher = await setup()
    await history.append("r", message_template("r", "seen", 0, "u"), None)
    member = CountedMember("r", epoch=(await history.state("r")).epoch, last_id=1)
    registry.add(member)
    assert await watcher.tick() == 0
    assert await watcher.tick() == 0  # unchanged for a tick, everyone level: settled
    member.reads = 0
    assert await watcher.tick() == 0
    assert member.reads == 0
    # A message the member never got: the room wakes, and the loss is found as before.
    await history.append("r", message_template("r", "lost", 0, "u"), None)
    assert await watcher.tick() == 0  # first sight of id 2: it may still be in flight
    assert member.reads > 0
    assert await watcher.tick() == 1
    assert member.nudges == [2]


async def test_a_member_level_with_the_room_under_another_tag_gets_the_room_a_new_epoch() -> None:
    """The store went back in time and gave the member's newest id to another message, and
    every message since was lost on its way here: no later message will say so."""
    registry, history, watcher = await setup()
    await history.append("r", message_template("r", "kept", 1000, "u"), None)
    state = await history.state("r")
    assert state.tip is not None
    misled = Member("r", epoch=state.epoch, last_id=1, last_ts=state.tip + 1)
    registry.add(misled)
    assert await watcher.tick() == 1
    restarted = await history.state("r")
    assert restarted.epoch != state.epoch and misled.nudges == [restarted.last_id]


async def test_members_level_with_the_room_under_its_tag_or_none_are_left_alone() -> None:
    registry, history, watcher = await setup()
    await history.append("r", message_template("r", "kept", 1000, "u"), None)
    state = await history.state("r")
    registry.add(Member("r", epoch=state.epoch, last_id=1, last_ts=state.tip))
    registry.add(Member("r", epoch=state.epoch, last_id=1))  # just reset: its tag unknown
    for _ in range(3):
        assert await watcher.tick() == 0
    assert (await history.state("r")).epoch == state.epoch


async def test_a_member_first_seen_level_under_another_tag_gets_the_room_a_new_epoch() -> None:
    # Before the watcher's first read of a room every member is looked at one by one.
    registry, history, watcher = await setup()
    await history.append("r", message_template("r", "kept", 1000, "u"), None)
    await history.append("r", message_template("r", "kept", 1001, "u"), None)
    state = await history.state("r")
    assert state.tip is not None
    registry.add(Member("r", epoch=state.epoch, last_id=2, last_ts=state.tip))
    registry.add(Member("r", epoch=state.epoch, last_id=2, last_ts=state.tip - 7))
    assert await watcher.tick() == 2
    assert (await history.state("r")).epoch != state.epoch
