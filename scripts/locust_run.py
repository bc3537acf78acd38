"""A short, bounded, headless Locust run of scripts/locustfile.py (``make locust``).

Starts our server (or the floor with ``--target floor``) unless ``--url`` names a loopback
one, runs ``locust --headless`` for ``--time`` seconds with ``--users`` users, then prints
Locust's own figures for ``connect`` and ``message round trip`` as a table and JSON. Exit
status 1 when Locust saw a failure or no round trip at all; 2 for a refused target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools import ROOT, cli
from tools.report import machine, table
from tools.targets import KINDS, require_loopback, start_server

NAMES = ("connect", "message round trip")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a loopback server to load (default: start one)")
    parser.add_argument("--target", choices=KINDS, default="app")
    parser.add_argument("-u", "--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=25)
    parser.add_argument("-t", "--time", type=int, default=15, help="seconds of load")
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--json", metavar="PATH", help="write the JSON here ('-': stdout)")
    return parser.parse_args(argv)


def run_locust(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Locust's final per-request statistics (its --json-file), after a bounded run."""
    with tempfile.TemporaryDirectory(prefix="parley-locust-") as tmp:
        stats = Path(tmp) / "stats.json"
        command = [
            sys.executable, "-m", "locust", "-f", str(ROOT / "scripts" / "locustfile.py"),
            "--headless", "--only-summary", "--host", url, "-u", str(args.users),
            "-r", str(args.spawn_rate), "-t", f"{args.time}s", "--stop-timeout", "5",
            "--rooms", str(args.rooms), "--json-file", str(stats.with_suffix("")),
            "--loglevel", "WARNING",
        ]
        completed = subprocess.run(command, cwd=ROOT, stdout=sys.stderr, timeout=args.time + 60)
        if not stats.exists():
            raise RuntimeError(f"locust exited with {completed.returncode} and wrote no statistics")
        return json.loads(stats.read_text())


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    """One request name's figures: count, failures, mean and percentiles (ms) from Locust."""
    import locust.stats as ls

    stats = ls.StatsEntry(ls.RequestStats(), entry["name"], entry["method"])
    stats.num_requests = entry["num_requests"]
    stats.response_times = {int(k): v for k, v in entry["response_times"].items()}
    percentiles = {f"p{p}": stats.get_response_time_percentile(p / 100) for p in (50, 90, 99)}
    return {
        "requests": entry["num_requests"],
        "failures": entry["num_failures"],
        "mean_ms": (round(entry["total_response_time"] / entry["num_requests"], 2)
                    if entry["num_requests"] else None),
        **percentiles,
        "max_ms": round(entry["max_response_time"], 2) if entry["num_requests"] else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = require_loopback(args.url) if args.url else None
    server = None
    try:
        if url is None:
            server = start_server(args.target)
            url = require_loopback(server.base)
        entries = run_locust(url, args)
    finally:
        if server is not None:
            server.cleanup()
    figures = {e["name"]: summarise(e) for e in entries if e["name"] in NAMES}
    failures = [f"{name}: {f['failures']} failure(s)" for name, f in figures.items() if f["failures"]]
    if not figures.get("message round trip", {}).get("requests"):
        failures.append("no message round trip completed")
    return {
        "tool": "locust",
        "target": {"url": url, "kind": args.target if args.url is None else "url"},
        "config": {"users": args.users, "spawn_rate": args.spawn_rate, "seconds": args.time,
                   "rooms": args.rooms},
        "requests": figures,
        "machine": machine(),
        "ok": not failures,
        "failures": failures,
    }


def render(result: dict[str, Any]) -> str:
    rows = [(name, f["requests"], f["failures"], f["mean_ms"], f["p50"], f["p90"], f["p99"], f["max_ms"])
            for name, f in result["requests"].items()]
    text = (f"locust {result['config']['users']} users for {result['config']['seconds']}s "
            f"against {result['target']['url']}\n\n"
            + table(("WS", "requests", "failures", "mean ms", "p50", "p90", "p99", "max"), rows))
    return text + "\n\n" + ("OK" if result["ok"] else "FAILED: " + "; ".join(result["failures"]))


def main(argv: list[str] | None = None) -> int:
    return cli.main("locust_run", argv, parse_args, run, render)


if __name__ == "__main__":
    sys.exit(main())
