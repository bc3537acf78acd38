"""Scale-out benchmark: N WebSockets over several app processes on a real Redis Cluster.

    python scripts/bench_scale.py [--sockets 100000] [--app-processes 6] [--json PATH]

Starts a Redis Cluster (3 masters + 3 replicas, tools/cluster.py) and
``--app-processes`` Parley processes on it, each on its own loopback port (no proxy: one
Traefik here carries at most ~9,900 sockets). The sockets are split evenly over the
processes; each process's share is driven by its own load swarm (scripts/_swarm.py, as many
client processes as the open-file limit needs; each app port is its own 4-tuple space, so
~16,700 sockets per port need no extra source addresses). Then every room gets one
broadcast and every socket must receive it. Reports connected and delivered counts, server
memory per socket (RSS growth over all app processes), server CPU per delivery and the
broadcast latency percentiles over every delivery.

Rooms are per app process here (each swarm names its own), so a broadcast goes through the
cluster's sharded pub/sub back to the members' process. The cutover at scale (9,000
clients through Traefik, blue->green) is scripts/bench_cutover.py.

Heavy: on the 2-core development machine run it once, smallest first (``--sockets 10000``).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from tools import cli
from tools.cluster import RedisClusterServers
from tools.report import log, machine, percentiles, table
from tools.swarm import Swarm, raise_nofile
from tools.targets import per_unit, require_loopback, start_server, usage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=100_000)
    parser.add_argument("--app-processes", type=int, default=6)
    parser.add_argument("--rooms-per-process", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=600, help="handshakes in flight, all swarms")
    parser.add_argument("--delivery-timeout", type=float, default=60.0)
    parser.add_argument("--open-timeout", type=float, default=60.0)
    parser.add_argument("--json", metavar="PATH", help="write the JSON here ('-': stdout)")
    args = parser.parse_args(argv)
    if args.app_processes < 1 or args.sockets < args.app_processes:
        parser.error("--app-processes must be >= 1 and --sockets at least one per process")
    return args


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()  # before starting the apps, so that they inherit the raised limit
    cluster = RedisClusterServers().start()
    apps = []
    try:
        env = {"CHAT_MAX_CONNECTIONS": str(args.sockets)}
        apps = [start_server("app", redis_url=cluster.url, env=env) for _ in range(args.app_processes)]
        return measure(args, cluster, apps)
    finally:
        for app in apps:
            app.cleanup()
        cluster.cleanup()


def measure(args: argparse.Namespace, cluster: RedisClusterServers, apps: list[Any]) -> dict[str, Any]:
    shares = _split(args.sockets, len(apps))
    pids = [app.process.pid for app in apps]
    concurrency = max(1, args.concurrency // len(apps))
    with ExitStack() as stack, ThreadPoolExecutor(len(apps)) as pool:
        swarms = [stack.enter_context(Swarm(require_loopback(app.base), share, args.rooms_per_process,
                                            concurrency, open_timeout=args.open_timeout))
                  for app, share in zip(apps, shares, strict=True)]
        log(f"bench-scale: {args.sockets} sockets over {len(apps)} app processes on a 3-master cluster")
        before = [usage(pid) for pid in pids]
        began = time.monotonic()
        connects = list(pool.map(lambda s: s.connect(True), swarms))
        connect_s = time.monotonic() - began
        connected_usage = [usage(pid) for pid in pids]
        connected = sum(c["connected"] for c in connects)
        log(f"bench-scale: {connected}/{args.sockets} connected in {connect_s:.1f}s; one broadcast per room")
        broadcasts = list(pool.map(lambda s: s.broadcast(1, 0.0, args.delivery_timeout), swarms))
        delivered_usage = [usage(pid) for pid in pids]
        list(pool.map(lambda s: s.close(), swarms))

    received = sum(b["received"] for b in broadcasts)
    expected = sum(b["expected"] for b in broadcasts)
    per_process = [
        {"pid": pid, "sockets": c["connected"], "received": b["received"],
         "kb_per_socket": per_unit(u0, u1, c["connected"])["rss_kb"],
         "cpu_ms_per_delivery": per_unit(u1, u2, b["received"])["cpu_ms"]}
        for pid, c, b, u0, u1, u2 in zip(pids, connects, broadcasts, before, connected_usage,
                                         delivered_usage, strict=True)
    ]
    rss_delta = sum(u1.rss - u0.rss for u0, u1 in zip(before, connected_usage, strict=True) if u0 and u1)
    cpu_delivery = sum(u2.cpu - u1.cpu for u1, u2 in zip(connected_usage, delivered_usage, strict=True)
                       if u1 and u2)
    latency = percentiles([x for b in broadcasts for x in b["latency_ms"]])
    failures = []
    if connected < args.sockets:
        failures.append(f"only {connected} of {args.sockets} connected")
    if received < expected or any(b["missing"] for b in broadcasts):
        failures.append(f"{expected - received} of {expected} deliveries missing")
    return {
        "tool": "bench_scale",
        "config": {"sockets": args.sockets, "app_processes": len(apps),
                   "rooms": args.rooms_per_process * len(apps), "cluster": "3 masters + 3 replicas"},
        "connected": connected,
        "connect_s": round(connect_s, 2),
        "delivered": received,
        "expected": expected,
        "duplicates": sum(b["duplicates"] for b in broadcasts),
        "kb_per_socket": round(rss_delta / 1024 / connected, 2) if connected else None,
        "cpu_us_per_delivery": round(cpu_delivery * 1e6 / received, 1) if received else None,
        "broadcast_ms": {k: (round(v, 1) if v is not None else None) for k, v in latency.items()},
        "per_process": per_process,
        "machine": machine(),
        "ok": not failures,
        "failures": failures,
    }


def render(result: dict[str, Any]) -> str:
    c = result["config"]
    head = (f"bench-scale: {result['connected']}/{c['sockets']} connected in {result['connect_s']}s over "
            f"{c['app_processes']} processes ({c['cluster']}); delivered {result['delivered']}/"
            f"{result['expected']}, {result['kb_per_socket']} KB/socket, "
            f"{result['cpu_us_per_delivery']} us CPU/delivery")
    latency = table(("broadcast ms", "p50", "p90", "p99", "max"),
                    [("", *(result["broadcast_ms"][k] for k in ("p50", "p90", "p99", "max")))])
    rows = [(p["pid"], p["sockets"], p["received"], p["kb_per_socket"], p["cpu_ms_per_delivery"])
            for p in result["per_process"]]
    procs = table(("pid", "sockets", "received", "KB/socket", "cpu ms/delivery"), rows)
    verdict = "OK" if result["ok"] else "FAILED: " + "; ".join(result["failures"])
    return "\n\n".join((head, latency, procs, verdict))


def main(argv: list[str] | None = None) -> int:
    return cli.main("bench_scale", argv, parse_args, run, render)


if __name__ == "__main__":
    sys.exit(main())
