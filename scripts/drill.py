"""The cutover drill: clients chatting through Traefik across blue->green->blue, zero loss.

    python -m scripts.drill [--clients 500] [--rooms 10] [--rate 50] [--state-dir DIR]
    python -m scripts.drill --fault kill     # SIGKILL the active colour, then fail over

On the local stack (started here unless one is already up in the state directory, and then
stopped again), N clients connect through Traefik across rooms and keep sending at a steady
total rate. A full deploy to the other colour runs, then one back. Clients closed with 1012
reconnect with exponential backoff and full jitter, resume with ``?since=<last id>`` and
resend what was not acknowledged with the same ``client_id``. Afterwards, for every room:
every acknowledged message reached every member exactly once and in id order, every sent
message was acknowledged, no client saw anything but 1012 closes, every client reconnected
and ended on the new colour. Prints a JSON report; exit status 1 on any failure.

Presence: a stack started here runs with ``CHAT_AUTH=jwt`` and every client has a token of its
own (``sub`` = the client), so a reconnect is the same user. From the first cutover until
the presence grace (plus a heartbeat) has passed after the last one, clients must receive
zero ``join``/``leave``/``presence_diff`` changes, and each reconnect's ``presence`` count must
be its room's size. Against an anonymous stack (started elsewhere without a JWT secret)
every reconnect is a new user by design, so the presence check is skipped and says so.

``--fault kill``: instead of the two deploys, the active colour's process is killed with
SIGKILL mid-chat (no drain: clients see 1006, and what they sent without an ack may or may
not have been stored), then the deploy to the other colour runs as the failover. Clients retry through
Traefik (502/503 until the switch) with the same backoff, resume by id and resend their
unacknowledged messages; the checks are the same, with 1006 as the expected close.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from scripts.deploy import deploy
from scripts.local_runtime import LocalRuntime
from scripts.stack import down, up
from scripts.stack_state import STATE_FILE, StackState, locked, resolve_dir
from tools import traefik_config
from tools.backoff import failure_delay
from tools.ledger import Ledger
from tools.net import http_get
from tools.report import table

MAX_CLIENTS = 5000
RESTART = 1012
ABNORMAL = 1006  # no close frame: what a client sees when the process is killed
FAULTS = ("none", "kill")
BACKOFF_BASE = 0.25  # first reconnect after a 1012: uniform in [0, 0.25 s]
BACKOFF_CAP = 5.0
CONNECT_CONCURRENCY = 100
MAX_PROBLEMS = 50  # listed in the report; the total is always given
PRESENCE_CHANGES = ("join", "leave", "presence_diff")
DEFAULT_GRACE = 15.0  # the service's CHAT_PRESENCE_GRACE default


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with full jitter, from the drill's base and cap."""
    return failure_delay(attempt, base, cap)


@dataclass
class Member(Ledger):
    """One drill client: what it sent, what was acknowledged, every message id it received."""

    index: int
    room: str
    expected_close: int = RESTART
    sent: int = 0
    connects: int = 0
    failed_attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    transmitted: set[str] = field(default_factory=set)  # client_ids written to a socket
    resent: int = 0
    closes: Counter[int] = field(default_factory=Counter)
    ws: Any = None
    live: bool = False
    last_failure: str = ""
    token: str | None = None  # this client's JWT (the same user across reconnects)
    watching: bool = False  # counting presence changes (from the first cutover on)
    presence_changes: list[str] = field(default_factory=list)
    presence_counts: list[int] = field(default_factory=list)  # from each `presence` snapshot

    def new_message(self) -> tuple[str, str]:
        self.sent += 1
        # Unguessable: without a token, a client_id is all that keys a resend (PROTOCOL.md).
        client_id = secrets.token_hex(16)
        text = f"drill {self.index} #{self.sent}"
        self.pending[client_id] = text
        return client_id, text

    def handle(self, frame: dict[str, Any]) -> str | None:
        """Record one server frame; its type."""
        kind = frame.get("type")
        if self.book(frame):
            pass
        elif kind == "ready":
            self.live = True
            self.epoch = frame.get("epoch")
        elif kind == "presence":
            self.presence_counts.append(frame["count"])
        elif kind in PRESENCE_CHANGES:
            if self.watching:
                names = [frame.get("user")] if kind != "presence_diff" else [
                    u["user"] for u in frame["joined"] + frame["left"]]
                self.presence_changes += [f"{kind} {name}" for name in names]
        elif kind == "typing":
            pass
        else:
            self.errors.append(f"unexpected frame {frame}")
        return kind


