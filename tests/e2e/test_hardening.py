"""Access rules and limits over real sockets: each gives the documented error or close code,
and other clients are unaffected."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Callable

import jwt
import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.chat.auth import mint
from tests import wsraw
from tests.support import Client
from tools import ROOT
from tools.net import http_get, wait_until
from tools.procs import AppServer

SECRET = "jwt-secret-for-tests-" + "z" * 40
FAR = 253_402_300_000  # an exp in the year 9999


@pytest.fixture
def jwt_server(make_app: Callable[..., AppServer]) -> AppServer:
    return make_app(env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET})


async def test_jwt_token_admits_and_names_the_sender(jwt_server: AppServer) -> None:
    token = mint("alice", ["lobby"], 60, SECRET)
    alice = await Client.connect(jwt_server.ws_url("lobby", token=token))
    assert alice.ready["user"] == "alice"
    await alice.post("signed")
    [got] = await alice.messages(1)
    assert got["user"] == "alice"
    assert token not in jwt_server.output()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing_token"),
        ("garbage", "malformed_token"),
        # Minted at collection: a TTL longer than any suite run keeps them from expiring.
        (mint("mallory", ["lobby"], 86400, "not-the-secret-" + "q" * 40), "bad_signature"),
        (mint("alice", ["lobby"], 60, SECRET, now=1_000_000_000), "expired_token"),
        (mint("alice", ["kitchen"], 86400, SECRET), "room_not_allowed"),
        # Signed, with an exp no timer can hold: accepted before, then a traceback at the timer.
        (jwt.encode({"sub": "alice", "rooms": ["lobby"], "exp": float("nan")}, SECRET, algorithm="HS256"),
         "invalid_claims"),
        (jwt.encode({"sub": "alice", "rooms": ["lobby"], "exp": 10**400}, SECRET, algorithm="HS256"),
         "invalid_claims"),
        # Issued for another service (no CHAT_JWT_AUDIENCE here); valid only from an hour before FAR.
        (jwt.encode({"sub": "alice", "rooms": ["lobby"], "exp": FAR, "aud": "billing"}, SECRET, "HS256"),
         "wrong_audience"),
        (jwt.encode({"sub": "alice", "rooms": ["lobby"], "exp": FAR, "nbf": FAR - 3600}, SECRET, "HS256"),
         "token_not_yet_valid"),
    ],
)
async def test_bad_tokens_are_refused_with_403_and_counted(
    jwt_server: AppServer, token: str | None, reason: str
) -> None:
    query = {} if token is None else {"token": token}
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(jwt_server.ws_url("lobby", **query))
    assert info.value.response.status_code == 403
    assert json.loads(info.value.response.body)["code"] == reason
    assert jwt_server.metric(f'chat_handshakes_refused_total{{reason="{reason}"}}') == 1


def test_jwt_without_secret_refuses_to_start(make_app: Callable[..., AppServer]) -> None:
    server = make_app(env={"CHAT_AUTH": "jwt"}, wait=None)
    assert server.wait(10) == 2
    assert "CHAT_JWT_SECRET" in server.output()


def test_token_command_mints_a_token_the_server_accepts() -> None:
    env = {"CHAT_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "app", "token", "--sub", "bob", "--room", "lobby", "--ttl", "60"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )
    from app.chat.auth import authorize

    assert authorize(out.stdout.strip(), "lobby", SECRET).sub == "bob"


async def test_with_an_audience_configured_tokens_must_name_it(make_app: Callable[..., AppServer]) -> None:
    env = {"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET, "CHAT_JWT_AUDIENCE": "parley"}
    server = make_app(env=env)
    minted = subprocess.run(
        [sys.executable, "-m", "app", "token", "--sub", "bob", "--room", "lobby", "--ttl", "600"],
        cwd=ROOT, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    bob = await Client.connect(server.ws_url("lobby", token=minted))
    assert bob.ready["user"] == "bob"
    history = f"{server.base}/api/rooms/lobby/messages"
    assert http_get(history, headers={"Authorization": f"Bearer {minted}"})[0] == 200
    without = mint("bob", ["lobby"], 600, SECRET)
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(server.ws_url("lobby", token=without))
    assert json.loads(info.value.response.body)["code"] == "wrong_audience"
    status, body = http_get(history, headers={"Authorization": f"Bearer {without}"})
    assert status == 401 and json.loads(body)["code"] == "wrong_audience"
    await bob.close()


async def test_flooding_gets_rate_limited_then_closed_with_1008(make_app: Callable[..., AppServer]) -> None:
    # A refill rate this low means no token comes back during the test.
    server = make_app(env={"CHAT_RATE_PER_SECOND": "0.001", "CHAT_RATE_BURST": "2", "CHAT_RATE_STRIKES": "3"})
    flooder = await Client.connect(server.ws_url("lobby"))
    bystander = await Client.connect(server.ws_url("lobby"))
    assert (await flooder.post("1"))["type"] == "ack"
    assert (await flooder.post("2"))["type"] == "ack"
    limited = await flooder.post("3")
    assert (limited["type"], limited["code"]) == ("error", "rate_limited")
    await flooder.send("4")
    await flooder.send("5")
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await flooder.recv()
    assert info.value.rcvd.code == 1008 and info.value.rcvd.reason == "rate limit"
    assert (await bystander.post("unaffected"))["type"] == "ack"


async def test_a_ping_flood_is_closed_with_1008(make_app: Callable[..., AppServer]) -> None:
    # Pings are frames the peer sends: they take the same rate and burst as its messages.
    server = make_app(env={"CHAT_RATE_PER_SECOND": "0.001", "CHAT_RATE_BURST": "2"})
    bystander = await Client.connect(server.ws_url("lobby"))
    flooder = wsraw.open_socket(server.port)
    flooder.sendall(b"".join(wsraw.frame(b"%d" % i, opcode=0x9) for i in range(50)))
    frames = wsraw.read_frames(flooder, limit=10)  # returns when the server closes the connection
    flooder.close()
    assert frames[-1] == (0x8, struct.pack("!H", 1008) + b"rate limit")
    assert server.metric('chat_frames_rejected_total{reason="control_flood"}') == 1
    assert (await bystander.post("unaffected"))["type"] == "ack"


async def test_connection_limit_refuses_new_handshakes_only(make_app: Callable[..., AppServer]) -> None:
    server = make_app(env={"CHAT_MAX_CONNECTIONS": "2"})
    first = await Client.connect(server.ws_url("lobby"))
    second = await Client.connect(server.ws_url("lobby"))
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(server.ws_url("lobby"))
    assert info.value.response.status_code == 503
    assert json.loads(info.value.response.body)["code"] == "too_many_connections"
    assert (await first.post("still fine"))["type"] == "ack"
    await second.close()
    wait_until(lambda: server.metric("chat_connections_open") == 1, 10, "the close to be counted")
    third = await Client.connect(server.ws_url("lobby"))
    assert third.ready is not None


async def test_a_client_that_never_reads_is_dropped_and_memory_stays_bounded(
    make_app: Callable[..., AppServer],
) -> None:
    server = make_app(env={"CHAT_SEND_TIMEOUT": "1", "CHAT_RATE_PER_SECOND": "100000",
                           "CHAT_RATE_BURST": "100000", "CHAT_LAYER_CAPACITY": "100",
                           "CHAT_HISTORY_MAX": "10"})  # history is not what is measured
    stalled = wsraw.open_socket(server.port, rcvbuf=4096)
    reader = await Client.connect(server.ws_url("lobby"))
    sender = await Client.connect(server.ws_url("lobby"))
    process = psutil.Process(server.process.pid)

    text = "x" * 3900
    rss: dict[int, int] = {}
    for i in range(3000):  # ~12 MB to every member
        await sender.send(text, client_id=str(i))
        await sender.recv_type("ack")
        if i % 100 == 99:
            await reader.messages(100)
        if i in (999, 2999):
            rss[i] = process.memory_info().rss
    wait_until(lambda: server.metric("chat_slow_clients_total") == 1, 15, "the stalled client to be dropped")
    # The first thousand messages warm the allocator and fill the stalled socket's buffers;
    # past that, pushing ~8 MB more must not grow the server by anything like it.
    pushed = 2000 * len(text)
    assert rss[2999] - rss[999] < pushed / 2, f"grew {rss[2999] - rss[999]} while {pushed} were pushed"
    assert (await sender.post("after the drop"))["type"] == "ack"
    stalled.close()


def test_a_peer_that_answers_every_ping_stays_open_and_a_wrong_pong_counts_for_nothing(
        make_app: Callable[..., AppServer]) -> None:
    # A generous pong deadline: a busy test machine must not turn a late answer into a close.
    server = make_app(env={"CHAT_PING_INTERVAL": "0.2", "CHAT_PING_TIMEOUT": "3"})
    sock = wsraw.open_socket(server.port)
    payloads = []
    while len(payloads) < 5:  # five rounds: each ping answered, so each next one comes
        opcode, payload = wsraw.read_frame(sock)
        assert opcode != 0x8, "closed although every ping was answered"
        if opcode == 0x9:
            payloads.append(payload)
            sock.sendall(wsraw.frame(payload, opcode=0xA))
    assert len(set(payloads)) > 1  # each round's ping is its own, so stale pongs are told apart
    sock.sendall(wsraw.frame(json.dumps({"message": "still here", "client_id": "k1"}).encode()))
    while (frame := wsraw.read_frame(sock))[0] != 0x1 or json.loads(frame[1])["type"] != "ack":
        if frame[0] == 0x9:
            sock.sendall(wsraw.frame(frame[1], opcode=0xA))
    while (frame := wsraw.read_frame(sock))[0] != 0x9:
        pass
    sock.sendall(wsraw.frame(b"nope", opcode=0xA))  # a pong, but not to this ping
    frames = wsraw.read_frames(sock, limit=10)
    close = [payload for opcode, payload in frames if opcode == 0x8]
    assert close and struct.unpack("!H", close[0][:2])[0] == 1011
    sock.close()


def test_a_peer_that_never_answers_pings_is_closed(make_app: Callable[..., AppServer]) -> None:
    server = make_app(env={"CHAT_PING_INTERVAL": "0.2", "CHAT_PING_TIMEOUT": "0.2"})
    sock = wsraw.open_socket(server.port)
    frames = wsraw.read_frames(sock, limit=10)  # returns when the server closes the connection
    opcodes = [opcode for opcode, _ in frames]
    assert 0x9 in opcodes  # the ping we never answered
    close = [payload for opcode, payload in frames if opcode == 0x8]
    assert close and struct.unpack("!H", close[0][:2])[0] == 1011
    sock.close()
