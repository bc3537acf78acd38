"""The floor's leg of the cutover benchmark: the same storm, bare uvicorn behind the same Traefik.

scripts/bench_cutover.py runs it after Parley's leg, in the same run, so that Parley's ratio
(recovery over fresh connect) reads against what the protocol stack and Traefik alone get
for the same storm on the same machine. Two floors (bench/floor.py ``--ready --color
<colour>``: a ``{"type":"ready"}`` after the accept, and /readyz naming the colour, as Parley
gives both), blue and green, each on a free loopback port, both started up front (an idle
floor costs nothing); one Traefik in front, its files rendered as the local stack renders
them (scripts/stack.py), routing to blue; all of it in a throwaway directory, kept with its
logs (``stack_dir``) after a leg that failed. The clients are scripts/cutover_storm.py's,
as in Parley's leg. The floor has no ids, acks or history, so there is no chat and no
trickle, and it ignores the ``?since=`` the clients resume with.

1. fresh connect: all N clients at once; blue's, Traefik's and the clients' CPU;
2. cutover: the live routing rewritten for green (one rename, as a deploy's switch), a wait
   until Traefik's /readyz names green (new connections go there), then SIGTERM to blue,
   whose uvicorn closes every socket with 1012 itself; from that SIGTERM, the time until 50 /
   99 / 100 % are live again, and the CPU of green, blue, Traefik and the clients.

The leg fails when fewer than N connected fresh, fewer than N were live again on green, or a
close was other than 1012.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from scripts.cutover_storm import (
    arrived,
    client_pids,
    clients,
    fractions,
    fresh_connect,
    ratios,
    recovery,
    timeline,
)
from scripts.runtime import CONFIRM_TIMEOUT
from scripts.stack import (
    START_TIMEOUT,
    stop_all,
    traefik_binary,
    wait_app_ready,
    wait_routed,
    write_routing,
    write_traefik_files,
)
from scripts.stack_state import StackError, StackState
from tools.cpu_sampler import CpuSampler
from tools.net import free_port
from tools.procs import spawn
from tools.report import log
from tools.swarm import raise_nofile
from tools.traefik_config import COLORS

RESTART = 1012
# The floor's own --shutdown-timeout (5 s) and slack for the interpreter's exit.
EXIT_TIMEOUT = 10.0
MAX_PROBLEMS = 20


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The floor's leg with ``args``' clients, processes, concurrency, jitter and timeout."""
    raise_nofile()  # before Traefik and the floors start, so that they inherit it
    directory = Path(tempfile.mkdtemp(prefix="parley-cutover-floor-"))
    try:
        state = start(directory)
    except StackError as exc:
        return {"ok": False, "problems": [f"did not start: {exc}"], "stack_dir": str(directory)}
    try:
        result = measure(args, state)
    except StackError as exc:  # Traefik never routed to green: no figures, Parley's leg stays
        result = {"ok": False, "problems": [str(exc)]}
    finally:
        stop_all(state)
    if result["ok"]:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        result["stack_dir"] = str(directory)  # its logs/ say what Traefik and the floors saw
    return result


def start(directory: Path) -> StackState:
    """Traefik routing to blue and both floors, each ready; StackError (everything stopped)
    if one is not. A StackState without Redis, so that the stack's own Traefik files, checks
    and stop serve the floors as they serve Parley's colours."""
    state = StackState(dir=directory, ports={name: free_port() for name in ("web", "ops", *COLORS)},
                       active="blue")
    try:
        static_file = write_traefik_files(state)
        state.procs["traefik"] = spawn([traefik_binary(), f"--configFile={static_file}"],
                                       state.log("traefik"))
        for color in COLORS:
            command = [sys.executable, "-m", "bench.floor", "--ready", "--color", color,
                       "--port", str(state.ports[color])]
            state.procs[color] = spawn(command, state.log(f"app_{color}"))
        for color in COLORS:
            wait_app_ready(state, color, START_TIMEOUT)
        wait_routed(state, "blue", START_TIMEOUT)
    except BaseException:
        stop_all(state)
        raise
    return state


def measure(args: argparse.Namespace, state: StackState) -> dict[str, Any]:
    n = args.clients
    # No tokens: the floor has no auth, and ignores the query string.
    swarm = clients(state.web_url.replace("http://", "ws://"), args)
    blue, green, traefik = (state.procs[name] for name in ("blue", "green", "traefik"))
    problems: list[str] = []
    with swarm:
        log(f"cutover floor: {n} clients over {swarm.plan.processes} client processes")
        pids = client_pids(swarm)
        fresh_times, fresh_cpu = fresh_connect(
            swarm, {"blue": [blue.pid], "traefik": [traefik.pid], "clients": pids}, args.timeout)
        fresh = fractions(fresh_times, n)
        log(f"cutover floor: fresh connect {fresh}; switching to green")
        began = time.monotonic()
        state.active = "green"
        write_routing(state)  # the live file replaced in one rename, as a deploy's switch
        wait_routed(state, "green", CONFIRM_TIMEOUT)
        switch_s = time.monotonic() - began
        groups = {"green": [green.pid], "blue": [blue.pid], "traefik": [traefik.pid], "clients": pids}
        with CpuSampler(groups) as cpu:
            sigterm_ns = time.monotonic_ns()
            if not blue.send(signal.SIGTERM):
                problems.append("blue was gone before its SIGTERM")
            rec_times, close_times = recovery(swarm, sigterm_ns, args.timeout)
        if not blue.wait(EXIT_TIMEOUT):
            problems.append(f"blue still ran {EXIT_TIMEOUT:.0f} s after its SIGTERM")
        records = [r for answer in swarm.call("report", args.timeout + 60) for r in answer["clients"]]

    recovered_at = fractions(rec_times, n)
    log(f"cutover floor: recovery {recovered_at}")
    fresh_ready, recovered, short = arrived(fresh_times, rec_times, n)
    problems += short
    closes = Counter(str(code) for r in records for code, _ in r["closes"])
    if set(closes) - {str(RESTART)}:
        problems.append(f"closes other than 1012: {dict(closes)}")
    problems += [f"client {r['index']}: {e}" for r in records for e in r["errors"]]
    failures: Counter[str] = Counter()
    for r in records:
        failures.update(r["failures"])
    return {
        "fresh": {**fresh, "ready": fresh_ready, "deciles_s": timeline(fresh_times, n),
                  **{f"{group}_cpu": used for group, used in fresh_cpu.items()}},
        "recovery": {**recovered_at, "recovered": recovered, "deciles_s": timeline(rec_times, n),
                     "closes_deciles_s": timeline(list(close_times), n),
                     "last_close_s": round(max(close_times), 3) if close_times else None,
                     **{f"{group}_cpu": used for group, used in cpu.summary().items()}},
        "ratio": ratios(recovered_at, fresh),
        "switch_s": round(switch_s, 3),
        "close_codes": dict(closes),
        "failed_attempts": sum(r["failed_attempts"] for r in records),
        "failures": dict(failures),
        "ok": not problems,
        "problems": problems[:MAX_PROBLEMS],
    }
