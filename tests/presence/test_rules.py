"""The presence rules without sockets: rosters, local users, coalescing, frames."""

from __future__ import annotations

import json

import pytest

from app.presence.rules import (
    BIG_ROOM,
    MEMBERS_MAX,
    Coalescer,
    KnownRosters,
    LocalUsers,
    Outcome,
    Roster,
    Seen,
    heartbeat_interval,
    round_interval,
    stall_window,
    tick_interval,
)
from app.protocol import is_typing_frame, leave_frame, presence_diff_frame, presence_frame

GRACE = 15.0


def test_a_new_user_joins_once_and_a_second_hold_changes_nothing() -> None:
    roster = Roster()
    assert roster.step(0, ["alice"], [], GRACE).joined == ["alice"]
    again = roster.step(1, ["alice"], [], GRACE)
    assert (again.joined, again.left, again.count) == ([], [], 1)
    assert roster.version == 1


def test_a_released_user_leaves_only_when_the_grace_has_passed() -> None:
    roster = Roster()
    roster.step(0, ["alice", "bob"], [], GRACE)
    assert roster.step(10, [], ["alice"], 10 + GRACE).left == []
    assert roster.step(10 + GRACE - 0.001, [], [], 0).count == 2
    gone = roster.step(10 + GRACE, [], [], 0)
    assert (gone.left, gone.count) == (["alice"], 1)


def test_coming_back_within_the_grace_announces_nothing() -> None:
    roster = Roster()
    roster.step(0, ["alice"], [], GRACE)
    roster.step(1, [], ["alice"], 1 + GRACE)
    back = roster.step(5, ["alice"], [], GRACE)
    assert (back.joined, back.left) == ([], [])
    assert roster.step(100, [], [], 0).left == []  # held again: no deadline left
    assert roster.version == 1


def test_expiring_and_held_again_in_one_step_is_no_change() -> None:
    roster = Roster()
    roster.step(0, ["alice"], [], GRACE)
    roster.step(1, [], ["alice"], 1 + GRACE)
    step = roster.step(1 + GRACE + 1, ["alice"], [], GRACE)
    assert (step.joined, step.left, step.count) == ([], [], 1)


def test_releasing_an_unknown_user_does_not_add_them() -> None:
    roster = Roster()
    assert roster.step(0, [], ["ghost"], GRACE).count == 0
    assert roster.next_deadline() is None


def test_sample_is_capped_and_count_exact() -> None:
    roster = Roster()
    outcome = roster.step(0, [f"u{i}" for i in range(MEMBERS_MAX + 50)], [], GRACE)
    assert outcome.count == MEMBERS_MAX + 50
    assert len(roster.sample()) == MEMBERS_MAX


def test_local_users_count_a_user_on_several_sockets_once() -> None:
    local = LocalUsers()
    assert local.attach("r", "alice") is True
    assert local.attach("r", "alice") is False
    assert local.users("r") == ["alice"]
    assert local.detach("r", "alice") is False
    assert local.detach("r", "alice") is True
    assert local.rooms() == []
    assert local.detach("r", "alice") is False  # already gone: nothing to undo


def test_typing_is_relayed_once_per_interval_per_user() -> None:
    local = LocalUsers()
    local.attach("r", "alice")
    assert local.may_type("r", "alice", 100.0)
    assert not local.may_type("r", "alice", 101.9)
    assert local.may_type("r", "alice", 102.0)
    assert not local.may_type("r", "nobody", 200.0)


def test_a_quiet_small_room_hears_a_change_at_once() -> None:
    coalescer = Coalescer(big_room=10, interval=0.5)
    out = coalescer.add("r", Outcome(joined=["a"], left=["b"], count=3), 7, now=0)
    assert [(a.kind, a.user, a.count, a.version) for a in out] == [("join", "a", 3, 7), ("leave", "b", 3, 7)]
    assert coalescer.due(10) == []


def test_changes_within_an_interval_wait_for_the_next_round() -> None:
    coalescer = Coalescer(big_room=10, interval=0.5)
    assert len(coalescer.add("r", Outcome(joined=["a"], count=1), 1, now=0)) == 1
    assert coalescer.add("r", Outcome(joined=["b"], count=2), 2, now=0.1) == []
    assert coalescer.due(0.4) == []
    [(room, one)] = coalescer.due(0.5)
    assert (room, one.kind, one.user, one.count, one.version) == ("r", "join", "b", 2, 2)


