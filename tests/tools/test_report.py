"""tools/report.py: the arithmetic every benchmark figure goes through."""

from __future__ import annotations

import pytest

from tools.report import median, percentiles, ratio, table

pytestmark = pytest.mark.unit


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentiles(values) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([7.0]) == {"p50": 7.0, "p90": 7.0, "p99": 7.0, "max": 7.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_median_and_ratio() -> None:
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 3, 2]) == 2.5
    assert median([]) is None
    assert ratio(300.0, 100.0) == 3.0
    assert ratio(None, 100.0) is None and ratio(1.0, 0.0) is None


def test_table_aligns_columns() -> None:
    text = table(("name", "ms"), [("connect", 1.25), ("delivery", None)])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["connect", "1.2"] and lines[3].split() == ["delivery", "-"]
