"""scripts/bench_scale.py at a small size, on a real Redis Cluster and a real single Redis."""

from __future__ import annotations

from pathlib import Path

from scripts.bench_scale import markdown
from tests.support import run_script


def test_a_small_scale_run_delivers_everything_and_compares_with_the_floor_and_single_redis(
        tmp_path: Path) -> None:
    status, result, output = run_script(
        "bench_scale", "--sockets", "60", "--app-processes", "2", "--rooms-per-process", "3",
        "--floor-sockets", "40", "--compare-sockets", "30", json_path=tmp_path / "s.json",
    )

    assert status == 0, output
    assert result["connected"] == 60
    assert result["delivered"] == result["expected"] == 60  # one broadcast, every socket
    assert result["duplicates"] == 0
    assert [p["sockets"] for p in result["per_process"]] == [30, 30]
    floor = result["floor"]  # the floor's processes, as many, driven by the same clients
    assert floor["connected"] == floor["delivered"] == floor["expected"] == 40
    assert [p["sockets"] for p in floor["per_process"]] == [20, 20]
    assert result["p99_ratio_to_floor"] is not None
    comparison = result["single_vs_cluster"]
    assert set(comparison["legs"]) == {"single", "cluster"}
    for leg in comparison["legs"].values():
        assert leg["delivered"] == leg["expected"] == 30 * comparison["messages_per_room"]
    # At 30 sockets the CPU spent can round to nothing: the ratio is a figure, not a check.
    assert "cpu_ratio_cluster_to_single" in comparison

    section = markdown(result)
    assert section.startswith("<!-- bench-scale: begin") and section.endswith("<!-- bench-scale: end -->")
    assert "| connected | 60 | 60 | yes |" in section
    assert "| single |" in section and "| cluster |" in section
    assert "| Parley | 60 | 60/60 |" in section and "| floor | 40 | 40/40 |" in section
