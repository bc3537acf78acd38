"""Pure parts of the integrity rules: unencodable text, dedupe keys, epochs, tokens, redaction."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.chat.auth import AuthError, bearer_token, mint, verify
from app.process.logs import redact
from app.protocol import (
    API_SENDER,
    FrameError,
    dedupe_key,
    error_frame,
    is_encodable,
    message_template,
    parse_api_body,
    parse_client_frame,
    parse_connect_params,
    repair_text,
    reset_frame,
)

SECRET = "s" * 32

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"message":"\\ud800"}', "invalid_unicode"),
        ('{"message":"ok \\udfff"}', "invalid_unicode"),
        ('{"message":"hi","client_id":"\\ud800"}', "bad_client_id"),
    ],
)
def test_unpaired_surrogates_are_refused(frame: str, code: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_client_frame(frame, 100)
    assert info.value.code == code


def test_a_surrogate_pair_is_one_character_and_is_accepted() -> None:
    assert parse_client_frame('{"message":"\\ud83d\\ude00"}', 100).text == "\U0001f600"


def test_api_user_must_be_sendable() -> None:
    assert parse_api_body(b'{"message":"hi","user":"bot"}', 100).user == "bot"
    assert parse_api_body(b'{"message":"hi"}', 100).user == "api"
    for body in (b'{"message":"hi","user":"\\ud800"}', b'{"message":"hi","user":5}',
                 b'{"message":"hi","user":""}'):
        with pytest.raises(FrameError) as info:
            parse_api_body(body, 100)
        assert info.value.code == "bad_user"
    with pytest.raises(FrameError) as info:
        parse_api_body(b'{"message":"\xff"}', 100)
    assert info.value.code == "invalid_utf8"


@given(st.text(), st.text(), st.text())
def test_every_frame_the_server_builds_can_be_sent(message: str, user: str, client_id: str) -> None:
    """Whatever reached the builders, the frame encodes: the last guard behind parsing."""
    frame = message_template("r", message, 1, user, client_id).with_id(7)
    frame.encode("utf-8")
    assert json.loads(frame)["id"] == 7
    error_frame(message, user).encode("utf-8")


def test_repair_replaces_each_unpaired_surrogate() -> None:
    assert repair_text("a\ud800b\udc00") == "a\ufffdb\ufffd"
    text = "plain é"
    assert repair_text(text) is text and is_encodable(text) and not is_encodable("\ud800")


def test_dedupe_keys_are_per_sender() -> None:
    assert dedupe_key("alice", "c-1") != dedupe_key("bob", "c-1")
    assert dedupe_key("alice", "c-1") != dedupe_key(None, "c-1")
    # The HTTP API is a sender of its own, which no token's sub can name (it was "api").
    assert dedupe_key(API_SENDER, "c-1") not in {dedupe_key("api", "c-1"), dedupe_key(None, "c-1")}
    assert dedupe_key("a:b", "c") != dedupe_key("a", "b:c")  # no two pairs spell one key
    assert dedupe_key("alice", None) is None


def test_epoch_is_a_connect_parameter() -> None:
    params = parse_connect_params(b"since=4&epoch=abc", 100)
    assert (params.since, params.epoch) == (4, "abc")
    with pytest.raises(FrameError) as info:
        parse_connect_params(b"since=4&epoch=" + b"x" * 65, 100)
    assert info.value.code == "bad_epoch"


def test_reset_frame() -> None:
    frame = json.loads(reset_frame("r", "e2", 3))
    assert frame == {"type": "reset", "room": "r", "epoch": "e2", "last_id": 3}


def test_token_carries_its_expiry_and_a_sendable_sub() -> None:
    identity = verify(mint("alice", ["r"], 60, SECRET, now=1000), SECRET, now=1000)
    assert identity.exp == 1060
    import jwt

    bad = jwt.encode({"sub": "\ud800", "rooms": "*", "exp": 2000}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as info:
        verify(bad, SECRET, now=1000)
    assert info.value.reason == "invalid_claims"


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


@pytest.mark.parametrize(
    "line",
    [
        "< GET /ws/chat/lobby/?%74oken=SECRET&x=1 HTTP/1.1",
        '1.2.3.4:5 - "WebSocket /ws/chat/x/?since=3&token=SECRET" 403',
        "/ws/chat/x/?access_%74oken=SECRET",
        "< authorization: Bearer SECRET",
        "< Cookie: sid=SECRET",
        "< sec-websocket-protocol: chat, SECRET",
        "> set-cookie: sid=SECRET",
    ],
)
def test_credentials_are_redacted(line: str) -> None:
    assert "SECRET" not in redact(line) and "[redacted]" in redact(line)


def test_other_lines_are_left_alone() -> None:
    line = "< GET /ws/chat/lobby/?since=3&last=2 HTTP/1.1"
    assert redact(line) is line
