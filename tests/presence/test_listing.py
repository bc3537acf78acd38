"""Each room's members JSON, extended while the room grows: always what a fresh build gives."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from app.presence.listing import MemberLists
from app.protocol import members_json

NAMES = st.lists(st.text(min_size=1, max_size=8), max_size=12, unique=True)


def test_a_grown_list_extends_the_last_one() -> None:
    lists = MemberLists(max_age=1.0)
    assert lists.json("r", [], 0) == "[]"
    assert lists.json("r", ["alice"], 0) == '[{"user":"alice"}]'
    assert json.loads(lists.json("r", ["alice", "bob", "🦜\u2028"], 0)) == [
        {"user": "alice"}, {"user": "bob"}, {"user": "🦜\u2028"}]


def test_a_list_that_lost_or_reordered_names_is_built_again() -> None:
    lists = MemberLists(max_age=1.0)
    lists.json("r", ["alice", "bob"], 0)
    assert lists.json("r", ["bob"], 0) == members_json(["bob"])
    assert lists.json("r", ["carol", "bob"], 0) == members_json(["carol", "bob"])


def test_rooms_are_kept_apart_and_unused_ones_are_forgotten() -> None:
    lists = MemberLists(max_age=1.0)
    lists.json("a", ["alice"], 0)
    lists.json("b", ["bob"], 0.5)
    lists.sweep(1.2)
    assert lists.json("b", ["bob", "carol"], 1.2) == members_json(["bob", "carol"])
    assert list(lists._rooms) == ["b"]


@given(st.lists(NAMES, min_size=1, max_size=6))
def test_any_sequence_of_lists_gives_what_a_fresh_build_gives(steps: list[list[str]]) -> None:
    lists = MemberLists(max_age=1.0)
    for names in steps:
        assert lists.json("r", names, 0) == members_json(names)
