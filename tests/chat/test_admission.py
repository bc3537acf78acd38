"""The Origin rule that blocks cross-site WebSocket hijacking."""

import pytest

from app.chat.admission import header, origin_allowed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "chat.example", (), True),
        ("https://chat.example", "chat.example", (), True),
        ("http://CHAT.example:8000", "chat.example:8000", (), True),
        ("https://evil.example", "chat.example", (), False),
        ("null", "chat.example", (), False),
        ("https://app.example", "chat.example", ("https://app.example",), True),
        ("https://evil.example", "chat.example", ("https://app.example",), False),
        ("https://evil.example", "chat.example", ("*",), True),
        ("https://chat.example", None, (), False),
    ],
)
def test_origin_allowed(origin: str | None, host: str | None, allowed: tuple, expected: bool) -> None:
    assert origin_allowed(origin, host, allowed) is expected


def test_header_reads_first_value() -> None:
    scope = {"headers": [(b"host", b"a"), (b"origin", b"https://x"), (b"host", b"b")]}
    assert header(scope, b"host") == "a"
    assert header(scope, b"cookie") is None
