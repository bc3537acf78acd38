"""Connections that stall or overflow before their request completes: cut, answered, logged once."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from app.chat.ratelimit import ARRIVED
from app.process.handshake import MAX_PIPELINED, GuardedHttpToolsProtocol, guarded_protocols
from app.process.websocket import PARSE_AHEAD, ArrivalStamps
from tests import wsraw
from tests.support import AppServer, http_get, run_python, wait_until

TIMEOUT = "0.5"
# Generous: the server's deadline is TIMEOUT; this only stops a broken server hanging the test.
EOF_BOUND = 15.0
UPGRADE = (
    b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.fixture
def guarded(make_app: Callable[..., AppServer]) -> AppServer:
    return make_app(env={"CHAT_HANDSHAKE_TIMEOUT": TIMEOUT})


async def _open(app: AppServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", app.port)


async def _response(app: AppServer, request: bytes) -> bytes:
    reader, writer = await _open(app)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), EOF_BOUND)  # to EOF: the server closes
    writer.close()
    return answer


def _cut(app: AppServer, reason: str) -> int:
    _, body = http_get(app.base + "/metrics")
    match = re.search(rf'chat_connections_cut_total{{reason="{reason}"}} (\S+)', body.decode())
    return int(float(match.group(1))) if match else 0


async def test_an_idle_connection_is_closed_after_the_timeout(guarded: AppServer) -> None:
    reader, writer = await _open(guarded)
    assert await asyncio.wait_for(reader.read(), EOF_BOUND) == b""  # EOF, no answer
    writer.close()
    assert _cut(guarded, "handshake_timeout") == 1
    assert "connection cut before its request completed: handshake_timeout" in guarded.output()


async def test_a_handshake_sent_a_byte_at_a_time_is_closed(guarded: AppServer) -> None:
    reader, writer = await _open(guarded)
    request = b"GET /ws/chat/lobby/ HTTP/1.1\r\n" + UPGRADE + b"\r\n"
    closed = asyncio.ensure_future(reader.read())
    sent = 0
    # Never the whole request: the loop ends when the server has closed the socket.
    while not closed.done() and sent < len(request) - 1:
        writer.write(request[sent:sent + 1])
        sent += 1
        await asyncio.wait([closed], timeout=0.1)
    assert await asyncio.wait_for(closed, EOF_BOUND) == b""
    assert sent < len(request) - 1, "the server waited for the whole slow request"
    writer.close()


async def test_a_half_sent_http_request_is_closed(guarded: AppServer) -> None:
    reader, writer = await _open(guarded)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert await asyncio.wait_for(reader.read(), EOF_BOUND) == b""
    writer.close()


async def test_a_kept_alive_connection_gets_the_same_deadline(guarded: AppServer) -> None:
    reader, writer = await _open(guarded)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EOF_BOUND)
    assert head.startswith(b"HTTP/1.1 200")
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # the second request never completes
    rest = await asyncio.wait_for(reader.read(), EOF_BOUND)
    assert b"HTTP/1.1" not in rest.split(b"\r\n\r\n", 1)[-1]
    writer.close()


async def _closed(reader: asyncio.StreamReader, bound: float = EOF_BOUND) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), bound) == b""
    except ConnectionResetError:  # never accepted: libuv resets what it can't take when out of fds
        return True


async def test_stalled_sockets_that_exhaust_descriptors_are_cut_and_healthz_recovers(
    guarded: AppServer,
) -> None:
    assert guarded.process is not None
    # Few descriptors, then more stalled sockets than that: without the deadline the accepted
    # ones are held forever and every later connection, /healthz included, is refused.
    # This starts as soon as /readyz answers, before warm-up has imported the metrics (in a
    # thread, after ready) whenever the machine is busy: the import then fails for want of
    # descriptors, and the cuts and warm-up must not depend on it.
    psutil.Process(guarded.process.pid).rlimit(psutil.RLIMIT_NOFILE, (96, 96))
    stalled = [await _open(guarded) for _ in range(200)]
    for reader, writer in stalled:
        # Past the descriptor limit they are cut in waves, one deadline each: the bound on
        # the wait grows with the waves on a busy machine, the deadline itself does not.
        assert await _closed(reader, bound=4 * EOF_BOUND)
        writer.close()
    status, _ = await asyncio.to_thread(http_get, guarded.base + "/healthz", EOF_BOUND)
    assert status == 200
    # Counted one by one, logged a few times at most; warm-up completed.
    assert _cut(guarded, "handshake_timeout") >= 50
    assert guarded.output().count("handshake_timeout") < 10
    wait_until(lambda: http_get(guarded.base + "/readyz", EOF_BOUND)[0] == 200, EOF_BOUND, "ready")


async def test_healthz_answers_while_many_sockets_stall(guarded: AppServer) -> None:
    stalled = [await _open(guarded) for _ in range(300)]
    status, _ = await asyncio.to_thread(http_get, guarded.base + "/healthz", EOF_BOUND)
    assert status == 200
    for reader, writer in stalled:
        assert await _closed(reader)
        writer.close()


async def test_a_websocket_url_over_8_kb_gets_414(guarded: AppServer) -> None:
    url = b"/ws/chat/lobby/?token=" + b"a" * 9 * 1024
    answer = await _response(guarded, b"GET " + url + b" HTTP/1.1\r\n" + UPGRADE + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 414")


async def test_a_plain_url_over_8_kb_gets_414(guarded: AppServer) -> None:
    answer = await _response(guarded, b"GET /healthz?" + b"a" * 9 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414")


@pytest.mark.parametrize("size", [9 * 1024, 40 * 1024])
async def test_big_websocket_headers_get_431(guarded: AppServer, size: int) -> None:
    big = b"X-Big: " + b"a" * size + b"\r\n"
    answer = await _response(guarded, b"GET /ws/chat/lobby/ HTTP/1.1\r\n" + UPGRADE + big + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")


async def test_a_websocket_handshake_with_a_body_gets_400(guarded: AppServer) -> None:
    # websockets refuses a handshake with a body and queues no answer: the connection was
    # closed without a word (a hostile probe).
    request = b"GET /ws/chat/lobby/ HTTP/1.1\r\n" + UPGRADE + b"Content-Length: 1\r\n\r\nx"
    answer = await _response(guarded, request)
    assert answer.startswith(b"HTTP/1.1 400")


async def test_big_http_headers_get_431(guarded: AppServer) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
    answer = await _response(guarded, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")


async def test_a_refused_handshake_logs_its_reason_not_an_error(guarded: AppServer) -> None:
    request = b"GET /ws/chat/lobby/ HTTP/1.1\r\nOrigin: http://elsewhere.example\r\n" + UPGRADE + b"\r\n"
    for _ in range(5):
        assert (await _response(guarded, request)).startswith(b"HTTP/1.1 403")
    output = guarded.output()
    assert "without completing handshake" not in output and "ERROR" not in output
    assert output.count("handshake refused: 403 origin_not_allowed") == 1


@pytest.mark.unit
async def test_frames_are_stamped_with_when_they_were_read() -> None:
    queue = ArrivalStamps()
    before = time.monotonic()
    queue.put_nowait({"type": "websocket.receive", "text": "hi"})
    queue.put_nowait({"type": "websocket.disconnect", "code": 1000})
    frame, disconnect = await queue.get(), await queue.get()
    assert before <= frame[ARRIVED] <= time.monotonic()
    assert ARRIVED not in disconnect
    # Drained, as an open socket's queue nearly always is, it holds no container at all
    # (uvicorn's asyncio.Queue held four deques and an Event: 3 KB per socket).
    assert queue.empty()
    assert [ref for ref in gc.get_referents(queue) if gc.is_tracked(ref) and not isinstance(ref, type)] == []


def test_a_cut_is_counted_without_loading_the_metrics() -> None:
    # Loading them imports prometheus-client, which needs descriptors a flood may have taken.
    code = (
        "import sys; from app import metrics; from app.process import cuts; "
        "cuts.count_cut('handshake_timeout', None); "
        "assert 'prometheus_client' not in sys.modules; "
        "assert metrics.CUTS == {'handshake_timeout': 1}; "
        "print('ok')"
    )
    out = run_python(code)
    assert out.stdout.strip() == "ok", out.stderr


def _live(kind: type) -> int:
    return sum(issubclass(type(obj), kind) for obj in gc.get_objects())  # type(): proxies too


class InProcess:
    """A uvicorn server with Parley's guarded protocols on this test's loop (real sockets),
    so a test can look at its connections' own state."""

    def __init__(self, app: Any, control_rate: float = 20.0, control_burst: int = 40, **config: Any) -> None:
        from uvicorn import Config
        from uvicorn.server import ServerState

        self.http_class, ws_class = guarded_protocols(5.0, control_rate, control_burst)
        self.config = Config(
            app, http=self.http_class, ws=ws_class, lifespan="off", log_level="warning", **config
        )
        self.config.load()
        self.state = ServerState()
        self.port = 0

    async def __aenter__(self) -> InProcess:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: self.http_class(config=self.config, server_state=self.state, app_state={}),
            "127.0.0.1", 0,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for connection in list(self.state.connections):
            connection.transport.abort()
        self.server.close()
        await self.server.wait_closed()


