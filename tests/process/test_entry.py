"""``python -m app`` as operators start it: usage, bad arguments, bad settings, an early SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, free_port


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "HOST": "127.0.0.1", "PORT": str(free_port()), **(env or {})},
    )


def test_help_prints_usage_and_points_to_the_settings() -> None:
    done = _run("--help")
    assert done.returncode == 0
    assert "usage: python -m app" in done.stdout and "README.md" in done.stdout


def test_an_unknown_argument_is_an_error_not_a_started_server() -> None:
    done = _run("--port", "9000")
    assert done.returncode == 2
    assert "unknown argument '--port'" in done.stderr and "listening" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PORT": "80000"}, "PORT must be from 0 to 65535"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of"),
        ({"REDIS_URL": "notaurl"}, "REDIS_URL: expected redis://"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line(env: dict[str, str], needle: str) -> None:
    done = _run(env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("parley: configuration error: ") and needle in done.stderr
    assert "Traceback" not in done.stderr


def _catches(pid: int, sig: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (sig - 1)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15])
def test_a_stop_signal_during_start_up_exits_0(delay: float, sig: int) -> None:
    # SIGINT (Ctrl-C) in the first ~100 ms was a KeyboardInterrupt traceback and status -2.
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(free_port())}
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The earliest moment any program can act on SIGTERM is once it handles it: before
        # that, the interpreter itself is starting (README: "Stopping").
        deadline = time.monotonic() + 30
        # Python catches SIGINT from its own start (KeyboardInterrupt): a caught SIGTERM is the
        # sign that the service's handler, installed for both, is in place.
        while not _catches(process.pid, signal.SIGTERM):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.001)
        time.sleep(delay)  # a point further into start-up: imports, Django, binding
        process.send_signal(sig)
        assert process.wait(30) == 0
        assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_port_already_taken_exits_3_and_says_so() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _run(env={"PORT": str(taken.getsockname()[1])})
    assert done.returncode == 3  # uvicorn's status for it
    # The last word, which a deploy reads to tell a failed drain from a clean one.
    assert "exiting with status 3" in done.stderr.splitlines()[-1]
