"""Which browser origins may open a chat WebSocket (cross-site WebSocket hijacking defence)."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Allow same-host origins, origins listed in ``allowed`` ('*' for any), and no Origin.

    Browsers always send Origin on WebSocket handshakes, so a missing header means a
    non-browser client, which carries no ambient browser credentials to hijack.
    """
    if origin is None or "*" in allowed:
        return True
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return False
    return host is not None and parts.netloc.lower() == host.lower()


def header(scope: dict, name: bytes) -> str | None:
    """The first value of a request header, decoded as latin-1 (ASGI headers are bytes)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
