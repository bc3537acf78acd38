"""A group's messages of one type put back in the order of their numbers before its fan-out.

Chat messages get their ids from history and are published by whichever connection got
the answer first: two appends to a room answered on two connections (or in two processes)
can be published in the other order. A member that gets id 6 before id 5 sees a gap and
reads history for it, so a room with two senders at once had every member read history for
nearly every other message (measured: 2 senders, 50 members, 4,600 fills in 10,000
deliveries), though the message it lacked was a moment behind on the same subscription.

Here a message that comes early is held until those before it arrive, then all go on in
order; or, after ``hold`` seconds, it goes on anyway and members fill the hole from
history, as before. Nothing is dropped or reordered beyond that wait; the members' own id
checks still decide (a member that joined mid-stream, a message truly lost).

A group's line starts at the first message seen for it (numbers below that pass at once),
and ends when its last member here leaves (``forget``), so a group joined again starts over
instead of waiting for messages it was not subscribed for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from app.layers.api import Message, Position

# Held at most per group: past it, the line gives up waiting (a hole that never fills, in a
# room sending faster than ``hold`` lets by).
MAX_HELD = 1000

Release = Callable[[str, Message], None]


class _Line:
    """One group's place: the era its numbers count in, the number expected next, and the
    messages that came before their turn."""

    __slots__ = ("era", "next", "held", "timer")

    def __init__(self, era: Hashable, after: int) -> None:
        self.era = era
        self.next = after + 1
        self.held: dict[int, Message] = {}
        self.timer: asyncio.TimerHandle | None = None


class Sequencer:
    """``offer(group, message)``: ``release(group, message)`` now, or once its turn comes."""

    def __init__(self, position: Position, hold: float, release: Release) -> None:
        self.position = position
        self.hold = hold
        self.release = release
        self.lines: dict[str, _Line] = {}

    def offer(self, group: str, message: Message) -> None:
        at = self.position(message)
        if at is None:
            self.release(group, message)
            return
        era, number = at
        line = self.lines.get(group)
        if line is None or line.era != era:
            # A new line, or the numbers started over (another era): what waited goes first.
            if line is not None:
                self._let_go(group, line)
            self.lines[group] = _Line(era, number)
            self.release(group, message)
            return
        if number < line.next or number in line.held:
            # A duplicate, one already given up on, or a second message under a held number:
            # not this stage's to judge; the members' id checks are.
            self.release(group, message)
            return
        if number > line.next:
            line.held[number] = message
            if len(line.held) >= MAX_HELD:
                self._let_go(group, line)
            elif line.timer is None:
                line.timer = asyncio.get_running_loop().call_later(self.hold, self._expire, group, line)
            return
        self.release(group, message)
        line.next = number + 1
        held = line.held
        while held and (following := held.pop(line.next, None)) is not None:
            self.release(group, following)
            line.next += 1
        if not held and line.timer is not None:
            line.timer.cancel()
            line.timer = None

    def _expire(self, group: str, line: _Line) -> None:
        line.timer = None
        if self.lines.get(group) is line:
            self._let_go(group, line)

    def _let_go(self, group: str, line: _Line) -> None:
        """Release what ``line`` holds, in order, and go on after the last of it."""
        if line.timer is not None:
            line.timer.cancel()
            line.timer = None
        held, line.held = line.held, {}
        for number in sorted(held):
            self.release(group, held[number])
        if held:
            line.next = max(line.next, max(held) + 1)

    def forget(self, group: str) -> None:
        """``group`` has no member here any more: its line ends (nothing held is owed to anyone)."""
        line = self.lines.pop(group, None)
        if line is not None and line.timer is not None:
            line.timer.cancel()

    def clear(self) -> None:
        for group in list(self.lines):
            self.forget(group)


class Orders:
    """A layer's sequencers on one event loop, one per ordered message type (``GroupOrder``):
    ``offer`` hands each group message to its type's, or straight to ``release``."""

    def __init__(self, release: Release) -> None:
        self.release = release
        self.by_kind: dict[str, Sequencer] = {}

    def order(self, kind: str, position: Position, hold: float) -> None:
        """Messages of type ``kind`` wait their turn from now on (``Sequencer``)."""
        self.by_kind[kind] = Sequencer(position, hold, self.release)

    def offer(self, group: str, message: Message) -> None:
        sequencer = self.by_kind.get(message.get("type", "")) if self.by_kind else None
        if sequencer is None:
            self.release(group, message)
        else:
            sequencer.offer(group, message)

    def forget(self, group: str) -> None:
        """``group``'s last member here left: every type's line for it ends."""
        for sequencer in self.by_kind.values():
            sequencer.forget(group)

    def clear(self) -> None:
        """The layer's state on this loop is let go: every line ends, its timer cancelled."""
        for sequencer in self.by_kind.values():
            sequencer.clear()