async def send(member: Member, client_id: str, text: str) -> None:
    from websockets.exceptions import ConnectionClosed

    if client_id in member.transmitted:
        member.resent += 1  # sent before, never acknowledged: the same client_id again
    member.transmitted.add(client_id)
    try:
        await member.ws.send(json.dumps({"message": text, "client_id": client_id}))
    except ConnectionClosed:
        pass  # still pending: resent after the reconnect


async def run_member(member: Member, base_url: str, finishing: asyncio.Event,
                     gate: asyncio.Semaphore) -> None:
    """Stay connected until ``finishing``: reconnect after every close, resume by id."""
    try:
        await _stay_connected(member, base_url, finishing, gate)
    except Exception as exc:  # a drill bug must show up in the report, not as a stuck client
        member.errors.append(f"client task failed: {exc!r}")
        raise


async def _stay_connected(member: Member, base_url: str, finishing: asyncio.Event,
                          gate: asyncio.Semaphore) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    attempt = 0
    while not finishing.is_set():
        url = f"{base_url}/ws/chat/{member.room}/?since={member.last_id}"
        if member.epoch is not None:
            url += f"&epoch={member.epoch}"
        if member.token:
            url += f"&token={member.token}"
        try:
            async with gate:
                member.ws = await connect(url, open_timeout=10, close_timeout=5)
        except (TimeoutError, OSError, InvalidHandshake) as exc:
            member.failed_attempts += 1
            member.failures[failure_kind(exc)] += 1
            member.last_failure = repr(exc)[:200]
            attempt += 1
            await asyncio.sleep(backoff(attempt))
            continue
        attempt = 0
        member.connects += 1
        try:
            async for raw in member.ws:
                if member.handle(json.loads(raw)) == "ready":
                    for client_id, text in list(member.pending.items()):
                        await send(member, client_id, text)
        except ConnectionClosed:
            pass
        member.live = False
        if finishing.is_set():
            return
        code = member.ws.close_code or ABNORMAL  # the code of the close frame received
        member.closes[code] += 1
        if code != member.expected_close:
            member.errors.append(f"closed with {code}")
        await asyncio.sleep(backoff(0))


def failure_kind(exc: BaseException) -> str:
    """A failed connect attempt, by kind: ``HTTP 502`` from Traefik, or the exception's name."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return f"HTTP {status}" if status is not None else type(exc).__name__


async def run_sender(member: Member, interval: float, stop: asyncio.Event) -> None:
    """Send one message every ``interval`` seconds (random phase) until ``stop``."""
    delay = random.uniform(0, interval)
    while True:
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return
        except TimeoutError:
            pass
        client_id, text = member.new_message()
        if member.live:
            await send(member, client_id, text)
        delay = interval


async def until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` (cheap, in-process) until true; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def open_connections(state: StackState, color: str) -> int | None:
    """``chat_connections_open`` of a colour: the sum over its processes' own /metrics
    (None when one of them does not answer)."""
    counts = [connections_at(url) for url in state.color_urls(color)]
    return None if None in counts else sum(c for c in counts if c is not None)


def connections_at(url: str) -> int | None:
    """``chat_connections_open`` of the one process at ``url`` (None if it does not answer)."""
    status, body = http_get(url + "/metrics", timeout=2.0)
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith("chat_connections_open "):
            return int(float(line.split()[1]))
    return None


async def send_burst(members: list[Member]) -> int:
    """One message from every live member at once; how many sent messages await an ack now.

    Sent just before the kill, so that some are surely in flight when the process dies:
    the case where only a resend with the same client_id can tell lost from delivered.
    """
    for member in members:
        if member.live:
            await send(member, *member.new_message())
    return sum(1 for m in members for client_id in m.pending if client_id in m.transmitted)


async def kill_active(state: StackState) -> dict[str, Any]:
    """SIGKILL every process of the active colour (no drain) and wait for them to be gone;
    the first process's pid and how it ended, and all pids."""
    color = state.active
    procs = [state.procs[name] for name in state.members(color)]
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    ends = []
    for proc in procs:
        killed_by = await asyncio.to_thread(reap, proc.pid)
        if killed_by is None:  # not our child (the stack was started elsewhere): poll instead
            await asyncio.to_thread(proc.wait, 10.0)
        ends.append(killed_by)
    first = procs[0]
    return {"color": color, "pid": first.pid, "started": first.started, "signal": "SIGKILL",
            "killed_by": ends[0], "pids": [proc.pid for proc in procs],
            "gone": not any(proc.alive() for proc in procs),
            "exit_s": round(time.monotonic() - killed, 3)}


