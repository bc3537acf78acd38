"""The token bucket, with a pinned clock."""

import pytest

from app.chat.ratelimit import TokenBucket

pytestmark = pytest.mark.unit


def test_burst_then_steady_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.25) is False
    assert bucket.take(0.5) is True
    assert bucket.take(10) is True
    assert bucket.tokens == 2  # refilled to the burst, minus the one just taken
