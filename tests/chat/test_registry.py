"""app/chat/registry.py: the drain's close_all, spread in batches."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from app.chat.registry import Registry

pytestmark = pytest.mark.unit


@dataclass(eq=False)
class Member:
    """A registered socket whose drain close may make another member leave meanwhile."""

    room: str
    epoch: str = "e"
    last_id: int = 0
    sending_since: float = 0.0
    closed: bool = False
    registry: Registry | None = None
    leaving: Member | None = None

    async def close_for_restart(self, code: int, reason: str) -> None:
        self.closed = True
        if self.registry is not None and self.leaving is not None:
            self.registry.discard_if_present(self.leaving)


async def test_a_spread_drain_closes_everyone_once_and_skips_who_left_meanwhile() -> None:
    registry = Registry()
    for i in range(5):
        registry.add(Member(room=f"r{i}"))  # type: ignore[arg-type]
    order: list[Member] = registry.all()  # type: ignore[assignment]
    order[0].registry, order[0].leaving = registry, order[-1]  # its client goes before its batch
    assert await registry.close_all(1012, "server restart", timeout=5, spread=0.2) == 5
    assert [m.closed for m in order] == [True, True, True, True, False]


async def test_without_a_spread_everyone_is_closed_at_once() -> None:
    registry = Registry()
    members = [Member(room="r") for _ in range(3)]
    for member in members:
        registry.add(member)  # type: ignore[arg-type]
    assert await registry.close_all(1012, "server restart", timeout=5) == 3
    assert all(m.closed for m in members)
