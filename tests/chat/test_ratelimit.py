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


def test_a_frame_from_before_the_last_reading_refills_nothing() -> None:
    # A frame the client sent right after its handshake can have arrived before the bucket
    # was made (at the end of the connect handler); it must not take tokens back.
    bucket = TokenBucket(rate=2, burst=3, now=10)
    assert bucket.take(9.5) is True
    assert bucket.tokens == 2
    assert bucket.updated == 10