def reap(pid: int, timeout: float = 10.0) -> str | None:
    """Wait for our child ``pid`` to end; the name of the signal that ended it (or how it
    exited), None if it is not our child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else f"exit {status}"
        if time.monotonic() > deadline:
            return f"still running after {timeout:.0f}s"
        time.sleep(0.005)


def verify(members: list[Member]) -> dict[str, Any]:
    """The zero-loss checks over what every member sent, had acknowledged and received."""
    rooms: dict[str, list[Member]] = {}
    for member in members:
        rooms.setdefault(member.room, []).append(member)
    totals: Counter[str] = Counter()
    problems: list[str] = []
    for room, group in rooms.items():
        ids_by_client = {cid: mid for m in group for cid, mid in m.acked.items()}
        acked = sorted(ids_by_client.values())
        top = max(acked, default=0)
        expected = list(range(1, top + 1))
        totals["acked"] += len(acked)
        if acked != expected:
            problems.append(f"{room}: acked ids are not 1..{top} each once "
                            f"({len(acked)} acks, {len(set(acked))} distinct)")
        # Counted from what was sent, too: a client that dropped a message it could not
        # confirm (instead of resending it) has nothing pending but lost it all the same.
        totals["unacked"] += sum(max(len(m.pending), m.sent - len(m.acked)) for m in group)
        for member in group:
            got = member.received
            totals["expected_deliveries"] += len(expected)
            totals["received"] += len(got)
            missing = len(set(expected) - set(got))
            duplicated = len(got) - len(set(got))
            out_of_order = sum(1 for a, b in pairwise(got) if b <= a) - duplicated
            totals["lost"] += missing
            totals["duplicated"] += duplicated
            totals["out_of_order"] += max(out_of_order, 0)
            if got != expected:
                problems.append(f"{room} member {member.index}: {missing} missing, "
                                f"{duplicated} duplicated, {max(out_of_order, 0)} out of order")
    if totals["unacked"]:
        problems.append(f"{totals['unacked']} sent message(s) never acknowledged")
    resets = sum(m.resets for m in members)
    if resets:
        # With persistent Redis a deploy must never restart a room's ids.
        problems.append(f"{resets} reset(s): a room's ids started over (its state was lost)")
    return {"totals": dict(totals), "problems": problems}


def presence_settings(state: StackState) -> tuple[str | None, float]:
    """The stack's JWT secret (None: anonymous, no presence check) and presence grace."""
    env = state.app_env
    secret = env.get("CHAT_JWT_SECRET") if env.get("CHAT_AUTH") == "jwt" else None
    return secret, float(env.get("CHAT_PRESENCE_GRACE", DEFAULT_GRACE))


def presence_problems(members: list[Member], secret: str | None) -> tuple[dict[str, Any], list[str]]:
    """Zero presence changes across the cutovers, and every snapshot counting the whole room."""
    if secret is None:
        return {"checked": False, "why": "anonymous stack: every reconnect is a new user"}, []
    sizes = Counter(m.room for m in members)
    changes = [f"member {m.index}: {c}" for m in members for c in m.presence_changes]
    wrong = [f"member {m.index}: presence count {n}, room has {sizes[m.room]}"
             for m in members for n in m.presence_counts[1:] if n != sizes[m.room]]
    problems = [f"{len(changes)} presence change(s) during the cutovers", *changes[:10],
                *wrong[:10]] if changes or wrong else []
    return {"checked": True, "changes": len(changes), "wrong_counts": len(wrong)}, problems


