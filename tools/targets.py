"""What the measuring scripts point at: Parley or the floor, started here, on loopback only.

Process handling is ``tools.procs`` (one implementation for tests and scripts); this module
adds the floor's command line, the loopback rule and the server-side CPU/RSS reading.
"""

from __future__ import annotations

import compileall
import ipaddress
import socket
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tools import ROOT
from tools.net import free_port
from tools.pinning import server_command
from tools.procs import AppServer

KINDS = ("app", "floor")


class NotLoopback(ValueError):
    """A target outside 127.0.0.0/8 and ::1: load is only ever sent to this machine."""


def require_loopback(url: str) -> str:
    """Return ``url`` as a ws:// base URL (no trailing slash) or raise NotLoopback."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise NotLoopback(f"cannot resolve {host!r}: {exc}") from None
    addresses = {str(info[4][0]) for info in infos}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise NotLoopback(
            f"refusing to load {url}: {host} is not a loopback address "
            "(load only ever goes to 127.0.0.0/8 or ::1)"
        )
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def start_server(kind: str, redis_url: str | None = None, env: dict[str, str] | None = None,
                 wait: str | None = "/readyz") -> AppServer:
    """Start Parley (``app``) or the floor (``floor``) on a free port and wait for ``wait``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    port = free_port()
    extra = {"LOG_LEVEL": "warning", **(env or {})}
    if redis_url and kind == "app":
        extra["REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "app"]
    if kind == "floor":
        command = [sys.executable, "-m", "bench.floor", "--port", str(port)]
    return AppServer(env=extra, port=port, command=server_command(command)).start(wait=wait)


# What a server process imports from the checkout: Parley and the floor.
SOURCE_DIRS = ("app", "bench")


def precompile() -> None:
    """Write the checkout's bytecode caches, as docker/Dockerfile does in the image.

    A cold start is measured as it happens in production and on every run after the first:
    with ``__pycache__`` in place. Without this, a shell with PYTHONDONTWRITEBYTECODE set
    (CI, some containers) recompiles every module from source on every start, which costs
    ~90 M instructions here and grows with the number of modules, not with the work done.
    """
    for name in SOURCE_DIRS:
        # py_compile writes the cache even when PYTHONDONTWRITEBYTECODE is set.
        compileall.compile_dir(str(ROOT / name), quiet=1)


@dataclass
class Usage:
    """Cumulative CPU seconds (user + system) and resident memory of one process."""

    cpu: float
    rss: int


def usage(pid: int | None) -> Usage | None:
    """The process's current Usage, or None when there is no pid or it is gone."""
    if pid is None:
        return None
    import psutil

    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        return Usage(cpu=times.user + times.system, rss=process.memory_info().rss)
    except psutil.Error:
        return None


def per_unit(before: Usage | None, after: Usage | None, units: int) -> dict[str, Any]:
    """Server CPU (ms) and RSS (KB) spent between two readings, per unit (connection, message)."""
    if before is None or after is None or units <= 0:
        return {"cpu_ms": None, "rss_kb": None, "cpu_s_total": None, "rss_mb_delta": None}
    return {
        "cpu_ms": round((after.cpu - before.cpu) * 1000 / units, 4),
        "rss_kb": round((after.rss - before.rss) / 1024 / units, 2),
        "cpu_s_total": round(after.cpu - before.cpu, 3),
        "rss_mb_delta": round((after.rss - before.rss) / 2**20, 2),
    }

