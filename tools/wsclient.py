"""A lean RFC 6455 WebSocket client on ``asyncio.Protocol``, for the load generator only.

The ``websockets`` client spends ~50 µs of CPU per received message (parser, queue, async
iteration, task switch); with thousands of sockets per process on a machine shared with the
server under test, that made the benchmark measure the client. Here a message costs one
``data_received`` call, a slice and a synchronous callback: no queue, no task per message.

Deliberately small: ws:// only, text in (binary is ignored), text out unfragmented and
uncompressed (RFC 7692 lets a client send RSV1=0 frames), no back-pressure (we always read).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: the sender strips it, so the receiver adds it back
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEAD = 65536  # a handshake response bigger than this is not a WebSocket server's


class ProtocolError(Exception):
    """The server broke RFC 6455/7692; ``code`` is the close code we fail the connection with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidMessage(Exception):
    """No valid WebSocket upgrade: a garbled or unfinished response, or a wrong accept key."""


@dataclass
class Response:
    """A refused handshake's HTTP response; ``describe_error`` reads status_code and body."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class InvalidStatus(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {response.status_code}")
        self.response = response


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` as one big integer: no per-byte Python loop."""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def build_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One final, masked client frame (RFC 6455 5.3: every client frame is masked)."""
    key = key if key is not None else os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + mask(payload, key)


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a received close frame; 1005 when it carries no code."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame with a one-byte body")
    try:
        return int.from_bytes(payload[:2], "big"), payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not UTF-8") from None


class FrameParser:
    """Incremental parser of unmasked server frames; ``feed`` returns complete messages.

    Returns ``(opcode, payload)`` for each text/binary message (fragments joined, inflated)
    and each control frame, in order. Partial frames wait in a buffer for the next chunk.
    """

    def __init__(self, inflate: bool = False) -> None:
        # One decompressor for the connection: with context takeover (the default), later
        # messages refer back to earlier ones, so the LZ77 window must persist.
        self.inflater = zlib.decompressobj(-15) if inflate else None
        self.buffer = b""  # a partial frame left over from the previous chunk
        self.fragments: list[bytes] = []
        self.fragmented: tuple[int, bool] | None = None  # (opcode, compressed) of an open message

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.buffer:  # only a leftover partial frame costs a copy; most chunks parse as is
            data = self.buffer + data
        elif self.fragmented is None and len(data) > 2 and data[0] == 0x81:
            # The common chunk, one whole uncompressed text frame (FIN, no RSV bits, unmasked):
            # what the loop below would return, without the loop.
            length = data[1]
            if length < 126 and len(data) == 2 + length:
                return [(TEXT, data[2:])]
            if length == 126 and len(data) == 4 + int.from_bytes(data[2:4], "big"):
                return [(TEXT, data[4:])]
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            if b1 & 0x80:
                raise ProtocolError(1002, "masked server frame")
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length, start = int.from_bytes(data[pos + 2:pos + 4], "big"), pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, start = int.from_bytes(data[pos + 2:pos + 10], "big"), pos + 10
            if end - start < length:
                break
            pos = start + length
            message = self._frame(b0, data[start:pos])
            if message is not None:
                out.append(message)
        self.buffer = data[pos:]
        return out

    def _frame(self, b0: int, payload: bytes) -> tuple[int, bytes] | None:
        fin, rsv1, opcode = b0 & 0x80, b0 & 0x40, b0 & 0x0F
        if b0 & 0x30 or (rsv1 and (self.inflater is None or opcode in (CONT, CLOSE, PING, PONG))):
            raise ProtocolError(1002, "reserved bits set")
        if opcode >= CLOSE:  # control frames may come between fragments and never fragment
            if opcode > PONG or not fin or len(payload) > 125:
                raise ProtocolError(1002, "bad control frame")
            return opcode, payload
        if opcode == CONT:
            if self.fragmented is None:
                raise ProtocolError(1002, "continuation without a message")
            self.fragments.append(payload)
            if not fin:
                return None
            (opcode, compressed), self.fragmented = self.fragmented, None
            payload, self.fragments = b"".join(self.fragments), []
        elif opcode in (TEXT, BINARY):
            if self.fragmented is not None:
                raise ProtocolError(1002, "new message inside a fragmented one")
            compressed = bool(rsv1)
            if not fin:
                self.fragmented, self.fragments = (opcode, compressed), [payload]
                return None
        else:
            raise ProtocolError(1002, f"reserved opcode {opcode}")
        if compressed:
            try:
                payload = self.inflater.decompress(payload + TAIL)  # type: ignore[union-attr]
            except zlib.error:
                raise ProtocolError(1002, "bad compressed data") from None
        return opcode, payload


class WebSocket(asyncio.Protocol):
    """One client connection; text messages go to ``on_text`` synchronously, in order.

    ``opened`` resolves when the handshake succeeds (or carries why it failed); ``closed``
    resolves when the TCP connection is gone, with ``close_code``/``close_reason`` set:
    the server's close frame, 1006 for EOF without one, or the code we failed it with.
    """

    def __init__(self, request: bytes, key: bytes, deflate: bool, on_text: Callable[[str], object],
                 on_close: Callable[[WebSocket], object] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.request, self.deflate, self.on_text, self.on_close = request, deflate, on_text, on_close
        self.accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.parser: FrameParser | None = None  # None until the 101 has been read
        self.head = bytearray()
        self.close_code: int | None = None
        self.close_reason, self.close_sent = "", False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            self.head += data
            self._handshake(eof=False)
            return
        try:
            frames = self.parser.feed(data)
            for opcode, payload in frames:
                if opcode == TEXT:
                    self.on_text(payload.decode())
                elif opcode == PING:  # answered at once: a server may drop clients that don't
                    self.transport.write(build_frame(PONG, payload))  # type: ignore[union-attr]
                elif opcode == CLOSE:
                    self.close_code, self.close_reason = parse_close(payload)
                    self._send_close(self.close_code)
                    self.transport.close()  # type: ignore[union-attr]
                    return
        except UnicodeDecodeError:
            self.fail(1007)
        except ProtocolError as exc:
            self.fail(exc.code)

    def eof_received(self) -> None:
        if self.parser is None:  # a refusal without Content-Length ends at EOF
            self._handshake(eof=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        if not self.opened.done():
            self.opened.set_exception(InvalidMessage("connection closed during the handshake"))
        elif self.parser is not None and self.on_close is not None:  # it did open
            self.on_close(self)  # here, not in a done-callback: the moment the socket is gone
        self.closed.set_result(None)

    def _handshake(self, eof: bool) -> None:
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if eof or len(self.head) > MAX_HEAD:
                self._refuse(InvalidMessage("no complete HTTP response"))
            return
        status_line, *lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines)}
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            return self._refuse(InvalidMessage(f"bad status line {status_line[:60]!r}"))
        status, rest = int(parts[1]), bytes(self.head[end + 4:])
        if status != 101:
            length = headers.get("content-length", "")
            size = int(length) if length.isdigit() else None
            if not eof and (size is None or len(rest) < size):
                return  # the body is still coming, and the refusal's reason is in it
            return self._refuse(InvalidStatus(Response(status, headers, rest[:size])))
        if headers.get("sec-websocket-accept") != self.accept:
            return self._refuse(InvalidMessage("wrong Sec-WebSocket-Accept"))
        agreed = "permessage-deflate" in headers.get("sec-websocket-extensions", "")
        if agreed and not self.deflate:
            return self._refuse(InvalidMessage("extension we did not offer"))
        self.parser, self.head = FrameParser(inflate=agreed), bytearray()
        self.opened.set_result(None)
        if rest:  # the server may have sent frames right behind its 101
            self.data_received(rest)

    def _refuse(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self.transport.close()  # type: ignore[union-attr]

    def _send_close(self, code: int) -> None:
        if not self.close_sent and self.transport is not None and not self.transport.is_closing():
            self.close_sent = True  # 1005 means "no code was sent", so the echo has no body either
            self.transport.write(build_frame(CLOSE, b"" if code == 1005 else code.to_bytes(2, "big")))

    def fail(self, code: int) -> None:
        """Fail the connection (RFC 6455 7.1.7): send our close frame and drop the TCP."""
        if self.close_code is None:
            self.close_code = code
        self._send_close(code)
        self.transport.close()  # type: ignore[union-attr]

    def send(self, text: str) -> None:
        """Queue one masked text frame; ConnectionError once closing has begun."""
        if self.close_sent or self.transport is None or self.transport.is_closing():
            raise ConnectionError("WebSocket is closing or closed")
        self.transport.write(build_frame(TEXT, text.encode()))

    async def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Start the close handshake; wait (bounded) for the server's answer, then drop TCP."""
        if self.transport is None or self.closed.done():
            return
        self._send_close(code)
        await asyncio.wait({self.closed}, timeout=timeout)
        if not self.closed.done():
            self.transport.abort()
            await self.closed


async def connect(url: str, on_text: Callable[[str], object], open_timeout: float = 10.0,
                  deflate: bool = False, on_close: Callable[[WebSocket], object] | None = None,
                  ) -> WebSocket:
    """Open ``ws://host[:port]/path[?query]``; raises OSError, TimeoutError or Invalid*."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"only ws:// URLs are supported, got {url!r}")
    host, port = parts.hostname, parts.port or 80
    authority = f"[{host}]" if ":" in host else host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {authority}{'' if port == 80 else f':{port}'}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
        + ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else "")
        + "\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    protocol = WebSocket(request, key, deflate, on_text, on_close)
    try:
        async with asyncio.timeout(open_timeout):
            await loop.create_connection(lambda: protocol, host, port)
            await protocol.opened
    except BaseException:
        protocol.opened.cancel()  # nobody will await it now: no "exception never retrieved"
        if protocol.transport is not None:
            protocol.transport.abort()
        raise
    return protocol
