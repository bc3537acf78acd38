"""The cutover drill in real containers: compose.yml up, clients through Traefik, blue->green->blue.

    python -m scripts.compose_drill [--clients 100] [--rooms N] [--rate 50] [--processes 2] [--fault kill]
    make compose-drill DRILL_ARGS="--clients 100 --processes 2"

1. a Docker engine, Compose v2 and the base images (scripts/docker_env.py: an engine is
   started only if none answers, and stopped again at the end);
2. the real compose.yml as a throwaway project (its own name, free loopback ports, its own
   live-routing directory under ``.docker/drills/``, a fresh ``CHAT_JWT_SECRET``), first
   started with ``scripts/deploy.py --runtime compose blue``;
3. N clients, each with a JWT minted with the stack's secret, connect through the
   containerised Traefik's port published on 127.0.0.1 and chat at a steady rate;
4. ``scripts/deploy.py --runtime compose green``, then ``blue``: the same checks as the
   local drill (scripts/drill.py): every acknowledged message reached every member exactly
   once and in id order, nothing sent went unacknowledged, only the expected close code;
   after each deploy, every client on the new colour (each replica's own
   ``chat_connections_open``, read through its replica router, all of them carrying some),
   and the old colour's containers all exited by themselves with status 0 (the deploy
   returns once they confirm they drain; this checks the drain ended well);
5. ``docker compose down -v`` and the engine stopped (if started here), on failure too.

``--processes N``: every deploy runs N replicas of the colour (``deploy.py --processes``).

Faults:
- ``--fault kill``: ``docker compose kill`` (SIGKILL) of the active colour mid-chat, then the
  ordinary deploy to the other colour as the failover; clients see 1006, lose nothing;
- ``--fault bad-image``: first a deploy of the other colour on a release whose container
  exits at start (``parley:<tag>-broken``): it must fail with nothing switched, while the
  clients keep chatting on the old colour unaware; then the two ordinary deploys.

The last line on stdout is the JSON report (``"runtime": "compose"``, ``lost``,
``duplicated``, ``ok``, each deploy's report); exit status 1 unless ``ok``. The checkout's
tracked files are never written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.chat.auth import mint
from scripts.compose_runtime import IMAGE, MAX_REPLICAS, ComposeRuntime, get_json
from scripts.docker_env import docker_environment, state_dir
from scripts.drill import (
    ABNORMAL,
    CONNECT_CONCURRENCY,
    MAX_PROBLEMS,
    RESTART,
    Member,
    client_figures,
    render,
    run_member,
    run_sender,
    send_burst,
    until,
    verify,
)
from tools import traefik_config
from tools.net import free_port, http_get

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ("none", "kill", "bad-image")
MAX_CLIENTS = 2000
TOKEN_TTL = 3600
# The old colour must have exited within this after a deploy returned: its drain is bounded
# by the app's SHUTDOWN_TIMEOUT (10 s in compose.yml) and Docker's stop_grace_period (15 s).
EXIT_WAIT = 20.0


@dataclass
class ComposeStack:
    """One throwaway compose project of the real compose.yml: its name, loopback ports,
    live-routing directory and JWT secret, passed to compose and deploy.py as environment."""

    directory: Path
    project: str = field(default_factory=lambda: f"parley-drill-{secrets.token_hex(3)}")
    http_port: int = field(default_factory=free_port)
    ops_port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    processes: int = 1

    @property
    def dynamic_dir(self) -> Path:
        return self.directory / "dynamic"

    @property
    def web_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def env(self) -> dict[str, str]:
        return {**os.environ,
                "COMPOSE_PROJECT_NAME": self.project,
                "PARLEY_HTTP_BIND": "127.0.0.1",
                "PARLEY_HTTP_PORT": str(self.http_port),
                "PARLEY_OPS_PORT": str(self.ops_port),
                "PARLEY_DYNAMIC_DIR": str(self.dynamic_dir),
                "CHAT_JWT_SECRET": self.secret}

    def runtime(self) -> ComposeRuntime:
        """For looking (container state, routing); deploys go through deploy.py itself."""
        return ComposeRuntime(self.dynamic_dir, self.ops_url, env=self.env())

    def deploy(self, color: str, tag: str | None = None) -> dict[str, Any]:
        """``python -m scripts.deploy --runtime compose <color>``: its JSON report and wall time."""
        command = [sys.executable, "-m", "scripts.deploy", "--runtime", "compose", color,
                   "--ops-url", self.ops_url, "--dynamic-dir", str(self.dynamic_dir),
                   "--processes", str(self.processes)]
        if tag:
            command += ["--tag", tag]
        began = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, env=self.env(), cwd=ROOT)
        wall = round(time.monotonic() - began, 3)
        lines = done.stdout.strip().splitlines()
        try:
            report = json.loads(lines[0]) if lines else {}
        except ValueError:
            report = {}
        if not report:
            report = {"ok": False, "to": color, "error": done.stderr.strip()[-500:]}
        return {**report, "exit": done.returncode, "wall_s": wall}

    def routed(self) -> str | None:
        status, body = get_json(self.ops_url + traefik_config.READY_PATH)
        return body.get("color") if status == 200 and body else None

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "compose", "--project-directory", str(ROOT), *args],
                              capture_output=True, text=True, env=self.env())

    def replica_connections(self, color: str) -> dict[str, int | None]:
        """``chat_connections_open`` of each replica of ``color`` the live routing lists, read
        through its replica router on Traefik's internal entry point (None: no answer)."""
        text = (self.dynamic_dir / traefik_config.ACTIVE_FILE_NAME).read_text()
        counts: dict[str, int | None] = {}
        for number in range(1, len(traefik_config.colour_urls(text)[color]) + 1):
            name = traefik_config.replica_name(color, number)
            status, body = http_get(self.ops_url + "/metrics", timeout=2.0,
                                    headers={traefik_config.REPLICA_HEADER: name})
            counts[name] = None
            for line in body.decode(errors="replace").splitlines() if status == 200 else []:
                if line.startswith("chat_connections_open "):
                    counts[name] = int(float(line.split()[1]))
        return counts

    def exits(self, color: str) -> list[tuple[str, str, int]]:
        """(name, state, exit code) of every container of ``color``."""
        done = self.compose("ps", "--all", "--format", "json", f"app_{color}")
        found = []
        for line in done.stdout.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            found.append((str(entry.get("Name")), str(entry.get("State")), int(entry.get("ExitCode", -1))))
        return sorted(found)

    def await_exit(self, color: str, timeout: float = EXIT_WAIT) -> dict[str, Any]:
        """Wait until no container of ``color`` runs; their states and exit codes."""
        began = time.monotonic()
        while True:
            found = self.exits(color)
            if not any(state in {"running", "restarting"} for _, state, _ in found) or \
                    time.monotonic() - began > timeout:
                return {"color": color, "after_s": round(time.monotonic() - began, 3),
                        "containers": {name: {"state": state, "exit_code": code}
                                       for name, state, code in found}}
            time.sleep(0.1)

    def down(self) -> int:
        """``docker compose down -v``: containers, network and the Redis volume; its status."""
        done = self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20")
        shutil.rmtree(self.directory, ignore_errors=True)
        return done.returncode


