"""tools/wsclient.py, the load generator's lean WebSocket client: frames byte for byte,
then the handshake, the close handshake and deflate against real servers."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Callable, Iterator

import pytest

from tools import wsclient as ws
from tools.net import free_port
from tools.procs import AppServer
from tools.swarm import describe_error
from tools.targets import start_server

RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example and its accept value
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """An unmasked server frame, built independently of the module under test."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def read_client_frame(data: bytes) -> tuple[int, int, bytes]:
    """(first byte, payload length, unmasked payload) of one client frame; checks the mask bit."""
    assert data[1] & 0x80, "client frames must be masked"
    n, at = data[1] & 0x7F, 2
    if n == 126:
        n, at = int.from_bytes(data[2:4], "big"), 4
    elif n == 127:
        n, at = int.from_bytes(data[2:10], "big"), 10
    key, body = data[at:at + 4], data[at + 4:]
    assert len(body) == n
    return data[0], n, bytes(b ^ key[i % 4] for i, b in enumerate(body))


def deflated(compressor: zlib._Compress, text: str) -> bytes:  # type: ignore[name-defined]
    """What a permessage-deflate server sends: a sync-flushed block without its 4-byte tail."""
    data = compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


class FakeTransport:
    """Records what the protocol writes and whether it closed the connection."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close


def opened(deflate: bool = False, extensions: str = "", then: bytes = b"",
           ) -> tuple[ws.WebSocket, FakeTransport, list[str]]:
    """A WebSocket protocol past a valid 101 (with ``then`` right behind it), on a fake transport."""
    texts: list[str] = []
    protocol = ws.WebSocket(b"GET / HTTP/1.1\r\n\r\n", RFC_KEY, deflate, texts.append)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    response = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n"
                + (f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else "") + "\r\n")
    protocol.data_received(response.encode() + then)
    assert protocol.opened.done() and protocol.opened.exception() is None
    transport.written.clear()  # the request
    return protocol, transport, texts


# -- frames ------------------------------------------------------------------------------------

@pytest.mark.unit
def test_mask_is_the_rfc_example_and_matches_a_bytewise_xor() -> None:
    # RFC 6455 5.7: a masked "Hello" with key 37 fa 21 3d.
    assert ws.build_frame(ws.TEXT, b"Hello", bytes.fromhex("37fa213d")) == bytes.fromhex(
        "818537fa213d7f9f4d5158")
    key = bytes.fromhex("a1b2c3d4")
    for n in (0, 1, 3, 4, 5, 8, 1001):
        payload = bytes(i % 251 for i in range(n))
        assert ws.mask(payload, key) == bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.unit
@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_client_frames_use_7_16_and_64_bit_lengths(size: int) -> None:
    payload = bytes(i % 256 for i in range(size))
    frame = ws.build_frame(ws.TEXT, payload)

    first, length, body = read_client_frame(frame)
    assert (first, length, body) == (0x81, size, payload)
    assert len(frame) == size + 4 + (2 if size < 126 else 4 if size < 65536 else 10)


@pytest.mark.unit
def test_frames_split_anywhere_and_many_per_chunk_parse_the_same() -> None:
    messages = [b"a", b"x" * 126, b"y" * 300, b"z" * 70_000, b""]
    stream = b"".join(server_frame(ws.TEXT, m) for m in messages)

    assert ws.FrameParser().feed(stream) == [(ws.TEXT, m) for m in messages]
    for chunk in (1, 2, 3, 7, 1000):
        parser, out = ws.FrameParser(), []
        for i in range(0, len(stream), chunk):
            out += parser.feed(stream[i:i + chunk])
        assert out == [(ws.TEXT, m) for m in messages], chunk
        assert parser.buffer == b""


@pytest.mark.unit
def test_fragments_are_joined_with_control_frames_passed_through_in_order() -> None:
    stream = (server_frame(ws.TEXT, b"he", fin=False) + server_frame(ws.PING, b"p")
              + server_frame(ws.CONT, b"ll", fin=False) + server_frame(ws.CONT, b"o"))
    parser = ws.FrameParser()

    assert parser.feed(stream[:5]) == []
    assert parser.feed(stream[5:]) == [(ws.PING, b"p"), (ws.TEXT, b"hello")]


@pytest.mark.unit
@pytest.mark.parametrize("stream", [
    server_frame(ws.CONT, b"x"),  # a continuation with nothing to continue
    server_frame(ws.TEXT, b"a", fin=False) + server_frame(ws.TEXT, b"b"),  # no continuation
    server_frame(ws.TEXT, b"x", rsv1=True),  # RSV1 without permessage-deflate
    bytes((0x81, 0x81)) + b"\x00\x00\x00\x00x",  # a masked server frame
    server_frame(ws.PING, b"p", fin=False),  # a fragmented control frame
    server_frame(0x3, b""),  # a reserved opcode
], ids=["lone-continuation", "interleaved", "rsv1", "masked", "fragmented-ping", "opcode-3"])
def test_protocol_violations_fail_with_1002(stream: bytes) -> None:
    with pytest.raises(ws.ProtocolError) as caught:
        ws.FrameParser().feed(stream)
    assert caught.value.code == 1002


@pytest.mark.unit
def test_deflated_messages_inflate_with_context_kept_across_messages() -> None:
    server = zlib.compressobj(wbits=-15)
    first, second = deflated(server, "hello " * 50), deflated(server, "hello " * 50)
    assert len(second) < len(first)  # the second refers back into the first's window
    third = deflated(server, "fragmented and compressed")
    stream = (server_frame(ws.TEXT, first, rsv1=True) + server_frame(ws.TEXT, second, rsv1=True)
              + server_frame(ws.TEXT, b"plain")  # RSV1=0: an uncompressed message is allowed too
              + server_frame(ws.TEXT, third[:5], fin=False, rsv1=True)  # RSV1 on the first only
              + server_frame(ws.CONT, third[5:]))
    parser = ws.FrameParser(inflate=True)

    out = [parser.feed(stream[i:i + 9]) for i in range(0, len(stream), 9)]
    assert [m for chunk in out for m in chunk] == [
        (ws.TEXT, b"hello " * 50), (ws.TEXT, b"hello " * 50), (ws.TEXT, b"plain"),
        (ws.TEXT, b"fragmented and compressed")]


@pytest.mark.unit
def test_close_payloads_parse_to_code_and_reason() -> None:
    assert ws.parse_close(b"") == (1005, "")
    assert ws.parse_close((1012).to_bytes(2, "big") + b"restart") == (1012, "restart")
    with pytest.raises(ws.ProtocolError):
        ws.parse_close(b"\x03")


# -- the protocol on a fake transport ----------------------------------------------------------

@pytest.mark.unit
async def test_handshake_accept_is_checked_and_frames_behind_the_101_are_delivered() -> None:
    protocol, _, texts = opened(then=server_frame(ws.TEXT, b'{"type":"ready"}'))
    assert protocol.accept == RFC_ACCEPT
    assert texts == ['{"type":"ready"}']

    wrong = ws.WebSocket(b"", b"AAAAAAAAAAAAAAAAAAAAAA==", False, print)
    wrong.connection_made(FakeTransport())  # type: ignore[arg-type]
    wrong.data_received(f"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: {RFC_ACCEPT}\r\n\r\n".encode())
    with pytest.raises(ws.InvalidMessage):
        wrong.opened.result()


@pytest.mark.unit
async def test_a_refusal_carries_status_and_body_for_describe_error() -> None:
    body = b'{"code": "over_capacity"}'
    protocol = ws.WebSocket(b"", RFC_KEY, False, print)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\n\r\n" % len(body))
    assert not protocol.opened.done()  # the reason is in the body, still to come
    protocol.data_received(body[:10])
    protocol.data_received(body[10:])

    error = protocol.opened.exception()
    assert isinstance(error, ws.InvalidStatus) and error.response.body == body
    assert describe_error(error) == "HTTP 503 over_capacity"
    assert transport.closing


@pytest.mark.unit
async def test_ping_is_answered_with_a_masked_pong_of_the_same_payload() -> None:
    protocol, transport, _ = opened()
    protocol.data_received(server_frame(ws.PING, b"are you there"))

    assert [read_client_frame(f) for f in transport.written] == [(0x8A, 13, b"are you there")]
    assert not transport.closing


@pytest.mark.unit
@pytest.mark.parametrize(("payload", "code", "echo"), [
    ((1012).to_bytes(2, "big") + b"bye", 1012, (1012).to_bytes(2, "big")),
    (b"", 1005, b""),
])
async def test_a_server_close_is_recorded_answered_and_ends_the_connection(
        payload: bytes, code: int, echo: bytes) -> None:
    closes: list[int | None] = []
    protocol, transport, _ = opened()
    protocol.on_close = lambda socket: closes.append(socket.close_code)
    protocol.data_received(server_frame(ws.CLOSE, payload) + server_frame(ws.TEXT, b"after close"))

    assert protocol.close_code == code
    assert [read_client_frame(f) for f in transport.written] == [(0x88, len(echo), echo)]
    assert transport.closing
    protocol.connection_lost(None)
    assert protocol.closed.done() and protocol.close_code == code and closes == [code]


@pytest.mark.unit
async def test_eof_without_a_close_frame_is_1006_and_bad_utf8_is_1007() -> None:
    protocol, _, _ = opened()
    protocol.connection_lost(None)
    assert protocol.close_code == 1006 and protocol.closed.done()

    protocol, transport, texts = opened()
    protocol.data_received(server_frame(ws.TEXT, b"\xff\xfe"))
    assert protocol.close_code == 1007 and transport.closing and texts == []
    assert read_client_frame(transport.written[0])[2] == (1007).to_bytes(2, "big")


@pytest.mark.unit
async def test_rsv1_is_refused_unless_deflate_was_negotiated() -> None:
    server = zlib.compressobj(wbits=-15)
    frame = server_frame(ws.TEXT, deflated(server, '{"message": "hi"}'), rsv1=True)

    protocol, _, texts = opened(deflate=True, extensions="permessage-deflate")
    protocol.data_received(frame)
    assert texts == ['{"message": "hi"}']

    protocol, transport, texts = opened(deflate=True)  # offered, but the server declined
    protocol.data_received(frame)
    assert texts == [] and protocol.close_code == 1002 and transport.closing


# -- real servers ------------------------------------------------------------------------------

@pytest.fixture
def floor() -> Iterator[AppServer]:
    server = start_server("floor")
    yield server
    server.cleanup()


async def until(received: list[str], count: int, socket: ws.WebSocket) -> None:
    """Wait until ``received`` holds ``count`` texts, failing fast if the socket closes first."""
    changed = asyncio.Event()
    previous = socket.on_text

    def on_text(text: str) -> None:
        previous(text)
        changed.set()

    socket.on_text = on_text
    try:
        async with asyncio.timeout(10):
            while len(received) < count:
                assert not socket.closed.done(), f"closed with {socket.close_code}"
                changed.clear()
                waiter = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait({waiter, socket.closed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
    finally:
        socket.on_text = previous


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "permessage-deflate"])
async def test_broadcast_round_trip_and_close_handshake_against_the_floor(
        floor: AppServer, deflate: bool) -> None:
    url = floor.ws_url("wsclient")
    a_got: list[str] = []
    b_got: list[str] = []
    closed: list[int | None] = []
    a = await ws.connect(url, a_got.append, deflate=deflate)
    b = await ws.connect(url, b_got.append, deflate=deflate,
                         on_close=lambda socket: closed.append(socket.close_code))
    assert (a.parser.inflater is not None) is deflate  # type: ignore[union-attr]
    big = "é" * 40_000  # 80 KB of UTF-8: 64-bit lengths, many TCP chunks
    a.send(json.dumps({"message": "hello"}))
    a.send(json.dumps({"message": big}))

    await until(b_got, 2, b)
    await until(a_got, 2, a)
    assert [json.loads(t)["message"] for t in b_got] == ["hello", big] == [
        json.loads(t)["message"] for t in a_got]
    await b.close()
    assert b.closed.done() and b.close_code == 1000 and closed == [1000]
    with pytest.raises(ConnectionError):
        b.send("too late")
    await a.close()
    assert a.close_code == 1000


async def test_parley_refusal_and_server_close_codes(make_app: Callable[..., AppServer]) -> None:
    app = make_app(env={"CHAT_MAX_CONNECTIONS": "1"})
    texts: list[str] = []
    first = await ws.connect(app.ws_url("wsclient"), texts.append)
    await until(texts, 1, first)
    assert json.loads(texts[0])["type"] == "ready"

    with pytest.raises(ws.InvalidStatus) as refused:
        await ws.connect(app.ws_url("wsclient"), print)
    assert describe_error(refused.value) == "HTTP 503 too_many_connections"

    app.signal()  # SIGTERM: Parley closes every socket with 1012 "service restart"
    async with asyncio.timeout(15):
        await first.closed
    assert first.close_code == 1012


async def test_nothing_listening_is_an_os_error_and_only_ws_urls_are_taken() -> None:
    with pytest.raises(OSError) as caught:
        await ws.connect(f"ws://127.0.0.1:{free_port()}/", print)
    assert describe_error(caught.value).startswith("ConnectionRefusedError errno")
    with pytest.raises(ValueError):
        await ws.connect("http://127.0.0.1:1/", print)
