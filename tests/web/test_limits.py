"""Hostile numbers and bodies get a 4xx answer and the process carries on (real process)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import AppServer

TOKEN = "s3cret-token"
BIG = 3 * 1024 * 1024  # over Django's 2.5 MB, where it answered an HTML 400


@pytest.fixture
def api(make_app: Callable[..., AppServer]) -> AppServer:
    return make_app(env={"CHAT_API_TOKEN": TOKEN})


@pytest.mark.parametrize("query", ["since=%C2%B2", "last=%C2%B9", "since=%D9%A3", "since=" + "9" * 5000])
async def test_non_ascii_digits_refuse_the_handshake_with_400(api: AppServer, query: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{api.ws_url('lobby')}?{query}"):
            pass
    assert info.value.response.status_code == 400
    assert json.loads(info.value.response.body)["code"] in {"bad_since", "bad_last"}


@pytest.mark.parametrize("query", ["since=%C2%B2", "limit=%C2%B2", "limit=%EF%BC%91", "since=" + "9" * 5000])
def test_non_ascii_digits_in_the_api_get_400(api: AppServer, query: str) -> None:
    status, body = api.get(f"/api/rooms/lobby/messages?{query}")
    assert status == 400 and body["code"] in {"bad_since", "bad_limit"}
    assert api.get("/healthz")[0] == 200


async def _post_raw(app: AppServer, head: bytes, body_chunks: list[bytes]) -> tuple[int, bytes]:
    """Send a request (kept alive, as HTTP/1.1 clients do) while reading its one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)

    async def send() -> None:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(chunk)
            await writer.drain()

    sending = asyncio.ensure_future(send())
    response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    headers = dict(
        line.split(": ", 1) for line in response_head.decode("latin-1").lower().split("\r\n")[1:-2]
    )
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = _dechunk(await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 15))
    await asyncio.wait_for(sending, 15)  # the server took the whole request, answered or not
    writer.close()
    return int(response_head.split()[1]), body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]


HEAD = (b"POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n")


async def test_a_body_declared_too_large_gets_json_413_unread(api: AppServer) -> None:
    status, body = await _post_raw(api, HEAD + b"Content-Length: %d\r\n\r\n" % BIG, [])
    assert status == 413 and json.loads(body)["code"] == "body_too_large"


@pytest.mark.parametrize("size", [300 * 1024, BIG])
async def test_a_chunked_body_too_large_gets_json_413(api: AppServer, size: int) -> None:
    piece = b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (size // len(piece) + 1) + [b"0\r\n\r\n"]
    status, body = await _post_raw(api, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status == 413 and json.loads(body)["code"] == "body_too_large"
    assert api.get("/healthz")[0] == 200


async def test_a_chunked_body_within_the_limit_is_posted(api: AppServer) -> None:
    data = json.dumps({"message": "chunked", "client_id": "k-chunked-1"}).encode()
    chunks = [b"%x\r\n%s\r\n" % (len(data), data), b"0\r\n\r\n"]
    status, body = await _post_raw(api, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status == 201 and json.loads(body)["id"] == 1
    assert api.get("/api/rooms/lobby/messages")[1]["messages"][0]["message"] == "chunked"


async def test_a_history_answer_holds_at_most_1_mib_and_pages_to_last_id(api: AppServer) -> None:
    # A full room of the largest messages was one ~24 MB answer, built and buffered for
    # whoever asked (and held for good if it never read). Now at most 1 MiB of messages per
    # answer; the rest comes by paging with since, up to last_id.
    text = "\x01" * 4000  # 24 KB of JSON escapes each
    for i in range(50):
        body = json.dumps({"message": text, "client_id": f"big-{i}"}).encode()
        status, _ = await _post_raw(api, HEAD + b"Content-Length: %d\r\n\r\n" % len(body), [body])
        assert status == 201
    status, first = api.get("/api/rooms/lobby/messages?limit=1000")
    assert status == 200 and first["last_id"] == 50
    assert 0 < len(first["messages"]) < 50
    assert sum(len(json.dumps(m)) for m in first["messages"]) <= 1024 * 1024
    ids = [m["id"] for m in first["messages"]]
    while ids[-1] < first["last_id"]:  # bounded: each page holds at least one message
        page = api.get(f"/api/rooms/lobby/messages?limit=1000&since={ids[-1]}")[1]
        ids += [m["id"] for m in page["messages"]]
    assert ids == list(range(1, 51))


@pytest.mark.parametrize("request_line", [
    b"GET /api/rooms/lobby/messages", b"GET /api/rooms/lobby/presence", b"GET /", b"POST /static/chat.js",
])
async def test_a_body_where_none_is_taken_gets_413_unread(api: AppServer, request_line: bytes) -> None:
    # Any request could make the process buffer 256 KB of body before anything looked at it.
    head = request_line + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200000\r\n\r\n"
    status, body = await _post_raw(api, head, [])  # the body is never sent: answered first
    assert status == 413 and json.loads(body)["code"] == "body_not_allowed"


async def test_a_streamed_body_where_none_is_taken_gets_413(api: AppServer) -> None:
    head = b"GET /api/rooms/lobby/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, body = await _post_raw(api, head, [b"1\r\nx\r\n", b"0\r\n\r\n"])
    assert status == 413 and json.loads(body)["code"] == "body_not_allowed"


@pytest.mark.parametrize("authorization", [b"", b"Authorization: Bearer wrong\r\n"])
async def test_a_post_without_the_token_is_refused_before_its_body(
    api: AppServer, authorization: bytes,
) -> None:
    head = (b"POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n" + authorization
            + b"Content-Length: 60000\r\n\r\n")
    status, body = await _post_raw(api, head, [])  # the body is never sent: answered first
    assert status == 401 and json.loads(body)["code"] == "unauthorized"


async def test_a_post_with_the_api_off_is_refused_before_its_body(make_app: Callable[..., AppServer]) -> None:
    off = make_app()
    status, body = await _post_raw(off, HEAD + b"Content-Length: 60000\r\n\r\n", [])
    assert status == 403 and json.loads(body)["code"] == "api_disabled"


async def test_the_api_body_limit_is_what_one_message_can_need(api: AppServer) -> None:
    # The longest message, every character an escaped astral one (json.dumps' default), fits;
    # the limit is CHAT_MAX_FRAME_BYTES (64 KiB), over which a body is refused unread.
    longest = json.dumps({"message": "\U0001F600" * 4000, "client_id": "c" * 64, "user": "u" * 64}).encode()
    status, answer = await _post_raw(api, HEAD + b"Content-Length: %d\r\n\r\n" % len(longest), [longest])
    assert status == 201, answer
    status, answer = await _post_raw(api, HEAD + b"Content-Length: %d\r\n\r\n" % (64 * 1024 + 1), [])
    assert status == 413 and json.loads(answer)["detail"] == "body is larger than 65536 bytes"
