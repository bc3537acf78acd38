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

Then, in the same run, the floor (bench/floor.py: a bare ASGI broadcast on the same uvicorn
stack, no Redis, no ids, no history, no pings) with ``--floor-sockets`` sockets over as many
processes, driven by the same clients: the least this machine takes to connect that many
sockets and deliver one broadcast to each, against which Parley's p99 reads as a ratio.

And ``--compare-sockets`` sockets on one app process twice: on a single redis-server and on
the cluster, several broadcasts per room, for the server CPU per delivery of each and their
ratio (what the cluster costs a delivery).

Heavy: on the 2-core development machine run it once, smallest first (``--sockets 10000``).
``--write`` puts the figures into BENCHMARKS.md (its ``bench-scale`` section).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from tools import ROOT, cli
from tools.cluster import RedisClusterServers
from tools.cpu_sampler import QUIET_LIMIT, QUIET_PCT, wait_until_quiet
from tools.procs import AppServer, RedisServer
from tools.report import log, machine, percentiles, ratio, table, write_section
from tools.swarm import Swarm, raise_nofile
from tools.targets import per_unit, require_loopback, start_server, usage

# Broadcasts per room in the single-vs-cluster comparison: enough deliveries for a CPU figure.
COMPARE_MESSAGES = 5
MARK_BEGIN = "<!-- bench-scale: begin (scripts/bench_scale.py --write) -->"
MARK_END = "<!-- bench-scale: end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=100_000)
    parser.add_argument("--app-processes", type=int, default=6)
    parser.add_argument("--rooms-per-process", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=600, help="handshakes in flight, all swarms")
    parser.add_argument("--delivery-timeout", type=float, default=60.0)
    parser.add_argument("--open-timeout", type=float, default=60.0)
    parser.add_argument("--floor-sockets", type=int, default=None,
                        help="sockets of the floor leg, over as many processes "
                             "(default: --sockets; 0: skip it)")
    parser.add_argument("--compare-sockets", type=int, default=10_000,
                        help="sockets of the single-Redis vs cluster comparison (0: skip it)")
    parser.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md")
    parser.add_argument("--json", metavar="PATH", help="write the JSON here ('-': stdout)")
    args = parser.parse_args(argv)
    if args.app_processes < 1 or args.sockets < args.app_processes:
        parser.error("--app-processes must be >= 1 and --sockets at least one per process")
    if args.floor_sockets is None:
        args.floor_sockets = args.sockets
    if 0 < args.floor_sockets < args.app_processes:
        parser.error("--floor-sockets must be 0 or at least one per process")
    return args


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()  # before starting the apps, so that they inherit the raised limit
    cluster = RedisClusterServers().start()
    try:
        main = leg(args, cluster.url, args.sockets, args.app_processes, messages=1)
        floor = floor_leg(args) if args.floor_sockets else None
        comparison = compare(args, cluster) if args.compare_sockets else None
    finally:
        cluster.cleanup()
    failures = (main.pop("failures") + [f"floor: {text}" for text in (floor or {}).pop("failures", [])]
                + (comparison["failures"] if comparison else []))
    return {
        "tool": "bench_scale",
        "config": {"sockets": args.sockets, "app_processes": args.app_processes,
                   "rooms": args.rooms_per_process * args.app_processes,
                   "cluster": "3 masters + 3 replicas"},
        **main,
        "floor": floor,
        "p99_ratio_to_floor": (ratio(main["broadcast_ms"]["p99"], floor["broadcast_ms"]["p99"])
                               if floor else None),
        "single_vs_cluster": comparison,
        "machine": machine(),
        "ok": not failures,
        "failures": failures,
    }


