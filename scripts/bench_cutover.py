"""Cutover at scale: N clients through one Traefik, blue->green; how soon are they all back?

    python -m scripts.bench_cutover [--clients 9000] [--client-processes 4] [--no-floor] [--write]
    make bench-cutover BENCH_CUTOVER_ARGS="--clients 2000"

The local stack (scripts/stack.py: one redis-server on a free loopback port, Traefik, blue)
in a throwaway state directory (removed after a run that passed; kept, with its logs, and
named in the report as ``stack_dir`` after one that did not), with a JWT per client so that
a reconnect is the same user, as compose runs it. Then, with the clients of
tools/cutover_clients.py spread over several processes (scripts/cutover_storm.py; they
reconnect as docs/CLIENT.md says: 1012 -> uniform in [0, 1 s), failures -> full-jitter
backoff from 0.5 s; resume with ``?since=``, resend by ``client_id``):

1. fresh connect: all N clients start at once (at most ``--concurrency`` attempts in flight
   over all processes); the time until 50 / 99 / 100 % have their ``ready`` frame; blue's
   CPU peak meanwhile;
2. chat: ``--senders`` clients per room send a message each, every one acknowledged and
   received by its whole room;
3. cutover: a trickle of ``--rate`` messages/s keeps going while scripts/deploy.py deploys
   green on the stack; from the moment blue is sent SIGTERM, the time until 50 / 99 / 100 %
   of the clients are live again (a ``ready`` after their 1012); green's and Traefik's CPU
   peaks (psutil, 0.1 s windows, % of one core);
4. chat again, then the drill's checks (scripts/drill.py ``verify``): every acknowledged
   message reached every member of its room once and in order, nothing sent went
   unacknowledged; every close was 1012; green holds all N clients.

The ratio that issue #14 sets a goal for: recovery 99 % / fresh-connect 99 %, the same
clients in the same run (goal <= 1.0: the storm costs no more than a cold start of
everyone). Then, unless ``--no-floor``, the floor's leg (scripts/cutover_floor.py): the
same clients through a Traefik in front of two bare-uvicorn floors (bench/floor.py), fresh
connect and recovery from blue's SIGTERM measured the same way, without the chat; its ratio
is what the storm costs with no Parley in it, and ``ratio_to_floor`` is Parley's 99 % ratio
over the floor's. ``--restart-jitter`` spreads the storm from the client side; ``--app-env
KEY=VALUE`` goes to both colours. ``--label`` names the variant in the table.
``--write`` keeps the run in bench/results/cutover.json (one entry per clients and label)
and rewrites BENCHMARKS.md's "cutover" section from all of them. Reports figures, not a
verdict on timing: only zero loss, the closes and the counts (either leg's) make a run fail.

Heavy at 9,000: on a shared 2-core machine run the smaller sizes first.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from scripts import cutover_floor, drill
from scripts.cutover_storm import (
    RESTART_JITTER,
    arrived,
    client_pids,
    clients,
    fractions,
    fresh_connect,
    ratios,
    recovery,
    timeline,
)
from scripts.deploy import deploy, parse_env
from scripts.local_runtime import LocalRuntime
from scripts.stack import down, up
from scripts.stack_state import StackState
from tools import ROOT, cli
from tools.cpu_sampler import CpuSampler
from tools.net import http_get
from tools.report import log, machine, table, write_section
from tools.report import ratio as ratio_of  # "ratio" names the ratios dict in render and markdown
from tools.swarm import Swarm, raise_nofile

RESULTS = ROOT / "bench" / "results" / "cutover.json"
SECTION = "bench-cutover"
# What the new colour did besides accepting: holes filled from history, refused handshakes.
GREEN_COUNTERS = ("chat_gaps_filled_total", "chat_handshakes_refused_total", "chat_frames_rejected_total")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=9000)
    parser.add_argument("--room-size", type=int, default=50, help="clients per room (default 50)")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=500,
                        help="connect attempts in flight, all client processes (default 500)")
    parser.add_argument("--restart-jitter", type=float, default=RESTART_JITTER,
                        help="seconds: a client closed with 1012 reconnects uniform in [0, this)")
    parser.add_argument("--senders", type=int, default=2, help="clients per room that chat (default 2)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="messages per second, all rooms, during the cutover (default 20)")
    parser.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for both colours (repeatable)")
    parser.add_argument("--label", default="",
                        help="what this run measures, for the table (default: the jitter and --app-env)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="bound for each phase (default 60 s + 20 ms per client)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the floor's leg (bench/floor.py through Traefik, after Parley's)")
    parser.add_argument("--write", action="store_true",
                        help="keep the run in bench/results/cutover.json and rewrite BENCHMARKS.md's section")
    parser.add_argument("--json", metavar="PATH", help="write the JSON here ('-': stdout)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.client_processes < 1 or args.room_size < 1:
        parser.error("--clients, --client-processes and --room-size must be >= 1")
    if not 0 < args.senders <= args.room_size:
        parser.error("--senders must be 1..room size")
    args.timeout = args.timeout or 60 + args.clients / 50
    return args


def default_label(args: argparse.Namespace) -> str:
    env = "".join(f", {pair}" for pair in args.app_env)
    return f"1012 jitter {args.restart_jitter:g} s{env}"


class TimedRuntime(LocalRuntime):
    """The stack's runtime, noting when the old colour is sent SIGTERM and sampling the
    CPU of the new colour, the old one and Traefik from that moment."""

    sigterm_ns: int = 0
    sampler: CpuSampler | None = None
    clients: list[int] = []  # the load clients' pids, sampled too

    def stop(self, color: str) -> bool:
        target = self.state.active  # recorded as active before the old one is stopped
        pids = {group: [self.state.procs[n].pid for n in self.state.members(c) if n in self.state.procs]
                for group, c in (("new", target), ("old", color))}
        self.sampler = CpuSampler({**pids, "traefik": [self.state.procs["traefik"].pid],
                                   "clients": self.clients}).__enter__()
        self.sigterm_ns = time.monotonic_ns()  # SIGTERM follows within milliseconds
        return super().stop(color)


def counters(urls: list[str], names: tuple[str, ...]) -> dict[str, float]:
    """Prometheus samples whose line starts with one of ``names``, summed over ``urls``."""
    found: dict[str, float] = {}
    for url in urls:
        status, body = http_get(url + "/metrics", timeout=2.0)
        for line in body.decode().splitlines() if status == 200 else []:
            sample, _, value = line.rpartition(" ")
            if sample.startswith(names):
                found[sample] = found.get(sample, 0.0) + float(value)
    return found


def senders_of(clients: int, room_size: int, per_room: int) -> list[int]:
    """The client indices that chat: the first ``per_room`` of each room."""
    return [start + j for start in range(0, clients, room_size) for j in range(per_room)
            if start + j < clients]


def chat(swarm: Swarm, senders: list[int], timeout: float) -> dict[str, Any]:
    """One message from each sender; wait until all are acknowledged and received."""
    swarm.call("send", 30, senders=senders, messages=1)
    acks = swarm.call("await_acks", timeout + 30, timeout=timeout)
    tops: dict[str, int] = {}
    for answer in acks:
        for room, top in answer["tops"].items():
            tops[room] = max(tops.get(room, 0), top)
    behind = swarm.call("await_received", timeout + 30, tops=tops, timeout=timeout)
    return {"unacked": sum(a["unacked"] for a in acks), "behind": sum(b["behind"] for b in behind)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Parley's leg, then (unless --no-floor) the floor's, in one result."""
    result = parley_leg(args)
    if not args.no_floor:
        log("bench-cutover: the floor's leg")
        with_floor(result, cutover_floor.run(args))
    return result


