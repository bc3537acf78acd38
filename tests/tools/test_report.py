"""tools/report.py: the arithmetic every benchmark figure goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.report import marked_sections, median, percentiles, ratio, table, with_sections_of, write_section

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


SCALE = "<!-- bench-scale: begin (make bench-scale) -->\n## Scale\n1\n<!-- bench-scale: end -->"


def test_a_rewritten_benchmarks_file_keeps_the_sections_other_scripts_wrote() -> None:
    old = "# Benchmarks\nold figures\n\n" + SCALE + "\n"
    new = with_sections_of(old, "# Benchmarks\nnew figures\n")
    assert "new figures" in new and "old figures" not in new
    assert marked_sections(new) == {"bench-scale": SCALE}


def test_a_section_is_replaced_in_place_or_appended(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n" + SCALE + "\n\ntail\n")
    write_section(path, "bench-scale", SCALE.replace("\n1\n", "\n2\n"))
    assert path.read_text().count("bench-scale: begin") == 1 and "\n2\n" in path.read_text()
    assert path.read_text().endswith("tail\n")
    write_section(path, "soak", "<!-- soak: begin -->\nS\n<!-- soak: end -->")
    assert list(marked_sections(path.read_text())) == ["bench-scale", "soak"]

