"""The colours as compose services ``app_blue`` and ``app_green``: deploy.py's compose runtime.

Each release is its own image, ``parley:<tag>``: by default the tag is the git revision of
the checkout (``<rev>-dirty`` when app/, docker/ or requirements.txt has uncommitted
changes, rebuilt every time), built once with ``docker compose build`` and reused after. A
deploy given an explicit tag (``TAG=`` in make, ``--tag``) never builds: it runs that
image or refuses, which makes "deploy the other colour with the previous tag" a rollback.

Replicas: a colour runs as N containers (``docker compose up --scale app_<colour>=N``),
and the live routing lists each one by its container name (``<project>-app_<colour>-<n>``,
which Docker's DNS resolves to that container alone), so Traefik balances connections over
them round-robin and each has a router of its own on the internal entry point. The
service name would resolve to all of them in a random order: balanced only on average, per
new connection, and no way to ask one replica whether it is ready.

Readiness is asked, not waited for: every new replica's own ``/readyz`` through Traefik's
internal entry point (published on the host's loopback), on its replica router (header
``X-Parley-Replica: <colour>-<n>``, traefik/chat.yml.template). No health-check interval
sits between an app that is ready and the switch.

The old colour: ``docker stop`` of every container at once (SIGTERM, then its
``stop_grace_period``), and the deploy returns once each old replica has confirmed it got
it (``/readyz`` 503 "draining", or gone): its drain then runs by itself, bounded by the
app's ``SHUTDOWN_TIMEOUT``, and Docker does not restart a container it was told to stop.
``wait_drain`` waits for the containers to exit instead.

Compose files: ``docker compose`` finds them itself (compose.yml plus compose.override.yml,
or ``COMPOSE_FILE``), unless ``--compose-file`` names them (repeatable, like ``-f``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from tools import traefik_config

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "parley"
TAG_ENV = "PARLEY_TAG"
# What goes into the image: a change here makes the checkout's release "dirty".
IMAGE_INPUTS = ("app", "docker", "requirements.txt")
# While waiting for /readyz: the first look at the containers (has one exited?) after this
# long, then at this interval: a colour that gets ready quickly never pays for one.
STATE_POLL_EVERY = 1.0
# Connections a colour may hold in all, whatever its replica count: one Traefik carries both
# ends of every WebSocket in 2 descriptors under its 20,000 open files (docs/DEPLOY.md,
# "Limits"). Each replica gets an equal share as its CHAT_MAX_CONNECTIONS.
COLOUR_CONNECTIONS = 9000
# compose.yml reads it as the app's CHAT_MAX_CONNECTIONS (default COLOUR_CONNECTIONS).
CONNECTIONS_ENV = "PARLEY_CONNECTIONS_PER_REPLICA"
MAX_REPLICAS = 16
# How long the old colour gets to confirm it is draining before the deploy waits for
# `docker stop` itself (which ends at the latest after stop_grace_period).
DRAIN_CONFIRM_TIMEOUT = 5.0
# compose's labels on the containers it creates.
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
HASH_LABEL = "com.docker.compose.config-hash"
RUNNING = frozenset({"running", "restarting"})
PS_FORMAT = "\t".join(["{{.Names}}", "{{.State}}", "{{.Image}}", '{{.Label "' + HASH_LABEL + '"}}',
                       "{{.Status}}"])
# compose's container names end in the replica's number: <project>-app_<colour>-<n>.
CONTAINER_NUMBER = re.compile(r"[-_](\d+)$")
# docker ps's status of an exited container: "Exited (137) 3 seconds ago".
EXITED = re.compile(r"^Exited \((-?\d+)\)")


class Container(NamedTuple):
    """One container of a colour, as ``docker ps`` lists it."""

    name: str
    state: str
    image: str
    config_hash: str  # compose's hash of the service's configuration it was created with
    status: str = ""  # docker's words for it: "Up 3 seconds", "Exited (137) 2 seconds ago"

    @property
    def exit_code(self) -> int | None:
        """Its exit status, once it has exited."""
        found = EXITED.match(self.status)
        return int(found.group(1)) if found else None

    def gone(self) -> str:
        """What the report says of a replica whose container did not run: ``already gone
        (exited 137)`` (137: killed, SIGKILL), or its state."""
        code = self.exit_code
        return f"already gone ({f'exited {code}' if code is not None else self.state})"


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


def connections_per_replica(replicas: int) -> int:
    """Each replica's CHAT_MAX_CONNECTIONS: an equal share of the colour's."""
    return COLOUR_CONNECTIONS // replicas


def draining_or_gone(status: int, body: dict[str, Any] | None) -> bool:
    """A replica's /readyz through Traefik says it got SIGTERM: 503 "draining", or Traefik
    can no longer reach it (502: listener closed, or the container has exited)."""
    return status == 502 or (status == 503 and (body or {}).get("reason") == "draining")


class ComposeRuntime:
    """Where deploy.py's procedure runs when ``--runtime compose``."""

    name = "compose"
    record = "Traefik's live file says so"

    def __init__(self, dynamic_dir: Path, ops_url: str, files: Sequence[Path] = (),
                 tag: str | None = None, ready_timeout: float = 60.0, docker: str = "docker",
                 env: dict[str, str] | None = None, replicas: int | None = None,
                 wait_drain: bool = False) -> None:
        if replicas is not None and not 1 <= replicas <= MAX_REPLICAS:
            raise ComposeError(f"replicas must be 1..{MAX_REPLICAS}, got {replicas}")
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
        self.replicas = replicas  # None: as many as the active colour has (1 at first)
        self.wait_drain = wait_drain
        # After stop(): True once the old colour's containers have exited, False while they
        # are still draining (confirmed to have got SIGTERM); deploy.py reports which.
        self.drain_over = True
        self.drain_failed = ""  # after stop(): the old replicas that did not drain, and how
        self.per_process: dict[str, str] = {}  # after stop(): each old replica's outcome
        # Each replica of the old colour before the deploy, by its replica name (serves()
        # says): "answering", "draining", "not answering", or "already gone (...)".
        self.before: dict[str, str] = {}
        self.urls: dict[str, list[str]] = {}  # each colour's replica addresses, as routed
        self._project: str | None = None

    # -- compose and docker ---------------------------------------------------------------

    def _command(self, *args: str) -> list[str]:
        command = [self.docker, "compose", "--project-directory", str(ROOT)]
        for path in self.files:
            command += ["-f", str(path)]
        return [*command, *args]

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._command(*args), capture_output=True, text=True, env=self.env)

    def _run(self, *args: str) -> str:
        return self._checked(["docker", "compose", *args], self.compose(*args))

    @staticmethod
    def _checked(command: Sequence[str], done: subprocess.CompletedProcess[str]) -> str:
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ComposeError(f"`{' '.join(command)}` failed ({done.returncode}): "
                               + " | ".join(output))
        return done.stdout

    def project(self) -> str:
        """compose's project name, as it resolves it (-p, COMPOSE_PROJECT_NAME, .env, ``name:``
        or the directory): the prefix of the container names."""
        if self._project is None:
            # compose takes the variable before any file's `name:`: nothing to ask then.
            named = self.env.get("COMPOSE_PROJECT_NAME", "").strip()
            self._project = named or self._project_of(self._run("config", "--format", "json"))
        return self._project

    @staticmethod
    def _project_of(config: str) -> str:
        try:
            name = json.loads(config)["name"]
        except (ValueError, KeyError, TypeError):
            raise ComposeError("`docker compose config` named no project") from None
        return str(name)

    def has_image(self) -> bool:
        image = f"{IMAGE}:{self.tag}"
        return subprocess.run([self.docker, "image", "inspect", image], capture_output=True).returncode == 0

    def containers(self, color: str) -> list[Container]:
        """Every container of the colour's service, from compose's labels (``docker ps``: a
        fraction of a ``docker compose ps``)."""
        done = subprocess.run(
            [self.docker, "ps", "--all", "--filter", f"label={PROJECT_LABEL}={self.project()}",
             "--filter", f"label={SERVICE_LABEL}=app_{color}", "--filter", f"label={ONEOFF_LABEL}=False",
             "--format", PS_FORMAT],
            capture_output=True, text=True)
        fields = [line.split("\t") for line in done.stdout.splitlines()]
        return sorted(Container(*(f + ["", "", "", ""])[:5]) for f in fields if len(f) >= 2)

    def state(self, color: str) -> str:
        """The colour's container state (``running``, ``restarting``, ``exited``, ...), the
        states joined by commas when its replicas differ, or ``none``."""
        return ",".join(sorted({c.state for c in self.containers(color)})) or "none"

    def logs(self, color: str, lines: int = 5) -> str:
        done = self.compose("logs", "--no-log-prefix", "--tail", str(lines), f"app_{color}")
        return " | ".join(done.stdout.strip().splitlines()[-lines:]) or "(no output)"

    def _replica_urls(self, color: str, names: Sequence[str]) -> list[str]:
        return [f"http://{name}:{traefik_config.APP_PORT}" for name in names]

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

    def _plan(self, color: str) -> int:
        """Each colour's addresses (the new one's predicted from compose's container names);
        the new colour's replica count."""
        live = self.dynamic_file.read_text() if self.dynamic_file.exists() else ""
        self.urls = traefik_config.colour_urls(live) if live else {}
        active = self.active()
        count = self.replicas or (len(self.urls.get(active, [])) if active else 0) or 1
        for each in traefik_config.COLORS:
            if each == color or not self.urls.get(each):
                self.urls[each] = traefik_config.compose_urls(self.project(), {each: count})[each]
        self.notes["replicas"] = count
        self.env[CONNECTIONS_ENV] = str(connections_per_replica(count))
        return count

    def _route(self, active: str) -> None:
        """Write the live routing (``active`` serving) unless it says exactly that already."""
        text = traefik_config.render_dynamic(active, self.urls)
        if not self.dynamic_file.exists() or self.dynamic_file.read_text() != text:
            traefik_config.write_watched(self.dynamic_file, text)

    def start(self, color: str) -> None:
        """Start ``color``'s replicas on this release's image (Redis and Traefik too unless
        they serve already), then ask each replica's own /readyz through Traefik until every
        one answers 200 as ``color``."""
        if self._project is None and not self.env.get("COMPOSE_PROJECT_NAME", "").strip():
            # compose's project name (the container names' prefix) while the image is checked.
            config = subprocess.Popen(self._command("config", "--format", "json"), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=self.env)
            try:
                self.build(color)
            finally:
                out, err = config.communicate()
            done = subprocess.CompletedProcess(config.args, config.returncode, out, err)
            self._project = self._project_of(self._checked(["docker", "compose", "config"], done))
        else:
            self.build(color)
        count = self._plan(color)
        traefik_config.ensure_default_certificate(self.dynamic_file.parent)
        # The new replicas' routers go live while they start; the active colour's stay as
        # they are. On a first start there is nothing to protect: route to it at once.
        self._route(self.active() or color)
        serving = self.answered - {color}
        # A colour that answered through Traefik proves Traefik runs and (its readiness
        # includes Redis) Redis too: leave both alone (`--no-deps`; compose would otherwise
        # wait for Redis's health check, ~0.5 s). Otherwise start whatever is missing.
        scope = ["--no-deps", f"app_{color}"] if serving else ["redis", "traefik", f"app_{color}"]
        found = self.containers(color)
        leftovers = [c.name for c in found if c.state in RUNNING]
        if leftovers:
            # Still draining from the deploy before (which returned once it was), or started
            # by hand: `up` would leave it running as it is and it would exit under us. Let it
            # finish (a second SIGTERM changes nothing), then start afresh.
            stop = [self.docker, "stop", *leftovers]
            self._checked(stop, subprocess.run(stop, capture_output=True, text=True))
            found = [c._replace(state="exited") if c.name in leftovers else c for c in found]
        if serving and self._start_existing(color, found):
            self.notes["started_by"] = "docker start"
        else:
            self.notes["started_by"] = "docker compose up"
            self._run("up", "--detach", "--no-build", "--scale", f"app_{color}={count}", *scope)
            names = [c.name for c in self.containers(color)]
            if names and self._replica_urls(color, names) != self.urls[color]:
                # compose named them otherwise than predicted (COMPOSE_COMPATIBILITY's "_"...).
                self.urls[color] = self._replica_urls(color, names)
                self._route(self.active() or color)
        self._await_ready(color)

    def _start_existing(self, color: str, found: Sequence[Container]) -> bool:
        """``docker start`` of the colour's stopped containers when they are what ``up`` would
        start (this release's image, one per replica as routed), ~0.1-0.3 s less than
        ``docker compose up``; False, with nothing left running, when they are not.

        compose's own hash of the service's configuration is asked meanwhile: containers
        created from another one (compose.yml or its variables changed since) are stopped
        again, before anything asks them anything, and ``up`` recreates them. A new release
        never gets here: its image differs, and ``up`` creates its containers.
        """
        names = sorted(str(urlsplit(url).hostname) for url in self.urls[color])
        image = f"{IMAGE}:{self.tag}"
        if [c.name for c in found] != names or any(c.image != image or c.state in RUNNING for c in found):
            return False
        hashed = subprocess.Popen(self._command("config", "--hash", f"app_{color}"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=self.env)
        started = subprocess.run([self.docker, "start", *names], capture_output=True, text=True)
        out, _ = hashed.communicate()
        expected = out.split()[-1] if hashed.returncode == 0 and out.split() else None
        if started.returncode == 0 and expected is not None and all(c.config_hash == expected for c in found):
            return True
        subprocess.run([self.docker, "stop", *names], capture_output=True)
        return False

    def _await_ready(self, color: str) -> None:
        url = self.ops_url + traefik_config.READY_PATH
        pending = set(range(1, len(self.urls[color]) + 1))
        deadline = time.monotonic() + self.ready_timeout
        next_look = time.monotonic() + STATE_POLL_EVERY
        last: tuple[int, dict[str, Any] | None] = (0, None)
        while time.monotonic() < deadline:
            for number in sorted(pending):
                headers = {traefik_config.REPLICA_HEADER: traefik_config.replica_name(color, number)}
                last = get_json(url, headers)
                # A replica router not loaded yet falls through to the active colour's
                # /readyz: only an answer naming ``color`` is this replica's.
                if last[0] == 200 and last[1] is not None and last[1].get("color") == color:
                    pending.discard(number)
            if not pending:
                return
            if time.monotonic() >= next_look:
                states = {c.state for c in self.containers(color)} or {"none"}
                if not states <= {"running", "created"}:
                    raise ComposeError(f"app_{color} is {','.join(sorted(states))}: {self.logs(color)}")
                next_look = time.monotonic() + STATE_POLL_EVERY
            time.sleep(0.02)
        reason = (last[1] or {}).get("reason") or f"HTTP {last[0]}" if last[0] else "no answer"
        waiting = ", ".join(traefik_config.replica_name(color, n) for n in sorted(pending))
        raise ComposeError(f"app_{color} was not ready after {self.ready_timeout:.0f}s ({waiting}: "
                           f"{reason}): {self.logs(color)}")

    def abandon(self, color: str) -> None:
        self.compose("stop", f"app_{color}")

    def switch(self, color: str) -> None:
        if not self.urls:
            self._plan(color)
        self._route(color)

    def routed_color(self, timeout: float | None = None) -> str | None:
        # A short timeout unless asked for more: right after a kill, Traefik may still hold a
        # keep-alive connection to the dead container and the request hangs; the next poll
        # goes to the new route.
        status, body = get_json(self.ops_url + traefik_config.READY_PATH, timeout=timeout or 0.3)
        color = body.get("color") if status == 200 and body is not None else None
        if color is not None:
            self.answered.add(color)
        return color

    def routed_replicas(self, color: str) -> list[str]:
        """The replica names (``<colour>-<n>``) of ``color`` the live routing lists: the n-th
        address, reached by its replica router, is compose's container number n."""
        live = self.dynamic_file.read_text() if self.dynamic_file.exists() else ""
        urls = traefik_config.colour_urls(live).get(color, []) if live else []
        return [traefik_config.replica_name(color, number) for number in range(1, len(urls) + 1)]

    def numbered(self, color: str) -> dict[str, Container]:
        """The colour's containers by replica name, from compose's number at the end of
        each container's name (whatever the project or separator)."""
        found = {}
        for container in self.containers(color):
            number = CONTAINER_NUMBER.search(container.name)
            if number:
                found[traefik_config.replica_name(color, int(number.group(1)))] = container
        return found

    repair_hint = "`docker compose up -d` for the colour's service, or deploy again"

    def edge_down(self) -> str:
        # Nothing to refuse: a colour that does not answer through Traefik is started without
        # --no-deps, which starts Traefik too; after that, a Traefik that does not route to
        # the new colour fails its confirmation like any other cause.
        return ""

    def members(self, color: str) -> list[str]:
        return self.routed_replicas(color)

    def dead(self, color: str) -> dict[str, str]:
        """The routed replicas of ``color`` whose container does not run, in Docker's words:
        ``already gone (exited 137)`` (137: killed, SIGKILL), or no container at all."""
        containers = self.numbered(color)
        found = {replica: containers.get(replica) for replica in self.routed_replicas(color)}
        return {replica: "already gone (no container)" if container is None else container.gone()
                for replica, container in found.items()
                if container is None or container.state not in RUNNING}

    def serves(self, color: str) -> bool:
        """Ask each replica of ``color``: Docker's state of its container (one that has
        exited is "already gone (exited <code>)"), then the replica's own /readyz through
        its replica router. One request through the colour's round robin would ask one
        replica at random. True if any answers."""
        gone = self.dead(color)
        for replica in self.routed_replicas(color):
            if replica in gone:
                self.before[replica] = gone[replica]
            else:
                status, body = get_json(self.ops_url + traefik_config.READY_PATH,
                                        {traefik_config.REPLICA_HEADER: replica}, timeout=1.0)
                self.before[replica] = (
                    "answering" if status == 200 and (body or {}).get("color") == color else
                    "draining" if status == 503 and (body or {}).get("reason") == "draining" else
                    "not answering")
        answering = "answering" in self.before.values()
        if answering:
            self.answered.add(color)
        return answering

    def lingers(self, color: str) -> bool:
        """Containers of ``color`` still run: left undrained by a deploy interrupted after its
        switch (or still draining from the deploy before): a deploy of the routed colour
        then finishes, stopping them."""
        return any(c.state in RUNNING for c in self.containers(color))

    def stop(self, color: str) -> bool:
        """``docker stop`` of every container of ``color`` at once (SIGTERM; SIGKILL after
        stop_grace_period); False if none was running (killed or crashed: its clients were
        cut off, not drained).

        Returns once each replica that answered confirms it is draining (or has gone), unless
        ``wait_drain``, or the colour was not answering: then once they have all exited.
        """
        running = [c.name for c in self.containers(color) if c.state in RUNNING]
        if not running:
            self._report(color)
            return False
        # Its own session and no pipes: the drain outlives this process if it returns first,
        # and whoever captures the deploy's output is not held until the drain ends.
        stopping = subprocess.Popen([self.docker, "stop", *running], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        if not self.wait_drain and color in self.answered and self._confirm_draining(color, stopping):
            self.drain_over = False
            self._report(color)
            return True
        _, err = stopping.communicate()
        if stopping.returncode != 0:
            raise ComposeError(f"`docker stop` of app_{color} failed ({stopping.returncode}): "
                               f"{err.strip()[-300:]}")
        self.drain_over = True
        self._report(color)
        return True

    def _report(self, color: str) -> None:
        """``per_process``: what became of each replica of ``color``, by what it was before the
        deploy (``serves``) and, once ``docker stop`` is over, by how its container exited."""
        after = self.numbered(color) if self.drain_over else {}
        for replica in self.routed_replicas(color):
            before = self.before.get(replica, "answering")
            ended = after.get(replica)
            if before.startswith("already gone"):
                outcome = before
            elif before == "not answering":
                outcome = "stopped, was not answering"
            elif not self.drain_over:
                outcome = "draining"
            elif ended is None or ended.exit_code == 0:
                outcome = "drained"
            else:  # 137: SIGKILLed past stop_grace_period, or by someone else
                outcome = (f"exited {ended.exit_code if ended.exit_code is not None else ended.state} "
                           f"without a clean drain (docker compose logs app_{color})")
            self.per_process[replica] = outcome
        self.drain_failed = "; ".join(f"{replica} {outcome}" for replica, outcome in self.per_process.items()
                                      if outcome not in ("drained", "draining"))

    def _confirm_draining(self, color: str, stopping: subprocess.Popen[str]) -> bool:
        """Every replica of ``color`` says it got SIGTERM (or ``docker stop`` is done)."""
        url = self.ops_url + traefik_config.READY_PATH
        # Those that were there to ask before (read from the live routing: a deploy that
        # finishes another's has planned nothing).
        pending = {replica for replica in self.routed_replicas(color)
                   if not self.before.get(replica, "").startswith("already gone")}
        deadline = time.monotonic() + DRAIN_CONFIRM_TIMEOUT
        while pending and time.monotonic() < deadline:
            if stopping.poll() is not None:
                return False  # finished (or failed) already: the caller reads how
            for replica in sorted(pending):
                headers = {traefik_config.REPLICA_HEADER: replica}
                if draining_or_gone(*get_json(url, headers, timeout=0.3)):
                    pending.discard(replica)
            if pending:
                time.sleep(0.01)
        return not pending

    def record_active(self, color: str) -> None:
        """The live dynamic file is the record."""
