"""The colours as compose services ``app_blue`` and ``app_green``: deploy.py's compose runtime.

Each release is its own image, ``parley:<tag>``: by default the tag is the git revision of
the checkout (``<rev>-dirty`` when app/, docker/ or requirements.txt has uncommitted
changes, rebuilt every time), built once with ``docker compose build`` and reused after. A
deploy given an explicit tag (``TAG=`` in make, ``--tag``) never builds: it runs that
image or refuses, which makes "deploy the other colour with the previous tag" a rollback.

Readiness is asked, not waited for: the new colour's own ``/readyz`` through Traefik's
internal entry point (published on the host's loopback), on the probe router that picks a
colour by the ``X-Parley-Colour`` header (traefik/chat.yml.template). No health-check
interval sits between an app that is ready and the switch.

Compose files: ``docker compose`` finds them itself (compose.yml plus compose.override.yml,
or ``COMPOSE_FILE``), unless ``--compose-file`` names them (repeatable, like ``-f``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools import traefik_config

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "parley"
TAG_ENV = "PARLEY_TAG"
# What goes into the image: a change here makes the checkout's release "dirty".
IMAGE_INPUTS = ("app", "docker", "requirements.txt")
# While waiting for /readyz: the first look at the container (has it exited?) after this
# long, then at this interval. `compose ps` takes ~0.1-0.4 s: a colour that gets ready
# quickly never pays for one.
STATE_POLL_EVERY = 1.0


class ComposeError(RuntimeError):
    """A compose step failed; the message says which and why (deploy.py wraps it)."""


def release_tag(root: Path = ROOT) -> tuple[str, bool]:
    """The checkout's release tag and whether it is reproducible (a clean git revision)."""
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *IMAGE_INPUTS],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "latest", False
    return (f"{rev}-dirty", False) if dirty else (rev, True)


