"""The storm both legs of the cutover benchmark measure: the clients, and figures from their stamps.

scripts/bench_cutover.py runs it against Parley (its local stack, deployed blue -> green) and
scripts/cutover_floor.py against the floor (bench/floor.py behind the same kind of Traefik):
the same tools/cutover_clients.py clients, in as many processes, with the same concurrency,
reconnect policy and connect timeout, so that the two legs' ratios differ by the server alone.
Every ``ready`` and close is stamped with CLOCK_MONOTONIC in the client's own process, and
the figures are read from those stamps: the time until 50 / 99 / 100 % of the clients had
arrived, from the start of a fresh connect or from the old colour's SIGTERM.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from tools.cpu_sampler import CpuSampler
from tools.cutover_clients import CutoverWorker
from tools.swarm import Swarm

FRACTIONS = (0.5, 0.99, 1.0)
# docs/CLIENT.md's defaults: restartJitter, backoffBase, backoffCap, connectTimeout.
RESTART_JITTER, BACKOFF_BASE, BACKOFF_CAP, CONNECT_TIMEOUT = 1.0, 0.5, 20.0, 10.0
# A phase's own bound is --timeout; the pipe to each client process gets this much more.
CALL_SLACK = 60.0


def time_to_fraction(times: list[float | None], total: int, fraction: float) -> float | None:
    """Seconds until ``fraction`` of ``total`` clients had arrived (nearest rank); None
    when fewer than that ever did. ``times`` holds one entry per client, None for never."""
    needed = max(1, math.ceil(fraction * total - 1e-9))
    arrived = sorted(t for t in times if t is not None)
    return arrived[needed - 1] if len(arrived) >= needed else None


def fractions(times: list[float | None], total: int) -> dict[str, float | None]:
    """The 50 / 99 / 100 % arrival times, rounded to the millisecond."""
    found = {f"p{round(f * 100)}_s": time_to_fraction(times, total, f) for f in FRACTIONS}
    return {key: (round(value, 3) if value is not None else None) for key, value in found.items()}


def timeline(times: list[float | None], total: int) -> list[float | None]:
    """Seconds until each tenth of ``total`` had arrived (10 %, 20 %, ... 100 %): where in
    a phase the time went, for comparing the recovery's curve with the fresh connect's."""
    return [(round(t, 3) if t is not None else None)
            for t in (time_to_fraction(times, total, k / 10) for k in range(1, 11))]


def ratios(recovery: dict[str, float | None], fresh: dict[str, float | None]) -> dict[str, float | None]:
    """Recovery over fresh connect, per fraction (the goal: p99 <= 1.0)."""
    out: dict[str, float | None] = {}
    for key in recovery:
        ours, base = recovery[key], fresh.get(key)
        out[key.removesuffix("_s")] = round(ours / base, 2) if ours is not None and base else None
    return out


def arrived(fresh: list[float | None], recovered: list[float | None],
            total: int) -> tuple[int, int, list[str]]:
    """How many of ``total`` clients arrived fresh and again after the cutover (per-client
    times, None for never), and a problem for each phase some never arrived in."""
    fresh_ready = sum(1 for t in fresh if t is not None)
    back = sum(1 for t in recovered if t is not None)
    problems = []
    if fresh_ready < total:
        problems.append(f"only {fresh_ready} of {total} connected fresh")
    if back < total:
        problems.append(f"only {back} of {total} were live again on green")
    return fresh_ready, back, problems


def clients(url: str, args: argparse.Namespace) -> Swarm:
    """``args.clients`` CutoverWorker clients of ``url`` (ws://), ``args.room_size`` to a room
    (``cut-<run>-<k>``), over ``args.client_processes`` processes; not started. A leg adds
    what only its server needs to ``extra`` (Parley's leg: a token per client)."""
    n = args.clients
    extra: dict[str, Any] = {"room_size": args.room_size, "restart_jitter": args.restart_jitter,
                             "backoff_base": BACKOFF_BASE, "backoff_cap": BACKOFF_CAP}
    return Swarm(url, n, math.ceil(n / args.room_size), args.concurrency,
                 per_process=math.ceil(n / args.client_processes), open_timeout=CONNECT_TIMEOUT,
                 worker=CutoverWorker, extra=extra)


def client_pids(swarm: Swarm) -> list[int]:
    """The started client processes, whose CPU is sampled with the servers'."""
    return [p.pid for p in swarm.processes if p.pid is not None]


def fresh_connect(swarm: Swarm, groups: dict[str, list[int]],
                  timeout: float) -> tuple[list[float | None], dict[str, Any]]:
    """Start every client at once; per client, the seconds from the start until its first
    ``ready`` (None: never, within ``timeout``), and the CPU of ``groups`` meanwhile."""
    with CpuSampler(groups) as cpu:
        began = time.monotonic_ns()
        connected = swarm.call("connect", timeout + CALL_SLACK, timeout=timeout)
    times = [(ns - began) / 1e9 if ns is not None else None for c in connected for ns in c["ready_ns"]]
    return times, cpu.summary()


def recovery(swarm: Swarm, since_ns: int, timeout: float) -> tuple[list[float | None], list[float]]:
    """Wait until every client was closed after ``since_ns`` (the old colour's SIGTERM) and
    was live again after that; per client, the seconds from ``since_ns`` to that ``ready``
    (None: never, within ``timeout``), and the seconds to each close seen."""
    answers = swarm.call("recovery", timeout + CALL_SLACK, since_ns=since_ns, timeout=timeout)
    ready = [(ns - since_ns) / 1e9 if ns is not None else None for a in answers for ns in a["ready_ns"]]
    closes = [(ns - since_ns) / 1e9 for a in answers for ns in a["closed_ns"] if ns is not None]
    return ready, closes