async def drill(state: StackState, clients: int, rooms: int, rate: float, settle: float,
                timeout: float, fault: str = "none") -> dict[str, Any]:
    """Connect, chat, deploy there and back (or kill and fail over), quiesce, verify; the report."""
    run = secrets.token_hex(3)
    expected_close = ABNORMAL if fault == "kill" else RESTART
    members = [Member(i, f"drill-{run}-{i % rooms}", expected_close) for i in range(clients)]
    secret, grace = presence_settings(state)
    if secret is not None:
        from app.chat.auth import mint

        for m in members:
            m.token = mint(f"drill-{run}-{m.index}", [m.room], 3600, secret)
    base_url = state.web_url.replace("http://", "ws://")
    finishing, stop_sending = asyncio.Event(), asyncio.Event()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    interval = clients / rate
    tasks = [asyncio.create_task(run_member(m, base_url, finishing, gate)) for m in members]
    senders: list[asyncio.Task[None]] = []
    deploys: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    error: str | None = None
    timeline: dict[str, float] = {}
    began = time.monotonic()

    def mark(name: str, since: float) -> None:
        timeline[name] = round(time.monotonic() - since, 3)

    try:
        await until(lambda: all(m.live for m in members), timeout, f"{clients} clients to connect")
        mark("connect_all_s", began)
        senders = [asyncio.create_task(run_sender(m, interval, stop_sending)) for m in members]
        for _ in range(1 if fault == "kill" else 2):
            await asyncio.sleep(settle)  # steady traffic before the cutover
            target = traefik_config.other_color(state.active)
            runtime = LocalRuntime(state)
            connects_before = sum(m.connects for m in members)
            for m in members:
                m.watching = True  # the room's own joins are long announced by now
            cut = time.monotonic()
            if fault == "kill":
                in_flight = await send_burst(members)
                faults.append({**await kill_active(state), "in_flight_at_kill": in_flight})
            report = await asyncio.to_thread(deploy, runtime, target)
            deploys.append(report)
            deployed = time.monotonic()
            def reconnected(goal: int = connects_before + clients) -> bool:
                return all(m.live for m in members) and sum(m.connects for m in members) >= goal

            await until(reconnected, timeout, f"every client to reconnect to {target}")
            mark(f"all_on_{target}_after_deploy_s", deployed)
            if fault == "kill":
                mark(f"all_on_{target}_after_kill_s", cut)
            last_cutover = time.monotonic()
            on_new = await asyncio.to_thread(open_connections, state, target)
            old_members = state.members(traefik_config.other_color(target))
            checks.append({"color": target, "clients_connected_to_it": on_new,
                           "old_colour_running": any(name in state.procs for name in old_members)})
        await asyncio.sleep(settle)
        if secret is not None:
            # A departure the cutover caused would be announced a grace (plus at most a
            # heartbeat) after the old colour released it: keep listening that long.
            await asyncio.sleep(max(0.0, last_cutover + grace * 4 / 3 + 1 - time.monotonic()))
        stop_sending.set()
        await asyncio.gather(*senders)
        quiet = time.monotonic()
        await until(lambda: all(not m.pending for m in members), timeout, "every message to be acknowledged")
        tops: dict[str, int] = {}
        for m in members:
            tops[m.room] = max([tops.get(m.room, 0), *m.acked.values()])
        await until(lambda: all(m.last_id >= tops[m.room] for m in members), timeout,
                    "every member to receive its room's last message")
        mark("quiesce_s", quiet)
    except (TimeoutError, Exception) as exc:  # report what was seen, never hang
        error = f"{type(exc).__name__}: {exc}"
    finally:
        stop_sending.set()
        finishing.set()
        for m in members:
            if m.ws is not None:
                await m.ws.close()
        await asyncio.wait(tasks, timeout=10)
        for task in [*tasks, *senders]:
            task.cancel()
    result = verify(members)
    closes = sum((m.closes for m in members), Counter())
    client_errors = [f"member {m.index}: {e}" for m in members for e in m.errors]
    problems = result["problems"] + client_errors
    if error:
        # The run stopped early: undelivered messages below were still on their way.
        problems.insert(0, f"aborted, figures are at the moment of abort: {error}")
    for check in checks:
        if check["clients_connected_to_it"] != clients:
            problems.append(f"{check['clients_connected_to_it']} of {clients} clients on {check['color']}")
        if check["old_colour_running"]:
            problems.append(f"the colour before {check['color']} still runs")
    problems += fault_problems(fault, faults, deploys)
    presence, presence_trouble = presence_problems(members, secret)
    problems += presence_trouble
    return {
        "ok": not problems,
        "clients": clients,
        "rooms": rooms,
        "rate_per_s": rate,
        "fault": fault,
        "expected_close": expected_close,
        "duration_s": round(time.monotonic() - began, 2),
        "timeline": timeline,
        **client_figures(members, closes, result["totals"]),
        "connect_failures_seen": sorted({m.last_failure for m in members if m.last_failure})[:5],
        "client_errors": len(client_errors),
        "deploys": deploys,
        "killed": faults,
        "presence": presence,
        "ended_on": checks,
        "problems_total": len(problems),
        "problems": problems[:MAX_PROBLEMS],
    }