def with_floor(result: dict[str, Any], floor: dict[str, Any]) -> None:
    """Add the floor's leg to Parley's ``result``: ``floor``, ``ratio_to_floor`` (the 99 %
    ratios, Parley's over the floor's), and the floor's problems, which fail the run too."""
    result["floor"] = floor
    result["ratio_to_floor"] = ratio_of(result["ratio"]["p99"], floor_ratio(result))
    result["problems"] = [*result["problems"], *(f"floor: {p}" for p in floor["problems"])]
    result["ok"] = result["ok"] and floor["ok"]


def floor_ratio(run: dict[str, Any]) -> float | None:
    """The floor's 99 % ratio in ``run``; None for runs without a floor leg, or whose floor
    leg measured nothing."""
    found: float | None = run.get("floor", {}).get("ratio", {}).get("p99")
    return found


def parley_leg(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()  # before the stack starts, so that Traefik and both colours inherit it
    app_env = parse_env(args.app_env)
    secret = secrets.token_urlsafe(48)
    directory = Path(tempfile.mkdtemp(prefix="parley-cutover-"))
    state = up(directory, app_env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": secret, **app_env})
    try:
        result = measure(args, state, secret, app_env)
    finally:
        down(directory)
    if result["ok"]:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        result["stack_dir"] = str(directory)  # its logs/ say what the processes saw
    return result


def measure(args: argparse.Namespace, state: StackState, secret: str,
            app_env: dict[str, str]) -> dict[str, Any]:
    from app.chat.auth import mint

    n = args.clients
    rooms = math.ceil(n / args.room_size)
    senders = senders_of(n, args.room_size, args.senders)
    swarm = clients(state.web_url.replace("http://", "ws://"), args)
    # One user per client, allowed into its own room: the room names CutoverWorker gives.
    swarm.extra["tokens"] = [mint(f"cut-{swarm.run}-{i}", [f"cut-{swarm.run}-{i // args.room_size}"],
                                  7200, secret) for i in range(n)]
    wait = args.timeout + 60
    problems: list[str] = []
    with swarm:
        log(f"bench-cutover: {n} clients in {rooms} rooms over {swarm.plan.processes} client processes")
        blue = [state.procs[name].pid for name in state.members("blue")]
        pids = client_pids(swarm)
        groups = {"blue": blue, "traefik": [state.procs["traefik"].pid], "clients": pids}
        fresh_times, fresh_cpu = fresh_connect(swarm, groups, args.timeout)
        fresh = fractions(fresh_times, n)
        log(f"bench-cutover: fresh connect {fresh}; chatting")
        before = chat(swarm, senders, args.timeout)

        swarm.call("start_trickle", 30, senders=senders, rate=args.rate)
        runtime = TimedRuntime(state)
        runtime.clients = pids
        log("bench-cutover: deploying green")
        report = deploy(runtime, "green")
        rec_times, close_times = recovery(swarm, runtime.sigterm_ns, args.timeout)
        assert runtime.sampler is not None
        runtime.sampler.__exit__()
        swarm.call("stop_trickle", 30)
        recovered_at = fractions(rec_times, n)
        log(f"bench-cutover: recovery {recovered_at}; chatting again")
        after = chat(swarm, senders, args.timeout)
        on_green = drill.open_connections(state, "green")
        green_counts = counters(state.color_urls("green"), GREEN_COUNTERS)
        records = [r for answer in swarm.call("report", wait) for r in answer["clients"]]

    checks = verify(records)
    problems += checks["problems"]
    fresh_ready, recovered, short = arrived(fresh_times, rec_times, n)
    problems += short
    if on_green != n:
        problems.append(f"green holds {on_green} clients, not {n}")
    for phase, result in (("before", before), ("after", after)):
        if result["unacked"] or result["behind"]:
            problems.append(f"chat {phase} the cutover: {result}")
    cpu = runtime.sampler.summary()
    return {
        "tool": "bench_cutover",
        "label": args.label or default_label(args),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": {"clients": n, "rooms": rooms, "room_size": args.room_size,
                   "client_processes": swarm.plan.processes, "concurrency": args.concurrency,
                   "restart_jitter_s": args.restart_jitter, "senders_per_room": args.senders,
                   "rate_per_s": args.rate, "app_env": app_env, "redis": "one redis-server"},
        "fresh": {**fresh, "ready": fresh_ready, "deciles_s": timeline(fresh_times, n),
                  **{f"{group}_cpu": cpu_s for group, cpu_s in fresh_cpu.items()}},
        "recovery": {**recovered_at, "recovered": recovered, "deciles_s": timeline(rec_times, n),
                     "closes_deciles_s": timeline(list(close_times), n),
                     "last_close_s": round(max(close_times), 3) if close_times else None,
                     "green_cpu": cpu["new"], "blue_cpu": cpu["old"], "traefik_cpu": cpu["traefik"],
                     "clients_cpu": cpu["clients"]},
        "ratio": ratios(recovered_at, fresh),
        "deploy": report,
        "on_green": on_green,
        "green_counters": green_counts,
        **checks["figures"],
        "machine": machine(),
        "ok": not problems,
        "problems": problems[:drill.MAX_PROBLEMS],
    }


def verify(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The drill's zero-loss checks over the clients' records, plus their closes."""
    members = []
    for r in records:
        member = drill.Member(r["index"], r["room"])
        member.received, member.acked = r["received"], r["acked"]
        member.sent, member.resets = r["sent"], r["resets"]
        member.pending = dict.fromkeys(r["pending"], "")
        members.append(member)
    result = drill.verify(members)
    closes = Counter(str(code) for r in records for code, _ in r["closes"])
    problems = list(result["problems"])
    if set(closes) - {str(drill.RESTART)}:
        problems.append(f"closes other than 1012: {dict(closes)}")
    errors = [f"client {r['index']}: {e}" for r in records for e in r["errors"]]
    problems += errors[:10]
    failures: Counter[str] = Counter()
    for r in records:
        failures.update(r["failures"])
    totals = result["totals"]
    return {"problems": problems, "figures": {
        "messages_sent": sum(r["sent"] for r in records),
        "acked": totals.get("acked", 0), "unacked": totals.get("unacked", 0),
        "deliveries": totals.get("received", 0), "lost": totals.get("lost", 0),
        "duplicated": totals.get("duplicated", 0), "out_of_order": totals.get("out_of_order", 0),
        "resent": sum(r["resent"] for r in records),
        "retried_after_unavailable": sum(r["retried"] for r in records), "close_codes": dict(closes),
        "failed_attempts": sum(r["failed_attempts"] for r in records), "failures": dict(failures),
        "client_errors": len(errors)}}


def render(result: dict[str, Any]) -> str:
    c, f, r, ratio = result["config"], result["fresh"], result["recovery"], result["ratio"]
    rows = [["fresh connect", f["p50_s"], f["p99_s"], f["p100_s"], f"blue {f['blue_cpu']['peak_pct']} %"],
            ["recovery from SIGTERM", r["p50_s"], r["p99_s"], r["p100_s"],
             f"green {r['green_cpu']['peak_pct']} %"],
            ["ratio", ratio["p50"], ratio["p99"], ratio["p100"], ""]]
    floor = result.get("floor", {})
    if "ratio" in floor:
        ff, fr, fratio = floor["fresh"], floor["recovery"], floor["ratio"]
        rows += [["floor: fresh connect", ff["p50_s"], ff["p99_s"], ff["p100_s"],
                  f"blue {ff['blue_cpu']['peak_pct']} %"],
                 ["floor: recovery from SIGTERM", fr["p50_s"], fr["p99_s"], fr["p100_s"],
                  f"green {fr['green_cpu']['peak_pct']} %"],
                 ["floor: ratio", fratio["p50"], fratio["p99"], fratio["p100"], ""]]
    lines = [f"bench-cutover: {c['clients']} clients, {result['label']}",
             table(["", "50 % s", "99 % s", "100 % s", "CPU peak"], rows),
             f"lost {result['lost']}, duplicated {result['duplicated']}, "
             f"out of order {result['out_of_order']}, "
             f"unacked {result['unacked']}, closes {result['close_codes']}, failed attempts "
             f"{result['failed_attempts']} {result['failures']}, on green {result['on_green']}",
             f"CPU-s fresh / recovery (everything measured): {cpu_cell(result)}; deciles s, fresh "
             f"{f['deciles_s']}, recovery {r['deciles_s']}, 1012s {r['closes_deciles_s']}",
             *([f"floor: ratio 99 % {floor_ratio(result)}, Parley / floor {result['ratio_to_floor']}; "
                f"closes {floor['close_codes']}, failed attempts {floor['failed_attempts']} "
                f"{floor['failures']}; switch {floor['switch_s']} s; CPU-s fresh / recovery "
                f"{cpu_cell(floor)}"] if "ratio" in floor else []),
             "OK" if result["ok"] else "FAILED: " + "; ".join(result["problems"][:10])]
    return "\n".join(lines)


def keep(result: dict[str, Any], path: Path = RESULTS) -> list[dict[str, Any]]:
    """Store ``result`` beside the earlier runs, replacing the one with the same clients and
    label; all of them, oldest first."""
    runs = json.loads(path.read_text()) if path.exists() else []
    key = (result["config"]["clients"], result["label"])
    runs = [run for run in runs if (run["config"]["clients"], run["label"]) != key] + [result]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=2) + "\n")
    return runs


def outcome(run: dict[str, Any]) -> str:
    """``ok``, or what failed: when a wait timed out, the lost figure is what had not
    arrived by then, not necessarily lost for good."""
    if run["ok"]:
        return "ok"
    waits = [p for p in run["problems"]
             if p.removeprefix("floor: ").startswith(("only ", "chat ", "green holds"))]
    return "FAILED: " + "; ".join(waits or run["problems"][:1]).replace("|", "/")[:160]


def notes(runs: list[dict[str, Any]]) -> list[str]:
    """A run's ``note`` (added by hand to bench/results/cutover.json), under the table."""
    found = [f"- {r['config']['clients']}, {r['label']}: {r['note']}" for r in runs if r.get("note")]
    return [*found, ""] if found else []


def cpu_totals(run: dict[str, Any]) -> tuple[float, float] | None:
    """CPU-seconds of everything measured in each phase: fresh (blue, Traefik, the clients)
    and recovery (green, blue's drain, Traefik, the clients); None for runs before the
    clients were sampled."""
    f, r = run["fresh"], run["recovery"]
    if "clients_cpu" not in f or "clients_cpu" not in r:
        return None
    fresh = sum(f[k]["cpu_s"] for k in ("blue_cpu", "traefik_cpu", "clients_cpu"))
    recovery = sum(r[k]["cpu_s"] for k in ("green_cpu", "blue_cpu", "traefik_cpu", "clients_cpu"))
    return round(fresh, 2), round(recovery, 2)


def cpu_cell(run: dict[str, Any]) -> str:
    totals = cpu_totals(run)
    if totals is None:
        return "-"
    fresh, recovery = totals
    return f"{fresh} / {recovery} ({recovery / fresh:.2f})" if fresh else "-"


def dash(value: float | None) -> str:
    """A table cell for a figure that older runs do not have."""
    return "-" if value is None else str(value)


def markdown(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in sorted(runs, key=lambda r: (r["config"]["clients"], r["label"])):
        f, r, ratio = run["fresh"], run["recovery"], run["ratio"]
        rows.append(f"| {run['config']['clients']} | {run['label']} "
                    f"| {f['p50_s']} / {f['p99_s']} / {f['p100_s']} "
                    f"| {r['p50_s']} / {r['p99_s']} / {r['p100_s']} | {ratio['p99']} | {ratio['p100']} "
                    f"| {dash(floor_ratio(run))} | {dash(run.get('ratio_to_floor'))} "
                    f"| {r['green_cpu']['peak_pct']} | {f['blue_cpu']['peak_pct']} | {r['last_close_s']} "
                    f"| {cpu_cell(run)} "
                    f"| {run['green_counters'].get('chat_gaps_filled_total', 0):.0f} "
                    f"| {run['lost']} / {run['duplicated']} | {run['failed_attempts']} "
                    f"| {run['machine']['load_average'][0]} | {run['when']} | {outcome(run)} |")
    return "\n".join([
        f"<!-- {SECTION}: begin (scripts/bench_cutover.py --write) -->",
        "## Cutover at scale (make bench-cutover)",
        "",
        "N clients through one Traefik on one redis-server, blue -> green with scripts/deploy.py "
        "on the local stack. *Fresh*: all N start at once, seconds until 50 / 99 / 100 % have "
        "their `ready`. *Recovery*: from blue's SIGTERM until 50 / 99 / 100 % are live again on "
        "green (a `ready` after their 1012). Clients reconnect as docs/CLIENT.md says (1012: "
        "uniform in [0, 1 s); failures: full jitter from 0.5 s), at most 500 attempts in flight "
        "over all client processes, in both phases. The ratio is recovery over fresh in the same "
        "run (issue #14's goal: 99 % <= 1.0). *Floor ratio*: the same, in the same run, for the same "
        "clients through a Traefik in front of bench/floor.py (bare uvicorn: blue -> green by a routing "
        "switch and blue's SIGTERM, whose uvicorn sends the 1012s; no chat); *Parley / floor*: Parley's "
        "99 % ratio over the floor's (\"-\": runs from before the floor's leg). "
        "CPU peaks: busiest 0.1 s window, % of one core. "
        "*CPU-s*: all the CPU measured in each phase, fresh (blue, Traefik, the load clients) "
        "and recovery (green, blue's drain, Traefik, the load clients): both phases keep the two "
        "cores busy, so their ratio is close to the time ratio. "
        "*Gaps filled on green*: members the new colour refilled from history (its "
        "`chat_gaps_filled_total`). The machine has 2 cores, shared with the client processes and "
        "with other work (load average at the end of the run in its own column): compare the "
        "ratios within a run, not absolute seconds across runs.",
        "",
        "| clients | variant | fresh 50/99/100 % s | recovery 50/99/100 % s | ratio 99 % | ratio 100 % "
        "| floor ratio 99 % | Parley / floor (99 %) "
        "| green CPU peak % | blue CPU peak % (fresh) | last 1012 s | CPU-s fresh / recovery (ratio) "
        "| gaps filled on green | lost / dup "
        "| failed attempts | load | when | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *notes(runs),
        "Raw figures: bench/results/cutover.json. Reproduce: `make bench-cutover "
        "BENCH_CUTOVER_ARGS=\"--clients 2000\"` (`--restart-jitter 3` spreads the reconnects, "
        "`--no-floor` skips the floor's leg, `--write` updates this section).",
        f"<!-- {SECTION}: end -->",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run_and_write(parsed: argparse.Namespace) -> dict[str, Any]:
        result = run(parsed)
        if parsed.write:
            write_section(ROOT / "BENCHMARKS.md", SECTION, markdown(keep(result)))
        return result

    return cli.main("bench_cutover", argv, lambda _: args, run_and_write, render)


if __name__ == "__main__":
    sys.exit(main())
