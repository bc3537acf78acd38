"""Real processes for tests: redis-server on a free port and the chat server as ``python -m app``.

Shared by the test suite and the scripts; nothing here mocks anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET returning (status, body) for any status, (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A throwaway redis-server on a free loopback port; stop() and start() keep the port."""

    def __init__(self, port: int | None = None, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: `apt-get install redis-server` (.ci/run does this)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="parley-redis-")
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--dir", self.dir,
            "--daemonize", "no", "--loglevel", "warning",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, 10, f"redis-server on port {self.port}")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class AppServer:
    """``python -m app`` as a real process on a free port, its output kept in a file."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None,
                 command: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.command = command or [sys.executable, "-m", "app"]
        self.log = tempfile.NamedTemporaryFile(prefix="parley-app-", suffix=".log", delete=False)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str = "lobby", **query: Any) -> str:
        suffix = f"?{urlencode(query)}" if query else ""
        return f"ws://127.0.0.1:{self.port}/ws/chat/{room}/{suffix}"

    def start(self, wait: str | None = "/readyz", timeout: float = 20) -> "AppServer":
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        if wait is not None:
            self.wait_status(wait, 200, timeout)
        return self

    def wait_status(self, path: str, status: int, timeout: float = 20) -> None:
        def check() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            return http_get(self.base + path)[0] == status

        wait_until(check, timeout, f"{path} to answer {status} on port {self.port}")

    def get(self, path: str) -> tuple[int, Any]:
        status, body = http_get(self.base + path)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cleanup(self) -> None:
        self.stop()
        Path(self.log.name).unlink(missing_ok=True)


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
                      **kwargs: Any) -> "Client":
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


def run_script(script: str, *args: str, json_path: Path | None = None, timeout: float = 120,
               env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    """Run ``scripts/<script>`` as its own process; (exit status, its JSON or None, output)."""
    command = [sys.executable, str(ROOT / "scripts" / script), *args]
    if json_path is not None:
        command += ["--json", str(json_path)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, **(env or {})})
    result = json.loads(json_path.read_text()) if json_path is not None and json_path.exists() else None
    return completed.returncode, result, completed.stdout + completed.stderr
