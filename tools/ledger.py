"""A test client's account of one conversation: what it sent, what was acked, what it received.

The drill (scripts/drill.py) and the cutover clients (tools/cutover_clients.py) keep the same
books, and the zero-loss checks (``drill.verify``) read them: one place says what an ``ack``,
a ``message`` and a ``reset`` frame mean to a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# Keyword-only, so that a client class adding positional fields (index, room) can inherit it.
@dataclass(kw_only=True)
class Ledger:
    """Message ids received, ``client_id`` -> acked id, unacknowledged sends, problems seen."""

    received: list[int] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # client_id -> text, oldest first
    errors: list[str] = field(default_factory=list)
    last_id: int = 0  # the newest id received: where a reconnect resumes (?since=)
    epoch: str | None = None  # the room's epoch last_id counts in (?epoch=)
    resets: int = 0  # the room's ids started over (state lost)

    def book(self, frame: dict[str, Any]) -> bool:
        """Book a ``message``, ``ack`` or ``reset`` frame; False for any other kind, which is
        the caller's to handle."""
        kind = frame.get("type")
        if kind == "message":
            self.record_message(frame)
        elif kind == "ack":
            self.record_ack(frame)
        elif kind == "reset":
            self.record_reset(frame)
        else:
            return False
        return True

    def record_message(self, frame: dict[str, Any]) -> None:
        self.received.append(frame["id"])
        self.last_id = max(self.last_id, frame["id"])

    def record_ack(self, frame: dict[str, Any]) -> None:
        """An ack settles its ``client_id``; the same one acked as two ids is an error."""
        client_id, msg_id = frame.get("client_id"), frame["id"]
        if not isinstance(client_id, str):  # we always send one: an ack must carry it back
            self.errors.append(f"ack without our client_id: {frame}")
            return
        if self.acked.setdefault(client_id, msg_id) != msg_id:
            self.errors.append(f"{client_id} acked as {self.acked[client_id]} and {msg_id}")
        self.pending.pop(client_id, None)

    def record_reset(self, frame: dict[str, Any]) -> None:
        """The room's sequence started over: resume from where the server says it is now."""
        self.resets += 1
        self.epoch, self.last_id = frame["epoch"], frame["last_id"]
