"""Test-only helpers: a websockets chat client that awaits frames, and running a script.

The real processes (redis-server, ``python -m app``) and loopback helpers live in ``tools``,
shared with the scripts; they are re-exported here for tests written against this module.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools import ROOT
from tools.cluster import RedisClusterServers
from tools.net import free_port, http_get, wait_until
from tools.procs import AppServer, RedisServer

# The backend API token (CHAT_API_TOKEN) of the ``api_server`` fixture (tests/conftest.py).
API_TOKEN = "s3cret-token"

__all__ = ["ROOT", "AppServer", "Client", "RedisServer", "free_port", "http_get", "run_script", "wait_until"]


# Who-is-here frames (docs/PROTOCOL.md, "Presence and typing"): a client that did not ask
# to watch them skips them, as clients skip frame types they do not use.
PRESENCE_FRAMES = frozenset({"presence", "join", "leave", "presence_diff", "typing"})


class Client:
    """A real WebSocket chat client with helpers that await frames, never sleep."""

    def __init__(self, ws: Any, presence: bool = False) -> None:
        self.ws = ws
        self.ready: dict[str, Any] | None = None
        self.presence = presence

    @classmethod
    async def connect(cls, url: str, wait_ready: bool = True, presence: bool = False,
                      **kwargs: Any) -> Client:
        from websockets.asyncio.client import connect

        client = cls(await connect(url, open_timeout=10, **kwargs), presence)
        if wait_ready:
            client.ready = await client.recv_type("ready")
        return client

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if self.presence or not isinstance(frame, dict) or frame.get("type") not in PRESENCE_FRAMES:
                return frame

    async def recv_type(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        """The next frame of type ``kind``; frames of other types before it are kept."""
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == kind:
                return frame
            self.skipped.append(frame)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        if not hasattr(self, "_skipped"):
            self._skipped: list[dict[str, Any]] = []
        return self._skipped

    async def send(self, message: str, **extra: Any) -> None:
        await self.ws.send(json.dumps({"message": message, **extra}))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def post(self, message: str, **extra: Any) -> dict[str, Any]:
        """Send and wait for the ack (frames before it are kept in ``skipped``)."""
        await self.send(message, **extra)
        while True:
            frame = await self.recv()
            if frame["type"] in {"ack", "error"}:
                return frame
            self.skipped.append(frame)

    async def messages(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """The next ``count`` message frames (acks and others are kept in ``skipped``)."""
        found = [f for f in self.skipped if f["type"] == "message"]
        self._skipped = [f for f in self.skipped if f["type"] != "message"]
        while len(found) < count:
            frame = await self.recv(timeout)
            (found if frame["type"] == "message" else self.skipped).append(frame)
        extra = found[count:]
        self._skipped = extra + self.skipped
        return found[:count]

    async def close(self) -> None:
        await self.ws.close()


def rooms_per_master(cluster: RedisClusterServers, prefix: str, per_master: int) -> list[str]:
    """``per_master`` room names (``prefix-<n>``) for each master of ``cluster``: rooms whose
    keys (all in the slot of their hash tag ``{room}``) that master serves."""
    from redis.crc import key_slot

    owners = cluster.slot_owners()
    picked: dict[int, list[str]] = {port: [] for port in set(owners.values())}
    for n in itertools.count():
        if all(len(rooms) == per_master for rooms in picked.values()):
            break
        room = f"{prefix}-{n}"
        rooms = picked[owners[key_slot(f"chat:{{{room}}}:meta".encode())]]
        if len(rooms) < per_master:
            rooms.append(room)
    return [room for rooms in picked.values() for room in rooms]


async def subscribers_reach(url: str, channel: str, count: int, timeout: float = 15) -> None:
    """Wait until Redis itself reports ``count`` subscribers of ``channel`` (SUBSCRIBE is not
    acknowledged to anyone else, and a process resubscribes on its own after an outage)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        async with asyncio.timeout(timeout):
            while (await client.pubsub_numsub(channel))[0][1] < count:
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()


async def published_out_of_order(ordered: Any, plain: Any, group: str, here: str, there: str) -> None:
    """Publish ids 5, 7, 6 to ``group`` from ``plain``'s process (two appends answered out of
    order, say): the member ``here`` on the ``ordered`` layer gets them in id order, the one
    ``there`` on ``plain`` (nothing asked for an order) as Redis delivered them."""
    for n in (5, 7, 6):
        await plain.group_send(group, {"type": "chat.message", "epoch": "e", "id": n})
    assert [(await asyncio.wait_for(ordered.receive(here), 5))["id"] for _ in range(3)] == [5, 6, 7]
    assert [(await asyncio.wait_for(plain.receive(there), 5))["id"] for _ in range(3)] == [5, 7, 6]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` in a fresh interpreter from the repository root: for what a
    process imports (or leaves unimported), which this test process has long since loaded."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


# Sets the file size limit, then becomes the script: past the limit every write to a file fails
# (EFBIG; Python ignores SIGXFSZ) as on a full disk, without root or a small file system.
# Pipes are not files: the script's output still reaches the test.
_FULL_DISK = ("import os, resource, sys\n"
              "limit = int(sys.argv[1])\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
              "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def run_script(script: str, *args: str, json_path: Path | None = None, timeout: float = 120,
               env: dict[str, str] | None = None, disk_full_past: int | None = None) -> tuple[int, Any, str]:
    """Run ``python -m scripts.<script>`` from the repository root as its own process;
    (exit status, its JSON or None, output). ``disk_full_past``: bytes of a file the script
    (and every process it starts) can write before the disk is full for it."""
    if script.endswith(".py"):
        raise ValueError(f"run_script takes the module name under scripts/ ({script[:-3]!r}), not a path")
    command = [sys.executable, "-m", f"scripts.{script}", *args]
    if disk_full_past is not None:
        command = [sys.executable, "-c", _FULL_DISK, str(disk_full_past), *command[1:]]
    if json_path is not None:
        command += ["--json", str(json_path)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, **(env or {})})
    result = json.loads(json_path.read_text()) if json_path is not None and json_path.exists() else None
    return completed.returncode, result, completed.stdout + completed.stderr
