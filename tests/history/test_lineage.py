"""Which message an id names: the pure check (app/history/lineage.py)."""

from __future__ import annotations

import pytest

from app.history.base import Replay, RoomState
from app.history.lineage import diverged, tag_at

pytestmark = pytest.mark.unit

STATE = RoomState(epoch="e", base=0, last_id=13, tip=1300)


@pytest.mark.parametrize(("shown", "stored", "expected"), [
    (1300, 1300, False),
    (1300, 1301, True),
    (None, 1300, False),  # the member does not know what it was shown: no check
    (1300, None, False),  # an entry an older release wrote, or the first after a redraw
    (None, None, False),
])
def test_only_two_known_tags_that_differ_diverge(
    shown: int | None, stored: int | None, expected: bool
) -> None:
    assert diverged(shown, stored) is expected


def test_the_tag_of_the_last_frame_read() -> None:
    replay = Replay(frames=[(12, "a"), (13, "b")], state=STATE, prev=1100, tag=1301)
    assert tag_at(replay, 13) == 1301


def test_the_tag_of_the_id_just_before_the_first_frame() -> None:
    replay = Replay(frames=[(14, "a"), (15, "b")], state=RoomState(epoch="e", base=0, last_id=15, tip=1500),
                    prev=1300, tag=1500)
    assert tag_at(replay, 13) == 1300


def test_the_room_newest_id_when_nothing_follows_it() -> None:
    assert tag_at(Replay(state=STATE), 13) == 1300


@pytest.mark.parametrize("at", [10, 12, 14])
def test_an_id_the_read_does_not_reach_has_no_tag(at: int) -> None:
    # Not next to the frames (a gap, or ids the read did not cover): unknown, never a guess.
    replay = Replay(frames=[(12, "a"), (13, "b")], state=RoomState(epoch="e", base=0, last_id=20, tip=2000),
                    prev=1100, tag=1300)
    assert tag_at(replay, at) is None
    assert tag_at(Replay(state=STATE), at) is None
