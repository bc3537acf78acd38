"""Room naming rules: which names are rooms, and what they are called elsewhere."""

from __future__ import annotations

import re

ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def is_valid_room(name: str) -> bool:
    """True for names of 1 to 64 letters, digits, '_', '.' or '-'."""
    return ROOM_NAME.fullmatch(name) is not None


def group_name(room: str) -> str:
    """The channel-layer group of a room (layers allow only [a-zA-Z0-9_.-], under 100 chars)."""
    return f"chat.{room}"