def test_many_changes_or_a_big_room_make_one_diff() -> None:
    coalescer = Coalescer(big_room=10, interval=0.5)
    coalescer.add("r", Outcome(joined=["a"], count=1), 1, now=0)
    coalescer.add("r", Outcome(joined=["b", "c", "d", "f"], count=5), 2, now=0.1)
    coalescer.add("r", Outcome(joined=["e"], left=["b"], count=5), 3, now=0.2)
    [(_, diff)] = coalescer.due(0.5)
    assert (diff.kind, diff.joined, diff.left) == ("diff", ["c", "d", "f", "e"], [])
    assert (diff.count, diff.version) == (5, 3)
    big = Coalescer(big_room=10, interval=0.5)
    [alone] = big.add("r", Outcome(joined=["x"], count=11), 1, now=0)
    assert alone.kind == "diff" and alone.joined == ["x"]


def test_big_rooms_get_rounds_further_apart() -> None:
    assert round_interval(10) == 0.5
    assert round_interval(5000) == 2.5
    coalescer = Coalescer(big_room=10, interval=0.5)
    coalescer.add("r", Outcome(joined=[f"u{i}" for i in range(5000)], count=5000), 1, now=0)
    coalescer.add("r", Outcome(joined=["late"], count=5001), 2, now=0.1)
    assert coalescer.due(2.4) == []
    assert [d.joined for _, d in coalescer.due(2.5)] == [["late"]]


def test_a_round_whose_changes_cancel_out_names_nobody() -> None:
    # Nothing to show, but the room's version moved: silence would look like a lost frame to
    # the other processes (app/presence/repair.py).
    coalescer = Coalescer(big_room=0, interval=0.5)
    coalescer.add("r", Outcome(joined=["a"], count=1), 1, now=0, link=(0, 1))
    coalescer.add("r", Outcome(joined=["b"], count=2), 2, now=0.1, link=(1, 2))
    coalescer.add("r", Outcome(left=["b"], count=1), 3, now=0.2, link=(2, 3))
    [(_, quiet)] = coalescer.due(1)
    assert (quiet.kind, quiet.joined, quiet.left) == ("diff", [], [])
    assert (quiet.count, quiet.version, quiet.links) == (1, 3, ((1, 2), (2, 3)))


def test_every_frame_of_a_round_carries_the_steps_it_covers() -> None:
    # app/presence/repair.py: a process that gets every frame of a round gets every link, and
    # one that misses any frame of it can tell (a round of two frames counts as two parts).
    coalescer = Coalescer(big_room=10, interval=0.5)
    [first] = coalescer.add("r", Outcome(joined=["a"], count=1), 11, now=0, link=(10, 11))
    assert (first.links, first.part, first.parts) == (((10, 11),), 0, 1)
    coalescer.add("r", Outcome(joined=["b"], count=2), 12, now=0.1, link=(11, 12))
    coalescer.add("r", Outcome(left=["a"], count=1), 14, now=0.2, link=(13, 14))  # 12 -> 13: elsewhere
    frames = [a for _, a in coalescer.due(0.5)]
    assert [(a.kind, a.user) for a in frames] == [("join", "b"), ("leave", "a")]
    assert [(a.links, a.part, a.parts) for a in frames] == [(((11, 12), (13, 14)), 0, 2),
                                                          (((11, 12), (13, 14)), 1, 2)]
    coalescer.add("r", Outcome(joined=[f"u{i}" for i in range(5)], count=6), 16, now=0.6, link=(15, 16))
    [(_, diff)] = coalescer.due(1.0)
    assert (diff.kind, diff.links, diff.parts) == ("diff", ((15, 16),), 1)


def test_each_change_of_a_round_keeps_its_own_steps_version() -> None:
    # b's leave is stepped here at 2 and waits for the round; b comes back through another
    # process, announced there at once at 3; more joins here reach 4. Stamped 4, the leave
    # read as newer than the return, and every client dropped b for good.
    coalescer = Coalescer(big_room=10, interval=0.5)
    coalescer.add("r", Outcome(joined=["a"], count=2), 1, now=0)
    coalescer.add("r", Outcome(left=["b"], count=1), 2, now=0.1)
    coalescer.add("r", Outcome(joined=["c"], count=3), 4, now=0.2)
    frames = [a for _, a in coalescer.due(0.5)]
    assert [(a.kind, a.user, a.version, a.changed) for a in frames] == [
        ("join", "c", 4, {"c": 4}), ("leave", "b", 4, {"b": 2})]
    coalescer.add("r", Outcome(joined=["d", "e", "f"], count=6), 5, now=0.6)
    coalescer.add("r", Outcome(left=["c"], count=5), 6, now=0.7)
    [(_, diff)] = coalescer.due(1.0)
    assert (diff.kind, diff.version, diff.changed) == ("diff", 6, {"d": 5, "e": 5, "f": 5, "c": 6})


