"""How the measuring scripts report: percentiles, a readable table, JSON, the machine, progress."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED = ("django", "channels", "channels-redis", "uvicorn", "websockets", "uvloop", "redis")


def percentiles(values: Sequence[float], points: Iterable[int] = (50, 90, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles plus max, in the unit of ``values``; None when empty."""
    ordered = sorted(values)
    result: dict[str, float | None] = {}
    for point in points:
        if not ordered:
            result[f"p{point}"] = None
            continue
        rank = max(1, -(-point * len(ordered) // 100))  # ceil without floats
        result[f"p{point}"] = ordered[rank - 1]
    result["max"] = ordered[-1] if ordered else None
    return result


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def ratio(ours: float | None, floor: float | None) -> float | None:
    """``ours / floor`` rounded, or None when either is missing or the floor is zero."""
    if ours is None or not floor:
        return None
    return round(ours / floor, 2)


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: numbers rounded, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [list(headers)] + [[fmt(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, memory, OS, Python, versions, pinning."""
    import psutil

    from tools.pinning import plan

    versions: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_mb": psutil.virtual_memory().total // 2**20,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "pinning": plan(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def emit(result: dict[str, Any], text: str, json_path: str | None) -> None:
    """Print the table; write the JSON to ``json_path`` (``-``: stdout, table to stderr)."""
    if json_path == "-":
        print(text, file=sys.stderr)
        print(json.dumps(result, indent=2))
        return
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")


def log(message: str) -> None:
    """Progress for people, on stderr so that JSON on stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


# A part of BENCHMARKS.md that another script writes (containers, scale, soak) sits between
# these marks; a script that rewrites the file keeps every such part it did not write.
_SECTION = re.compile(r"<!-- (?P<name>[\w-]+): begin[^>]*-->.*?<!-- (?P=name): end -->", re.DOTALL)


def marked_sections(text: str) -> dict[str, str]:
    """The marked sections of a document, by name, marks included."""
    return {found["name"]: found.group(0) for found in _SECTION.finditer(text)}


def write_section(path: Path, name: str, section: str) -> None:
    """Put ``section`` (marks included) in place of the document's section ``name``, or
    append it."""
    text = path.read_text() if path.exists() else ""
    current = marked_sections(text).get(name)
    text = text.replace(current, section) if current else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


def with_sections_of(old: str, new: str) -> str:
    """``new``, followed by the marked sections of ``old`` that ``new`` lacks."""
    kept = [body for name, body in marked_sections(old).items() if name not in marked_sections(new)]
    return "\n\n".join([new.rstrip(), *kept]).rstrip() + "\n"
