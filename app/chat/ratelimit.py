"""Per-connection send rate: a token bucket. Pure: the caller passes the clock.

The clock is when each frame arrived (was read by the server), not when the consumer got
round to handling it. uvicorn hands a read's frames to the application one ``receive()`` at
a time; with 100 clients flooding on 2 cores, working through one client's 150 frames took
0.3 to 0.5 s, long enough to refill a token every 50 ms (at 20/s), and each frame accepted on
one reset the run of refusals that closes a flooder: a few of them were never closed, only
cut by the keepalive (issue #16). Frames not read yet (uvicorn stops reading until its queue
is empty) count from when they are read: a backlog read at once is a burst, whatever pace
the client wrote it at.
"""

from __future__ import annotations

# The key of the ASGI ``websocket.receive`` event that carries when its frame was read
# (``time.monotonic()``): set by Parley's guarded uvicorn protocol (app.process.websocket).
# Other servers do not set it; the consumer then uses the time it takes the event.
ARRIVED = "parley.arrived"


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; each frame takes one."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> bool:
        """True if a frame may pass now (and count it). A ``now`` earlier than the last one
        (a frame that arrived before the bucket was made) refills nothing."""
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
