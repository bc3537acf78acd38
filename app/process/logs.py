"""Logging setup: uvicorn's, plus ``parley``; per-connection lines only at debug level.

uvicorn logs every WebSocket handshake with its query string at info level: at thousands of
connections that is noise and CPU, and the query string can carry a token (never logged).
"""

from __future__ import annotations

import copy
import logging
import re
import time
from typing import Any

_QUERY_SECRET = re.compile(r"([?&](?:token|access_token)=)[^&\s\"]*")
_PER_CONNECTION = ("connection open", "connection closed")
# Client mistakes uvicorn logs with a traceback; one line is enough (and can't be spammed
# into megabytes of log by a hostile client).
_CLIENT_ERRORS = ("Invalid UTF-8 sequence received from client.",)


class ConnectionNoise(logging.Filter):
    """Drop per-connection lines below debug; redact tokens from any line that stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in _CLIENT_ERRORS:
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        if logging.getLogger("parley").isEnabledFor(logging.DEBUG) is False:
            if message in _PER_CONNECTION or '"WebSocket ' in message:
                return False
        if "token=" in message:
            record.msg = _QUERY_SECRET.sub(r"\1[redacted]", message)
            record.args = ()
        return True


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
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._next[key] = now + self._interval
        held = self._held.pop(key, 0)
        if held:
            msg, args = msg + " (and %d more like it in the last %.0fs)", (*args, held, self._interval)
        self._logger.info(msg, *args)


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's LOGGING_CONFIG with the ``parley`` logger and the connection filter."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"connection_noise": {"()": "app.process.logs.ConnectionNoise"}}
    config["handlers"]["default"]["filters"] = ["connection_noise"]
    config["loggers"]["parley"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config
