"""Live fuzz: hostile frames at a running server, for a bounded count. The server never
crashes, bystanders keep chatting, and tasks and memory return to where they were."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Callable, Iterator

import psutil

from tests import wsraw
from tests.support import Client
from tools.net import wait_until
from tools.procs import AppServer

ROUNDS = 120


def hostile_payloads(rng: random.Random) -> Iterator[tuple[str, bytes, int]]:
    """(kind, raw bytes to write after the handshake, opcode used)."""
    while True:
        kind = rng.choice(["random_text", "binary", "bad_utf8", "nested", "huge", "truncated",
                           "bad_opcode", "json_junk", "fragment_only", "control_too_long"])
        if kind == "random_text":
            text = "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 300)))
            yield kind, wsraw.frame(text.encode()), 1
        elif kind == "binary":
            yield kind, wsraw.frame(rng.randbytes(rng.randrange(1, 2000)), opcode=0x2), 2
        elif kind == "bad_utf8":
            yield kind, wsraw.frame(b'{"message":"\xff\xfe\xc3"}'), 1
        elif kind == "nested":
            depth = rng.randrange(1000, 20000)
            yield kind, wsraw.frame(("[" * depth + "]" * depth).encode()), 1
        elif kind == "huge":
            yield kind, wsraw.frame(b"x" * 70000), 1
        elif kind == "truncated":
            whole = wsraw.frame(json.dumps({"message": "cut"}).encode())
            yield kind, whole[: rng.randrange(1, len(whole))], 1
        elif kind == "bad_opcode":
            yield kind, wsraw.frame(b"??", opcode=rng.choice([0x3, 0x4, 0xB])), 3
        elif kind == "json_junk":
            junk = rng.choice(['{"message": {"a": 1}}', '{"message": [1]}', '{"type": null}',
                               '{"message": "x", "client_id": {"$gt": ""}}', "1e999999", "null"])
            yield kind, wsraw.frame(junk.encode()), 1
        elif kind == "fragment_only":
            yield kind, wsraw.frame(b'{"mess', fin=False), 1
        else:
            yield kind, wsraw.frame(b"p" * 200, opcode=0x9), 9


async def test_hostile_frames_never_hurt_the_server_or_bystanders(
    make_app: Callable[..., AppServer],
) -> None:
    server = make_app(env={"CHAT_RATE_PER_SECOND": "100000", "CHAT_RATE_BURST": "100000"})
    alice = await Client.connect(server.ws_url("lobby"))
    bob = await Client.connect(server.ws_url("lobby"))
    await alice.post("warm-up")
    await bob.messages(1)
    process = psutil.Process(server.process.pid)
    tasks_before = server.metric("chat_asyncio_tasks")
    rss_before = process.memory_info().rss

    rng = random.Random(20261122)
    payloads = hostile_payloads(rng)
    seen_kinds: set[str] = set()
    for round_number in range(ROUNDS):
        kind, raw, _ = next(payloads)
        seen_kinds.add(kind)
        sock = wsraw.open_socket(server.port)
        try:
            sock.sendall(raw)
            if kind == "truncated":
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have closed on us: that is an allowed answer
        sock.close()
        if round_number % 10 == 0:
            await alice.post(f"between {round_number}")
    assert len(seen_kinds) == 10

    assert server.process.poll() is None
    assert (await alice.post("after the storm"))["type"] == "ack"
    got = await bob.messages(ROUNDS // 10 + 1)
    assert got[-1]["message"] == "after the storm"
    assert [m["id"] for m in got] == list(range(2, 2 + len(got)))

    wait_until(lambda: server.metric("chat_connections_open") == 2, 15, "hostile sockets to close")
    wait_until(lambda: server.metric("chat_asyncio_tasks") <= tasks_before, 15,
               "tasks to return to their count before the fuzz")
    assert process.memory_info().rss - rss_before < 64 * 1024 * 1024
    assert "Traceback" not in server.output()
