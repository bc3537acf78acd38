"""The log filter: quiet per-connection lines, no tokens, one line for client mistakes."""

from __future__ import annotations

import logging

import pytest

from app.process.logs import ConnectionNoise, log_config

pytestmark = pytest.mark.unit


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, exc_info)


def test_per_connection_lines_are_dropped_below_debug() -> None:
    noise = ConnectionNoise()
    logging.getLogger("parley").setLevel(logging.INFO)
    assert not noise.filter(record("connection open"))
    assert not noise.filter(record('%s - "WebSocket %s" [accepted]', "1.2.3.4:5", "/ws/chat/x/"))
    assert noise.filter(record("Started server process [%d]", 1))


def test_tokens_are_redacted() -> None:
    logging.getLogger("parley").setLevel(logging.DEBUG)
    line = record('%s - "WebSocket %s" 403', "1.2.3.4:5", "/ws/chat/x/?since=3&token=eyJabc.def")
    assert ConnectionNoise().filter(line)
    assert "eyJabc" not in line.getMessage() and "token=[redacted]" in line.getMessage()
    logging.getLogger("parley").setLevel(logging.INFO)


def test_an_anonymous_clients_secret_is_redacted() -> None:
    # ``?anon=`` would let a reader of the log take that client's name.
    logging.getLogger("parley").setLevel(logging.DEBUG)
    line = record('%s - "WebSocket %s" 101', "1.2.3.4:5", "/ws/chat/x/?last=50&anon=Zq3_x-9aB1cD2eF3gH4iJ5")
    assert ConnectionNoise().filter(line)
    assert "Zq3_x" not in line.getMessage() and "anon=[redacted]" in line.getMessage()
    logging.getLogger("parley").setLevel(logging.INFO)


def test_client_utf8_mistakes_lose_their_traceback() -> None:
    line = record("Invalid UTF-8 sequence received from client.", exc=True)
    assert ConnectionNoise().filter(line)
    assert line.exc_info is None


def test_log_config_adds_the_service_logger() -> None:
    config = log_config("warning")
    assert config["loggers"]["parley"]["level"] == "WARNING"
    assert "connection_noise" in config["handlers"]["default"]["filters"]


def test_client_utf8_mistakes_are_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    # A client can cause one at will (a text frame of invalid UTF-8, thousands a second).
    from app.process import logs
    from app.throttled_log import Throttled

    monkeypatch.setattr(logs, "_client_errors", Throttled(logging.getLogger("test"), interval=3600.0))
    noise = ConnectionNoise()
    lines = [record("Invalid UTF-8 sequence received from client.", exc=True) for _ in range(5)]
    assert [noise.filter(line) for line in lines] == [True, False, False, False, False]


def test_a_throttled_client_mistake_says_how_many_were_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.process import logs
    from app.throttled_log import Throttled

    monkeypatch.setattr(logs, "_client_errors", Throttled(logging.getLogger("test"), interval=0.0))
    throttle = logs._client_errors
    throttle._held["Invalid UTF-8 sequence received from client."] = 7  # as a flood leaves it
    line = record("Invalid UTF-8 sequence received from client.", exc=True)
    assert ConnectionNoise().filter(line)
    held = "Invalid UTF-8 sequence received from client. (and 7 more like it in the last 0s)"
    assert line.getMessage() == held


def test_handshakes_websockets_refuses_are_one_throttled_line_each_at_debug_level(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # At LOG_LEVEL=debug websockets logs a traceback for every handshake it cannot accept:
    # a client can send thousands a second.
    from app.process import logs
    from app.throttled_log import Throttled

    monkeypatch.setattr(logs, "_client_errors", Throttled(logging.getLogger("test"), interval=3600.0))
    noise = ConnectionNoise()
    lines = [record("! invalid handshake", exc=True) for _ in range(4)]
    for line in lines:
        line.levelno, line.levelname = logging.DEBUG, "DEBUG"
    assert [noise.filter(line) for line in lines] == [True, False, False, False]
    assert lines[0].exc_info is None and lines[0].levelno == logging.DEBUG
