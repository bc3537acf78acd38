"""scripts/bench_cutover.py: its table, and the benchmark itself (with the floor's leg) at 50 clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scripts.bench_cutover import SECTION, cpu_totals, keep, markdown, outcome, senders_of, with_floor
from tests.support import run_script


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


@pytest.mark.unit
def test_the_floor_leg_adds_its_ratio_and_fails_the_run_with_its_problems() -> None:
    result = {**run_result(2000, "x"), "ratio": {"p50": 1.0, "p99": 1.2, "p100": 1.2}}
    with_floor(result, {"ok": False, "problems": ["only 1 of 2 connected fresh"],
                        "ratio": {"p50": 0.5, "p99": 0.8, "p100": 0.8}})
    assert result["ratio_to_floor"] == 1.5 and not result["ok"]
    assert outcome(result) == "FAILED: floor: only 1 of 2 connected fresh"


@pytest.mark.unit
def test_the_table_shows_the_floor_for_runs_that_have_one() -> None:
    older = run_result(2000, "older")
    newer = {**run_result(2000, "newer"), "floor": {"ratio": {"p50": 0.5, "p99": 0.8, "p100": 0.8}},
             "ratio_to_floor": 1.25}
    rows = {cells[1]: cells for cells in (line.split(" | ") for line in markdown([older, newer]).splitlines()
                                          if line.startswith("| 2000 |"))}
    assert rows["older"][6:8] == ["-", "-"] and rows["newer"][6:8] == ["0.8", "1.25"]


def test_bench_cutover_small(tmp_path: Path) -> None:
    """The whole benchmark at 50 clients: connect, chat, deploy green, all back, nothing lost;
    then the floor's leg with the same clients, all back on green after 1012s."""
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
    floor = result["floor"]
    assert floor["ok"] and floor["fresh"]["ready"] == floor["recovery"]["recovered"] == 50
    assert floor["close_codes"] == {"1012": 50}
    assert floor["ratio"]["p99"] is not None and result["ratio_to_floor"] is not None
    assert cpu_totals(floor) is not None
