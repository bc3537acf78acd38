"""Which cores the measured server and the load generator run on.

On a small machine the load generator and the server compete for the same cores, and the
figures move by tens of percent from run to run. ``PARLEY_BENCH_PIN=1`` gives the server
(ours or the floor, alike) core 0 and the load generator the rest, so each side's CPU cost
is its own. Off by default: on two cores it halves the server's CPU, which stretches every
absolute latency (for the floor too) while the ratios barely move.
"""

from __future__ import annotations

import os
import shutil


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def plan() -> dict[str, list[int]] | None:
    """{"server": [...], "client": [...]}, or None when not pinning."""
    cores = _cores()
    if os.environ.get("PARLEY_BENCH_PIN") != "1" or len(cores) < 2 or not shutil.which("taskset"):
        return None
    return {"server": cores[:1], "client": cores[1:]}


def server_command(command: list[str]) -> list[str]:
    """``command`` run on the server's cores (``taskset`` execs it: same pid, no extra hop)."""
    chosen = plan()
    if chosen is None:
        return command
    return ["taskset", "-c", ",".join(map(str, chosen["server"])), *command]


def pin_client() -> None:
    """Move this process (and the processes it starts later) to the client's cores."""
    chosen = plan()
    if chosen is not None:
        os.sched_setaffinity(0, set(chosen["client"]))
