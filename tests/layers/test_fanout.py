"""The fan-out's rules, with members that record what they are asked (no sockets, no loop)."""

from __future__ import annotations

from typing import Any

import pytest

from app.layers.api import Direct, Write
from app.layers.fanout import fan_out
from app.mailbox import Mailbox

pytestmark = pytest.mark.unit


class Transport:
    """What the fan-out writes to: records each write in the shared ``events``."""

    def __init__(self, name: str, events: list[tuple[str, str]], fails: bool = False) -> None:
        self.name = name
        self.events = events
        self.fails = fails

    def write(self, data: bytes) -> None:
        if self.fails:
            raise ConnectionResetError("gone")
        self.events.append(("write", f"{self.name}:{data.decode()}"))


def member(name: str, events: list[tuple[str, str]], answer: Any = None, fails: bool = False) -> Direct:
    """A receiver that notes its decision and hands back its write (or ``answer``)."""
    transport = Transport(name, events, fails)

    def deliver(message: dict[str, Any]) -> bool | Write:
        events.append(("decide", name))
        return (transport, str(message["n"]).encode()) if answer is None else answer

    return deliver


def run(members: dict[str, Direct]) -> dict[str, Mailbox]:
    queues: dict[str, Mailbox] = {}

    def open_inbox(channel: str) -> Mailbox:
        queues[channel] = Mailbox()
        return queues[channel]

    fan_out(list(members), {"n": 7}, {}, members, open_inbox)
    return queues


def test_writes_are_made_back_to_back_once_every_member_is_decided_in_their_order() -> None:
    events: list[tuple[str, str]] = []
    run({name: member(name, events) for name in ("a", "b", "c")})
    assert events == [("decide", "a"), ("decide", "b"), ("decide", "c"),
                      ("write", "a:7"), ("write", "b:7"), ("write", "c:7")]


def test_members_that_took_it_otherwise_or_declined_get_no_write() -> None:
    events: list[tuple[str, str]] = []
    queues = run({"wrote": member("wrote", events), "handled": member("handled", events, answer=True),
                  "declined": member("declined", events, answer=False)})
    assert [e for e in events if e[0] == "write"] == [("write", "wrote:7")]
    assert list(queues) == ["declined"] and queues["declined"].qsize() == 1


def test_a_write_that_fails_costs_the_others_nothing() -> None:
    events: list[tuple[str, str]] = []
    run({"a": member("a", events), "gone": member("gone", events, fails=True), "c": member("c", events)})
    assert [e for e in events if e[0] == "write"] == [("write", "a:7"), ("write", "c:7")]


def test_a_big_room_is_written_a_batch_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its first members' frames do not wait for its last members to be decided.
    monkeypatch.setattr("app.layers.fanout.WRITES_AT_ONCE", 2)
    events: list[tuple[str, str]] = []
    run({name: member(name, events) for name in ("a", "b", "c")})
    assert events == [("decide", "a"), ("decide", "b"), ("write", "a:7"), ("write", "b:7"),
                      ("decide", "c"), ("write", "c:7")]
