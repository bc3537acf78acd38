"""Start the server, open N chat WebSockets, send SIGTERM: how long to exit, with what codes?

Reports time from SIGTERM to process exit, its exit status, the time until the last client
saw its socket close, and a histogram of the close codes the clients got (1012 "server
restart" is what Parley promises; 1006 means a socket was dropped without a close frame).
The floor (bench/floor.py) goes through the same steps in the same session.

Exit status 1 when our server does not exit 0 or any client got another code than 1012.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from tools import cli
from tools.procs import RedisServer
from tools.report import log, machine, ratio, table
from tools.swarm import Swarm, detect_ready, raise_nofile
from tools.targets import require_loopback, start_server

RESTART = "1012"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connections", type=int, default=5000)
    parser.add_argument("-r", "--rooms", type=int, default=50)
    parser.add_argument("-c", "--concurrency", type=int, default=500)
    parser.add_argument("--per-process", type=int, help="at most this many clients per process")
    parser.add_argument("--redis", action="store_true", help="our server on a throwaway redis-server")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor")
    parser.add_argument("--timeout", type=float, default=30.0, help="longest wait for exit")
    parser.add_argument("--json", metavar="PATH", help="write the JSON here ('-': stdout)")
    return parser.parse_args(argv)


def one_target(kind: str, args: argparse.Namespace, redis_url: str | None) -> dict[str, Any]:
    """Connect N clients to a fresh ``kind`` server, SIGTERM it, watch both sides."""
    server = start_server(kind, redis_url=redis_url)
    try:
        url = require_loopback(server.base)
        with Swarm(url, args.connections, args.rooms, args.concurrency,
                   per_process=args.per_process) as swarm:
            log(f"shutdown {kind}: {swarm.plan.describe()}")
            connect = swarm.connect(detect_ready(url))
            log(f"shutdown {kind}: {connect['connected']}/{connect['attempted']} connected; SIGTERM")
            exited: dict[str, Any] = {}
            process = server.process
            assert process is not None

            def watch() -> None:
                try:
                    exited["status"] = process.wait(args.timeout)
                except Exception:  # still running at the deadline: reported, then killed
                    exited["status"] = None
                exited["ns"] = time.monotonic_ns()

            sent_ns = time.monotonic_ns()
            process.send_signal(signal.SIGTERM)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            closes = swarm.await_close(args.timeout)
            watcher.join(args.timeout + 5)
    finally:
        server.cleanup()
    status = exited.get("status")
    last = closes["last_closed_ns"]
    return {
        "target": kind,
        "connected": connect["connected"],
        "attempted": connect["attempted"],
        "exit_status": status,
        "exited": status is not None,
        "exit_ms": round((exited["ns"] - sent_ns) / 1e6, 1) if status is not None else None,
        "last_client_closed_ms": round((last - sent_ns) / 1e6, 1) if last else None,
        "close_codes": closes["close_codes"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Ours, then the floor, each with N fresh connections."""
    raise_nofile()  # the servers started here inherit it
    redis = RedisServer().start() if args.redis else None
    try:
        results = {"app": one_target("app", args, redis.url if redis else None)}
        if not args.no_floor:
            results["floor"] = one_target("floor", args, None)
    finally:
        if redis is not None:
            redis.cleanup()
    ours = results["app"]
    failures = []
    if ours["exit_status"] != 0:
        failures.append(f"exit status {ours['exit_status']} (expected 0)")
    if ours["connected"] < ours["attempted"]:
        failures.append(f"only {ours['connected']} of {ours['attempted']} connected")
    others = {code: n for code, n in ours["close_codes"].items() if code != RESTART}
    if others:
        failures.append(f"close codes other than 1012: {others}")
    floor = results.get("floor")
    return {
        "tool": "shutdown",
        "label": f"app/{'redis' if args.redis else 'memory'}",
        "connections": args.connections,
        "results": results,
        "ratio_to_floor": {key: ratio(ours[key], floor[key]) for key in ("exit_ms", "last_client_closed_ms")}
        if floor else None,
        "machine": machine(),
        "ok": not failures,
        "failures": failures,
    }


def render(result: dict[str, Any]) -> str:
    """One row per target, plus the ratio row."""
    rows = [(kind, f"{r['connected']}/{r['attempted']}", r["exit_status"], r["exit_ms"],
             r["last_client_closed_ms"], " ".join(f"{c}:{n}" for c, n in sorted(r["close_codes"].items())))
            for kind, r in result["results"].items()]
    if result["ratio_to_floor"]:
        rows.append(("app/floor", "ratio", "", result["ratio_to_floor"]["exit_ms"],
                     result["ratio_to_floor"]["last_client_closed_ms"], ""))
    text = f"shutdown {result['label']}: SIGTERM with {result['connections']} sockets open\n\n" + table(
        ("target", "connected", "exit status", "exit ms", "last close ms", "close codes"), rows)
    return text + "\n\n" + ("OK" if result["ok"] else "FAILED: " + "; ".join(result["failures"]))


def main(argv: list[str] | None = None) -> int:
    return cli.main("shutdown", argv, parse_args, run, render)


if __name__ == "__main__":
    sys.exit(main())
