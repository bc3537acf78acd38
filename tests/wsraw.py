"""A raw WebSocket client over a plain socket, for what polite clients never do:
never reading, never answering pings, sending invalid UTF-8 or truncated frames."""

from __future__ import annotations

import os
import socket
import struct

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A masked client frame (clients must mask)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def open_socket(port: int, path: str = "/ws/chat/lobby/", rcvbuf: int | None = None,
                timeout: float = 10) -> socket.socket:
    """Connect and complete the handshake; returns the socket with the 101 consumed.
    ``timeout`` bounds each read, so a server that never answers fails the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    sock.sendall(HANDSHAKE.format(path=path, port=port).encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during handshake")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(response.decode(errors="replace"))
    return sock


def read_frames(sock: socket.socket, limit: float = 10) -> list[tuple[int, bytes]]:
    """Read server frames (opcode, payload) until the server closes the TCP connection."""
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length = struct.unpack("!H", data[i:i + 2])[0]
            i += 2
        elif length == 127:
            length = struct.unpack("!Q", data[i:i + 8])[0]
            i += 8
        frames.append((opcode, data[i:i + length]))
        i += length
    return frames


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The next server frame (opcode, payload); ConnectionError if the server closed first."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
        return data

    head = exactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    return head[0] & 0x0F, exactly(length)
