"""Log lines a client can cause at will (refused handshakes, cut connections), throttled.

Shared by the process (app.process.handshake), the chat admission rules and the consumer
(joins refused while storage is away: one per reconnecting client).
"""

from __future__ import annotations

import logging
import time


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
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._next[key] = now + self._interval
        held = self._held.pop(key, 0)
        if held:
            msg, args = msg + " (and %d more like it in the last %.0fs)", (*args, held, self._interval)
        self._logger.log(level, msg, *args)