def get_json(url: str, headers: dict[str, str] | None = None,
             timeout: float = 1.0) -> tuple[int, dict[str, Any] | None]:
    """GET ``url``: (status, JSON body or None); (0, None) when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, None
    try:
        parsed = json.loads(body)
    except ValueError:
        return status, None
    return status, parsed if isinstance(parsed, dict) else None


class ComposeRuntime:
    """Where deploy.py's procedure runs when ``--runtime compose``."""

    name = "compose"

    def __init__(self, dynamic_dir: Path, ops_url: str, files: Sequence[Path] = (),
                 tag: str | None = None, ready_timeout: float = 60.0, docker: str = "docker",
                 env: dict[str, str] | None = None) -> None:
        self.dynamic_file = dynamic_dir / traefik_config.ACTIVE_FILE_NAME
        self.ops_url = ops_url.rstrip("/")
        self.files = list(files)
        self.explicit_tag = tag is not None
        self.tag, self.reproducible = (tag, True) if tag is not None else release_tag()
        self.ready_timeout = ready_timeout
        self.docker = docker
        self.env = {**os.environ, **(env or {}), TAG_ENV: self.tag}
        self.notes: dict[str, Any] = {"image": f"{IMAGE}:{self.tag}"}
        self.answered: set[str] = set()  # colours seen answering through Traefik

    # -- compose ------------------------------------------------------------------------

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [self.docker, "compose", "--project-directory", str(ROOT)]
        for path in self.files:
            command += ["-f", str(path)]
        return subprocess.run([*command, *args], capture_output=True, text=True, env=self.env)

    def _run(self, *args: str) -> str:
        done = self.compose(*args)
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ComposeError(f"`docker compose {' '.join(args)}` failed ({done.returncode}): "
                               + " | ".join(output))
        return done.stdout

    def has_image(self) -> bool:
        image = f"{IMAGE}:{self.tag}"
        return subprocess.run([self.docker, "image", "inspect", image], capture_output=True).returncode == 0

    def state(self, color: str) -> str:
        """The colour's container state (``running``, ``restarting``, ``exited``, ...) or ``none``."""
        done = self.compose("ps", "--all", "--format", "json", f"app_{color}")
        for line in done.stdout.splitlines():
            try:
                return str(json.loads(line).get("State", "none"))
            except ValueError:
                continue
        return "none"

    def logs(self, color: str, lines: int = 5) -> str:
        done = self.compose("logs", "--no-log-prefix", "--tail", str(lines), f"app_{color}")
        return " | ".join(done.stdout.strip().splitlines()[-lines:]) or "(no output)"

    # -- the runtime protocol -------------------------------------------------------------

    def active(self) -> str | None:
        """The colour the live routing names; None before the first deploy (no live file)."""
        if not self.dynamic_file.exists():
            return None
        return traefik_config.active_color(self.dynamic_file.read_text())

    def build(self, color: str) -> None:
        """Have ``parley:<tag>``: built unless it exists (a clean revision); never for an explicit tag."""
        if self.has_image() and self.reproducible:
            self.notes["built"] = False
            return
        if self.explicit_tag:
            raise ComposeError(f"no image {IMAGE}:{self.tag} on this engine: deploy a tag built here "
                               f"before (`docker image ls {IMAGE}`), or none to build this checkout")
        began = time.monotonic()
        self._run("build", f"app_{color}")
        self.notes.update(built=True, build_s=round(time.monotonic() - began, 3))

    def start(self, color: str) -> None:
        """Start Redis and Traefik (no-ops when up) and ``color`` on this release's image,
        then ask its own /readyz through Traefik until it answers 200 as ``color``."""
        self.build(color)
        if self.active() is None:
            # First start: no live routing yet, so no probe router either. Nothing serves to
            # protect; the app itself refuses handshakes until it is ready.
            self.switch(color)
        self._run("up", "--detach", "--no-build", "redis", "traefik", f"app_{color}")
        url = self.ops_url + traefik_config.READY_PATH
        headers = {traefik_config.PROBE_HEADER: color}
        deadline = time.monotonic() + self.ready_timeout
        next_look = time.monotonic() + STATE_POLL_EVERY
        last: tuple[int, dict[str, Any] | None] = (0, None)
        while time.monotonic() < deadline:
            last = get_json(url, headers)
            if last[0] == 200 and last[1] is not None and last[1].get("color") == color:
                return
            if time.monotonic() >= next_look:
                state = self.state(color)
                if state not in {"running", "created"}:
                    raise ComposeError(f"app_{color} is {state}: {self.logs(color)}")
                next_look = time.monotonic() + STATE_POLL_EVERY
            time.sleep(0.02)
        reason = (last[1] or {}).get("reason") or f"HTTP {last[0]}" if last[0] else "no answer"
        raise ComposeError(f"app_{color} was not ready after {self.ready_timeout:.0f}s ({reason}): "
                           f"{self.logs(color)}")

    def abandon(self, color: str) -> None:
        self.compose("stop", f"app_{color}")

    def switch(self, color: str) -> None:
        traefik_config.atomic_write(self.dynamic_file,
                                    traefik_config.render_dynamic(color, traefik_config.compose_urls()))

    def routed_color(self) -> str | None:
        # A short timeout: right after a kill, Traefik may still hold a keep-alive connection
        # to the dead container and the request hangs; the next poll goes to the new route.
        status, body = get_json(self.ops_url + traefik_config.READY_PATH, timeout=0.3)
        color = body.get("color") if status == 200 and body is not None else None
        if color is not None:
            self.answered.add(color)
        return color

    def stop(self, color: str) -> bool:
        """SIGTERM (stop_signal), compose waits up to stop_grace_period; False if the colour
        was not running any more (killed or crashed: its clients were cut off, not drained)."""
        # Seen answering during this deploy: running, no need to ask compose (~0.3 s).
        running = color in self.answered or self.state(color) in {"running", "restarting"}
        self._run("stop", f"app_{color}")
        return running

    def record_active(self, color: str) -> None:
        """The live dynamic file is the record."""
