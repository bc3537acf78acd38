"""What the guarded protocols answer a connection they refuse, and the tally of cut ones."""

from __future__ import annotations

import http
import logging

from app import metrics
from app.chat.admission import refusal_body
from app.throttled_log import Throttled

logger = logging.getLogger("parley")
_cut_log = Throttled(logger, interval=10.0)


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    """A whole HTTP/1.1 answer that closes the connection."""
    phrase = http.HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


# What the router answers a handshake during a drain (app.chat.admission.refuse).
DRAINING = response(503, refusal_body("draining"), "application/json")


def count_cut(reason: str, client: tuple[str, int] | None,
              when: str = "before its request completed") -> None:
    """Count a connection cut for ``reason`` and log it (a line per reason per 10 s)."""
    # A plain tally (app.metrics.CUTS): this runs when the process may have no descriptor
    # left, and loading the metrics on first use would need some.
    metrics.CUTS[reason] = metrics.CUTS.get(reason, 0) + 1
    _cut_log.info(reason, "connection cut %s: %s (last from %s)", when, reason, client[0] if client else "?")
