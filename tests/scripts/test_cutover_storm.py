"""scripts/cutover_storm.py: the arrival figures both legs of the cutover benchmark read."""

from __future__ import annotations

import pytest

from scripts.cutover_storm import arrived, fractions, ratios, time_to_fraction, timeline


@pytest.mark.unit
def test_time_to_a_fraction_is_the_nearest_rank_over_all_clients() -> None:
    times: list[float | None] = [0.1 * i for i in range(1, 101)]
    assert time_to_fraction(times, 100, 0.5) == pytest.approx(5.0)
    assert time_to_fraction(times, 100, 0.99) == pytest.approx(9.9)
    assert time_to_fraction(times, 100, 1.0) == pytest.approx(10.0)
    # A client that never came back keeps 100 % out of reach, and counts against the rest.
    assert time_to_fraction([*times[:99], None], 100, 1.0) is None
    assert time_to_fraction([1.0, None, None, None], 4, 0.5) is None


@pytest.mark.unit
def test_ratios_are_recovery_over_fresh_per_fraction() -> None:
    fresh = fractions([1.0, 2.0, 4.0, 4.0], 4)
    recovery = fractions([1.0, 1.0, 2.0, None], 4)
    assert fresh == {"p50_s": 2.0, "p99_s": 4.0, "p100_s": 4.0}
    assert ratios(recovery, fresh) == {"p50": 0.5, "p99": None, "p100": None}


@pytest.mark.unit
def test_the_timeline_is_the_time_to_each_tenth() -> None:
    times: list[float | None] = [float(i) for i in range(1, 21)]
    assert timeline(times, 20) == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0]
    assert timeline([*times[:19], None], 20)[-1] is None


@pytest.mark.unit
def test_arrivals_count_every_client_and_name_the_phase_some_never_arrived_in() -> None:
    assert arrived([0.1, 0.2, 0.3], [0.5, 0.6, 0.7], 3) == (3, 3, [])
    assert arrived([0.1, None, 0.3], [0.5, None, None], 3) == (
        2, 1, ["only 2 of 3 connected fresh", "only 1 of 3 were live again on green"])
