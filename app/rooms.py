"""Room naming rules: which names are rooms, and what they are called elsewhere."""

from __future__ import annotations

import re

# "." and ".." are URL dot segments: browsers resolve /ws/chat/../ to /ws/ before they
# connect, and so does Traefik (its sanitizePath), so only a client that sends paths as
# they are could reach such a room; nobody else could ever join it or read its history.
ROOM_NAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,64}")
ROOM_RULE = "room names are 1-64 of A-Z a-z 0-9 _ . -, and not '.' or '..'"
GROUP_PREFIX = "chat."


def is_valid_room(name: str) -> bool:
    """True for names of 1 to 64 letters, digits, '_', '.' or '-', but '.' and '..'."""
    return ROOM_NAME.fullmatch(name) is not None


def group_name(room: str) -> str:
    """The channel-layer group of a room (layers allow only [a-zA-Z0-9_.-], under 100 chars)."""
    return f"{GROUP_PREFIX}{room}"


def room_of_group(group: str) -> str | None:
    """The room whose channel-layer group ``group`` is (``group_name``'s inverse), or None."""
    return group[len(GROUP_PREFIX):] if group.startswith(GROUP_PREFIX) else None
