"""The one shutdown budget: ``SHUTDOWN_TIMEOUT`` seconds from SIGTERM to exit.

Every step of the drain (readiness grace, close frames, uvicorn's own shutdown, closing
Redis) takes what it may from here, so no step adds a fixed time of its own.
"""

from __future__ import annotations

import time


class ShutdownBudget:
    """Seconds left until the process must be gone, counted from ``start()`` (SIGTERM)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: float | None = None

    def start(self) -> None:
        """Start the clock (idempotent; safe from a signal handler)."""
        if self.started is None:
            self.started = time.monotonic()

    @property
    def deadline(self) -> float:
        """The monotonic time by which the process exits."""
        self.start()
        assert self.started is not None
        return self.started + self.seconds

    def remaining(self, reserve: float = 0.0) -> float:
        """Seconds left, less ``reserve`` kept for later steps; never negative."""
        return max(self.deadline - time.monotonic() - reserve, 0.0)

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started
