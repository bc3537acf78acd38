"""Logging setup: uvicorn's, plus ``parley``; per-connection lines only at debug level.

uvicorn logs every WebSocket handshake with its query string at info level: at thousands of
connections that is noise and CPU, and the query string can carry a token (never logged).

Credentials are redacted from every line that reaches a handler, at every level: query
parameters whose *decoded* name is a credential (``?%74oken=`` is ``?token=`` to the server,
so it is to the redaction too), and the headers that carry one (uvicorn prints request
headers at debug level).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from app.throttled_log import HELD, Throttled

REDACTED = "[redacted]"
# ``anon``: an anonymous client's secret, which would let a reader take its name.
SECRET_PARAMS = frozenset({"token", "access_token", "anon"})
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "sec-websocket-protocol")
_QUERY_PARAM = re.compile(r"([?&;])([^=&;\s\"?]*)=([^&;\s\"]*)")
# A header line as uvicorn's WebSocket protocol logs it: "< name: value" / "> name: value".
_HEADER_LINE = re.compile(
    r"^([<>] (?:" + "|".join(SECRET_HEADERS) + r"):).*$", re.IGNORECASE | re.MULTILINE
)
_PER_CONNECTION = ("connection open", "connection closed")
# Client mistakes uvicorn logs with a traceback; one line is enough, and at most one per 10 s
# (with a count of the ones held back): a client can cause them at will, thousands a second.
# websockets' own, at debug level only: one per handshake it cannot accept, each with a traceback.
_CLIENT_ERRORS = frozenset({
    "Invalid UTF-8 sequence received from client.",
    "! invalid origin", "! invalid method", "! invalid protocol", "! invalid upgrade",
    "! invalid handshake", "! request line too long", "! header fields too large",
    "! no valid HTTP request",
})
_client_errors = Throttled(logging.getLogger("uvicorn.error"), interval=10.0)


class ConnectionNoise(logging.Filter):
    """Drop per-connection lines below debug; redact tokens from any line that stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in _CLIENT_ERRORS:
            held = _client_errors.admit(message)
            if held is None:
                return False
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.INFO:  # a client's mistake is no error of ours
                record.levelno, record.levelname = logging.INFO, "INFO"
            if held:
                record.msg, record.args = message + HELD, (held, _client_errors.interval)
                return True
        if logging.getLogger("parley").isEnabledFor(logging.DEBUG) is False:
            if message in _PER_CONNECTION or '"WebSocket ' in message:
                return False
        cleaned = redact(message)
        if cleaned is not message:
            record.msg = cleaned
            record.args = ()
        return True


def _param(match: re.Match[str]) -> str:
    separator, name, _value = match.groups()
    if unquote_plus(name).strip().lower() in SECRET_PARAMS:
        return f"{separator}{name}={REDACTED}"
    return match.group(0)


def redact(message: str) -> str:
    """``message`` without credentials (the same object when there were none)."""
    cleaned = message
    if "=" in cleaned:
        cleaned = _QUERY_PARAM.sub(_param, cleaned)
    if ":" in cleaned and ("< " in cleaned or "> " in cleaned):
        cleaned = _HEADER_LINE.sub(r"\1 " + REDACTED, cleaned)
    return message if cleaned == message else cleaned


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
    # Django logs every 4xx of its views ("Unauthorized: /api/..."), a line per request that
    # anyone could make by the thousand; the answer already says why. Its 5xx (ERROR) stay.
    config["loggers"]["django.request"] = {
        "handlers": ["default"],
        "level": "DEBUG" if level.lower() in ("debug", "trace") else "ERROR",
        "propagate": False,
    }
    return config
