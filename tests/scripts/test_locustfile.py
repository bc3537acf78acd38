"""scripts/locustfile.py through scripts/locust_run.py: Locust's own statistics show chat."""

from __future__ import annotations

from pathlib import Path

from tests.support import run_script


def test_headless_run_reports_connect_and_round_trip_as_locust_requests(tmp_path: Path) -> None:
    status, result, output = run_script("locust_run", "-u", "5", "--spawn-rate", "5", "-t", "3",
                                        "--rooms", "2", json_path=tmp_path / "locust.json")

    assert status == 0, output
    connect, trip = result["requests"]["connect"], result["requests"]["message round trip"]
    assert (connect["requests"], connect["failures"]) == (5, 0)
    assert trip["requests"] >= 5 and trip["failures"] == 0
    assert trip["p50"] is not None and trip["max_ms"] >= trip["p50"] > 0
    assert "message round trip" in output
