"""Room naming rules."""

import pytest

from app.rooms import group_name, is_valid_room

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["lobby", "a", "Room_1.x-y", "x" * 64, "...", ".a", "a..", "..a"])
def test_valid_rooms(name: str) -> None:
    assert is_valid_room(name)


# "." and "..": URL dot segments, which browsers and Traefik resolve away.
@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "ä", "lobby\n", "<script>", ".", "..", "..\n"])
def test_invalid_rooms(name: str) -> None:
    assert not is_valid_room(name)


def test_group_name_is_a_valid_channel_layer_group() -> None:
    from channels.layers import BaseChannelLayer

    assert BaseChannelLayer().require_valid_group_name(group_name("x" * 64))
