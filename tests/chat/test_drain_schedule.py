"""app/chat/drain_schedule.py: the batches of a spread drain."""

from __future__ import annotations

import pytest

from app.chat.drain_schedule import schedule

pytestmark = pytest.mark.unit


def test_no_spread_is_one_batch_of_everyone() -> None:
    assert schedule(9000, 0.0) == [(0.0, 9000)]
    assert schedule(0, 2.0) == []


@pytest.mark.parametrize(("count", "spread"), [(9000, 2.0), (5000, 2.5), (7, 2.0), (1, 3.0), (101, 0.35)])
def test_batches_cover_everyone_once_within_the_spread(count: int, spread: float) -> None:
    batches = schedule(count, spread)
    sizes = [size for _, size in batches]
    offsets = [offset for offset, _ in batches]
    assert sum(sizes) == count and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the larger batches first
    assert offsets[0] == 0.0 and offsets == sorted(offsets) and offsets[-1] <= spread
    assert len(batches) == min(count, int(spread / 0.1 + 1e-9) + 1)


def test_two_seconds_at_the_default_interval_is_21_batches() -> None:
    batches = schedule(9000, 2.0)
    assert len(batches) == 21 and batches[-1] == (2.0, 428) and batches[0] == (0.0, 429)
