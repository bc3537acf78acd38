"""Expiry rules of a loop's channels, with the clock given explicitly (no sockets, no sleeps)."""

from __future__ import annotations

import asyncio
from time import monotonic

import pytest

from app.layers.inboxes import Inboxes
from app.mailbox import Mailbox

pytestmark = pytest.mark.unit


def inboxes(expiry: float = 60, group_expiry: float = 86400, capacity: int = 10) -> Inboxes:
    return Inboxes(lambda channel: capacity, expiry, group_expiry)


def test_a_mailbox_without_expiry_keeps_no_deadlines() -> None:
    box = Mailbox()
    box.put_nowait({"n": 1})
    assert box._deadlines is None and box.purge(monotonic() + 10**6) == 0 and box.qsize() == 1


def test_purge_drops_only_what_is_past_its_deadline() -> None:
    box = Mailbox(expiry=10)
    start = monotonic()
    box.put_nowait({"n": 1})
    box.put_nowait({"n": 2})
    assert box.purge(start) == 0
    assert box.purge(start + 11) == 2 and box.empty()


async def test_get_skips_expired_messages() -> None:
    box = Mailbox(expiry=10)
    box.put_nowait({"n": 1})
    assert box._deadlines is not None
    box._deadlines[0] -= 20  # as if queued twenty seconds ago
    box.put_nowait({"n": 2})
    assert await box.get() == {"n": 2} and box.empty()


def test_a_mailbox_is_made_on_send_and_let_go_when_drained() -> None:
    state = inboxes()
    state.put("c", {"n": 1})
    assert state.backlog("c") == 1
    state.sweep(monotonic())
    assert "c" in state.channels  # not expired: kept
    state.channels["c"].purge(monotonic() + 61)
    state.sweep(monotonic())
    assert state.channels == {}


def test_fan_out_reaches_members_without_a_mailbox() -> None:
    state = inboxes()
    state.join("g", "a")
    state.join("g", "b")
    state.fan_out("g", {"n": 1})
    assert state.backlog("a") == 1 and state.backlog("b") == 1


async def test_an_ordered_type_waits_its_turn_and_a_group_that_ends_forgets_its_place() -> None:
    state = inboxes(group_expiry=100)
    state.order("chat.message", lambda m: ("e", m["n"]) if "n" in m else None, 60.0)
    for group in ("g", "h"):
        state.join(group, "a")
    for n in (1, 3):
        state.fan_out("g", {"type": "chat.message", "n": n})
    state.fan_out("g", {"type": "presence.event"})  # another type: never waits
    assert [m.get("n") for m in state.channels["a"]._items or []] == [1, None]
    state.fan_out("g", {"type": "chat.message", "n": 2})
    assert [m.get("n") for m in state.channels["a"]._items or []] == [1, None, 2, 3]
    lines = state.orders.by_kind["chat.message"].lines
    state.fan_out("h", {"type": "chat.message", "n": 9})
    state.fan_out("h", {"type": "chat.message", "n": 11})
    timer = lines["h"].timer
    assert timer is not None
    joined = state.groups["g"]["a"]
    state.leave("h", "a")
    assert "h" not in lines and timer.cancelled()
    assert state.sweep(joined + 120) == ["g"] and not lines  # lapsed: its line ends too


def test_sweep_ends_lapsed_memberships_and_reports_emptied_groups() -> None:
    state = inboxes(group_expiry=100)
    state.join("old", "a")
    state.join("mixed", "a")
    joined = state.groups["old"]["a"]
    state.join("mixed", "b")
    state.groups["mixed"]["b"] = joined + 50  # joined fifty seconds later
    assert state.sweep(joined + 120) == ["old"]
    assert state.groups == {"mixed": {"b": joined + 50}}


def test_a_new_group_add_renews_the_membership() -> None:
    state = inboxes(group_expiry=100)
    state.join("g", "a")
    first = state.groups["g"]["a"]
    state.groups["g"]["a"] = first - 90  # as if it had joined ninety seconds ago ...
    state.join("g", "a")  # ... and joins again now
    assert state.sweep(first + 50) == [] and "a" in state.groups["g"]


def test_a_channel_whose_messages_expire_unread_leaves_every_group() -> None:
    state = inboxes(expiry=10)
    for group in ("g1", "g2"):
        state.join(group, "gone")
        state.join(group, "here")
    state.fan_out("g1", {"n": 1})
    state.channels.pop("here")  # "here" read its copy
    assert state.sweep(monotonic() + 11) == []
    assert {group: list(members) for group, members in state.groups.items()} == {
        "g1": ["here"], "g2": ["here"]
    }
    assert state.channels == {}


def test_registered_and_waiting_receivers_are_live() -> None:
    state = inboxes(expiry=10, group_expiry=10)
    state.register_direct("registered", lambda message: False)
    state.join("g", "registered")
    state.put("registered", {"n": 1})
    assert state.sweep(monotonic() + 100) == []
    assert list(state.groups["g"]) == ["registered"] and "registered" in state.channels


async def test_a_waiting_receiver_keeps_its_mailbox_through_a_sweep() -> None:
    state = inboxes(expiry=10)
    receiving = asyncio.ensure_future(state.receive("c"))
    await asyncio.sleep(0)  # let it start waiting
    state.sweep(monotonic() + 100)
    state.put("c", {"n": 1})
    assert await receiving == {"n": 1} and state.channels == {}


def test_tidy_sweeps_at_most_once_per_period() -> None:
    state = inboxes(expiry=3600)
    assert state.tidy() == []
    state.join("g", "c")
    state.put("c", {"n": 1})
    state.channels["c"]._deadlines[0] -= 7200  # type: ignore[index]
    state.tidy()  # not due yet: nothing swept
    assert state.backlog("c") == 1
