"""Open N chat WebSockets across R rooms, then broadcast in every room; report what it cost.

Against ``--url`` (the app directly or through Traefik; loopback only) or, without it, a
server this script starts: Parley (``--target app``, in-memory layer, or ``--redis`` for a
throwaway redis-server) or the floor (``--target floor``, bench/floor.py). With the server's
pid (known when started here, else ``--server-pid``) it also reports the server's CPU time
per connection and per delivered message and its memory per connection.

Exit status 1 when fewer connections than ``--min-success`` succeed or any delivery is
missing; 2 for a refused target.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tools import cli
from tools.cpu_sampler import wait_until_quiet
from tools.procs import RedisServer
from tools.report import log, machine, percentiles, table
from tools.swarm import Swarm, detect_ready, raise_nofile
from tools.targets import KINDS, per_unit, require_loopback, start_server, usage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="ws:// or http:// base URL on loopback (default: start a server)")
    parser.add_argument("--target", choices=KINDS, default="app", help="what to start without --url")
    parser.add_argument("--redis", action="store_true", help="start a redis-server for the app's layer")
    parser.add_argument("--redis-url", help="an existing loopback Redis for the app started here")
    parser.add_argument("--server-pid", type=int, help="pid of the server behind --url, for CPU/RSS")
    parser.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the app started here (repeatable)")
    parser.add_argument("-n", "--connections", type=int, default=5000)
    parser.add_argument("-r", "--rooms", type=int, default=50)
    parser.add_argument("-c", "--concurrency", type=int, default=500, help="handshakes in flight")
    parser.add_argument("--ramp", type=float, default=0.0, help="spread connection starts over S seconds")
    parser.add_argument("--per-process", type=int, help="at most this many clients per process")
    # Ten messages per room: enough deliveries (50,000 at 5,000 sockets) that per-delivery
    # CPU is not swamped by whatever else the server did during the phase.
    parser.add_argument("--messages", type=int, default=10, help="messages per room in the broadcast")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between a sender's messages")
    parser.add_argument("--delivery-timeout", type=float, default=30.0)
    parser.add_argument("--open-timeout", type=float, default=30.0)
    parser.add_argument("--ready", choices=("auto", "wait", "none"), default="auto",
                        help="wait for Parley's ready frame after connect (auto: detect)")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--min-success", type=float, default=1.0, help="fraction that must connect")
    parser.add_argument("--label", help="a name for this run in reports")
    parser.add_argument("--samples", action="store_true", help="include raw latencies in the JSON")
    parser.add_argument("--json", metavar="PATH", help="write the JSON here ('-': stdout)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole load test; the result dict is what the JSON holds."""
    url = require_loopback(args.url) if args.url else None
    raise_nofile()  # before starting a server here, so that it inherits the raised limit
    redis = server = None
    try:
        redis_url = args.redis_url
        if args.redis and not redis_url:
            redis = RedisServer().start()
            redis_url = redis.url
        if url is not None:
            pid, kind = args.server_pid, "url"
        else:
            server = start_server(args.target, redis_url=redis_url, env=app_env(args.app_env))
            assert server.process is not None  # started, so it has one
            url, pid, kind = require_loopback(server.base), server.process.pid, args.target
        layer = ("unknown" if server is None else "none" if args.target == "floor"
                 else "redis" if redis_url else "memory")
        return measure(args, url, pid, kind, layer)
    finally:
        if server is not None:
            server.cleanup()
        if redis is not None:
            redis.cleanup()


