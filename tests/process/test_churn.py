"""Connection churn: what each connection leaves behind, and `make soak` itself (real processes)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.support import AppServer, http_get, run_script

CHURN = 3000


def _gc(app: AppServer, metric: str) -> float:
    _, body = http_get(app.base + "/metrics")
    match = re.search(rf'^python_gc_{metric}_total{{generation="0"}} (\S+)$', body.decode(), re.M)
    assert match, f"no python_gc_{metric}_total in /metrics"
    return float(match.group(1))


def test_closed_connections_leave_nothing_for_the_cyclic_gc(
    make_app: Callable[..., AppServer], tmp_path: Path,
) -> None:
    app = make_app()
    assert app.process is not None
    runs, collected = _gc(app, "collections"), _gc(app, "objects_collected")
    status, result, output = run_script(
        "soak", "--url", app.base, "--server-pid", str(app.process.pid), "--count", str(CHURN),
        "--duration", "120", "--sample", "1000", json_path=tmp_path / "soak.json",
    )
    assert status == 0, output
    assert result["connections"] >= CHURN and result["errors"] == {}
    # Collections did run during the churn, and found (almost) nothing: each upgraded
    # connection's HTTP state used to be a cycle of ~14 objects left to them.
    assert _gc(app, "collections") > runs
    assert _gc(app, "objects_collected") - collected < CHURN


def test_soak_reports_rss_growth_per_100k_against_redis(tmp_path: Path) -> None:
    status, result, output = run_script(
        "soak", "--redis", "--count", "600", "--sample", "100", "--duration", "60", "-c", "20",
        "--quiet-every", "150", "--settle", "0.2", json_path=tmp_path / "soak.json",
    )
    assert status == 0, output
    assert result["ok"] and result["connections"] >= 600 and result["redis"]
    assert result["rss_kb_per_100k"] is not None and len(result["samples"]) >= 6
    assert "RSS KB per 100k" in output
    # A pause after every 150 connections: four legs, each ended by a quiet sample (the
    # first leg's is left out of the quiet fit).
    assert [sample["connections"] for sample in result["quiet_samples"]] == [150, 300, 450, 600]
    assert result["rss_kb_per_100k_quiet"] is not None and "quiet fit" in output


def test_soak_churns_the_floor(tmp_path: Path) -> None:
    status, result, output = run_script(
        "soak", "--target", "floor", "--count", "300", "--sample", "100", "--duration", "60", "-c", "10",
        json_path=tmp_path / "soak.json",
    )
    assert status == 0, output
    assert result["target"] == "floor" and result["connections"] >= 300 and result["errors"] == {}
