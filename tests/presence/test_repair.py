"""Noticing lost presence announcements without sockets: the announcements' chain of links
against the store's version, and when a room is due for a fresh snapshot."""

from __future__ import annotations

import pytest

from app.presence.repair import TRANSIT, RepairWatch, repair_after

pytestmark = pytest.mark.unit

SETTLE = 2.0


def watching(room: str = "r", start: int | None = 10) -> RepairWatch:
    """A watch of ``room`` whose members were shown the room at version ``start``."""
    watch = RepairWatch(SETTLE)
    watch.watch(room)
    if start is not None:
        watch.baseline(room, start)
    return watch


def test_every_link_arriving_leaves_nothing_to_repair_in_any_order() -> None:
    watch = watching()
    watch.stored("r", 40, now=0)
    watch.delivered("r", [(30, 40)])  # another process's frame overtook this one's
    watch.delivered("r", [(10, 20), (20, 30)])  # a round covering two steps
    assert watch.due(now=100) == []


def test_an_announcement_still_in_flight_is_not_taken_for_lost() -> None:
    watch = watching()
    watch.stored("r", 20, now=0)
    assert watch.due(now=SETTLE - 0.01) == []
    watch.delivered("r", [(10, 20)])
    assert watch.due(now=SETTLE) == []


def test_a_lost_announcement_makes_the_room_due_once_it_had_time_to_arrive() -> None:
    watch = watching()
    watch.stored("r", 20, now=0)
    assert watch.due(now=SETTLE - 0.01) == []
    assert watch.due(now=SETTLE) == ["r"]
    assert watch.due(now=SETTLE + 1) == []  # asked once, until its snapshot is read


def test_a_loss_right_after_a_frame_in_flight_is_timed_from_when_it_was_seen() -> None:
    watch = watching()
    watch.stored("r", 20, now=0)  # its frame is on its way
    watch.stored("r", 30, now=1)  # the frame for this one will be lost
    watch.delivered("r", [(10, 20)])
    assert watch.due(now=1 + SETTLE - 0.01) == []
    assert watch.due(now=1 + SETTLE) == ["r"]


def test_a_later_announcement_does_not_hide_a_lost_one() -> None:
    # The highest version seen here is the store's, but the change from 10 to 20 never came.
    watch = watching()
    watch.stored("r", 20, now=0)
    watch.delivered("r", [(20, 30)])
    watch.stored("r", 30, now=1)
    assert watch.due(now=SETTLE) == ["r"]


def test_a_round_of_several_frames_counts_only_once_all_of_them_came() -> None:
    watch = watching()
    watch.stored("r", 20, now=0)
    watch.delivered("r", [(10, 20)], part=0, parts=2)  # "join alice" came, "leave bob" did not
    assert watch.due(now=SETTLE) == ["r"]
    whole = watching()
    whole.stored("r", 20, now=0)
    whole.delivered("r", [(10, 20)], part=1, parts=2)
    whole.delivered("r", [(10, 20)], part=0, parts=2)
    assert whole.due(now=SETTLE) == []


def test_a_repair_restarts_the_chain_from_its_snapshot() -> None:
    watch = watching()
    watch.stored("r", 20, now=0)
    [room] = watch.due(now=SETTLE)
    assert watch.repaired(room, 25)  # read after a step of its own (20 -> 25)
    watch.delivered("r", [(20, 25)])  # that step's own announcement, older than the snapshot
    watch.delivered("r", [(25, 30)])
    watch.stored("r", 30, now=SETTLE)
    assert watch.due(now=10 * SETTLE) == []


def test_a_snapshot_older_than_a_frame_already_delivered_is_not_sent() -> None:
    # A newer frame reached the members between the read and the send: the snapshot would
    # take their lists back. It is read again at once.
    watch = watching()
    watch.stored("r", 20, now=0)
    [room] = watch.due(now=SETTLE)
    watch.delivered("r", [(25, 30)])
    assert not watch.repaired(room, 25)
    assert watch.due(now=SETTLE) == ["r"]
    assert watch.repaired(room, 30)
    assert watch.due(now=SETTLE) == []


def test_a_repair_that_could_not_be_read_is_asked_again() -> None:
    watch = watching()
    watch.stored("r", 20, now=0)
    assert watch.due(now=SETTLE) == ["r"]
    watch.failed("r")
    assert watch.due(now=SETTLE + 0.5) == ["r"]


def test_the_chain_starts_at_the_first_snapshot_and_later_ones_do_not_move_it() -> None:
    watch = watching(start=None)
    watch.delivered("r", [(5, 10)])  # before the first member's snapshot (at 10): in it
    watch.delivered("r", [(10, 20)])  # after it: waits until the chain starts
    watch.baseline("r", 10)
    watch.stored("r", 20, now=0)
    assert watch.due(now=SETTLE) == []
    # A second member's snapshot at 40 says nothing about what the first one was sent.
    watch.baseline("r", 40)
    watch.stored("r", 40, now=1)
    assert watch.due(now=1 + SETTLE) == ["r"]


def test_members_without_any_snapshot_are_repaired_too() -> None:
    # The first member's snapshot failed (presence storage did not answer): it has no list.
    watch = watching(start=None)
    watch.stored("r", 20, now=0)
    assert watch.due(now=SETTLE) == ["r"]


def test_rooms_without_members_here_are_not_watched() -> None:
    watch = watching()
    watch.forget("r")
    watch.stored("r", 20, now=0)
    watch.delivered("other", [(1, 2)])
    watch.stored("other", 2, now=0)
    assert watch.due(now=100) == []
    assert not watch.repaired("r", 30)


def test_the_wait_covers_a_held_round_a_tick_and_transit() -> None:
    assert repair_after(15) == 7.5 + 0.5 + TRANSIT
    assert repair_after(1) == pytest.approx(0.5 + 1 / 3 + TRANSIT)
