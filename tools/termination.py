"""Stopping app processes the way a deploy must: SIGTERM all at once so they drain together,
each given its own budget before SIGKILL, and what became of each read from its log.
"""

from __future__ import annotations

import re
import signal
import time

from tools.procs import Proc


def stop_together(procs: list[Proc], timeout: float = 15.0) -> float:
    """SIGTERM all of ``procs`` at once (so they drain together), wait for every exit
    (SIGKILL after ``timeout``); seconds it took."""
    started = time.monotonic()
    terminate([(proc, timeout) for proc in procs])
    return time.monotonic() - started


def terminate(procs: list[tuple[Proc, float]]) -> list[bool | None]:
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
MAX_DRAIN = 3600.0
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
    # The service refuses more than an hour (app.config); nor does a deploy wait longer.
    return min(max(timeout, 0.1), MAX_DRAIN) + DRAIN_SLACK


# The service's last words after a complete drain (app/process/server.py).
DRAINED = re.compile(r"\bdrained \d+ websocket")


def drain_outcome(log_since_sigterm: str, killed: bool, budget: float) -> str:
    """``drained``, or what happened instead, from what the process wrote after SIGTERM:
    only a process that logged its drain drained (one SIGKILLed by someone else exits
    quietly)."""
    if killed:
        return (f"killed: still running {budget:.0f}s after SIGTERM "
                f"(its SHUTDOWN_TIMEOUT and {DRAIN_SLACK:.0f}s)")
    if EXIT_FAILED in log_since_sigterm or "Traceback" in log_since_sigterm:
        return "exited without a clean drain (see its log)"
    if DRAINED.search(log_since_sigterm):
        return "drained"
    return "ended without logging its drain (killed by another signal?)"
