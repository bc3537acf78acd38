"""A Docker engine for machines without one running: start dockerd by hand, stop it again.

On a machine with systemd (or Docker Desktop) an engine already answers and nothing here
runs. Where none answers (a CI box, a container without an init system) ``Engine.ensure``
starts Debian's ``dockerd`` with its own data root and pid file inside a state directory,
and records that it did so: only the one who started it stops it (``Engine.stop``), and
only a dockerd with that pid *and* start time, so a reused pid is never signalled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
OWNER_FILE = "owner.json"


class EngineError(RuntimeError):
    """No engine answers and none could be started; the message says why."""


def answers(docker: str = "docker", timeout: float = 10.0) -> bool:
    """True if ``docker info`` reaches an engine."""
    try:
        done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def _process_start(pid: int) -> float | None:
    """The process' start time in clock ticks since boot (from /proc), None if it is gone
    (a zombie counts as gone: it may wait for a parent that is not us to reap it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return float(fields[19])  # field 22 of stat, counted after the ")" that ends the name


@dataclass
class Engine:
    """The dockerd this state directory started (if any): data root, pid file, log."""

    directory: Path

    @property
    def data_root(self) -> Path:
        return self.directory / "data"

    @property
    def pid_file(self) -> Path:
        return self.directory / "dockerd.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "dockerd.log"

    @property
    def owner_file(self) -> Path:
        return self.directory / OWNER_FILE

    def owned(self) -> dict[str, float] | None:
        """The pid and start time of the dockerd started from here, if it still runs."""
        try:
            owner = json.loads(self.owner_file.read_text())
        except (OSError, ValueError):
            return None
        if _process_start(int(owner["pid"])) != owner["start"]:
            return None
        return owner

    def ensure(self, timeout: float = START_TIMEOUT) -> bool:
        """An engine that answers; True if this call started it (so its caller stops it)."""
        if answers():
            return False
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineError("no Docker engine answers and there is no dockerd to start: "
                              "install Debian's docker.io (or start your engine)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(exist_ok=True)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [dockerd, "--data-root", str(self.data_root), "--pidfile", str(self.pid_file)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this script; stopped by ``stop``
            )
        start = _process_start(process.pid)
        self.owner_file.write_text(json.dumps({"pid": process.pid, "start": start}) + "\n")
        deadline = time.monotonic() + timeout
        while not answers(timeout=2.0):
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"dockerd did not answer within {timeout:.0f}s: {self.tail()}")
            time.sleep(0.2)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM the dockerd started from here and wait for it; False if none runs."""
        owner = self.owned()
        self.owner_file.unlink(missing_ok=True)
        if owner is None:
            return False
        pid = int(owner["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _process_start(pid) == owner["start"]:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break  # our own child: reaped
            except ChildProcessError:
                pass  # started by an earlier command: init reaps it
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
            time.sleep(0.1)
        try:
            os.waitpid(pid, os.WNOHANG)  # it ended as a zombie child of ours: reap it now
        except ChildProcessError:
            pass
        return True

    def tail(self, lines: int = 5) -> str:
        """The last lines of dockerd's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])
