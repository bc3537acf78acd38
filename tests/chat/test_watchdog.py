"""The slow-client watchdog, with a pinned clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from app.chat.registry import Registry
from app.chat.watchdog import SlowClientWatchdog

pytestmark = pytest.mark.unit


@dataclass(eq=False)
class Member:
    room: str = "r"
    last_id: int = 0
    sending_since: float = 0.0
    stopped: bool = False

    def stalled(self) -> None:
        self.stopped = True

    async def close_for_restart(self, code: int, reason: str) -> None:
        return None


def test_only_members_stuck_past_the_timeout_are_stopped() -> None:
    registry = Registry()
    idle, quick, stuck = Member(), Member(sending_since=99.5), Member(sending_since=80.0)
    for member in (idle, quick, stuck):
        registry.add(member)
    watchdog = SlowClientWatchdog(registry, send_timeout=10, sending={idle, quick, stuck})
    assert watchdog.check(now=100.0) == 1
    assert (idle.stopped, quick.stopped, stuck.stopped) == (False, False, True)


def test_with_sends_tracked_only_members_in_a_send_are_looked_at() -> None:
    registry = Registry()
    stuck, also_stuck, gone = (Member(sending_since=80.0) for _ in range(3))
    for member in (stuck, also_stuck):
        registry.add(member)
    # also_stuck's send is not tracked (so not looked at); gone is in a send but no member.
    watchdog = SlowClientWatchdog(registry, send_timeout=10, sending={stuck, gone})
    assert watchdog.check(now=100.0) == 1
    assert (stuck.stopped, also_stuck.stopped, gone.stopped) == (True, False, False)