def compare(args: argparse.Namespace, cluster: RedisClusterServers) -> dict[str, Any]:
    """Server CPU per delivery, one app process on a single Redis and on the cluster, in this
    run: what sharded pub/sub and the cluster client cost per delivery."""
    legs: dict[str, dict[str, Any]] = {}
    single = RedisServer().start()
    try:
        legs["single"] = leg(args, single.url, args.compare_sockets, 1, messages=COMPARE_MESSAGES)
    finally:
        single.cleanup()
    legs["cluster"] = leg(args, cluster.url, args.compare_sockets, 1, messages=COMPARE_MESSAGES)
    cpu = {name: result["cpu_us_per_delivery"] for name, result in legs.items()}
    return {
        "sockets": args.compare_sockets,
        "messages_per_room": COMPARE_MESSAGES,
        "legs": legs,
        "cpu_ratio_cluster_to_single": ratio(cpu["cluster"], cpu["single"]),
        "failures": [f"{name}: {text}" for name, result in legs.items() for text in result["failures"]],
    }


def floor_leg(args: argparse.Namespace) -> dict[str, Any]:
    """The floor's processes (one per app process of the main leg), the same clients, one
    broadcast per room: what connecting and delivering to that many sockets costs here with
    no chat service at all."""
    with ExitStack() as stack:
        floors = []
        for _ in range(args.app_processes):
            floors.append(start_server("floor"))
            stack.callback(floors[-1].cleanup)
        # The floor sends no ``ready``: a member is connected once its handshake is done.
        return measure(args, floors, args.floor_sockets, 1, wait_ready=False)


def leg(args: argparse.Namespace, redis_url: str, sockets: int, processes: int,
        messages: int) -> dict[str, Any]:
    """Start ``processes`` app processes on ``redis_url``, connect ``sockets`` over them, send
    ``messages`` per room, and measure; the processes are stopped again."""
    env = {"CHAT_MAX_CONNECTIONS": str(sockets)}
    with ExitStack() as stack:
        apps = []
        for _ in range(processes):
            apps.append(start_server("app", redis_url=redis_url, env=env))
            stack.callback(apps[-1].cleanup)
        return measure(args, apps, sockets, messages)


