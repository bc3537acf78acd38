"""The tail watcher, with the real in-memory channel layer and history."""

from __future__ import annotations

from dataclasses import dataclass

from app.local_layer import LocalChannelLayer

from app.history.memory import MemoryHistory
from app.protocol import message_template
from app.registry import Registry
from app.rooms import group_name
from app.tail import TailWatcher


@dataclass(eq=False)
class Member:
    room: str
    last_id: int = 0

    async def close_for_restart(self, code: int, reason: str) -> None:
        return None


async def setup() -> tuple[Registry, MemoryHistory, LocalChannelLayer, str]:
    registry, history, layer = Registry(), MemoryHistory(100, 3600, 600), LocalChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add(group_name("r"), channel)
    return registry, history, layer, channel


async def test_a_member_stuck_behind_a_message_held_for_a_tick_is_nudged() -> None:
    registry, history, layer, channel = await setup()
    member = Member("r")
    registry.add(member)
    await history.append("r", message_template("r", "lost", 0, "u"), None)
    watcher = TailWatcher(registry, history, layer, interval=1)

    assert await watcher.tick() == 0  # first sight of id 1: it may still be in flight
    assert await watcher.tick() == 1  # a tick later the member still lacks it
    assert await layer.receive(channel) == {"type": "chat.sync", "last_id": 1}


async def test_members_that_kept_up_are_left_alone() -> None:
    registry, history, layer, _ = await setup()
    member = Member("r")
    registry.add(member)
    await history.append("r", message_template("r", "seen", 0, "u"), None)
    watcher = TailWatcher(registry, history, layer, interval=1)
    await watcher.tick()
    member.last_id = 1
    assert await watcher.tick() == 0


def test_registry_counts_members_by_room() -> None:
    registry = Registry()
    a, b, c = Member("x", 5), Member("x", 3), Member("y", 9)
    for member in (a, b, c, a):
        registry.add(member)
    assert len(registry) == 3
    assert registry.rooms() == {"x": 3, "y": 9}
    assert registry.discard_if_present(b) and not registry.discard_if_present(b)
    assert registry.rooms() == {"x": 5, "y": 9}
