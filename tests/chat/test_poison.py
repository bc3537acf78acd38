"""Issue 16 item 1: no message can take a room down, whatever its text or its stored bytes.

A lone surrogate (``"\\ud800"``) is valid JSON but has no UTF-8 encoding. It used to be acked
and stored, after which every send of it raised: members dropped with 1006, every replay died
and the history API answered 500. Here it is refused, and a damaged stored record is delivered
with replacement characters instead of stopping anyone.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
import redis as redis_py

from tests.support import API_TOKEN, AppServer, Client, RedisServer

LONE = '{"message":"\\ud800","client_id":"p-1"}'


def post(api_server: AppServer, room: str, raw: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{api_server.base}/api/rooms/{room}/messages", data=raw, method="POST")
    request.add_header("Authorization", f"Bearer {API_TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_a_lone_surrogate_is_refused_and_the_room_lives_on(api_server: AppServer) -> None:
    sender = await Client.connect(api_server.ws_url("poison"))
    other = await Client.connect(api_server.ws_url("poison"))
    await sender.send_raw(LONE)
    refused = await sender.recv_type("error")
    assert refused["code"] == "invalid_unicode"
    await sender.send_raw('{"message":"hi","client_id":"\\udfff"}')
    assert (await sender.recv_type("error"))["code"] == "bad_client_id"

    # The same socket still works, and everybody in the room still gets messages.
    ack = await sender.post("after the poison", client_id="p-2")
    assert ack["type"] == "ack" and ack["id"] == 1
    assert [m["message"] for m in await other.messages(1)] == ["after the poison"]
    # Joins that replay, and the history API, see only what was stored.
    late = await Client.connect(api_server.ws_url("poison", last=10))
    assert [m["message"] for m in await late.messages(1)] == ["after the poison"]
    status, page = api_server.get("/api/rooms/poison/messages")
    assert status == 200 and [m["message"] for m in page["messages"]] == ["after the poison"]
    for client in (sender, other, late):
        await client.close()


def test_the_api_refuses_unencodable_text_with_400(api_server: AppServer) -> None:
    assert post(api_server, "poison", b'{"message":"\\ud800"}') == (400, {
        "type": "error", "code": "invalid_unicode",
        "detail": "'message' holds an unpaired surrogate (not UTF-8)"})
    assert post(api_server, "poison", b'{"message":"hi","user":"\\udc00"}')[1]["code"] == "bad_user"
    assert post(api_server, "poison", b'{"message":"hi","client_id":"\\ud800"}')[1]["code"] == "bad_client_id"
    assert post(api_server, "poison", b'{"message":"\xed\xa0\x80"}')[1]["code"] == "invalid_utf8"
    assert api_server.get("/api/rooms/poison/messages")[1]["messages"] == []


async def test_a_damaged_stored_record_is_delivered_with_replacement_characters(
    make_app: Callable[..., AppServer], redis_server: RedisServer,
) -> None:
    """A record no version of Parley writes (bytes that are not UTF-8, put there by another
    tool or damage) replays with U+FFFD under its id: nobody is cut off, nothing skipped."""
    api_server = make_app(env={"REDIS_URL": redis_server.url})
    member = await Client.connect(api_server.ws_url("damaged"))
    assert (await member.post("before"))["id"] == 1
    with redis_py.Redis.from_url(redis_server.url) as r:
        r.hincrby("chat:{damaged}:meta", "seq", 1)
        frame = b'{"type":"message","room":"damaged","id":2,"message":"\xed\xa0\x80\xff","ts":1,"user":"x"}'
        r.xadd("chat:{damaged}:log", {"f": frame}, id="2-0")
    assert (await member.post("after"))["id"] == 3
    live = [m["id"] for m in await member.messages(3)]
    assert live == [1, 2, 3]  # the live stream filled id 2 from history

    joiner = await Client.connect(api_server.ws_url("damaged", last=10))
    replayed = await joiner.messages(3)
    assert [m["id"] for m in replayed] == [1, 2, 3] and "\ufffd" in replayed[1]["message"]
    status, page = api_server.get("/api/rooms/damaged/messages")
    assert status == 200 and [m["id"] for m in page["messages"]] == [1, 2, 3]
    await member.close()
    await joiner.close()


@pytest.mark.parametrize(("room", "records"), [
    # No frame field at all (another tool's write): it ended every member's connection (1006)
    # and refused every join 503.
    ("bare", [{"x": b"not ours"}]),
    # Not a whole message frame (cut short, empty, not JSON): pasted as it was, a text frame
    # no client could parse and an API answer that was not JSON.
    ("cut", [{"f": b'{"type":"message","room":"cut","id":2,"mess'}, {"f": b""}, {"f": b"not json"}]),
])
async def test_a_stored_record_that_is_no_message_frame_is_delivered_as_a_replacement_character(
    make_app: Callable[..., AppServer], redis_server: RedisServer, room: str, records: list[dict[str, bytes]],
) -> None:
    api_server = make_app(env={"REDIS_URL": redis_server.url})
    member = await Client.connect(api_server.ws_url(room))
    assert (await member.post("before"))["id"] == 1
    with redis_py.Redis.from_url(redis_server.url) as r:
        r.hincrby(f"chat:{{{room}}}:meta", "seq", len(records))
        for offset, record in enumerate(records):
            r.xadd(f"chat:{{{room}}}:log", record, id=f"{offset + 2}-0")
    last = len(records) + 2
    assert (await member.post("after"))["id"] == last
    expected = [(1, "before"), *[(i, "\ufffd") for i in range(2, last)], (last, "after")]
    # Client.messages parses every frame as JSON: a frame that is not fails here.
    assert [(m["id"], m["message"]) for m in await member.messages(last)] == expected

    joiner = await Client.connect(api_server.ws_url(room, last=10))
    replayed = await joiner.messages(last)
    assert [(m["id"], m["message"]) for m in replayed] == expected
    assert {m["room"] for m in replayed} == {room}
    status, page = api_server.get(f"/api/rooms/{room}/messages")
    assert status == 200 and [(m["id"], m["message"]) for m in page["messages"]] == expected
    await member.close()
    await joiner.close()