def app_env(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a pair without ``=`` is a usage error."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"loadtest: --app-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def measure(args: argparse.Namespace, url: str, pid: int | None, kind: str, layer: str) -> dict[str, Any]:
    """Connect, broadcast, close against ``url``; server usage read between the phases."""
    wait_ready = {"wait": True, "none": False}.get(args.ready)
    if wait_ready is None:
        wait_ready = detect_ready(url)
    with Swarm(url, args.connections, args.rooms, args.concurrency, args.ramp, args.per_process,
               args.open_timeout, args.deflate) as swarm:
        log(f"loadtest: {swarm.plan.describe()}")
        log(f"loadtest: connecting {args.connections} to {url} across {swarm.rooms} rooms, "
            f"{args.concurrency} in flight" + (f", ramp {args.ramp}s" if args.ramp else ""))
        before = usage(pid)
        connect = swarm.connect(wait_ready)
        # What the connects leave behind (presence rounds announcing the joins) is theirs:
        # counted per connection, and not taken for the deliveries' cost.
        settle_s = wait_until_quiet([pid]) if pid else 0.0
        connected = usage(pid)
        log(f"loadtest: {connect['connected']}/{connect['attempted']} connected in {connect['seconds']}s, "
            f"server quiet {settle_s}s later; broadcasting {args.messages} message(s) per room")
        broadcast = swarm.broadcast(args.messages, args.interval, args.delivery_timeout)
        delivered = usage(pid)
        swarm.close()

    per_connection = per_unit(before, connected, connect["connected"])
    per_delivery = per_unit(connected, delivered, broadcast["received"])
    failures = []
    if connect["success_rate"] < args.min_success:
        failures.append(f"only {connect['connected']} of {connect['attempted']} connected")
    if broadcast["missing"] or broadcast["received"] < broadcast["expected"]:
        failures.append(f"{broadcast['missing']} of {broadcast['expected']} deliveries missing "
                        f"after {args.delivery_timeout:g}s")
    result: dict[str, Any] = {
        "tool": "loadtest",
        "label": args.label or (kind if kind in ("floor", "url") else f"{kind}/{layer}"),
        "target": {"url": url, "kind": kind, "layer": layer, "server_pid": pid, "ready_frame": wait_ready},
        "config": {key: getattr(args, key) for key in (
            "connections", "rooms", "concurrency", "ramp", "messages", "interval", "deflate")},
        "processes": {"count": swarm.plan.processes, "per_process": swarm.plan.per_process,
                      "nofile_before": swarm.plan.nofile_before, "nofile_now": swarm.plan.nofile_now,
                      "note": swarm.plan.describe()},
        "connect": {
            **{k: connect[k] for k in ("attempted", "connected", "success_rate", "seconds", "rate_per_s",
                                       "errors")},
            "server_quiet_after_s": settle_s,
            "latency_ms": _rounded(percentiles(connect["connect_ms"])),
            "ready_ms": _rounded(percentiles(connect["ready_ms"])),
        },
        "broadcast": {
            **{k: broadcast[k] for k in ("rooms", "rooms_with_sender", "messages_per_room", "sent",
                                         "expected", "received", "missing", "duplicates", "stray",
                                         "seconds")},
            "deliveries_per_s": (round(broadcast["received"] / broadcast["seconds"], 1)
                                 if broadcast["seconds"] else None),
            "latency_ms": _rounded(percentiles(broadcast["latency_ms"])),
        },
        "server": {
            "pid": pid,
            "cpu_ms_per_connection": per_connection["cpu_ms"],
            "rss_kb_per_connection": per_connection["rss_kb"],
            "cpu_ms_per_delivery": per_delivery["cpu_ms"],
            "rss_mb_before": round(before.rss / 2**20, 1) if before else None,
            "rss_mb_connected": round(connected.rss / 2**20, 1) if connected else None,
        },
        "machine": machine(),
        "ok": not failures,
        "failures": failures,
    }
    if args.samples:
        result["samples"] = {"connect_ms": [round(x, 3) for x in connect["connect_ms"]],
                             "delivery_ms": [round(x, 3) for x in broadcast["latency_ms"]]}
    return result


def _rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (round(v, 3) if v is not None else None) for k, v in values.items()}


def render(result: dict[str, Any]) -> str:
    """The readable table of one load test."""
    c, b, s = result["connect"], result["broadcast"], result["server"]
    head = (f"loadtest {result['label']}  {result['target']['url']}  ({result['processes']['note']})\n"
            f"connections {c['connected']}/{c['attempted']} ({c['success_rate'] * 100:.2f}%) "
            f"in {c['seconds']}s = {c['rate_per_s']}/s; errors {c['errors'] or 'none'}\n"
            f"deliveries {b['received']}/{b['expected']}, missing {b['missing']}, "
            f"duplicates {b['duplicates']}, in {b['seconds']}s")
    rows = [(name, *(d[k] for k in ("p50", "p90", "p99", "max")))
            for name, d in (("connect ms", c["latency_ms"]), ("ready ms", c["ready_ms"]),
                            ("delivery ms", b["latency_ms"])) if d["max"] is not None]
    latency = table(("", "p50", "p90", "p99", "max"), rows)
    server = table(("server", "cpu ms/conn", "KB/conn", "cpu ms/delivery"),
                   [("pid " + str(s["pid"]), s["cpu_ms_per_connection"], s["rss_kb_per_connection"],
                     s["cpu_ms_per_delivery"])])
    verdict = "OK" if result["ok"] else "FAILED: " + "; ".join(result["failures"])
    return "\n\n".join((head, latency, server, verdict))


def main(argv: list[str] | None = None) -> int:
    return cli.main("loadtest", argv, parse_args, run, render)


if __name__ == "__main__":
    sys.exit(main())