def test_a_round_that_brings_a_room_to_members_max_or_fewer_asks_for_the_whole_list() -> None:
    # Its members were shown any 100 names and the changes name only who came and went: a
    # hostile probe's observer ended with count 76 and 60 names, for good.
    coalescer = Coalescer(big_room=10, interval=0.5)
    [grown] = coalescer.add("r", Outcome(joined=[f"u{i}" for i in range(120)], count=120), 1, now=0)
    assert not grown.relist
    coalescer.add("r", Outcome(left=[f"u{i}" for i in range(10)], count=110), 2, now=0.1)
    coalescer.add("r", Outcome(left=[f"u{i}" for i in range(10, 30)], count=90), 3, now=0.2)
    [(_, shrunk)] = coalescer.due(1.0)
    assert (shrunk.count, shrunk.relist) == (90, True)
    [smaller] = coalescer.add("r", Outcome(left=["u30"], count=89), 4, now=5)
    assert not smaller.relist


def test_a_diff_names_at_most_members_max_users() -> None:
    coalescer = Coalescer(big_room=BIG_ROOM, interval=0.5)
    users = [f"u{i}" for i in range(BIG_ROOM * 3)]
    [diff] = coalescer.add("r", Outcome(joined=users, count=len(users)), 1, now=0)
    assert diff.count == len(users) and len(diff.joined) == MEMBERS_MAX


def test_intervals_follow_the_grace() -> None:
    assert heartbeat_interval(15) == 5.0
    assert heartbeat_interval(1) < 1
    assert tick_interval(15) == 0.5
    assert tick_interval(0) > 0


@pytest.mark.parametrize("grace", [1, 1.5, 2, 3.5, 4.9])
def test_a_stall_that_lapses_a_hold_is_one_and_a_room_whose_holders_live_is_not(grace: float) -> None:
    low, high = stall_window(grace, 5.0) or (0, 0)
    # A gap of at least the grace (the least that lapses a hold) is a stall, up to the socket
    # timeout and a heartbeat (beyond it commands fail, and processes forgive it themselves);
    # a heartbeat a second late (up to two at a short grace) is none.
    assert low <= grace and high == 5.0 + heartbeat_interval(grace)
    assert low >= min(heartbeat_interval(grace) + 1, 3 * heartbeat_interval(grace))


@pytest.mark.parametrize("grace", [5, 15, 60])
def test_no_stall_shorter_than_the_socket_timeout_lapses_a_long_hold(grace: float) -> None:
    assert stall_window(grace, 5.0) is None


def test_typing_frames_are_recognised_and_nothing_else() -> None:
    assert is_typing_frame('{"type":"typing"}')
    assert is_typing_frame('{"type": "typing", "extra": 1}')
    assert not is_typing_frame('{"message":"typing"}')
    assert not is_typing_frame('{"message":"\\"typing\\""}')
    assert not is_typing_frame('["typing"]')
    assert not is_typing_frame('{"type":"typing"')  # broken JSON: parse_client_frame explains
    assert not is_typing_frame('{"message":"hi"}')
    # The same JSON, escaped: what json.dumps(ensure_ascii) or a hostile client may send.
    assert is_typing_frame('{"type":"typ\\u0069ng"}')
    assert is_typing_frame('{"t\\u0079pe":"\\u0074\\u0079\\u0070\\u0069\\u006e\\u0067"}')
    assert not is_typing_frame('{"message":"caf\\u00e9"}')


def test_frames_are_json_with_the_documented_fields() -> None:
    frame = json.loads(presence_frame("r", 2, ["a", "é\""], 4))
    assert frame == {"type": "presence", "room": "r", "count": 2,
                     "members": [{"user": "a"}, {"user": "é\""}], "version": 4}
    diff = json.loads(presence_diff_frame("r", 5, ["a"], ["b"], 9, {"b": 7}))
    assert diff == {"type": "presence_diff", "room": "r", "count": 5, "joined": [{"user": "a", "changed": 9}],
                    "left": [{"user": "b", "changed": 7}], "version": 9}
    assert json.loads(leave_frame("r", "b", 4, 9, 7)) == {
        "type": "leave", "room": "r", "user": "b", "count": 4, "version": 9, "changed": 7}


