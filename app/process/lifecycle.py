"""The process's phase (starting, ready, unavailable, failed, draining) and the probe bytes for
each.

Probe answers are built when the phase changes, so ``/healthz``, ``/readyz`` and
``/accept-traffic`` cost a lookup, never a serialization, and never touch Django.

``/readyz`` says whether this process can serve chat now (a deploy waits for it). A
balancer's health check asks ``/accept-traffic`` instead: whether new connections should
come *here* rather than to another process. A Redis outage is every process's at once, so
it is no reason to send them elsewhere: in the ``unavailable`` phase this process still
accepts (it holds a join up to 10 s for Redis to return, and serves the page), where a check
on ``/readyz`` took every process out together and the balancer refused everyone.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from enum import StrEnum


def process_start_time() -> float:
    """Wall-clock time the process was exec'd (Linux /proc), else the time of this import."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        started_since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_since_boot
        return time.time() - max(age, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


PROCESS_STARTED_AT = process_start_time()


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"  # warm-up failed: this process can never serve (restart it)
    DRAINING = "draining"


HEALTHZ = b'{"status":"ok"}'


def _probe_body(key: str, yes: bool, color: str, reason: str) -> bytes:
    """``{"<key>": yes, "color": ...}``, with the reason when not ``yes``."""
    body: dict[str, object] = {key: yes, "color": color}
    if not yes:
        body["reason"] = reason
    return json.dumps(body, separators=(",", ":")).encode()


class Lifecycle:
    """Holds the phase and the precomputed ``/readyz`` response for it."""

    def __init__(self, color: str) -> None:
        self.color = color
        self.phase = Phase.STARTING
        self.reason = "starting"
        self.ready_at: float | None = None
        # Set once the phase is decided for a waiting handshake: ready, or draining for good.
        self._settled = asyncio.Event()
        self.readyz: tuple[int, bytes] = (503, b"")
        self.accept_traffic: tuple[int, bytes] = (503, b"")
        # At its connection cap: no new connection should come here (the router's check).
        self.full = (503, _probe_body("accepting", False, color, "full"))
        self._set(Phase.STARTING, "starting")

    def _set(self, phase: Phase, reason: str) -> None:
        self.phase = phase
        self.reason = reason
        ready = phase is Phase.READY
        self.readyz = (200 if ready else 503, _probe_body("ready", ready, self.color, reason))
        accepting = phase in (Phase.READY, Phase.UNAVAILABLE)  # Redis away is everyone's
        self.accept_traffic = (200 if accepting else 503,
                               _probe_body("accepting", accepting, self.color, reason))
        if ready:
            self._settled.set()
        elif phase is not Phase.DRAINING:  # a drain wakes its waiters from the loop: below
            self._settled.clear()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def draining(self) -> bool:
        return self.phase is Phase.DRAINING

    def set_ready(self) -> None:
        if self.draining or self.phase is Phase.FAILED:
            return
        if self.ready_at is None:
            self.ready_at = time.time()
        self._set(Phase.READY, "")

    def set_unavailable(self, reason: str) -> None:
        if not self.draining and self.phase is not Phase.FAILED:
            self._set(Phase.UNAVAILABLE, reason)

    def set_failed(self, reason: str) -> None:
        """Warm-up failed: unready for good, and no new connection should come here."""
        if not self.draining:
            self._set(Phase.FAILED, reason)

    def begin_drain(self) -> None:
        """Flip readiness for good; safe to call from a signal handler."""
        if not self.draining:
            self._set(Phase.DRAINING, "draining")

    def release_waiters(self) -> None:
        """Wake the handshakes waiting for ready, so a drain refuses them at once (503
        draining) instead of being held by them until their wait runs out. Called from the
        event loop, not the signal handler: waking a waiter schedules its callbacks."""
        self._settled.set()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until ready (or time out); False when draining or still not ready."""
        if not self.ready:
            try:
                await asyncio.wait_for(self._settled.wait(), timeout)
            except TimeoutError:
                return False
        return self.ready
