"""Floods of frames against the real server: every frame handled once, in order, through the
receive queue (a Mailbox), parsing a little at a time while the application is busy
(app/process/websocket.py, ``_parse_ahead``), and refusals still answered once the handshake's
request and response are let go. From a hostile probe of those changes."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Callable

from tests import wsraw
from tests.support import AppServer, Client

FAST = {"CHAT_RATE_PER_SECOND": "100000", "CHAT_RATE_BURST": "100000", "CHAT_PRESENCE": "false"}
PING, PONG, CLOSE, CONT, TEXT = 0x9, 0xA, 0x8, 0x0, 0x1


def _burst(count: int, tag: str) -> bytes:
    """``count`` chat frames, every 7th split in three fragments, a ping after every 5th."""
    out = []
    for i in range(count):
        payload = json.dumps({"message": f"{tag}{i}", "client_id": f"{tag}{i}"}).encode()
        if i % 7 == 3:
            a, b = len(payload) // 3, 2 * len(payload) // 3
            out += [wsraw.frame(payload[:a], TEXT, fin=False), wsraw.frame(payload[a:b], CONT, fin=False),
                    wsraw.frame(payload[b:], CONT, fin=True)]
        else:
            out.append(wsraw.frame(payload))
        if i % 5 == 4:
            out.append(wsraw.frame(b"p%d" % i, PING))
    return b"".join(out)


async def test_a_flood_with_pings_and_fragments_is_acked_once_each_in_order(
    make_app: Callable[..., AppServer],
) -> None:
    server = make_app(env=FAST)
    count = 400
    sock = await asyncio.to_thread(wsraw.open_socket, server.port, "/ws/chat/flood/", None, 60)
    sock.sendall(_burst(count, "a"))
    acks: list[str] = []
    shown: list[str] = []  # the sender is a member of its room: its messages come back too
    pongs = 0

    def read_until_acked() -> None:  # wsraw.read_frame raises if the server closes first
        nonlocal pongs
        while len(acks) < count:
            opcode, payload = wsraw.read_frame(sock)
            if opcode == PONG:
                pongs += 1
            elif opcode == TEXT:
                frame = json.loads(payload)
                if frame["type"] == "ack":
                    acks.append(frame["client_id"])
                elif frame["type"] == "message":
                    shown.append(frame["message"])
                else:
                    assert frame["type"] == "ready", frame

    await asyncio.to_thread(read_until_acked)
    assert acks == [f"a{i}" for i in range(count)]
    assert shown == [f"a{i}" for i in range(len(shown))]  # once each, in order, so far
    assert pongs == count // 5
    sock.close()
    assert "Traceback" not in server.output()


async def test_frames_sent_with_the_close_in_one_write_are_all_stored_once(
    make_app: Callable[..., AppServer],
) -> None:
    server = make_app(env={**FAST, "CHAT_HISTORY_MAX": "2000"})
    count = 300

    def send_and_leave(tag: str) -> None:
        sock = wsraw.open_socket(server.port, "/ws/chat/leave/", timeout=60)
        sock.sendall(_burst(count, tag) + wsraw.frame(struct.pack("!H", 1000), CLOSE))
        sock.shutdown(socket.SHUT_WR)  # no RST: the server reads all it was sent
        while sock.recv(65536):
            pass
        sock.close()

    await asyncio.gather(*(asyncio.to_thread(send_and_leave, f"r{r}-") for r in range(5)))
    reader = await Client.connect(server.ws_url("leave", last="1500"), wait_ready=False)
    got = [m["message"] for m in await reader.messages(1500)]
    await reader.close()
    expected = [f"r{r}-{i}" for r in range(5) for i in range(count)]
    assert sorted(got) == sorted(expected)
    assert "Traceback" not in server.output()


HEAD = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n{extra}\r\n"
)


def _answer(port: int, path: str, extra: str = "") -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(HEAD.format(path=path, port=port, extra=extra).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    if head.startswith(b"HTTP/1.1 101"):
        return data
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


async def test_refusals_and_deflate_answer_after_the_handshake_objects_go(
    make_app: Callable[..., AppServer],
) -> None:
    server = make_app(env={**FAST, "CHAT_WS_COMPRESSION": "true", "CHAT_MAX_CONNECTIONS": "2"})
    port = server.port
    cases = [
        ("/ws/chat/lobby/", "Origin: http://evil.example\r\n", 403, b"origin_not_allowed"),
        ("/ws/nope/", "", 404, b"not_found"),
        ("/ws/chat/bad%20room!/", "", 400, b"bad_room"),
        ("/ws/chat/lobby/?last=x", "", 400, b""),
    ]
    for path, extra, status, code in cases:
        answer = await asyncio.to_thread(_answer, port, path, extra)
        assert answer.startswith(b"HTTP/1.1 %d" % status), (path, answer)
        assert code in answer.split(b"\r\n\r\n", 1)[1], (path, answer)
    # Accepted with deflate (and no subprotocol chosen), then used.
    from websockets.asyncio.client import connect

    async with connect(server.ws_url("lobby"), subprotocols=["chat"],  # type: ignore[list-item]
                       compression="deflate") as ws:
        assert ws.protocol.extensions, "permessage-deflate not negotiated"
        client = Client(ws)
        await client.recv_type("ready")
        assert (await client.post("x" * 500))["type"] == "ack"
        second = await Client.connect(server.ws_url("lobby"))
        full = await asyncio.to_thread(_answer, port, "/ws/chat/lobby/")
        assert full.startswith(b"HTTP/1.1 503") and b"too_many_connections" in full, full
        await second.close()
    output = server.output()
    assert "Traceback" not in output and "ERROR" not in output, output


async def test_a_drain_with_floods_and_a_half_sent_handshake_ends_within_its_budget(
    make_app: Callable[..., AppServer],
) -> None:
    # A connection accepted just before uvicorn's shutdown step (its connection_made still
    # queued) escaped that step's close, and was held until its handshake deadline: about one
    # drain in eight waited out its budget ("timeout graceful shutdown exceeded").
    server = make_app(env={**FAST, "SHUTDOWN_TIMEOUT": "5"})
    socks = [await asyncio.to_thread(wsraw.open_socket, server.port, f"/ws/chat/d{i % 3}/", None, 60)
             for i in range(30)]
    for i, sock in enumerate(socks):
        sock.sendall(_burst(300, f"s{i}-"))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(HEAD.format(path="/ws/chat/d0/", port=server.port, extra="").encode()[:40])
    server.signal()
    assert server.wait(15) == 0
    for sock in socks:
        sock.close()
    half.close()
    output = server.output()
    assert "Traceback" not in output and "one receiver" not in output, output
    assert "timeout graceful shutdown exceeded" not in output, output
