"""scripts/bench.py at a small size: the JSON, BENCHMARKS.md and the chart it writes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import run_script


def test_small_bench_writes_results_markdown_and_chart(tmp_path: Path) -> None:
    markdown, chart, results = tmp_path / "BENCHMARKS.md", tmp_path / "chart.png", tmp_path / "results"
    status, _, output = run_script(
        "bench", "-n", "30", "-r", "3", "--runs", "1", "--repeat", "2", "--no-traefik", "--capacity", "40",
        "--results-dir", str(results), "--markdown", str(markdown), "--chart", str(chart),
        timeout=170,
    )

    assert status == 0, output
    [written] = results.glob("*.json")
    bench = json.loads(written.read_text())
    assert bench["machine"]["cpu_count"] >= 1 and bench["machine"]["python"]
    assert bench["startup"]["memory"]["ratio_to_floor"] and bench["startup"]["redis"]["runs"]["app"]
    assert bench["shutdown"]["results"]["app"]["close_codes"] == {"1012": 30}
    labels = [leg["label"] for leg in bench["load"]]
    assert labels == [
        "app/memory", "app/redis", "floor", "app/memory/no-presence", "app/redis/no-presence",
        "app/memory/1-room", "floor/1-room",
        "app/redis/1-room", "app/redis/1-room/no-presence", "app/redis/1-room/1-message",
        "floor/1-room/1-message", "app/redis/capacity",
    ]
    assert all(leg["ok"] and "samples" not in leg for leg in bench["load"])
    # The legs a target's ratio is made of ran twice each; their server figures are medians.
    repeated = {leg["label"]: leg["runs"] for leg in bench["load"] if "runs" in leg}
    assert sorted(repeated) == sorted([
        "app/memory", "app/redis", "floor", "app/memory/no-presence", "app/redis/no-presence",
        "app/redis/1-room", "app/redis/1-room/no-presence",
    ])
    for label, runs in repeated.items():
        leg = next(leg for leg in bench["load"] if leg["label"] == label)
        assert len(runs) == 2
        cpu = sorted(run["cpu_ms_per_connection"] for run in runs)
        assert leg["server"]["cpu_ms_per_connection"] == round((cpu[0] + cpu[1]) / 2, 4)
    assert bench["skipped"] == ["traefik/redis skipped: --no-traefik"]
    text = markdown.read_text()
    for heading in ("## The requirements", "## Cold start", "## Graceful shutdown", "## Load"):
        assert heading in text
    assert "| concurrent connections | >= 5000 | 40 |" in text  # the capacity leg's 40
    assert "| presence: server CPU per join, one room" in text
    assert "| ratio app/redis/no-presence / floor |" in text
    assert "ran 2 times each, in rounds" in text and "- app/redis/1-room/no-presence: " in text
    assert "![connect and delivery latency](chart.png)" in text
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
