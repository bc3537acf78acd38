"""The presence rules without sockets: rosters, local users, coalescing, frames."""

from __future__ import annotations

import json

from app.presence.rules import (
    BIG_ROOM,
    MEMBERS_MAX,
    Coalescer,
    LocalUsers,
    Outcome,
    Roster,
    heartbeat_interval,
    round_interval,
    tick_interval,
)
from app.protocol import is_typing_frame, presence_diff_frame, presence_frame

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


def test_a_round_whose_changes_cancel_out_is_not_sent() -> None:
    coalescer = Coalescer(big_room=0, interval=0.5)
    coalescer.add("r", Outcome(joined=["a"], count=1), 1, now=0)
    coalescer.add("r", Outcome(joined=["b"], count=2), 2, now=0.1)
    coalescer.add("r", Outcome(left=["b"], count=1), 3, now=0.2)
    assert coalescer.due(1) == []


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


def test_typing_frames_are_recognised_and_nothing_else() -> None:
    assert is_typing_frame('{"type":"typing"}')
    assert is_typing_frame('{"type": "typing", "extra": 1}')
    assert not is_typing_frame('{"message":"typing"}')
    assert not is_typing_frame('{"message":"\\"typing\\""}')
    assert not is_typing_frame('["typing"]')
    assert not is_typing_frame('{"type":"typing"')  # broken JSON: parse_client_frame explains
    assert not is_typing_frame('{"message":"hi"}')


def test_frames_are_json_with_the_documented_fields() -> None:
    frame = json.loads(presence_frame("r", 2, ["a", "é\""], 4))
    assert frame == {"type": "presence", "room": "r", "count": 2,
                     "members": [{"user": "a"}, {"user": "é\""}], "version": 4}
    diff = json.loads(presence_diff_frame("r", 5, ["a"], ["b"], 9))
    assert diff == {"type": "presence_diff", "room": "r", "count": 5, "joined": [{"user": "a"}],
                    "left": [{"user": "b"}], "version": 9}
