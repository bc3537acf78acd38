"""Loopback helpers: a free port, a GET that never raises, polling with a deadline."""

from __future__ import annotations

import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_FLOOR = 10000  # below this live the well-known and registered services
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out as outgoing connections' source ports (inclusive)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


MIN_LISTEN_PORTS = 2000  # fewer outside the ephemeral range: the kernel's pick, as before


def listen_ports() -> range:
    """Where :func:`free_port` looks: outside the ephemeral range, where only listeners bind;
    empty on a host whose ephemeral range leaves too few ports outside it (widened to
    1024-65535, say): the kernel picks then."""
    low, high = ephemeral_range()
    below, above = range(LISTEN_FLOOR, low), range(high + 1, 65536)
    wider = below if len(below) >= len(above) else above
    return wider if len(wider) >= MIN_LISTEN_PORTS else range(0)


def bound_port(host: str, port: int) -> int | None:
    """Bind ``port`` (0: the kernel's pick) on ``host`` and let it go: the port bound, or
    None when something holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with closing(socket.socket(family, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return None
        found: int = sock.getsockname()[1]
        return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, never handed out before by this process.

    Not the kernel's pick: that comes from the ephemeral range, which the kernel also hands to
    every outgoing connection as its source port, so a port found free there could be taken by
    any client's connect before the server meant for it binds (a stack's second colour binds
    minutes later). Outside that range only listeners bind. A host whose ephemeral range
    leaves too few ports outside it gets the kernel's pick, as before.
    """
    ports = listen_ports()
    for _ in range(200 if ports else 0):
        port = random.choice(ports)
        if port not in _handed_out and bound_port(host, port) is not None:
            _handed_out.add(port)
            return port
    return _kernels_pick(host)


def _kernels_pick(host: str) -> int:
    for _ in range(100):
        port = bound_port(host, 0)
        if port is not None and port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port on {host}")


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET returning (status, body) for any status, (0, b"") when nothing answers."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