def client_figures(members: list[Member], closes: Counter[int], totals: dict[str, Any]) -> dict[str, Any]:
    """The report's figures about the clients, shared by the local and the compose drill."""
    return {
        "messages_sent": sum(m.sent for m in members),
        **totals,
        "close_codes": {str(code): count for code, count in sorted(closes.items())},
        "reconnects": sum(m.connects for m in members) - len(members),
        "failed_connect_attempts": sum(m.failed_attempts for m in members),
        "max_failed_attempts_per_client": max((m.failed_attempts for m in members), default=0),
        "connect_failures": dict(sum((m.failures for m in members), Counter()).most_common()),
        "resent": sum(m.resent for m in members),
    }


def fault_problems(fault: str, faults: list[dict[str, Any]], deploys: list[dict[str, Any]]) -> list[str]:
    """A graceful drill must have drained every old colour; a kill drill must have killed it."""
    problems = []
    expected_old = "already gone" if fault == "kill" else "drained"
    for done in deploys:
        if done["old"] != expected_old:
            problems.append(f"deploy {done['from']} -> {done['to']}: old colour {done['old']!r}, "
                            f"expected {expected_old!r}")
    for kill in faults:
        if not kill["gone"] or kill["killed_by"] not in ("SIGKILL", None):
            problems.append(f"{kill['color']} pid {kill['pid']}: gone={kill['gone']}, "
                            f"ended by {kill['killed_by']}")
    return problems


def render(report: dict[str, Any]) -> str:
    lines = [f"killed {k['color']} pid {k['pid']} with {k['signal']}: ended by "
             f"{k['killed_by'] or 'unknown (not our child)'}, gone after {k['exit_s']:.3f}s"
             for k in report["killed"]]
    rows = [[d["from"], d["to"], d["old"], f"{d['time_to_ready_s']:.3f}", f"{d['switch_latency_s']:.3f}",
             f"{d['drain_s']:.3f}", f"{d['total_s']:.3f}"] for d in report["deploys"]]
    lines += [table(["from", "to", "old", "ready s", "switch s", "drain s", "total s"], rows), ""]
    lines.append(table(
        ["clients", "sent", "acked", "deliveries", "lost", "dup", "resent", "reconnects", "failed", "ok"],
        [[report["clients"], report["messages_sent"], report.get("acked", 0),
          report.get("received", 0), report.get("lost", 0), report.get("duplicated", 0),
          report["resent"], report["reconnects"], report["failed_connect_attempts"], report["ok"]]],
    ))
    lines += [f"problem: {p}" for p in report["problems"][:10]]
    if report["problems_total"] > 10:
        lines.append(f"... {report['problems_total'] - 10} more problem(s) in the JSON report")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500, help=f"1..{MAX_CLIENTS} (default 500)")
    parser.add_argument("--rooms", type=int, default=None, help="default: one per 50 clients")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second, all clients")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of steady traffic before, between and after the deploys")
    parser.add_argument("--timeout", type=float, default=None,
                        help="bound for each wait (default 30 s + 40 ms per client)")
    parser.add_argument("--fault", choices=FAULTS, default="none",
                        help="kill: SIGKILL the active colour mid-chat, then fail over to the other")
    parser.add_argument("--state-dir", help="the local stack (default .stack/); started here if down")
    parser.add_argument("--processes", type=int, default=1,
                        help="app processes per colour on a stack started here (default 1)")
    parser.add_argument("--cluster", action="store_true",
                        help="a stack started here runs a Redis Cluster (3 masters + 3 replicas)")
    parser.add_argument("--json", metavar="PATH", help="also write the report here")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS}")
    rooms = args.rooms or max(1, args.clients // 50)
    if not 1 <= rooms <= args.clients or args.rate <= 0:
        parser.error("--rooms must be 1..clients and --rate positive")
    # Connecting (and reconnecting) runs at ~100 clients/s on a busy 2-core machine.
    timeout = args.timeout or 30 + args.clients / 25

    directory = resolve_dir(args.state_dir)
    # The stack's lock for the whole drill: its deploys must not meet an operator's.
    with locked(directory, "drill"):
        started_here = not (directory / STATE_FILE).exists()
        try:
            # Tokens per client, so that presence can tell a reconnect from a new user.
            state = up(directory, app_env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": secrets.token_urlsafe(48)},
                       processes=args.processes if started_here else None, cluster=args.cluster)
            import uvloop  # the clients' side must not be the bottleneck at 5,000

            report = uvloop.run(drill(state, args.clients, rooms, args.rate, args.settle, timeout,
                                      args.fault))
        finally:
            if started_here:
                down(directory)
    report["stack_started_here"] = started_here
    print(render(report), file=sys.stderr)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
