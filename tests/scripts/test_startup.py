"""scripts/startup.py at a small size: per-run milestones, medians, the floor's ratio."""

from __future__ import annotations

from pathlib import Path

from tests.support import run_script

PHASES = ("healthz_ms", "readyz_ms", "first_message_ms")


def test_two_cold_starts_of_ours_and_the_floor(tmp_path: Path) -> None:
    status, result, output = run_script("startup", "-n", "2", json_path=tmp_path / "s.json")

    assert status == 0, output
    assert set(result["runs"]) == {"app", "floor"}
    for kind, runs in result["runs"].items():
        assert len(runs) == 2
        for run in runs:
            assert run["ok"] is True
            # Each milestone comes after the one before it, in the same run.
            assert 0 < run["healthz_ms"] <= run["readyz_ms"] <= run["first_message_ms"]
        assert set(result["median"][kind]) == set(PHASES)
    assert set(result["ratio_to_floor"]) == set(PHASES)
    assert all(value > 0 for value in result["ratio_to_floor"].values())
    assert result["machine"]["python"]
    assert "median" in output and "ratio" in output


def test_a_server_that_never_gets_ready_fails_the_run(tmp_path: Path) -> None:
    # A Redis URL nobody listens on: /healthz answers, /readyz never turns 200.
    status, result, output = run_script("startup", "-n", "1", "--no-floor", "--timeout", "3",
                                        json_path=tmp_path / "s.json", env={"REDIS_URL": "redis://127.0.0.1:1/0"})

    assert status == 1, output
    run = result["runs"]["app"][0]
    assert run["ok"] is False and "healthz_ms" in run and "readyz_ms" not in run
    assert "/readyz did not answer 200" in run["error"]
