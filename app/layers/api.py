"""What Parley's channel layers offer beyond Channels' layer contract.

Both of Parley's layers (``local`` and ``pubsub``) implement ``DirectDelivery``; a consumer
uses it when its layer does and the plain Channels API otherwise (channels-redis's core
layer, kept for comparison, does not).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]
# Takes a group message synchronously (True), or declines so it is queued (False).
Direct = Callable[[Message], bool]
Receive = Callable[[str], Awaitable[Message]]


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
