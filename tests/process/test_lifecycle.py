"""Phases and the probe bytes precomputed for each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from app.process.lifecycle import PROCESS_STARTED_AT, Lifecycle, Phase
from tools import ROOT

pytestmark = pytest.mark.unit


def body(lifecycle: Lifecycle) -> tuple[int, dict]:
    status, raw = lifecycle.readyz
    return status, json.loads(raw)


def test_starts_unready() -> None:
    assert body(Lifecycle("blue")) == (503, {"ready": False, "color": "blue", "reason": "starting"})


def test_ready_unavailable_and_back() -> None:
    lifecycle = Lifecycle("green")
    lifecycle.set_ready()
    assert body(lifecycle) == (200, {"ready": True, "color": "green"})
    lifecycle.set_unavailable("redis unavailable: refused")
    assert body(lifecycle)[1]["reason"] == "redis unavailable: refused"
    lifecycle.set_ready()
    assert lifecycle.ready


def test_draining_is_final() -> None:
    lifecycle = Lifecycle("blue")
    lifecycle.set_ready()
    lifecycle.begin_drain()
    lifecycle.set_ready()
    lifecycle.set_unavailable("x")
    assert lifecycle.phase is Phase.DRAINING
    assert body(lifecycle) == (503, {"ready": False, "color": "blue", "reason": "draining"})


async def test_wait_ready() -> None:
    lifecycle = Lifecycle("blue")
    assert await lifecycle.wait_ready(0.01) is False
    lifecycle.set_ready()
    assert await lifecycle.wait_ready(0.01) is True


async def test_a_drain_releases_the_handshakes_waiting_for_ready() -> None:
    lifecycle = Lifecycle("blue")
    waiting = asyncio.ensure_future(lifecycle.wait_ready(60))
    await asyncio.sleep(0)  # it is waiting now
    lifecycle.begin_drain()  # from the signal handler: flips the phase only
    lifecycle.release_waiters()  # from the event loop
    assert await asyncio.wait_for(waiting, 5) is False


def test_process_start_time_is_when_the_process_began_not_when_this_was_imported() -> None:
    # A child that waits before importing the module: the start time it reports is before
    # its own first line ran (the exec), and after this process started it. (Bounded by an
    # age instead, this failed in a suite that ran longer than the bound.)
    child = (
        "import time; first = time.time(); time.sleep(0.3)\n"
        "from app.process.lifecycle import PROCESS_STARTED_AT\n"
        "print(first, PROCESS_STARTED_AT)"
    )
    before = time.time()
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    first, started = map(float, out.split())
    tick = 1 / os.sysconf("SC_CLK_TCK")  # /proc's start time is in clock ticks, rounded down
    assert before - tick <= started <= first + tick
    assert 0 < time.time() - PROCESS_STARTED_AT  # and this process's, in the past


def test_a_failed_warm_up_is_for_good_and_takes_the_process_out_of_a_balancers_rotation() -> None:
    # Unlike Redis being away (every process's), a failed warm-up is this process's alone:
    # it can never serve, so a health check on /accept-traffic must send nobody here.
    lifecycle = Lifecycle("blue")
    lifecycle.set_failed("warm-up failed: boom")
    lifecycle.set_ready()
    lifecycle.set_unavailable("redis unavailable: refused")
    assert body(lifecycle) == (503, {"ready": False, "color": "blue", "reason": "warm-up failed: boom"})
    status, raw = lifecycle.accept_traffic
    assert (status, json.loads(raw)) == (503, {"accepting": False, "color": "blue",
                                               "reason": "warm-up failed: boom"})
    lifecycle.begin_drain()
    assert lifecycle.phase is Phase.DRAINING
