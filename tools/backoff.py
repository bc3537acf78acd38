"""When a test client tries again, as docs/CLIENT.md's reference client does: pure, random.

Used by the drill (scripts/drill.py) and the cutover clients (tools/cutover_clients.py).
"""

from __future__ import annotations

import random


def restart_delay(jitter: float) -> float:
    """After close 1012: prompt, but spread over ``jitter`` seconds."""
    return random.uniform(0, jitter)


def failure_delay(attempt: int, base: float, cap: float) -> float:
    """After a failed attempt: full jitter over an exponentially growing, capped window,
    uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** attempt))
