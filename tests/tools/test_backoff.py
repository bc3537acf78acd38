"""tools/backoff.py: the reconnect delays stay within their windows and spread over them."""

from __future__ import annotations

import random

import pytest

from tools.backoff import failure_delay, restart_delay

pytestmark = pytest.mark.unit


def test_delays_are_uniform_within_their_windows() -> None:
    random.seed(7)
    restarts = [restart_delay(1.0) for _ in range(300)]
    assert all(0 <= d <= 1.0 for d in restarts) and min(restarts) < 0.2 and max(restarts) > 0.8
    for attempt in range(8):
        bound = min(20.0, 0.5 * 2 ** attempt)
        delays = [failure_delay(attempt, 0.5, 20.0) for _ in range(300)]
        assert all(0 <= d <= bound for d in delays) and max(delays) > bound * 3 / 4