async def _echo_until_closed(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_closed_websockets_leave_no_cycle_for_the_collector() -> None:
    # websockets' parser generator held its own connection: every closed socket left a cycle
    # (protocol, reader, frames, buffers) that only the cyclic GC freed, and under churn
    # pymalloc's arenas crept up while it waited (issue #16). With collections off, refcounting
    # alone must free every closed connection's state.
    from websockets.asyncio.client import connect
    from websockets.server import ServerProtocol

    async with InProcess(_echo_until_closed) as server:
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
                    await ws.send("hi")
            # The server finishes each close a little after its client: wait (bounded) for the
            # application tasks to end, then count what is left.
            for _ in range(1000):
                if not server.state.tasks and not server.state.connections:
                    break
                await asyncio.sleep(0.01)
            assert not server.state.tasks and not server.state.connections
            assert _live(ServerProtocol) == 0
        finally:
            gc.enable()


async def test_an_open_websocket_keeps_nothing_of_its_handshake() -> None:
    # Its request and response (headers and all) are not needed once the 101 is sent: kept,
    # they were a tenth of an idle socket's memory.
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.asyncio.client import connect
    from websockets.http11 import Request, Response

    async with InProcess(_echo_until_closed) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send("hi")
            sockets = [c for c in server.state.connections if isinstance(c, WebSocketsSansIOProtocol)]
            assert len(sockets) == 1 and sockets[0].handshake_complete
            held = [value for value in vars(sockets[0]).values() if isinstance(value, (Request, Response))]
            assert held == []


async def test_a_read_of_many_small_frames_is_parsed_a_little_at_a_time() -> None:
    # One read brings up to 256 KB. Parsed at once, its empty frames (6 bytes each) became a
    # message dict apiece, ~20 times what was sent, before reading could pause. While the
    # application is busy, at most PARSE_AHEAD of it is parsed; every frame still reaches
    # it, once and in order.
    count = 40_000
    gate, busy, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    got: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        busy.set()
        await gate.wait()
        while (message := await receive())["type"] != "websocket.disconnect":
            got.append(message)
            if message.get("text") == "end":
                done.set()

    async with InProcess(app) as server:
        reader, writer = await _raw_websocket(server.port)
        writer.write(wsraw.frame(b"") * count + wsraw.frame(b"end"))
        await asyncio.wait_for(busy.wait(), EOF_BOUND)
        (protocol,) = [c for c in server.state.connections if isinstance(c.queue, ArrivalStamps)]
        assert protocol.read_paused
        assert protocol.queue.qsize() <= PARSE_AHEAD // len(wsraw.frame(b""))
        gate.set()
        await asyncio.wait_for(done.wait(), EOF_BOUND)
        writer.write(wsraw.frame(struct.pack("!H", 1000), 0x8))
        await writer.drain()
        writer.close()
    assert [message["text"] for message in got] == [""] * count + ["end"]


async def _raw_websocket(
    port: int, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET / HTTP/1.1\r\n" + UPGRADE + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EOF_BOUND)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readexactly(2), EOF_BOUND)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return head[0] & 0x0F, await reader.readexactly(length)


PING, PONG, CLOSE = 0x9, 0xA, 0x8


async def test_pings_past_the_rate_limit_close_the_socket_1008() -> None:
    # Each ping costs the server a parse and a pong: they are metered like the peer's frames.
    async with InProcess(_echo_until_closed, control_rate=0.001, control_burst=5) as server:
        reader, writer = await _raw_websocket(server.port)
        writer.write(b"".join(wsraw.frame(b"p%d" % i, opcode=PING) for i in range(5)))
        assert [await _read_frame(reader) for _ in range(5)] == [(PONG, b"p%d" % i) for i in range(5)]
        writer.write(wsraw.frame(b"one too many", opcode=PING))
        opcode, payload = await _read_frame(reader)
        assert opcode == CLOSE and payload == (1008).to_bytes(2, "big") + b"rate limit"
        assert await asyncio.wait_for(reader.read(), EOF_BOUND) == b""  # no pong, then EOF
        writer.close()


async def test_unsolicited_pongs_count_but_answers_to_the_servers_pings_do_not() -> None:
    limits = {"control_rate": 0.001, "control_burst": 3}
    async with InProcess(_echo_until_closed, ws_ping_interval=0.05, ws_ping_timeout=5.0, **limits) as server:
        reader, writer = await _raw_websocket(server.port)
        for _ in range(10):  # more answers than the burst: answering the server's pings is free
            opcode, payload = await _read_frame(reader)
            assert opcode == PING
            writer.write(wsraw.frame(payload, opcode=PONG))
        writer.write(b"".join(wsraw.frame(b"heartbeat", opcode=PONG) for _ in range(4)))
        while (frame := await _read_frame(reader))[0] == PING:
            pass
        assert frame == (CLOSE, (1008).to_bytes(2, "big") + b"rate limit")
        writer.close()


async def test_a_peer_that_pings_and_never_reads_leaves_one_pong_buffered() -> None:
    # uvicorn wrote one pong per ping whatever the peer read: 12 MB of pings from a client that
    # never read left ~8 MB of pongs in the server's memory (the kernel holds ~4 MB). Now,
    # past the transport's high-water mark, only the latest ping's pong is kept.
    got_text = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            if message.get("text") == "done":
                got_text.set()

    async with InProcess(app, control_rate=1e9, control_burst=10**9) as server:
        reader, writer = await _raw_websocket(server.port, rcvbuf=4096)
        burst = wsraw.frame(b"x" * 125, opcode=PING) * 1000  # 131 KB
        for _ in range(12 * 1024 * 1024 // len(burst)):
            writer.write(burst)
            await writer.drain()
        writer.write(wsraw.frame(b"the last one", opcode=PING) + wsraw.frame(b"done"))
        await writer.drain()
        await asyncio.wait_for(got_text.wait(), 60)  # frames are handled in order: all pings were
        [protocol] = server.state.connections
        assert protocol.transport.get_write_buffer_size() < 1024 * 1024
        # Reading again, the peer gets the latest ping's pong.
        while (frame := await _read_frame(reader)) != (PONG, b"the last one"):
            assert frame == (PONG, b"x" * 125)
        writer.close()


CONT, TEXT = 0x0, 0x1


async def test_a_message_left_open_with_endless_empty_fragments_is_closed_1009(
    make_app: Callable[..., AppServer],
) -> None:
    # Empty continuation frames never reached websockets' byte limit nor the application's
    # rate limit: uvicorn appended each to a list, read after read, forever (one core pinned,
    # +140 MB a minute). A message in more than MAX_FRAGMENTS pieces is now closed 1009.
    from websockets.asyncio.client import connect

    app = make_app()
    async with connect(app.ws_url("frag"), open_timeout=10) as member:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET /ws/chat/frag/ HTTP/1.1\r\n" + UPGRADE + b"\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EOF_BOUND)).startswith(b"HTTP/1.1 101")
        writer.write(wsraw.frame(b"{", opcode=TEXT, fin=False))
        empty = wsraw.frame(b"", opcode=CONT, fin=False)
        closed = asyncio.ensure_future(_close_frame(reader))
        for _ in range(1000):  # bounded: the old server read them all, and more, forever
            if closed.done():
                break
            writer.write(empty * 100)
            await writer.drain()
            await asyncio.wait([closed], timeout=0.01)
        assert await asyncio.wait_for(closed, EOF_BOUND) == (1009).to_bytes(2, "big") + b"too many fragments"
        writer.close()
        # The room's other member is unaffected.
        pong = await member.ping()
        await asyncio.wait_for(pong, EOF_BOUND)
    assert app.metric('chat_frames_rejected_total{reason="too_many_fragments"}') == 1


async def _close_frame(reader: asyncio.StreamReader) -> bytes:
    """The payload of the server's close frame (frames before it skipped)."""
    while (frame := await _read_frame(reader))[0] != CLOSE:
        pass
    return frame[1]


async def test_a_message_in_a_few_fragments_is_delivered(make_app: Callable[..., AppServer]) -> None:
    from tests.support import Client

    app = make_app()
    client = await Client.connect(app.ws_url("frag"))
    try:
        pieces = ['{"message": "in', ' pieces", "client_id": "frag-1"', "}"] + [" "] * 13
        await client.send_raw(pieces)  # websockets sends an iterable as one fragmented message
        assert (await client.recv_type("ack"))["client_id"] == "frag-1"
    finally:
        await client.ws.close()


async def test_continuation_frames_past_their_budget_close_the_socket_1008() -> None:
    # MAX_FRAGMENTS (64) continuation frames for each message of the burst (here 1): complete
    # fragmented messages sent faster than that are closed at the protocol, as pings are.
    async with InProcess(_echo_until_closed, control_rate=0.001, control_burst=1) as server:
        reader, writer = await _raw_websocket(server.port)
        message = wsraw.frame(b"a", opcode=TEXT, fin=False) + wsraw.frame(b"b", opcode=CONT, fin=False) * 8 \
            + wsraw.frame(b"c", opcode=CONT)  # 9 continuation frames
        writer.write(message * 8)  # 72 continuation frames
        close = await asyncio.wait_for(_close_frame(reader), EOF_BOUND)
        assert close == (1008).to_bytes(2, "big") + b"rate limit"
        assert await asyncio.wait_for(reader.read(), EOF_BOUND) == b""
        writer.close()


async def test_a_client_that_never_reads_its_answers_is_cut(make_app: Callable[..., AppServer]) -> None:
    # close() at the request deadline waits for the buffer to be sent: a client that asked
    # for big answers and never read them held them in the server for good (24 MB each for
    # a full room's history). Past CHAT_SEND_TIMEOUT without reading, the connection is aborted.
    app = make_app(env={"CHAT_SEND_TIMEOUT": "0.5", "CHAT_HANDSHAKE_TIMEOUT": TIMEOUT})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", app.port))
    try:
        # 400 pipelined answers of the page's script, 13 MB: more than the kernel's buffers
        # hold, so the rest waits in the server's.
        sock.sendall(b"GET /static/chat.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 400)
        wait_until(lambda: _cut(app, "send_timeout") == 1, EOF_BOUND, "the unread answers to be cut")
        assert "connection cut not reading its answer: send_timeout" in app.output()
    finally:
        sock.close()


def _peak_rss_kb(app: AppServer) -> int:
    """The server process's peak resident memory so far (VmHWM): no sample can miss it."""
    assert app.process is not None
    with open(f"/proc/{app.process.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


async def test_a_client_pipelining_without_end_and_never_reading_holds_little(
    make_app: Callable[..., AppServer],
) -> None:
    # uvicorn queued every request of every read and read again after each answer: one
    # socket's 2 MB of pipelined requests was 40,000 queued requests, ~100 MB, held until
    # its client was cut. Now the server parses MAX_PIPELINED ahead and reads no more until
    # the queue is answered down: the rest waits in the client's socket buffers.
    app = make_app(env={"CHAT_SEND_TIMEOUT": "1"})
    request = b"GET /static/chat.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    # Django's static files, the metrics, the server's first answers: loaded before the peak
    # is read, so what the pipeline costs is all that comes after.
    assert http_get(app.base + "/static/chat.js", EOF_BOUND)[0] == 200
    assert _cut(app, "send_timeout") == 0
    before = _peak_rss_kb(app)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", app.port))

    def send() -> None:
        # Blocks once the server stops reading and the kernel's buffers are full; the cut
        # (the answers, 33 KB each, are never read) ends it with a reset.
        try:
            sock.sendall(request * (2 * 1024 * 1024 // len(request)))
        except OSError:
            pass

    sender = threading.Thread(target=send)
    sender.start()
    try:
        # The server has done all it will for this client once it cuts it for not reading.
        wait_until(lambda: _cut(app, "send_timeout") == 1, 6 * EOF_BOUND, "the unread answers to be cut")
    finally:
        sock.close()
        sender.join(EOF_BOUND)
    grown_mb = (_peak_rss_kb(app) - before) / 1024
    assert grown_mb < 24, f"the server grew by {grown_mb:.0f} MB for one pipelining socket"
    assert http_get(app.base + "/healthz", EOF_BOUND)[0] == 200


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer off ``reader``: its status and body (by length, or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EOF_BOUND)
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head, re.IGNORECASE)
    if length is not None:
        return status, await asyncio.wait_for(reader.readexactly(int(length.group(1))), EOF_BOUND)
    assert re.search(rb"\r\ntransfer-encoding: chunked\r\n", head, re.IGNORECASE), head
    body = b""
    while size := int((await asyncio.wait_for(reader.readuntil(b"\r\n"), EOF_BOUND)).strip(), 16):
        body += (await asyncio.wait_for(reader.readexactly(size + 2), EOF_BOUND))[:-2]
    await asyncio.wait_for(reader.readexactly(2), EOF_BOUND)
    return status, body


async def test_a_handful_of_pipelined_requests_are_answered_in_order(
    make_app: Callable[..., AppServer],
) -> None:
    app = make_app(env={"CHAT_API_TOKEN": "tok"})

    def post(text: str) -> bytes:
        body = b'{"message": "%s", "client_id": "pipe-%s"}' % (text.encode(), text.encode())
        return (
            b"POST /api/rooms/pipe/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", post("one"),
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", post("two"),
        b"GET /api/rooms/pipe/messages HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    reader, writer = await _open(app)
    writer.write(b"".join(requests))  # all at once: one read
    answers = [await _answer(reader) for _ in requests]
    writer.close()
    assert [status for status, _ in answers] == [200, 201, 200, 201, 200]
    assert answers[0][1] == b'{"status":"ok"}' and b'"ready"' in answers[2][1]
    # The history read went after both posts: each request waits for the one before it.
    assert [m["message"] for m in json.loads(answers[4][1])["messages"]] == ["one", "two"]


async def test_a_reading_client_pipelining_past_the_bound_gets_every_answer_in_order(
    make_app: Callable[..., AppServer],
) -> None:
    # Many times MAX_PIPELINED: the server holds the rest back and reads on as it answers.
    app = make_app()
    # Not a plain alternation: an answer lost, repeated or out of place shows in the pattern.
    paths = [b"/healthz", b"/readyz", b"/readyz"] * (10 * MAX_PIPELINED)
    reader, writer = await _open(app)
    writer.write(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path for path in paths))
    answers = [await _answer(reader) for _ in paths]
    writer.close()
    assert all(status == 200 for status, _ in answers)
    assert [b"ready" in body for _, body in answers] == [path != b"/healthz" for path in paths]


async def _answer_when_told(gate: asyncio.Event, scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await gate.wait()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_dropped_pipelining_client_leaves_no_queue_for_the_collector() -> None:
    # uvicorn kept a lost connection's queued requests, each bound to its protocol through
    # on_response: a cycle, so a dropped client's whole queue waited for a full collection
    # (a hostile probe: 417,724 requests, still there 10 s after the close). With
    # collections off, refcounting alone must free them as the connection goes.
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    gate = asyncio.Event()
    async with InProcess(functools.partial(_answer_when_told, gate), interface="asgi3") as server:
        gc.collect()
        gc.disable()
        try:
            _, writer = await _open_port(server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
            await writer.drain()
            # Bounded waits for the server's own state: the first request in flight (held at
            # the gate), the nine behind it queued.
            for _ in range(1000):
                if any(len(c.pipeline) == 9 for c in server.state.connections):
                    break
                await asyncio.sleep(0.01)
            assert [len(c.pipeline) for c in server.state.connections] == [9]
            # The client goes, with a reset. Reading is paused while requests are queued, so
            # the server learns it when it writes the answer in flight, which fails: the
            # connection is lost with nine requests still queued.
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            writer.transport.abort()
            gate.set()
            for _ in range(1000):
                if not server.state.tasks and not server.state.connections:
                    break
                await asyncio.sleep(0.01)
            assert not server.state.tasks and not server.state.connections
            assert _live(RequestResponseCycle) == 0
            assert _live(GuardedHttpToolsProtocol) == 0
        finally:
            gc.enable()


async def _open_port(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_invalid_requests_and_upgrades_by_the_thousand_log_one_line(guarded: AppServer) -> None:
    # uvicorn logged a warning per request: one client made 5,000 lines a second.
    for _ in range(20):
        invalid = b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
        assert (await _response(guarded, invalid)).startswith(b"HTTP/1.1 400")
        upgrade = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        assert (await _response(guarded, upgrade)).startswith(b"HTTP/1.1 200")
    output = guarded.output()
    assert output.count("invalid HTTP request received") == 1
    assert "Unsupported upgrade request" not in output and "WARNING" not in output


async def test_a_post_asking_to_upgrade_to_h2c_is_served_as_http_1_1(
    make_app: Callable[..., AppServer],
) -> None:
    # curl --http2 sends "Upgrade: h2c" with every request: httptools stopped at the head, so
    # the application got an empty body (400 invalid_json) and nothing was stored.
    app = make_app(env={"CHAT_API_TOKEN": "tok", "CHAT_HANDSHAKE_TIMEOUT": TIMEOUT})
    body = b'{"message": "over h2c", "client_id": "h2c-1"}'
    request = (
        b"POST /api/rooms/h2c/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for parts in ([request + body], [request, body]):  # the body in the head's read, or after it
        reader, writer = await _open(app)
        for part in parts:
            writer.write(part)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EOF_BOUND)
        assert head.startswith((b"HTTP/1.1 201", b"HTTP/1.1 200")), head
        writer.close()
    status, history = app.get("/api/rooms/h2c/messages")
    assert [m["message"] for m in history["messages"]] == ["over h2c"]  # once: the resend was a duplicate
