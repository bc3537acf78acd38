"""Frame parsing and building, without sockets."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.protocol import (
    ChatMessage,
    FrameError,
    ack_frame,
    anonymous_name,
    bounded_integer,
    error_frame,
    gap_frame,
    is_message_frame,
    message_template,
    parse_client_frame,
    parse_connect_params,
    ready_frame,
)

pytestmark = pytest.mark.unit


def test_plain_message_is_accepted() -> None:
    assert parse_client_frame('{"message": "hi"}', 10) == ChatMessage("hi")


def test_type_message_and_client_id_are_accepted() -> None:
    parsed = parse_client_frame('{"type": "message", "message": "hi", "client_id": "c1"}', 10)
    assert parsed == ChatMessage("hi", "c1")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ('"hi"', "not_an_object"),
        ('{"type": "typing"}', "unknown_type"),
        ("{}", "missing_message"),
        ('{"message": 5}', "message_not_string"),
        ('{"message": null}', "message_not_string"),
        ('{"message": ""}', "empty_message"),
        ('{"message": "   "}', "empty_message"),
        ('{"message": "12345678901"}', "message_too_long"),
        ('{"message": "hi", "client_id": 7}', "bad_client_id"),
        ('{"message": "hi", "client_id": ""}', "bad_client_id"),
        ('{"message": "hi", "client_id": "' + "x" * 65 + '"}', "bad_client_id"),
        ("[" * 100000 + "]" * 100000, "invalid_json"),
        ('{"message": "hi", "n": ' + "9" * 5000 + "}", "invalid_json"),
    ],
)
def test_bad_frames_name_what_is_wrong(frame: str, code: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_client_frame(frame, 10)
    assert info.value.code == code
    assert info.value.detail


@pytest.mark.parametrize("frame", ["[" * 100000 + "]" * 100000, '{"n": ' + "9" * 5000 + "}"])
def test_json_past_the_parsers_limits_is_not_called_invalid(frame: str) -> None:
    # Valid JSON that nests too deep or holds a number too long to parse: the error says so.
    with pytest.raises(FrameError) as info:
        parse_client_frame(frame, 10)
    assert "not valid JSON" not in info.value.detail
    assert "too deep" in info.value.detail


def test_message_length_counts_characters_not_bytes() -> None:
    assert parse_client_frame(json.dumps({"message": "é" * 10}), 10).text == "é" * 10


@given(st.text(max_size=200))
def test_parser_only_ever_accepts_or_raises_frame_error(text: str) -> None:
    try:
        parsed = parse_client_frame(text, 50)
    except FrameError:
        return
    assert 0 < len(parsed.text) <= 50


@given(st.text(min_size=1, max_size=50).filter(str.strip), st.integers(1, 10**12))
def test_message_frame_round_trips_through_json(text: str, message_id: int) -> None:
    frame = message_template("room-1", text, 1234, "alice", "c9").with_id(message_id)
    assert json.loads(frame) == {
        "type": "message", "room": "room-1", "id": message_id, "message": text,
        "ts": 1234, "user": "alice", "client_id": "c9",
    }


def test_message_frame_without_client_id_omits_it() -> None:
    frame = json.loads(message_template("r", "hi", 1, "bob").with_id(3))
    assert "client_id" not in frame


def test_server_frames() -> None:
    assert json.loads(ack_frame(4, None)) == {"type": "ack", "id": 4, "client_id": None}
    assert json.loads(error_frame("x", "y")) == {"type": "error", "code": "x", "detail": "y"}
    assert json.loads(gap_frame(2, 5)) == {"type": "gap", "from": 2, "to": 5}
    assert json.loads(ready_frame("r", 9, "u", "e1", 4000)) == {
        "type": "ready", "room": "r", "last_id": 9, "user": "u", "epoch": "e1", "max_message_chars": 4000
    }


def test_a_stored_frame_is_a_message_only_under_its_own_id() -> None:
    frame = message_template("lobby", "hi", 1, "u").with_id(7)
    assert is_message_frame(frame, 7)
    assert not is_message_frame(frame, 8)
    for text in [frame[:-1], "", "not json", "[7]", '{"type":"ack","id":7}', '{"type":"message","id":"7"}',
                 '{"type":"message","id":7.0}', "[" * 100_000]:
        assert not is_message_frame(text, 7), text[:40]
    assert not is_message_frame('{"type":"message","id":true}', 1)  # True == 1 in Python


def test_connect_params() -> None:
    assert parse_connect_params(b"", 100).since is None
    assert parse_connect_params(b"since=5", 100).since == 5
    assert parse_connect_params(b"last=20&token=abc", 100).last == 20
    assert parse_connect_params(b"token=abc", 100).token == "abc"
    # Parameters the service does not read are ignored, given twice or not.
    assert parse_connect_params(b"since=5&x=1&x=2", 100).since == 5


@pytest.mark.parametrize(
    ("query", "code"),
    [(b"since=-1", "bad_since"), (b"since=x", "bad_since"), (b"last=101", "bad_last"),
     (b"since=1&last=2", "bad_query"),
     # Given twice: which one counts would be a guess (a proxy in front may read the other).
     (b"since=1&since=2", "bad_query"), (b"last=1&last=1", "bad_query"),
     (b"since=1&epoch=a&epoch=b", "bad_query"), (b"token=a&%74oken=b", "bad_query"),
     (b"since=1&ts=1&ts=2", "bad_query")],
)
def test_bad_connect_params(query: bytes, code: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_connect_params(query, 100)
    assert info.value.code == code


SECRET = "Zq3_x-9aB1cD2eF3gH4iJ5"  # 22 URL-safe characters: the page's 128 random bits


def test_an_anonymous_name_is_the_secrets_hash_and_the_same_on_every_connection() -> None:
    assert anonymous_name(SECRET) == "anon-" + hashlib.sha256(SECRET.encode()).hexdigest()[:16]
    assert anonymous_name(SECRET) == anonymous_name(str(SECRET))
    assert re.fullmatch(r"anon-[0-9a-f]{16}", anonymous_name("x" * 128))
    # Another secret, another name (even one character off); the name does not show the secret.
    assert anonymous_name(SECRET[:-1] + "6") != anonymous_name(SECRET)
    assert SECRET not in anonymous_name(SECRET)


@pytest.mark.parametrize("secret", [SECRET, "a" * 22, "-_" * 64, "A1" * 11])
def test_the_anon_parameter_takes_22_to_128_url_safe_characters(secret: str) -> None:
    assert parse_connect_params(f"last=5&anon={secret}".encode(), 100).anon == secret


@pytest.mark.parametrize(
    "raw", ["a" * 21, "a" * 129, "", SECRET[:-1] + "+", SECRET + "%2B", SECRET + "=", SECRET + "%20",
            SECRET[:-1] + "%C3%A9", SECRET + "%00"],
)
def test_a_bad_anon_parameter_is_refused(raw: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_connect_params(f"anon={raw}".encode(), 100)
    assert info.value.code == "bad_anon"


def test_no_anon_parameter_is_none() -> None:
    assert parse_connect_params(b"last=5", 100).anon is None


def test_anon_is_neither_read_nor_checked_when_tokens_name_users() -> None:
    assert parse_connect_params(b"anon=short", 100, anonymous=False).anon is None
    assert parse_connect_params(f"anon={SECRET}".encode(), 100, anonymous=False).anon is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", 0), ("1000000000000000000", 10**18), ("0000000000000000001", 1), ("0" * 5000 + "7", 7)],
)
def test_bounded_integers_take_every_value_in_range_however_spelled(raw: str, value: int) -> None:
    # The error names 0 to 10**18: both ends, and leading zeros, are that integer.
    assert bounded_integer("since", raw, 0, 10**18) == value


@pytest.mark.parametrize(
    "raw", ["1000000000000000001", "9" * 5000, "", "-1", "+1", "1e3", "\u00b2", "\uff11", " 1"]
)
def test_bounded_integers_refuse_the_rest(raw: str) -> None:
    with pytest.raises(FrameError) as info:
        bounded_integer("since", raw, 0, 10**18)
    assert info.value.code == "bad_since"
    assert "from 0 to 1000000000000000000" in info.value.detail
