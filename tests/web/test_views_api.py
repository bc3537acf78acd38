"""The room history HTTP API over real HTTP, with and without Redis."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from tests.support import API_TOKEN, Client, http_get
from tools.procs import AppServer


def post(api_server: AppServer, room: str, body: object, token: str | None = API_TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{api_server.base}/api/rooms/{room}/messages", data=json.dumps(body).encode(), method="POST"
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_backend_post_reaches_members_and_history(api_server: AppServer) -> None:
    member = await Client.connect(api_server.ws_url("news"))
    status, body = post(api_server, "news", {"message": "from backend", "user": "bot", "client_id": "b1"})
    epoch = member.ready["epoch"]
    assert (status, body) == (201, {"id": 1, "duplicate": False, "client_id": "b1", "epoch": epoch})
    [got] = await member.messages(1)
    assert (got["message"], got["user"], got["id"]) == ("from backend", "bot", 1)

    assert post(api_server, "news", {"message": "from backend", "client_id": "b1"}) == (
        200, {"id": 1, "duplicate": True, "client_id": "b1", "epoch": epoch})
    await member.post("second")

    status, page = api_server.get("/api/rooms/news/messages?since=0&limit=10")
    assert status == 200 and page["last_id"] == 2 and page["gap"] is None and page["epoch"] == epoch
    assert [m["message"] for m in page["messages"]] == ["from backend", "second"]
    assert [m["id"] for m in api_server.get("/api/rooms/news/messages?since=1")[1]["messages"]] == [2]
    # Leading zeros spell the same id (the parameter is parsed as the WebSocket's is).
    padded = api_server.get("/api/rooms/news/messages?since=0000000000000000001")[1]
    assert [m["id"] for m in padded["messages"]] == [2]
    # Ids the room never reached (a client of a store that lost them): reset, as a resume is.
    status, ahead = api_server.get("/api/rooms/news/messages?since=7")
    assert status == 200 and ahead["reset"] is True and ahead["epoch"] == epoch
    assert [m["id"] for m in ahead["messages"]] == [1, 2]
    assert "reset" not in api_server.get("/api/rooms/news/messages?since=2")[1]
    # ``ts``: the tag of the message at ``since`` as the client has it. The same: no reset.
    ts = page["messages"][0]["ts"]
    assert "reset" not in api_server.get(f"/api/rooms/news/messages?since=1&ts={ts}")[1]
    assert api_server.get("/api/rooms/news/messages?since=1&ts=x")[1]["code"] == "bad_ts"
    # Another message under that id (the store went back in time, or a reader's mistake):
    # this answer starts the epoch over; the room's epoch stays (a read never restarts it).
    status, other = api_server.get(f"/api/rooms/news/messages?since=1&ts={ts + 1}")
    assert status == 200 and other["reset"] is True and other["epoch"] == epoch
    assert [m["id"] for m in other["messages"]] == [1, 2]


def test_post_needs_the_right_token(api_server: AppServer) -> None:
    assert post(api_server, "news", {"message": "x"}, token=None)[0] == 401
    assert post(api_server, "news", {"message": "x"}, token="wrong")[0] == 401
    assert api_server.get("/api/rooms/news/messages")[1]["messages"] == []


def test_bad_requests_say_why(api_server: AppServer) -> None:
    assert post(api_server, "news", {"message": ""})[1]["code"] == "empty_message"
    assert post(api_server, "bad%20room", {"message": "x"})[1]["code"] == "bad_room"
    assert api_server.get("/api/rooms/news/messages?since=-3")[1]["code"] == "bad_since"
    assert api_server.get("/api/rooms/news/messages?limit=0")[1]["code"] == "bad_limit"
    assert api_server.get("/api/rooms/news/messages?since=1&since=2")[1]["code"] == "bad_query"
    assert api_server.get("/api/rooms/news/messages?epoch=a&epoch=a")[1]["code"] == "bad_query"
    assert api_server.get("/api/rooms/../messages")[1]["code"] == "bad_room"
    assert post(api_server, ".", {"message": "x"})[1]["code"] == "bad_room"
    # A path the API does not have answers in the API's JSON, as every other refusal does.
    assert api_server.get("/api/rooms/news/messages/") == (
        404, {"type": "error", "code": "not_found", "detail": "no such resource"})


def test_post_is_disabled_without_a_token(make_app: Callable[..., AppServer]) -> None:
    api_server = make_app()
    status, body = post(api_server, "news", {"message": "x"}, token="")
    assert (status, body["code"]) == (403, "api_disabled")


@pytest.mark.parametrize("api_first", [True, False], ids=["api-first", "user-first"])
async def test_a_user_called_api_does_not_share_the_apis_client_ids(
    make_app: Callable[..., AppServer], api_first: bool,
) -> None:
    # The API deduplicated as the owner "api": a user whose token's sub was "api" and the
    # API, sending the same client_id, had one message dropped and acked under the other's id.
    from app.chat.auth import mint

    secret = "api-namespace-test-secret-" + "k" * 20
    api_server = make_app(env={"CHAT_API_TOKEN": API_TOKEN, "CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": secret})
    user = await Client.connect(api_server.ws_url("news", token=mint("api", ["news"], 600, secret)))

    async def from_user() -> int:
        ack = await user.post("from a user called api", client_id="shared")
        assert ack["type"] == "ack"
        return int(ack["id"])

    def from_api() -> int:
        status, body = post(api_server, "news", {"message": "from the backend", "client_id": "shared"})
        assert (status, body["duplicate"]) == (201, False)
        return int(body["id"])

    ids = [from_api(), await from_user()] if api_first else [await from_user(), from_api()]
    assert len(set(ids)) == 2
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    status, body = http_get(api_server.base + "/api/rooms/news/messages", headers=auth)
    assert status == 200
    texts = sorted(m["message"] for m in json.loads(body)["messages"])
    assert texts == ["from a user called api", "from the backend"]


def test_a_history_shorter_than_the_default_limit_is_read_by_default(
    make_app: Callable[..., AppServer],
) -> None:
    # The default limit (100) was checked against CHAT_HISTORY_MAX: below 100, every read
    # without a limit was refused 400 bad_limit.
    server = make_app(env={"CHAT_HISTORY_MAX": "5", "CHAT_API_TOKEN": API_TOKEN})
    for i in range(7):
        assert post(server, "short", {"message": str(i)})[0] == 201
    status, page = server.get("/api/rooms/short/messages")
    assert status == 200 and [m["message"] for m in page["messages"]] == ["2", "3", "4", "5", "6"]
    assert page["gap"] == {"from": 1, "to": 2}


def test_head_answers_as_get_does_without_the_body(api_server: AppServer) -> None:
    # RFC 9110 (9.3.2): wherever GET works; it answered 405 here.
    for path in ("/api/rooms/news/messages", "/api/rooms/news/presence"):
        request = urllib.request.Request(api_server.base + path, method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "application/json"
            assert response.read() == b""
