"""``make bench``: startup, shutdown and load, ours beside the floor, written down for people.

Runs scripts.startup, scripts.shutdown and scripts.loadtest (in-memory layer, Redis layer,
the floor, a single 5,000-member room, and through Traefik on the local stack when
scripts.stack can bring one up), each as its own process, then writes
``bench/results/<date>.json`` (every figure plus the machine), ``BENCHMARKS.md`` (tables) and
``docs/bench-latency.png`` (connect and delivery latency distributions). These are
measurements, not tests: nothing here passes or fails on a timing. Exit status 1 only when
a tool itself failed (connections or deliveries short, a shutdown that dropped sockets).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools import ROOT
from tools.cpu_sampler import QUIET_PCT
from tools.report import fmt, log, machine, ratio, with_sections_of
from tools.swarm import raise_nofile

REQUIRED_CONNECTIONS = 5000
REQUIRED_READY_S = 3.0
REQUIRED_SHUTDOWN_S = 10.0
# Presence may cost joins this much more server CPU per connection than no presence does.
PRESENCE_CPU_RATIO = 1.3
# Per delivery "unchanged": within run-to-run noise.
PRESENCE_DELIVERY_RATIO = 1.15
NO_PRESENCE = "app/redis/1-room/no-presence"
# The server figures a target's ratio is made of: medians over the legs' repeats.
SERVER_FIGURES = ("cpu_ms_per_connection", "rss_kb_per_connection", "cpu_ms_per_delivery")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connections", type=int, default=5000)
    parser.add_argument("-r", "--rooms", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5, help="cold starts per target")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each leg a target's ratio is made of, in rounds (medians reported)")
    parser.add_argument("--no-traefik", action="store_true", help="skip the leg through Traefik")
    parser.add_argument("--capacity", type=int, default=19000,
                        help="sockets for the one-process capacity leg (0: skip it)")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--chart", default=str(ROOT / "docs" / "bench-latency.png"))
    return parser.parse_args(argv)


def tool(script: str, args: list[str], work: Path, name: str) -> dict[str, Any]:
    """Run one measuring script (``scripts.<script>``) as its own process; its JSON, or why
    there is none."""
    out = work / f"{name}.json"
    command = [sys.executable, "-m", f"scripts.{script}", *args, "--json", str(out)]
    log(f"bench: {name}: {' '.join(command[1:])}")
    completed = subprocess.run(command, cwd=ROOT, stdout=sys.stderr)
    if not out.exists():
        return {"tool": script, "label": name, "ok": False,
                "failures": [f"{script} exited with {completed.returncode} and wrote no JSON"]}
    return json.loads(out.read_text())


def load(args: argparse.Namespace, work: Path, name: str, extra: list[str], run: int = 0) -> dict[str, Any]:
    """One loadtest leg at the bench's size, raw latencies kept for the chart."""
    return tool("loadtest", ["-n", str(args.connections), "-r", str(args.rooms), "--samples",
                                "--label", name, *extra], work, f"{name.replace('/', '-')}-{run}")


