"""The in-process presence store: the same rule as Redis's, the same chain of versions."""

from __future__ import annotations

import pytest

from app.presence.base import RoomChange
from app.presence.memory import MemoryPresence

pytestmark = pytest.mark.unit


async def test_each_change_links_the_version_it_found_to_the_next() -> None:
    store = MemoryPresence(grace=15)
    [first] = await store.sync([RoomChange("r", hold=("a",))])
    [same] = await store.sync([RoomChange("r", hold=("a",), sample=True)])
    [second] = await store.sync([RoomChange("r", hold=("b",))])
    assert (first.previous, first.version) == (0, 1)
    assert (same.joined, same.previous, same.version, same.members) == ([], 1, 1, ["a"])
    assert (second.joined, second.previous, second.version) == (["b"], 1, 2)
