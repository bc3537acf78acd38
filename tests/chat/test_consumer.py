"""The chat consumer end to end: a real server process, real WebSocket clients."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import Client
from tools.procs import AppServer, RedisServer


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, make_app: Callable[..., AppServer]) -> AppServer:
    """The server with the embedded in-memory layer, and with a real redis-server."""
    if request.param == "memory":
        return make_app()
    redis = request.getfixturevalue("redis_server")
    return make_app(env={"REDIS_URL": redis.url})


async def test_members_of_a_room_see_messages_and_other_rooms_do_not(server: AppServer) -> None:
    alice = await Client.connect(server.ws_url("lobby"))
    bob = await Client.connect(server.ws_url("lobby"))
    carol = await Client.connect(server.ws_url("kitchen"))

    ack = await alice.post("hi bob", client_id="a-1")
    assert ack == {"type": "ack", "id": 1, "client_id": "a-1"}
    [to_bob] = await bob.messages(1)
    [to_alice] = await alice.messages(1)
    assert to_bob == to_alice
    assert to_bob["message"] == "hi bob" and to_bob["room"] == "lobby" and to_bob["id"] == 1
    assert to_bob["user"] == alice.ready["user"] and isinstance(to_bob["ts"], int)

    # carol's room is separate: its first message is id 1 too, and she saw nothing of lobby.
    assert (await carol.post("anyone?"))["id"] == 1
    [own] = await carol.messages(1)
    assert own["message"] == "anyone?" and own["room"] == "kitchen"
    for client in (alice, bob, carol):
        await client.close()


BAD_FRAMES = [
    ("not json", "invalid_json"),
    ("[1]", "not_an_object"),
    ('{"message": 3}', "message_not_string"),
    ('{"message": ""}', "empty_message"),
    ("{}", "missing_message"),
    ('{"type": "shout", "message": "x"}', "unknown_type"),
    (json.dumps({"message": "x" * 4001}), "message_too_long"),
    (b"\x00\x01binary", "binary_frame"),
]


async def test_bad_input_gets_an_error_frame_and_reaches_nobody(server: AppServer) -> None:
    sender = await Client.connect(server.ws_url("lobby"))
    watcher = await Client.connect(server.ws_url("lobby"))
    for frame, code in BAD_FRAMES:
        await sender.send_raw(frame)
        error = await sender.recv()
        assert error["type"] == "error" and error["code"] == code and error["detail"]
    # The socket still works, and the first thing the watcher sees is the good message.
    assert (await sender.post("still here"))["id"] == 1
    [first] = await watcher.messages(1)
    assert first["message"] == "still here"
    assert watcher.skipped == []


async def test_frame_over_the_byte_limit_closes_with_1009(make_app: Callable[..., AppServer]) -> None:
    server = make_app(env={"CHAT_MAX_FRAME_BYTES": "1024"})
    client = await Client.connect(server.ws_url("lobby"))
    watcher = await Client.connect(server.ws_url("lobby"))
    await client.send("x" * 2000)
    with pytest.raises(ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert (await watcher.post("after"))["id"] == 1


@pytest.mark.parametrize("room", ["a%20b", "x" * 65, "%3Cscript%3E", "", "a%2Fb", "lobby%0A", ".", ".."])
async def test_bad_room_names_are_refused_at_the_handshake(app_server: AppServer, room: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(app_server.ws_url(room))
    assert info.value.response.status_code == 400
    assert json.loads(info.value.response.body)["code"] == "bad_room"


@pytest.mark.parametrize("query", ["since=1&since=2&epoch=e", "token=a&%74oken=b", "anon=x&anon=y"])
async def test_a_parameter_given_twice_is_refused_at_the_handshake(app_server: AppServer, query: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(f"{app_server.ws_url()}?{query}")
    assert info.value.response.status_code == 400
    assert json.loads(info.value.response.body)["code"] == "bad_query"


@pytest.mark.parametrize("path", ["/ws/nowhere/", "/ws/chat/lobby/%0A", "/ws/chat/lobby"])
async def test_unknown_websocket_path_is_404(app_server: AppServer, path: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(f"ws://127.0.0.1:{app_server.port}{path}")
    assert info.value.response.status_code == 404


async def test_foreign_origin_is_refused_and_own_origin_accepted(app_server: AppServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(app_server.ws_url(), origin="https://evil.example")
    assert info.value.response.status_code == 403
    own = await Client.connect(app_server.ws_url(), origin=f"http://127.0.0.1:{app_server.port}")
    assert own.ready is not None


async def test_two_processes_sharing_redis_chat_together(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    env = {"REDIS_URL": redis_server.url}
    one, two = make_app(env=env), make_app(env=env)
    on_one = await Client.connect(one.ws_url("lobby"))
    on_two = await Client.connect(two.ws_url("lobby"))
    assert (await on_one.post("from one"))["id"] == 1
    assert (await on_two.post("from two"))["id"] == 2
    for client in (on_one, on_two):
        got = await client.messages(2)
        assert [(m["id"], m["message"]) for m in got] == [(1, "from one"), (2, "from two")]


async def test_metrics_count_what_happened(app_server: AppServer) -> None:
    client = await Client.connect(app_server.ws_url("lobby"))
    await client.post("counted")
    await client.send_raw("nope")
    await client.recv_type("error")
    _, body = app_server.get("/metrics")
    text = body.decode()
    assert "chat_connections_open 1.0" in text
    assert "chat_messages_received_total 1.0" in text
    assert 'chat_frames_rejected_total{reason="invalid_json"} 1.0' in text
    assert "chat_ready 1.0" in text


async def test_a_send_redis_refuses_is_unavailable_and_its_reason_is_logged(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    # Redis at maxmemory (noeviction) refuses writes and still answers everything else: the
    # sender is told, and the operator could only guess why (a hostile probe: nothing logged).
    server = make_app(env={"REDIS_URL": redis_server.url})
    member = await Client.connect(server.ws_url("full"))
    redis_server.cli("CONFIG", "SET", "maxmemory", "1")
    answer = await member.post("no room for me", client_id="oom-1")
    assert answer["type"] == "error" and answer["code"] == "unavailable"
    assert "refusing sends: storage unavailable" in server.output()
    assert "maxmemory" in server.output()
    redis_server.cli("CONFIG", "SET", "maxmemory", "0")
    assert (await member.post("room now", client_id="oom-1"))["type"] == "ack"
    await member.close()