def measure(args: argparse.Namespace, apps: list[AppServer], sockets: int, messages: int,
            wait_ready: bool = True) -> dict[str, Any]:
    shares = _split(sockets, len(apps))
    pids = [app.process.pid if app.process else None for app in apps]
    concurrency = max(1, args.concurrency // len(apps))
    with ExitStack() as stack, ThreadPoolExecutor(len(apps)) as pool:
        swarms = [stack.enter_context(Swarm(require_loopback(app.base), share, args.rooms_per_process,
                                            concurrency, open_timeout=args.open_timeout))
                  for app, share in zip(apps, shares, strict=True)]
        log(f"bench-scale: {sockets} sockets over {len(apps)} app processes")
        before = [usage(pid) for pid in pids]
        began = time.monotonic()
        connects = list(pool.map(lambda s: s.connect(wait_ready), swarms))
        connect_s = time.monotonic() - began
        connected_usage = [usage(pid) for pid in pids]
        connected = sum(c["connected"] for c in connects)
        # The connect storm leaves work behind (presence rounds announce the joins for
        # seconds after, spaced by their budget): the broadcast is measured after it.
        settle_s = wait_until_quiet([pid for pid in pids if pid])
        settled_usage = [usage(pid) for pid in pids]
        log(f"bench-scale: {connected}/{sockets} connected in {connect_s:.1f}s, quiet after "
            f"{settle_s:.1f}s more; {messages} broadcast(s) per room")
        broadcasts = list(pool.map(lambda s: s.broadcast(messages, 0.0, args.delivery_timeout), swarms))
        delivered_usage = [usage(pid) for pid in pids]
        list(pool.map(lambda s: s.close(), swarms))

    received = sum(b["received"] for b in broadcasts)
    expected = sum(b["expected"] for b in broadcasts)
    per_process = [
        {"pid": pid, "sockets": c["connected"], "received": b["received"],
         "kb_per_socket": per_unit(u0, u1, c["connected"])["rss_kb"],
         "cpu_ms_per_delivery": per_unit(u1, u2, b["received"])["cpu_ms"]}
        for pid, c, b, u0, u1, u2 in zip(pids, connects, broadcasts, before, settled_usage,
                                         delivered_usage, strict=True)
    ]
    rss_delta = sum(u1.rss - u0.rss for u0, u1 in zip(before, connected_usage, strict=True) if u0 and u1)
    cpu_delivery = sum(u2.cpu - u1.cpu for u1, u2 in zip(settled_usage, delivered_usage, strict=True)
                       if u1 and u2)
    latency = percentiles([x for b in broadcasts for x in b["latency_ms"]])
    failures = []
    if connected < sockets:
        failures.append(f"only {connected} of {sockets} connected")
    if received < expected or any(b["missing"] for b in broadcasts):
        failures.append(f"{expected - received} of {expected} deliveries missing")
    return {
        "connected": connected,
        "connect_s": round(connect_s, 2),
        "settle_s": settle_s,
        "delivered": received,
        "expected": expected,
        "duplicates": sum(b["duplicates"] for b in broadcasts),
        "kb_per_socket": round(rss_delta / 1024 / connected, 2) if connected else None,
        "cpu_us_per_delivery": round(cpu_delivery * 1e6 / received, 1) if received else None,
        "broadcast_ms": {k: (round(v, 1) if v is not None else None) for k, v in latency.items()},
        "per_process": per_process,
        "failures": failures,
    }


def render(result: dict[str, Any]) -> str:
    c = result["config"]
    head = (f"bench-scale: {result['connected']}/{c['sockets']} connected in {result['connect_s']}s over "
            f"{c['app_processes']} processes ({c['cluster']}); delivered {result['delivered']}/"
            f"{result['expected']}, {result['kb_per_socket']} KB/socket, "
            f"{result['cpu_us_per_delivery']} us CPU/delivery; quiet {result['settle_s']}s after the connect")
    latency = table(("broadcast ms", "p50", "p90", "p99", "max"),
                    [("", *(result["broadcast_ms"][k] for k in ("p50", "p90", "p99", "max")))])
    rows = [(p["pid"], p["sockets"], p["received"], p["kb_per_socket"], p["cpu_ms_per_delivery"])
            for p in result["per_process"]]
    procs = table(("pid", "sockets", "received", "KB/socket", "cpu ms/delivery"), rows)
    parts = [head, latency, procs]
    floor = result.get("floor")
    if floor:
        parts.append(table(("floor", "sockets", "delivered", "us CPU/delivery", "p50", "p99"), [
            ("", floor["connected"], floor["delivered"], floor["cpu_us_per_delivery"],
             floor["broadcast_ms"]["p50"], floor["broadcast_ms"]["p99"])
        ]) + f"\nParley / floor, broadcast p99: {result['p99_ratio_to_floor']}")
    comparison = result["single_vs_cluster"]
    if comparison:
        parts.append(table(("one process", "sockets", "delivered", "us CPU/delivery", "broadcast p99 ms"), [
            (name, got["connected"], got["delivered"], got["cpu_us_per_delivery"], got["broadcast_ms"]["p99"])
            for name, got in comparison["legs"].items()
        ]) + f"\ncluster / single: {comparison['cpu_ratio_cluster_to_single']}")
    parts.append("OK" if result["ok"] else "FAILED: " + "; ".join(result["failures"]))
    return "\n\n".join(parts)


def _quiet(settle_s: float) -> str:
    if settle_s < QUIET_LIMIT:
        return (f"once the app processes were quiet (below {QUIET_PCT:g} % of a core each, on "
                f"average: the connect storm's presence rounds done), {settle_s} s later")
    return (f"after waiting {QUIET_LIMIT:g} s for the app processes to be quiet (below "
            f"{QUIET_PCT:g} % of a core each, on average), which they never were: at this many "
            "sockets, pings, presence heartbeats and rounds and the tail watcher keep them busier")


def markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: targets, the run's figures, the machine."""
    c, m = result["config"], result["machine"]
    p99 = result["broadcast_ms"]["p99"]
    comparison = result["single_vs_cluster"]
    cpu_ratio = comparison["cpu_ratio_cluster_to_single"] if comparison else None
    rows = [
        ("connected", f"{c['sockets']:,}", f"{result['connected']:,}", result["connected"] == c["sockets"]),
        ("delivered (one broadcast per room)", f"{result['expected']:,}", f"{result['delivered']:,}",
         result["delivered"] == result["expected"] and not result["duplicates"]),
        ("memory per socket (KB)", "<= 30", result["kb_per_socket"],
         result["kb_per_socket"] is not None and result["kb_per_socket"] <= 30),
        ("broadcast-to-all p99 (ms)", "<= 2000", p99, p99 is not None and p99 <= 2000),
        ("server CPU per delivery, cluster / single Redis", "<= 1.5", cpu_ratio,
         cpu_ratio is not None and cpu_ratio <= 1.5),
    ]
    lines = [
        MARK_BEGIN,
        "## Scale-out (make bench-scale)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {c['sockets']:,} WebSockets "
        f"over {c['app_processes']} app processes ({c['rooms']} rooms) on a Redis Cluster of "
        f"{c['cluster']}, all on this machine ({m.get('cpu_count')} cores, load average "
        f"{m.get('load_average')} at the end). Connected in {result['connect_s']} s; the broadcast "
        f"went out {_quiet(result['settle_s'])}; "
        f"{result['cpu_us_per_delivery']} us of server CPU per delivery over all processes.",
        "",
        "| what | target | measured | met |",
        "|---|---|---|---|",
        *(f"| {what} | {target} | {got} | {'yes' if ok else 'no'} |" for what, target, got, ok in rows),
    ]
    floor = result.get("floor")
    if floor:
        lines += [
            "",
            f"The floor in the same run (bench/floor.py: a bare ASGI broadcast on the same uvicorn "
            f"stack, no Redis, no ids, no history, no pings): {floor['connected']:,} sockets over "
            f"{c['app_processes']} processes, the same clients, one broadcast per room. Parley's "
            f"broadcast p99 is {result['p99_ratio_to_floor']}x the floor's.",
            "",
            "| leg | connected | delivered | connect s | us server CPU per delivery | broadcast p50 ms | "
            "broadcast p99 ms |",
            "|---|---|---|---|---|---|---|",
            *(f"| {name} | {leg_['connected']:,} | {leg_['delivered']:,}/{leg_['expected']:,} | "
              f"{leg_['connect_s']} | {leg_['cpu_us_per_delivery']} | {leg_['broadcast_ms']['p50']} | "
              f"{leg_['broadcast_ms']['p99']} |" for name, leg_ in (("Parley", result), ("floor", floor))),
        ]
    if comparison:
        lines += [
            "",
            f"Single Redis against the cluster, same run: {comparison['sockets']:,} sockets on one "
            f"process, {comparison['messages_per_room']} broadcasts per room.",
            "",
            "| one process on | delivered | us CPU per delivery | broadcast p99 ms |",
            "|---|---|---|---|",
            *(f"| {name} | {leg_['delivered']:,}/{leg_['expected']:,} | {leg_['cpu_us_per_delivery']} | "
              f"{leg_['broadcast_ms']['p99']} |" for name, leg_ in comparison["legs"].items()),
        ]
    lines.append(MARK_END)
    return "\n".join(lines)


def run_and_write(args: argparse.Namespace) -> dict[str, Any]:
    result = run(args)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", "bench-scale", markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    return cli.main("bench_scale", argv, parse_args, run_and_write, render)


if __name__ == "__main__":
    sys.exit(main())
