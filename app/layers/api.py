"""What Parley's channel layers offer beyond Channels' layer contract.

Parley's layers (``local``, ``pubsub`` and ``cluster``) implement ``DirectDelivery``,
``GroupTap`` and ``GroupOrder``; a consumer uses the first when its layer does and the plain
Channels API otherwise, presence repairs lost announcements only on a layer with the second,
and chat has its messages handed on in id order by the third (channels-redis's core layer,
kept for comparison, has none of them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]
# A socket write a receiver hands its fan-out: (the transport, the bytes to write).
Write = tuple[Any, bytes]
# Takes a group message synchronously: True (handled), or the write to make, which the
# fan-out makes with its other members' once all are decided (app/layers/fanout.py); or
# declines so it is queued (False).
Direct = Callable[[Message], "bool | Write"]
# Sees a group message before the members here get it; must not mutate it.
Tap = Callable[[Message], None]
# Told after a fan-out which members here could not take the message (their mailbox full).
Missed = Callable[[Message, list[str]], None]
Receive = Callable[[str], Awaitable[Message]]
# A group message's place in its group's sequence: (era, number); None for one outside it.
Position = Callable[[Message], "tuple[Hashable, int] | None"]


@runtime_checkable
class DirectDelivery(Protocol):
    """A layer whose group fan-out can hand a message straight to a local receiver."""

    def register_direct(self, channel: str, deliver: Direct) -> None:
        """Let group messages reach ``channel``'s receiver by a synchronous call first."""

    def unregister_direct(self, channel: str) -> None:
        """Undo ``register_direct``."""

    def bound_receive(self) -> Receive:
        """``receive`` for the running loop, without per-call proxying."""

    def backlog(self, channel: str) -> int:
        """Messages queued for ``channel``'s receiver."""

    def forget(self, channel: str) -> None:
        """The channel's receiver is gone for good: drop its inbox and direct hook."""


@dataclass(frozen=True)
class Watch:
    """A ``GroupTap`` hook pair for one message type: ``seen`` once per message before the
    members here get it, ``missed`` after, when some of them could not take it (their mailbox
    was full, so it was dropped for them: nothing but the watcher can make it up)."""

    seen: Tap
    missed: Missed | None = None


@runtime_checkable
class GroupTap(Protocol):
    """A layer that shows this process the group messages reaching its members, once per
    message (not once per member), and delivers to its members alone."""

    def tap(self, kind: str, hook: Tap, missed: Missed | None = None) -> None:
        """Call ``hook`` with each group message of type ``kind`` that reaches members on the
        running event loop, once, before they get it; and ``missed`` with it and the channels
        of those it was dropped for, if any."""

    def fan_out_local(self, group: str, message: Message) -> None:
        """Deliver ``message`` to the running loop's members of ``group`` only (directly where
        they take it, else queued): nothing is published, no other process gets it."""


@runtime_checkable
class GroupOrder(Protocol):
    """A layer that hands a group's messages of one type to its members here in the order of
    their numbers: one that arrives before its turn waits for those before it, at most
    ``hold`` seconds (app/layers/sequencer.py)."""

    def order(self, kind: str, position: Position, hold: float) -> None:
        """Put messages of type ``kind`` in ``position`` order, on the running event loop."""