def broken_release(tag: str) -> str:
    """A release whose container exits at start (on top of ``parley:<tag>``); its tag."""
    broken = f"{tag}-broken"
    dockerfile = f'FROM {IMAGE}:{tag}\nCMD ["python", "-c", "raise SystemExit(\\"broken release\\")"]\n'
    done = subprocess.run(["docker", "build", "-q", "-t", f"{IMAGE}:{broken}", "-"], input=dockerfile,
                          capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    if done.returncode != 0:
        raise RuntimeError(f"could not build {IMAGE}:{broken}: {done.stderr.strip()[-300:]}")
    return broken


async def run(stack: ComposeStack, clients: int, rooms: int, rate: float, settle: float,
              timeout: float, fault: str) -> dict[str, Any]:
    """Bring the stack up, chat through two deploys (or a kill and a failover), verify."""
    problems: list[str] = []
    first = await asyncio.to_thread(stack.deploy, "blue")
    if not first.get("ok"):
        return {"ok": False, "runtime": "compose", "first_start": first,
                "problems": [f"first start failed: {first.get('error')}"]}
    run_id = secrets.token_hex(3)
    expected_close = ABNORMAL if fault == "kill" else RESTART
    members = [Member(i, f"drill-{run_id}-{i % rooms}", expected_close,
                      token=mint(f"drill-{i}", "*", TOKEN_TTL, stack.secret)) for i in range(clients)]
    finishing, stop_sending = asyncio.Event(), asyncio.Event()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    tasks = [asyncio.create_task(run_member(m, stack.web_url, finishing, gate)) for m in members]
    senders: list[asyncio.Task[None]] = []
    deploys: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    killed: list[dict[str, Any]] = []
    stops: list[dict[str, Any]] = []  # the old colour after each deploy: exited, and how
    spread: list[dict[str, Any]] = []  # each deploy's clients over the new colour's replicas
    timeline: dict[str, float] = {}
    error: str | None = None
    active = "blue"
    began = time.monotonic()
    try:
        await until(lambda: all(m.live for m in members), timeout, f"{clients} clients to connect")
        timeline["connect_all_s"] = round(time.monotonic() - began, 3)
        senders = [asyncio.create_task(run_sender(m, clients / rate, stop_sending)) for m in members]
        if fault == "bad-image":
            await asyncio.sleep(settle)
            tag = first["image"].split(":", 1)[1]
            broken = await asyncio.to_thread(broken_release, tag)
            connects = sum(m.connects for m in members)
            attempt = await asyncio.to_thread(stack.deploy, "green", broken)
            refused.append(attempt)
            refused_ok = attempt["exit"] == 1 and "nothing was switched" in attempt.get("error", "")
            if attempt["ok"] or not refused_ok:
                problems.append(f"the broken release was not refused: {attempt}")
            if stack.routed() != "blue" or sum(m.connects for m in members) != connects:
                problems.append("a refused deploy moved traffic or clients")
            subprocess.run(["docker", "image", "rm", "-f", f"{IMAGE}:{broken}"], capture_output=True)
        for _ in range(1 if fault == "kill" else 2):
            await asyncio.sleep(settle)
            target = traefik_config.other_color(active)
            connects = sum(m.connects for m in members)
            if fault == "kill":
                in_flight = await send_burst(members)
                kill = await asyncio.to_thread(stack.compose, "kill", "-s", "SIGKILL", f"app_{active}")
                killed.append({"color": active, "signal": "SIGKILL", "exit": kill.returncode,
                               "in_flight_at_kill": in_flight,
                               "state_after": await asyncio.to_thread(stack.runtime().state, active)})
            report = await asyncio.to_thread(stack.deploy, target)
            deploys.append(report)
            if not report.get("ok"):
                raise RuntimeError(f"deploy to {target} failed: {report.get('error')}")
            deployed = time.monotonic()
            await until(lambda before=connects: all(m.live for m in members)
                        and sum(m.connects for m in members) >= before + clients,
                        timeout, f"every client to reconnect to {target}")
            timeline[f"all_on_{target}_after_deploy_s"] = round(time.monotonic() - deployed, 3)
            problems += await check_cutover(stack, active, target, clients, fault, stops, spread)
            active = target
        await asyncio.sleep(settle)
        stop_sending.set()
        await asyncio.gather(*senders)
        quiet = time.monotonic()
        await until(lambda: all(not m.pending for m in members), timeout, "every message to be acknowledged")
        tops: dict[str, int] = {}
        for m in members:
            tops[m.room] = max([tops.get(m.room, 0), *m.acked.values()])
        await until(lambda: all(m.last_id >= tops[m.room] for m in members), timeout,
                    "every member to receive its room's last message")
        timeline["quiesce_s"] = round(time.monotonic() - quiet, 3)
    except Exception as exc:  # report what was seen, never hang
        error = f"{type(exc).__name__}: {exc}"
    finally:
        stop_sending.set()
        finishing.set()
        for m in members:
            if m.ws is not None:
                await m.ws.close()
        await asyncio.wait(tasks, timeout=10)
        for task in [*tasks, *senders]:
            task.cancel()
    result = verify(members)
    closes = sum((m.closes for m in members), Counter())
    client_errors = [f"member {m.index}: {e}" for m in members for e in m.errors]
    problems = result["problems"] + client_errors + problems
    if error:
        problems.insert(0, f"aborted, figures are at the moment of abort: {error}")
    # The deploy returns once the old colour confirms it drains; check_cutover saw it end.
    expected_old = "already gone (exited 137)" if fault == "kill" else "draining"
    for deployed_report in deploys:
        if deployed_report.get("old") != expected_old:
            problems.append(f"deploy {deployed_report.get('from')} -> {deployed_report.get('to')}: "
                            f"old colour {deployed_report.get('old')!r}, expected {expected_old!r}")
    return {
        "ok": not problems,
        "clients": clients,
        "rooms": rooms,
        "rate_per_s": rate,
        "fault": fault,
        "expected_close": expected_close,
        "duration_s": round(time.monotonic() - began, 2),
        "timeline": timeline,
        **client_figures(members, closes, result["totals"]),
        "first_start": first,
        "refused_deploys": refused,
        "deploys": deploys,
        "killed": killed,
        "old_colour_exits": stops,
        "replica_connections": spread,
        "problems_total": len(problems),
        "problems": problems[:MAX_PROBLEMS],
    }


async def check_cutover(stack: ComposeStack, old: str, new: str, clients: int, fault: str,
                        stops: list[dict[str, Any]], spread: list[dict[str, Any]]) -> list[str]:
    """After a deploy from ``old`` to ``new`` and every client back: Traefik routes to
    ``new``, every client is on one of its replicas and each replica carries some, and
    every container of ``old`` has exited by itself (status 0: drained within
    SHUTDOWN_TIMEOUT, not killed at stop_grace_period) or, after a kill, by SIGKILL."""
    problems = []
    routed = stack.routed()
    if routed != new:
        problems.append(f"after the deploy to {new}: Traefik routes to {routed}")
    counts: dict[str, int | None] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a gauge may trail the client's `ready` by a moment
        counts = await asyncio.to_thread(stack.replica_connections, new)
        if None not in counts.values() and sum(c or 0 for c in counts.values()) == clients:
            break
        await asyncio.sleep(0.1)
    spread.append({"color": new, "connections": counts})
    if len(counts) != stack.processes or sum(c or 0 for c in counts.values()) != clients \
            or not all(counts.values()):
        problems.append(f"after the deploy to {new}: {clients} clients, {stack.processes} replica(s) "
                        f"expected each to carry some, found {counts}")
    ended = await asyncio.to_thread(stack.await_exit, old)
    stops.append(ended)
    expected_code = 137 if fault == "kill" else 0
    for name, container in ended["containers"].items():
        if container["state"] in {"running", "restarting"} or container["exit_code"] != expected_code:
            problems.append(f"after the deploy to {new}: {name} is {container['state']} with exit code "
                            f"{container['exit_code']}, expected exited with {expected_code}")
    if not ended["containers"]:
        problems.append(f"after the deploy to {new}: no container of app_{old} to be seen")
    return problems


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the teardown below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100, help=f"1..{MAX_CLIENTS} (default 100)")
    parser.add_argument("--rooms", type=int, default=None, help="default: one per 25 clients")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second, all clients")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of steady traffic before, between and after the deploys")
    parser.add_argument("--timeout", type=float, default=None,
                        help="bound for each wait (default 60 s + 40 ms per client)")
    parser.add_argument("--processes", type=int, default=1,
                        help="replicas per colour, every deploy (default 1)")
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--state-dir", help="docker state (default $PARLEY_DOCKER_DIR or .docker/)")
    parser.add_argument("--json", metavar="PATH", help="also write the report here")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS}")
    if not 1 <= args.processes <= min(MAX_REPLICAS, args.clients):
        parser.error(f"--processes must be 1..{MAX_REPLICAS} and at most --clients")
    rooms = args.rooms or max(1, args.clients // 25)
    if not 1 <= rooms <= args.clients or args.rate <= 0:
        parser.error("--rooms must be 1..clients and --rate positive")
    timeout = args.timeout or 60 + args.clients / 25
    signal.signal(signal.SIGTERM, _terminate)

    directory = state_dir(args.state_dir)
    report: dict[str, Any] = {"ok": False, "runtime": "compose", "fault": args.fault}
    try:
        with docker_environment(directory) as environment:
            stack = ComposeStack(directory / "drills" / f"d{secrets.token_hex(3)}",
                                 processes=args.processes)
            stack.dynamic_dir.mkdir(parents=True)
            try:
                report = asyncio.run(run(stack, args.clients, rooms, args.rate, args.settle,
                                         timeout, args.fault))
            finally:
                down_status = stack.down()
            report.update(runtime="compose", project=stack.project, processes=stack.processes,
                          engine=environment["engine"],
                          images=environment["images"], down_exit=down_status)
            if down_status != 0:
                report["ok"] = False
                report.setdefault("problems", []).append("`docker compose down -v` failed")
    except Exception as exc:  # the environment could not be had: say so in the report
        report["problems"] = [f"{type(exc).__name__}: {exc}"]
    if report.get("deploys") is not None:
        print(render({**report, "killed": [], "problems": report.get("problems", []),
                      "problems_total": report.get("problems_total", 0)}), file=sys.stderr)
    else:
        print("\n".join(f"problem: {p}" for p in report.get("problems", [])), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
