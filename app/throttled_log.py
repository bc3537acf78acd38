"""Log lines a client can cause at will (refused handshakes, cut connections), throttled.

Shared by the process (app.process.handshake and app.process.cuts, and app.process.logs for
uvicorn's own lines about client mistakes), the chat admission rules and the consumer (joins
refused while storage is away: one per reconnecting client).
"""

from __future__ import annotations

import logging
import time

# What a line that follows held-back ones says of them (with their count and the interval).
HELD = " (and %d more like it in the last %.0fs)"


class Throttled:
    """At most one line per key per interval, each saying how many were held back.

    For events a client can cause at will (refused handshakes, cut connections): the first
    is logged at once, a flood costs one line per interval.
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def info(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.INFO, key, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        held = self.admit(key)
        if held is None:
            return
        if held:
            msg, args = msg + HELD, (*args, held, self._interval)
        self._logger.log(level, msg, *args)

    def admit(self, key: str) -> int | None:
        """None if a line for ``key`` is to be held back now; else how many were held back
        before it (for a log filter that throttles lines others log: app.process.logs)."""
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next[key] = now + self._interval
        return self._held.pop(key, 0)

    @property
    def interval(self) -> float:
        return self._interval
