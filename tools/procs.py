"""Real processes for tests and tools: redis-server, ``python -m app`` (or the floor), and
long-lived children such as the local stack's Traefik and app colours.

``RedisServer`` and ``AppServer`` are children of this process, gone with ``cleanup()``;
``spawn`` starts one that outlives it (its own session), remembered as a ``Proc`` (pid and
start time) that any later process can check and stop. Nothing here mocks anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tools import ROOT
from tools.net import free_port, http_get, wait_until


class RedisServer:
    """A throwaway redis-server on a free loopback port; stop() and start() keep the port.
    With ``unix_socket`` it also listens on a socket file in its directory (``unix_url``): a
    test can make that way in unreachable for new connections alone (by moving the file)."""

    def __init__(self, port: int | None = None, appendonly: bool = False, unix_socket: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: `apt-get install redis-server` (.ci/run does this)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="parley-redis-")
        self.appendonly = appendonly
        self.socket_path = os.path.join(self.dir, "redis.sock") if unix_socket else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        if self.socket_path is None:
            raise RuntimeError("this redis-server was started without unix_socket=True")
        return f"unix://{self.socket_path}?db=0"

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--dir", self.dir,
            "--daemonize", "no", "--loglevel", "warning",
        ]
        if self.socket_path is not None:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, 10, f"redis-server on port {self.port}")
        return self

    def answers(self) -> bool:
        """Does it answer PING with PONG right now?"""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cli(self, *args: str) -> str:
        """Run one command through ``redis-cli``; its output."""
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=5, check=True).stdout

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        """Stop it and remove its data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class AppServer:
    """``python -m app`` (or ``command``) as a real process on a free port, output kept in a file."""

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
        """The chat WebSocket URL of ``room``, with ``query`` as its query string."""
        suffix = f"?{urlencode(query)}" if query else ""
        return f"ws://127.0.0.1:{self.port}/ws/chat/{room}/{suffix}"

    def start(self, wait: str | None = "/readyz", timeout: float = 20) -> AppServer:
        """Start it from the repository root; wait for ``wait`` to answer 200 (None: don't)."""
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        if wait is not None:
            self.wait_status(wait, 200, timeout)
        return self

    def wait_status(self, path: str, status: int, timeout: float = 20) -> None:
        """Wait for ``path`` to answer ``status``; RuntimeError with its output if it exits."""
        def check() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            return http_get(self.base + path)[0] == status

        wait_until(check, timeout, f"{path} to answer {status} on port {self.port}")

    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path``: (status, parsed JSON), or the raw body when it is not JSON."""
        status, body = http_get(self.base + path)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def metric(self, line_start: str) -> float:
        """The value of the first /metrics sample line starting with ``line_start`` (0 if none)."""
        text = http_get(self.base + "/metrics")[1].decode()
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
        return 0.0

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cleanup(self) -> None:
        """Stop it and remove its log."""
        self.stop()
        Path(self.log.name).unlink(missing_ok=True)


@dataclass
class Proc:
    """A process started with ``spawn``: its pid and start time (so a reused pid is not ours)."""

    pid: int
    started: float
    # Where its log stood when it was spawned: what it wrote since, not a previous start's words.
    log_from: int = 0

    def send(self, sig: int) -> bool:
        """Send ``sig`` if the process is still ours and alive; whether it was."""
        if not self.alive():
            return False
        os.kill(self.pid, sig)
        return True

    def alive(self) -> bool:
        import psutil

        try:
            process = psutil.Process(self.pid)
            return bool(abs(process.create_time() - self.started) < 1.0
                        and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def listens_on(self, port: int) -> bool:
        """Whether this very process holds a listening TCP socket on ``port`` (so an answer
        on that port is its own, not a stranger's that took the port first)."""
        import psutil

        if not self.alive():
            return False
        try:
            sockets = psutil.Process(self.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(sock.status == psutil.CONN_LISTEN and sock.laddr and sock.laddr.port == port
                   for sock in sockets)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> float:
        """Send ``sig``, wait for the exit (SIGKILL after ``timeout``); seconds it took."""
        started = time.monotonic()
        if not self.alive():
            return 0.0
        os.kill(self.pid, sig)
        if not self.wait(timeout):
            os.kill(self.pid, signal.SIGKILL)
            self.wait(5)
        return time.monotonic() - started

    def wait(self, timeout: float) -> bool:
        """Wait for the exit; True if it exited. A zombie counts as exited: the process
        may be another script's child, reaped whenever its parent (or init) gets to it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(self.pid, os.WNOHANG)  # reap it when it is our own child
            except ChildProcessError:
                pass
            if not self.alive():
                return True
            time.sleep(0.01)
        return not self.alive()


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    """Start a process that outlives this one (own session), output appended to ``log``."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        log_from = out.seek(0, os.SEEK_END)
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return Proc(pid=process.pid, started=psutil.Process(process.pid).create_time(), log_from=log_from)