def test_rooms_announcing_together_share_one_budget() -> None:
    # 50 rooms of 100 are 5,000 members announcing: each room's rounds are as far apart as
    # one room of 5,000's, so the process sends about as many presence frames a second.
    coalescer = Coalescer(big_room=BIG_ROOM, interval=0.5)
    rooms = [f"r{i}" for i in range(50)]
    for room in rooms:
        coalescer.add(room, Outcome(joined=[f"{room}-a"], count=100), 1, now=0)
        coalescer.add(room, Outcome(joined=[f"{room}-b"], count=100), 2, now=0.1)
    assert sorted(room for room, _ in coalescer.due(3.0)) == sorted(rooms)
    for room in rooms:
        coalescer.add(room, Outcome(joined=[f"{room}-c"], count=100), 3, now=3.1)
    assert coalescer.due(5.4) == []
    assert len(coalescer.due(5.5)) == 50
    # Once the others have gone quiet, a room alone is back to the short interval.
    assert coalescer.due(9.0) == []
    coalescer.add("r0", Outcome(joined=["d"], count=100), 4, now=9.0)
    coalescer.add("r0", Outcome(joined=["e"], count=100), 5, now=9.1)
    assert [a.user for _, a in coalescer.due(9.5)] == ["e"]


def test_known_rosters_work_out_names_from_a_room_unchanged_since() -> None:
    known = KnownRosters(limit=3, max_age=60)
    assert known.base("r", 0) is None
    first = known.settle("r", None, False, Seen(1, (), "b1"), 2, ["a", "b"], [], ["a", "b"], 0)
    assert first == ["a", "b"]
    base = known.base("r", 1)
    assert base == Seen(1, ("a", "b"), "b1")
    # The store found the room as seen: no names came, they are worked out.
    assert known.settle("r", base, True, Seen(2, (), "b1"), 2, ["c"], ["a"], None, 1) == ["b", "c"]
    assert known.base("r", 2) == Seen(2, ("b", "c"), "b1")


def test_known_rosters_forget_rooms_too_big_unverifiable_or_idle() -> None:
    known = KnownRosters(limit=3, max_age=60)
    known.settle("r", None, False, Seen(1, (), "b1"), 4, [], [], ["a", "b", "c"], 0)
    assert known.base("r", 0) is None  # a sample of a bigger room is not the whole room
    known.settle("r", None, False, Seen(1, (), ""), 1, [], [], ["a"], 0)
    assert known.base("r", 0) is None  # no birth (keys made by an older release): not kept
    known.settle("r", None, False, Seen(1, (), "b1"), 1, [], [], ["a"], 0)
    assert known.base("r", 59) is not None
    assert known.base("other", 120) is None and known.base("r", 120) is None
    # A step that sampled nothing and was not "unchanged" leaves nothing known.
    known.settle("r", None, False, Seen(1, (), "b1"), 1, [], [], ["a"], 200)
    known.settle("r", known.base("r", 200), False, Seen(2, (), "b1"), 1, [], [], None, 200)
    assert known.base("r", 200) is None


def test_known_rosters_keep_the_newest_of_steps_answered_out_of_order() -> None:
    known = KnownRosters(limit=5, max_age=60)
    known.settle("r", None, False, Seen(5, (), "b1"), 2, [], [], ["a", "b"], 0)
    known.settle("r", None, False, Seen(4, (), "b1"), 1, [], [], ["a"], 0)
    assert known.base("r", 0) == Seen(5, ("a", "b"), "b1")
    known.settle("r", None, False, Seen(1, (), "b2"), 1, [], [], ["z"], 0)  # the room made again
    assert known.base("r", 0) == Seen(1, ("z",), "b2")


def test_rounds_stay_within_half_the_grace_however_big_the_rooms() -> None:
    # A join held back for its round must reach clients before a leave of the same user
    # that another process announces once the grace has run out.
    assert round_interval(100_000, longest=7.5) == 7.5
    assert round_interval(10, longest=7.5) == 0.5
    coalescer = Coalescer(big_room=10, interval=0.5, longest=1.0)
    coalescer.add("r", Outcome(joined=[f"u{i}" for i in range(100_000)], count=100_000), 1, now=0)
    coalescer.add("r", Outcome(joined=["late"], count=100_001), 2, now=0.1)
    assert [d.joined for _, d in coalescer.due(1.0)] == [["late"]]
