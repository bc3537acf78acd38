"""Room naming rules: which names are rooms, and what they are called elsewhere."""

from __future__ import annotations

import re

ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
GROUP_PREFIX = "chat."


def is_valid_room(name: str) -> bool:
    """True for names of 1 to 64 letters, digits, '_', '.' or '-'."""
    return ROOM_NAME.fullmatch(name) is not None


def group_name(room: str) -> str:
    """The channel-layer group of a room (layers allow only [a-zA-Z0-9_.-], under 100 chars)."""
    return f"{GROUP_PREFIX}{room}"


def room_of_group(group: str) -> str | None:
    """The room whose channel-layer group ``group`` is (``group_name``'s inverse), or None."""
    return group[len(GROUP_PREFIX):] if group.startswith(GROUP_PREFIX) else None
