"""scripts/bench_cutover.py: its arithmetic and table, and the benchmark itself at 50 clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scripts.bench_cutover import (
    SECTION,
    cpu_totals,
    fractions,
    keep,
    markdown,
    ratios,
    senders_of,
    time_to_fraction,
    timeline,
)
from tests.support import run_script


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
def test_cpu_totals_add_up_everything_measured_in_each_phase() -> None:
    def cpu(seconds: float) -> dict[str, float]:
        return {"peak_pct": 90.0, "cpu_s": seconds}

    run = {"fresh": {"blue_cpu": cpu(8), "traefik_cpu": cpu(6), "clients_cpu": cpu(3)},
           "recovery": {"green_cpu": cpu(9), "blue_cpu": cpu(1), "traefik_cpu": cpu(7),
                        "clients_cpu": cpu(4)}}
    assert cpu_totals(run) == (17.0, 21.0)
    del run["fresh"]["clients_cpu"]  # a run from before the clients were sampled
    assert cpu_totals(run) is None


@pytest.mark.unit
def test_senders_are_the_first_clients_of_each_room() -> None:
    assert senders_of(7, 3, 2) == [0, 1, 3, 4, 6]


def run_result(clients: int, label: str) -> dict[str, Any]:
    figures = {"p50_s": 1.0, "p99_s": 2.0, "p100_s": 2.0}
    cpu = {"peak_pct": 50.0, "cpu_s": 1.0}
    return {"config": {"clients": clients}, "label": label, "when": "now", "ok": True, "problems": [],
            "fresh": {**figures, "blue_cpu": cpu}, "ratio": {"p50": 1.0, "p99": 1.0, "p100": 1.0},
            "recovery": {**figures, "green_cpu": cpu, "last_close_s": 0.5}, "green_counters": {},
            "lost": 0, "duplicated": 0, "failed_attempts": 0, "machine": {"load_average": [1.0]}}


@pytest.mark.unit
def test_kept_runs_replace_their_own_size_and_label_and_fill_the_marked_section(tmp_path: Path) -> None:
    path = tmp_path / "cutover.json"
    keep(run_result(2000, "before"), path)
    keep(run_result(2000, "after"), path)
    runs = keep({**run_result(2000, "before"), "when": "later"}, path)
    assert [(r["label"], r["when"]) for r in runs] == [("after", "now"), ("before", "later")]
    section = markdown(runs)
    assert section.startswith(f"<!-- {SECTION}: begin") and section.endswith(f"<!-- {SECTION}: end -->")
    assert section.count("| 2000 |") == 2
    assert all(row.count("|") == section.splitlines()[5].count("|") for row in section.splitlines()
               if row.startswith("| 2000 |"))  # as many cells as the header


def test_bench_cutover_small(tmp_path: Path) -> None:
    """The whole benchmark at 50 clients: connect, chat, deploy green, all back, nothing lost."""
    code, result, output = run_script(
        "bench_cutover", "--clients", "50", "--room-size", "10", "--client-processes", "2",
        "--rate", "10", json_path=tmp_path / "cutover.json", timeout=150)
    assert code == 0, output
    assert result["ok"] and result["problems"] == []
    assert result["fresh"]["ready"] == result["recovery"]["recovered"] == result["on_green"] == 50
    assert result["lost"] == result["duplicated"] == result["unacked"] == 0
    assert result["close_codes"] == {"1012": 50} and result["deploy"]["old"] == "drained"
    assert all(result["recovery"][key] is not None for key in ("p50_s", "p99_s", "p100_s"))
    assert result["recovery"]["deciles_s"][-1] == result["recovery"]["p100_s"]
    assert cpu_totals(result) is not None and all(total > 0 for total in cpu_totals(result) or ())