def repeated(args: argparse.Namespace, work: Path,
             specs: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """Each of ``specs`` (label, loadtest options) ``args.repeat`` times, in rounds: every leg
    once, then again, so a slow spell of the shared machine lands on all of them alike rather
    than on one side of a ratio. One run each decided targets by noise: a presence-off leg
    that came out low put presence over its 1.3x in one run and at 0.96x in the next."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in specs}
    for round_ in range(max(args.repeat, 1)):
        for label, extra in specs:
            runs[label].append(load(args, work, label, extra, round_))
    return [median_leg(runs[label]) for label, _ in specs]


def median_leg(legs: list[dict[str, Any]]) -> dict[str, Any]:
    """One leg's runs as one: the run with the median CPU per connection (its latencies and
    samples), with the medians of every run's server figures, each run's figures under
    ``runs``, and every run's failures (one failed run fails the leg)."""
    done = sorted((leg for leg in legs if "server" in leg and "connect" in leg),
                  key=lambda leg: leg["server"]["cpu_ms_per_connection"] or 0)
    if not done:
        return legs[-1]
    merged = {**done[(len(done) - 1) // 2]}
    merged["server"] = {**merged["server"]}
    for key in SERVER_FIGURES:
        values = [leg["server"][key] for leg in done if leg["server"].get(key) is not None]
        merged["server"][key] = round(statistics.median(values), 4) if values else None
    merged["runs"] = [{key: leg.get("server", {}).get(key) for key in SERVER_FIGURES} for leg in legs]
    merged["ok"] = all(leg.get("ok") for leg in legs)
    merged["failures"] = [failure for leg in legs for failure in leg.get("failures", [])]
    return merged


def traefik_leg(args: argparse.Namespace, work: Path) -> dict[str, Any] | str:
    """Load through Traefik on the local stack (Redis layer); a skip reason when impossible.

    The one place that knows scripts.stack: ``stack.up(dir, color)`` returns a state with
    ``web_url`` (Traefik's entry point) and ``procs[color].pid`` (the app behind it).
    """
    try:
        from scripts import stack
    except Exception as exc:  # not written yet, or broken: the rest of the bench still runs
        return f"skipped: scripts.stack not available ({type(exc).__name__}: {exc})"
    directory = work / "stack"
    try:
        state = stack.up(directory, "blue")
        pid = state.procs[state.active].pid
        url = state.web_url
    except Exception as exc:
        stack.down(directory)
        return f"skipped: the local stack did not come up ({type(exc).__name__}: {str(exc)[:300]})"
    try:
        return load(args, work, "traefik/redis", ["--url", url, "--server-pid", str(pid)])
    finally:
        stack.down(directory)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, in one session, on one machine."""
    raise_nofile()  # the servers and the stack started from here inherit it
    started = dt.datetime.now(dt.UTC)
    n = str(args.connections)
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        work = Path(tmp)
        startup = {
            "memory": tool("startup", ["-n", str(args.runs)], work, "startup-memory"),
            "redis": tool("startup", ["-n", str(args.runs), "--redis"], work, "startup-redis"),
        }
        shutdown = tool("shutdown", ["-n", n, "-r", str(args.rooms)], work, "shutdown")
        # The legs the targets' ratios are made of, repeated (``repeated``).
        ratios = repeated(args, work, [
            ("app/memory", []),
            ("app/redis", ["--redis"]),
            ("floor", ["--target", "floor"]),
            # The same without presence: what the chat itself costs, as code without presence
            # (#13) measured it, so a change elsewhere is compared like for like.
            ("app/memory/no-presence", ["--app-env", "CHAT_PRESENCE=false"]),
            ("app/redis/no-presence", ["--redis", "--app-env", "CHAT_PRESENCE=false"]),
            # Presence's cost: N joins to one room with it and without it (as before presence).
            ("app/redis/1-room", ["--redis", "-r", "1"]),
            (NO_PRESENCE, ["--redis", "-r", "1", "--app-env", "CHAT_PRESENCE=false"]),
        ])
        legs = [
            *ratios[:5],
            load(args, work, "app/memory/1-room", ["-r", "1"]),
            load(args, work, "floor/1-room", ["--target", "floor", "-r", "1"]),
            *ratios[5:],
            # One broadcast to one room of every socket: the "room of 5,000" latency figure.
            load(args, work, "app/redis/1-room/1-message", ["--redis", "-r", "1", "--messages", "1"]),
            load(args, work, "floor/1-room/1-message", ["--target", "floor", "-r", "1", "--messages", "1"]),
        ]
        if args.capacity:
            # As many sockets as one process's open-file limit (20,000 here) leaves room for;
            # the load generator spreads itself over several processes to hold them.
            legs.append(load(args, work, "app/redis/capacity", [
                "--redis", "-n", str(args.capacity), "-r", "1", "--messages", "2", "--interval", "0.5",
                "--per-process", "6500", "--open-timeout", "60", "--delivery-timeout", "60"]))
        traefik = "skipped: --no-traefik" if args.no_traefik else traefik_leg(args, work)
        if isinstance(traefik, str):
            skipped.append(f"traefik/redis {traefik}")
            log(f"bench: traefik/redis {traefik}")
        else:
            legs.append(traefik)
    return {
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
        "machine": machine(),
        "config": {"connections": args.connections, "rooms": args.rooms, "startup_runs": args.runs,
                   "capacity": args.capacity, "repeat": args.repeat},
        "startup": startup,
        "shutdown": shutdown,
        "load": legs,
        "skipped": skipped,
    }


def requirements(bench: dict[str, Any]) -> list[tuple[str, str, Any, Any, Any, bool | None]]:
    """The original requirements: (what, target, ours, floor, ratio, met) rows."""
    legs = {leg.get("label"): leg for leg in bench["load"]}
    ours_conn = max((leg["connect"]["connected"] for label, leg in legs.items()
                     if label and not label.startswith("floor") and "connect" in leg), default=None)
    floor_conn = legs.get("floor", {}).get("connect", {}).get("connected")
    start = bench["startup"]["memory"].get("median", {})
    ready, floor_ready = (start.get(k, {}).get("readyz_ms") for k in ("app", "floor"))
    down = bench["shutdown"].get("results", {})
    exit_ms, floor_exit = (down.get(k, {}).get("exit_ms") for k in ("app", "floor"))

    def met(value: Any, ok: bool) -> bool | None:
        return None if value is None else ok

    with_p, without_p = legs.get("app/redis/1-room", {}), legs.get(NO_PRESENCE, {})
    conn_ratio, delivery_ratio = (
        ratio(with_p.get("server", {}).get(key), without_p.get("server", {}).get(key))
        for key in ("cpu_ms_per_connection", "cpu_ms_per_delivery"))
    return [
        ("presence: server CPU per join, one room (ms; floor = presence off)",
         f"<= {PRESENCE_CPU_RATIO}x", with_p.get("server", {}).get("cpu_ms_per_connection"),
         without_p.get("server", {}).get("cpu_ms_per_connection"), conn_ratio,
         met(conn_ratio, (conn_ratio or 0) <= PRESENCE_CPU_RATIO)),
        ("presence: server CPU per delivery, one room (ms; floor = presence off)",
         f"unchanged (<= {PRESENCE_DELIVERY_RATIO}x)", with_p.get("server", {}).get("cpu_ms_per_delivery"),
         without_p.get("server", {}).get("cpu_ms_per_delivery"), delivery_ratio,
         met(delivery_ratio, (delivery_ratio or 0) <= PRESENCE_DELIVERY_RATIO)),
        ("concurrent connections", f">= {REQUIRED_CONNECTIONS}", ours_conn, floor_conn,
         ratio(ours_conn, floor_conn), met(ours_conn, (ours_conn or 0) >= REQUIRED_CONNECTIONS)),
        ("start to ready (ms, median)", f"< {REQUIRED_READY_S * 1000:.0f}", ready, floor_ready,
         ratio(ready, floor_ready), met(ready, (ready or 0) < REQUIRED_READY_S * 1000)),
        ("graceful shutdown (ms)", f"< {REQUIRED_SHUTDOWN_S * 1000:.0f}", exit_ms, floor_exit,
         ratio(exit_ms, floor_exit), met(exit_ms, (exit_ms or 0) < REQUIRED_SHUTDOWN_S * 1000)),
    ]


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c, 2) if isinstance(c, float) else fmt(c) for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def _us(ms: float | None) -> float | None:
    return None if ms is None else round(ms * 1000, 1)


def markdown(bench: dict[str, Any], chart: str | None) -> str:
    """BENCHMARKS.md: requirements, startup, shutdown, load, machine, how to reproduce."""
    m = bench["machine"]
    out = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` on {bench['date']} in {bench['seconds']} s. "
        f"Machine: {m['cpu_count']} cores ({m['cpu_model']}), {m['memory_total_mb']} MB, "
        f"Python {m['python']}, {m['platform']}; load average at the end {m['load_average']}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
        "**The floor** is bench/floor.py: a bare ASGI WebSocket chat on the same uvicorn stack "
        "(uvloop, httptools, websockets-sansio) with no Django, no Channels and no Redis. It ran "
        "in the same session; *ratio* is ours divided by the floor's (1.0 = no overhead; lower "
        "is better except for connects/s). Figures move with the machine's load: compare ratios, and rerun "
        "`make bench` on your own machine.",
        "",
        "## The requirements",
        "",
        _md_table(["requirement", "target", "ours", "floor", "ratio", "met"],
                  [[w, t, o, f, r, {True: "yes", False: "**no**", None: "-"}[ok]]
                   for w, t, o, f, r, ok in requirements(bench)]),
        "",
        "## Cold start (ms from exec)",
        "",
    ]
    rows = []
    for layer, result in bench["startup"].items():
        for kind in ("app", "floor"):
            med = result.get("median", {}).get(kind)
            if med:
                rows.append([f"{kind} ({layer})" if kind == "app" else f"floor (with {layer} run)",
                             med["healthz_ms"], med["readyz_ms"], med["first_message_ms"]])
        if result.get("ratio_to_floor"):
            r = result["ratio_to_floor"]
            rows.append([f"ratio ({layer})", r["healthz_ms"], r["readyz_ms"], r["first_message_ms"]])
    out += [f"Medians of {bench['config']['startup_runs']} cold starts each, interleaved with the floor, "
            "with the checkout's bytecode compiled beforehand, as the image ships it "
            "(`tools.targets.precompile`).",
            "", _md_table(["target", "/healthz 200", "/readyz 200", "first chat round trip"], rows), ""]

    sd = bench["shutdown"]
    out += [f"## Graceful shutdown (SIGTERM with {bench['config']['connections']} sockets open)", ""]
    rows = [[kind, f"{r['connected']}/{r['attempted']}", r["exit_status"], r["exit_ms"],
             r["last_client_closed_ms"], ", ".join(f"{c}: {n}" for c, n in sorted(r["close_codes"].items()))]
            for kind, r in sd.get("results", {}).items()]
    if sd.get("ratio_to_floor"):
        rows.append(["ratio", "", "", sd["ratio_to_floor"]["exit_ms"],
                     sd["ratio_to_floor"]["last_client_closed_ms"], ""])
    out += [_md_table(["target", "connected", "exit status", "exit ms", "last client closed ms",
                       "close codes"], rows),
            "", "1012 is the restart close Parley promises; 1006 would mean a dropped socket. "
            "The floor's exit status -15 is uvicorn re-raising SIGTERM after its own graceful exit.", ""]

    out += ["## Load (connect, then one sender per room, every member must receive)", ""]
    rows = []
    floors = {leg.get("label"): leg for leg in bench["load"] if str(leg.get("label", "")).startswith("floor")}
    for leg in bench["load"]:
        if "connect" not in leg:
            rows.append([leg.get("label"), "failed: " + "; ".join(leg.get("failures", []))] + [""] * 10)
            continue
        c, b, s = leg["connect"], leg["broadcast"], leg["server"]
        rows.append([leg["label"], f"{c['connected']}/{c['attempted']}", b["rooms"], c["rate_per_s"],
                     c["latency_ms"]["p50"], c["latency_ms"]["p99"], c["latency_ms"]["max"],
                     b["latency_ms"]["p50"], b["latency_ms"]["p99"], f"{b['missing']}/{b['expected']}",
                     s["cpu_ms_per_connection"], s["rss_kb_per_connection"], s["cpu_ms_per_delivery"]])
    for ours_label, floor_label in (("app/memory", "floor"), ("app/redis", "floor"),
                                    ("app/memory/no-presence", "floor"), ("app/redis/no-presence", "floor"),
                                    ("app/memory/1-room", "floor/1-room"),
                                    ("app/redis/1-room", NO_PRESENCE),
                                    ("app/redis/1-room/1-message", "floor/1-room/1-message")):
        ours = next((leg for leg in bench["load"]
                     if leg.get("label") == ours_label and "connect" in leg), None)
        floor = floors.get(floor_label) or next(
            (leg for leg in bench["load"] if leg.get("label") == floor_label), None)
        if ours and floor and "connect" in floor:
            rows.append([f"ratio {ours_label} / {floor_label}", "", "",
                         ratio(ours["connect"]["rate_per_s"], floor["connect"]["rate_per_s"]),
                         *(ratio(ours["connect"]["latency_ms"][k], floor["connect"]["latency_ms"][k])
                           for k in ("p50", "p99", "max")),
                         *(ratio(ours["broadcast"]["latency_ms"][k], floor["broadcast"]["latency_ms"][k])
                           for k in ("p50", "p99")),
                         "", *(ratio(ours["server"][k], floor["server"][k]) for k in
                               ("cpu_ms_per_connection", "rss_kb_per_connection", "cpu_ms_per_delivery"))])
    out += [_md_table(["leg", "connected", "rooms", "connects/s", "connect p50 ms", "connect p99 ms",
                       "connect max ms", "delivery p50 ms", "delivery p99 ms", "missing",
                       "server CPU ms/conn", "server KB/conn", "server CPU ms/delivery"], rows), ""]
    config = bench["load"][0].get("config", {}) if bench["load"] else {}
    out += [f"{config.get('concurrency', '-')} handshakes in flight, {config.get('messages', '-')} "
            f"messages per room ({config.get('interval', '-')} s apart, so each message is a burst of "
            "deliveries to every room at once). Latencies are measured by the clients on the same "
            "machine: they share its cores with the server and include the client processes' own "
            "queueing, so compare them with the floor's rather than read them as network figures. "
            "Server CPU and memory are psutil deltas of the server process over each phase "
            "(for traefik/redis: the app behind Traefik); the connect phase lasts until the server "
            f"is quiet again (below {QUIET_PCT:g} % of a core over 1 s), so the work the connects "
            "leave behind (presence rounds announcing the joins) counts per connection, not per "
            "delivery.", ""]
    repeats = [leg for leg in bench["load"] if len(leg.get("runs", ())) > 1]
    if repeats:
        out += [f"The legs a target's ratio is made of ran {len(repeats[0]['runs'])} times each, in rounds "
                "(every such leg once, then again); their server CPU and memory are the medians of "
                "those runs, their latencies the run with the median CPU per connection. Each run's "
                "server CPU ms/conn, µs/delivery and KB/conn:", ""]
        out += [f"- {leg['label']}: " + ", ".join(
                    f"{fmt(run['cpu_ms_per_connection'], 2)} / {fmt(_us(run['cpu_ms_per_delivery']))} / "
                    f"{fmt(run['rss_kb_per_connection'])}" for run in leg["runs"]) for leg in repeats]
        out += [""]
    for skip in bench["skipped"]:
        out += [f"- {skip}"]
    if bench["skipped"]:
        out += [""]
    if chart:
        out += [f"![connect and delivery latency]({chart})", ""]
    out += ["## Reproduce", "", "```sh",
            "make bench                      # everything above: ~4 min on 2 idle cores, more when busy",
            "make loadtest LOADTEST_ARGS='-n 5000 --redis'", "make startup STARTUP_ARGS='-n 10'",
            "make shutdown SHUTDOWN_ARGS='-n 5000'", "make locust", "```", "",
            "Raw figures: `bench/results/`.", ""]
    return "\n".join(out)


def chart(bench: dict[str, Any], path: Path) -> bool:
    """Cumulative distributions of connect and delivery latency per leg, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    legs = [leg for leg in bench["load"] if leg.get("samples")]
    if not legs:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, key, title in ((axes[0], "connect_ms", "connect latency"),
                             (axes[1], "delivery_ms", "delivery latency (broadcast)")):
        for leg in legs:
            values = sorted(v for v in leg["samples"][key] if v > 0)
            if values:
                axis.plot(values, [(i + 1) / len(values) for i in range(len(values))],
                          label=leg["label"], linestyle="--" if leg["label"].startswith("floor") else "-")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("ms (log scale)")
        axis.set_ylabel("fraction of samples")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    c = bench["config"]
    figure.suptitle(f"Parley vs floor: {c['connections']} connections, {bench['date']}, "
                    f"{bench['machine']['cpu_count']} cores")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write(bench: dict[str, Any], args: argparse.Namespace) -> Path:
    """The chart, then the JSON (without raw samples) and BENCHMARKS.md."""
    drew = chart(bench, Path(args.chart))
    slim = {**bench, "load": [{k: v for k, v in leg.items() if k != "samples"} for leg in bench["load"]]}
    results = Path(args.results_dir) / f"{bench['date'][:10]}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(slim, indent=2) + "\n")
    link = os.path.relpath(Path(args.chart).resolve(), Path(args.markdown).resolve().parent)
    target = Path(args.markdown)
    old = target.read_text() if target.exists() else ""
    target.write_text(with_sections_of(old, markdown(slim, link if drew else None)))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = run(args)
    results = write(bench, args)
    parts = [*bench["startup"].values(), bench["shutdown"], *bench["load"]]
    failed = [f"{part.get('label', part.get('tool'))}: {'; '.join(part.get('failures', []))}"
              for part in parts if not part.get("ok")]
    print(Path(args.markdown).read_text())
    print(f"bench: wrote {results}, {args.markdown}, {args.chart}", file=sys.stderr)
    for failure in failed:
        print(f"bench: FAILED {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
